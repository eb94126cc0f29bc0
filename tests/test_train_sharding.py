"""Data parallelism: one training iteration on 4 simulated CPU devices equals the 1-device one.

Runs in a subprocess because the device count must be set (XLA_FLAGS) before JAX starts.
BatchNorm statistics are global under jit sharding (XLA all-reduces them), so the only
differences are float summation order. Adam's first step is lr * g / (|g| + eps), about
lr * sign(g): for gradients at float-noise level (e.g. 3x3 taps that only see padding on the
1x1 maps of a 32 px ResNet) the sign is noise, so parameters are compared where |g| > 1e-3 max|g| (per leaf) and
the gradients themselves (Adam's first moment mu = (1 - b1) g) everywhere.
"""

import json
import os
import subprocess
import sys
import textwrap

SCRIPT = textwrap.dedent("""
    import json
    import jax, jax.numpy as jnp, numpy as np
    assert len(jax.devices()) == 4, jax.devices()
    from experiments.configs import tiny
    from mtcolor.train import sharding, state as state_lib, steps

    config = tiny.get_config()
    config.batch_size = 8
    state = state_lib.create_train_state(config, jax.random.PRNGKey(0), backbone_frozen=False)
    rng = np.random.default_rng(0)
    batch = {"L": rng.uniform(-1, 1, (8, 32, 32, 1)).astype(np.float32),
             "ab": rng.uniform(-0.4, 0.4, (8, 32, 32, 2)).astype(np.float32),
             "label": np.arange(8, dtype=np.int32) % 5}
    results = {}
    for n in (1, 4):
        mesh = sharding.make_mesh(jax.devices()[:n])
        s = sharding.replicate(jax.tree.map(jnp.copy, state), mesh)
        b = sharding.put_batch(batch, mesh)
        assert len(b["L"].sharding.device_set) == n
        new, metrics = steps.jit_steps(mesh).train_step(s, b)
        assert new.params["model"]["decoder"] is not None
        grads = [mu for opt in jax.tree.leaves(new.opt_state, is_leaf=lambda x: hasattr(x, "mu"))
                 if hasattr(opt, "mu") for mu in jax.tree.leaves(opt.mu)]
        results[n] = jax.device_get((new.params, new.batch_stats, metrics, grads))
    diff = lambda a, b: max(float(np.max(np.abs(np.asarray(x) - np.asarray(y))))
                            for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))
    grad_rel = max(float(np.max(np.abs(x - y)) / (np.max(np.abs(x)) + 1e-30))
                   for x, y in zip(results[1][3], results[4][3]))
    # Params in the order of Adam's mu leaves: discriminator, model backbone, model rest.
    def in_mu_order(p):
        rest = {k: v for k, v in p["model"].items() if k != "backbone"}
        return jax.tree.leaves([p["discriminator"], p["model"]["backbone"], rest])
    leaves1, leaves4 = in_mu_order(results[1][0]), in_mu_order(results[4][0])
    assert [x.shape for x in leaves1] == [g.shape for g in results[1][3]]
    masked = max(float(np.max(np.where(np.abs(g) > 1e-3 * np.max(np.abs(g)), np.abs(a - b), 0.0)))
                 for a, b, g in zip(leaves1, leaves4, results[1][3]))
    moved = diff(results[1][0], jax.device_get(state.params))
    print("RESULT " + json.dumps({"params_where_grad_above_noise": masked,
                                  "batch_stats": diff(results[1][1], results[4][1]),
                                  "metrics": diff(results[1][2], results[4][2]),
                                  "grad_rel": grad_rel, "moved": moved}))
""")


def test_four_devices_match_one_device():
    env = dict(
        os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4", JAX_PLATFORMS="cpu"
    )
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env["PYTHONPATH"] = root + os.pathsep + env.get("PYTHONPATH", "")
    proc = subprocess.run(
        [sys.executable, "-c", SCRIPT],
        env=env,
        cwd=root,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    line = [l for l in proc.stdout.splitlines() if l.startswith("RESULT ")][-1]
    result = json.loads(line[len("RESULT ") :])
    assert result["moved"] > 1e-4  # the update did something (Adam's first step moves ~lr = 2e-4)
    assert result["metrics"] < 1e-4  # losses (loss_g ~ 30) agree to float32 rounding
    assert result["batch_stats"] < 1e-5
    assert result["grad_rel"] < 1e-4, result
    assert result["params_where_grad_above_noise"] < 1e-6, result
