"""Data parallelism: one training iteration on 4 simulated CPU devices equals the 1-device one,
with the paper's summed loss and with a learned weighting and a gradient method (PCGrad).

Why float64. In float32 the 1- and 4-device iterations differ by summation order only (XLA
all-reduces the gradients and the BatchNorm batch statistics of the global batch), about 1e-5
relative in the colorization. That is enough to flip the sign of a pre-activation that happens to
lie within ~1e-6 of a LeakyReLU kink in the PatchGAN (measured: with this batch one value in bn3
and one in bn4 of D flip), and the flipped derivative (1 vs 0.2) changes those channels' gradients
by up to 14% of the leaf's largest entry. That is not a sharding bug, but no float32 tolerance can
tell it apart from one. In float64 the same rounding differences are ~1e-14 relative (measured) and
a kink would have to lie within ~1e-13 of zero to flip, which for ~1e5 activations of unit scale has
probability ~1e-8. So the comparison runs the real models and steps with dtype float64 and float64
parameters, and demands agreement to TOLERANCE (below).

The test also shows it catches the bugs it exists for: the same comparison, run on the code
deliberately broken in two ways, must fail (on the discriminator step alone, which runs the
generator's forward pass with its dropout and both networks' BatchNorm, to save two compilations
of the full iteration):
  * ``bn_per_device``: BatchNorm statistics over each device's slice of the batch instead of the
    global batch (what shard_map/pmap code without a cross-device mean computes);
  * ``dropout_per_device``: dropout masks drawn per device from the same key (each device's local
    mask repeated), so the masks depend on the device count.
Runs in a subprocess because the device count must be set (XLA_FLAGS) before JAX starts.
"""

import json
import os
import subprocess
import sys
import textwrap

# Relative to each leaf's largest entry. float64 unit roundoff u = 1.1e-16; the longest reductions
# here sum n <= 8 * 32 * 32 = 8192 terms (a conv weight gradient over batch and space) whose
# absolute sum can exceed the result by ~1e3 through cancellation, so a reordered sum may differ by
# up to n * u * 1e3 ~ 1e-9 in the worst case (measured: 4e-14). The injected bugs give 1e-3 to 1.
TOLERANCE = 1e-9
# Float32 combination of the per-task gradients (see the test); the injected bugs give 1e-3 to 1.
MTL_TOLERANCE = 1e-5

SCRIPT = textwrap.dedent(
    """
    import json, sys
    import jax
    jax.config.update("jax_enable_x64", True)
    import flax.linen as nn
    import jax.numpy as jnp, numpy as np
    assert len(jax.devices()) == 4, jax.devices()
    from experiments.configs import tiny
    from mtcolor import models, tasks
    from mtcolor.models import decoder as decoder_lib, patchgan as patchgan_lib, """
    """resnet as resnet_lib
    from mtcolor import sharding
    from mtcolor.train import state as state_lib
    from mtcolor.train import steps

    GROUPS = 1  # the injected bugs' "device count"; 1 makes both mutants equal to the real code

    class PerDeviceBatchNorm(nn.Module):
        # Injected bug: statistics over each of GROUPS slices of the batch (per device).
        use_running_average: bool
        scale_init: object
        momentum: float = resnet_lib.BN_MOMENTUM
        epsilon: float = resnet_lib.BN_EPSILON

        @nn.compact
        def __call__(self, x):
            c = x.shape[-1]
            scale = self.param("scale", self.scale_init, (c,), jnp.float32).astype(x.dtype)
            bias = self.param("bias", nn.initializers.zeros, (c,), jnp.float32).astype(x.dtype)
            ra_mean = self.variable("batch_stats", "mean", lambda: jnp.zeros((c,), x.dtype))
            ra_var = self.variable("batch_stats", "var", lambda: jnp.ones((c,), x.dtype))
            if self.use_running_average:
                y = (x - ra_mean.value) / jnp.sqrt(ra_var.value + self.epsilon)
            else:
                g = x.reshape((GROUPS, -1) + x.shape[1:])
                axes = tuple(range(1, g.ndim - 1))
                mean = g.mean(axes, keepdims=True)
                var = ((g - mean) ** 2).mean(axes, keepdims=True)
                y = ((g - mean) / jnp.sqrt(var + self.epsilon)).reshape(x.shape)
                if not self.is_initializing():
                    m = self.momentum
                    ra_mean.value = m * ra_mean.value + (1 - m) * mean.reshape(GROUPS, c).mean(0)
                    ra_var.value = m * ra_var.value + (1 - m) * var.reshape(GROUPS, c).mean(0)
            return y * scale + bias

    def per_device_batch_norm(train, dtype, scale_init, name):
        return PerDeviceBatchNorm(use_running_average=not train, scale_init=scale_init, name=name)

    class PerDeviceDropout(nn.Module):
        # Injected bug: each device draws its slice's mask from the same key.
        rate: float
        deterministic: bool = False

        @nn.compact
        def __call__(self, x):
            if self.deterministic or self.rate == 0:
                return x
            local = (x.shape[0] // GROUPS,) + x.shape[1:]
            keep = jax.random.bernoulli(self.make_rng("dropout"), 1.0 - self.rate, local)
            keep = jnp.tile(keep, (GROUPS,) + (1,) * (x.ndim - 1))
            return jnp.where(keep, x / (1.0 - self.rate), 0.0)

    def inject(bug):
        if bug == "bn_per_device":
            for module in (resnet_lib, decoder_lib, patchgan_lib):
                module.batch_norm = per_device_batch_norm
        elif bug == "dropout_per_device":
            nn.Dropout = PerDeviceDropout

    f64 = lambda tree: jax.tree.map(
        lambda x: x.astype(jnp.float64) if jnp.issubdtype(x.dtype, jnp.floating) else x, tree)
    config = tiny.get_config()
    config.batch_size = 8

    def make_state(config):
        state = state_lib.create_train_state(config, jax.random.PRNGKey(0), backbone_frozen=False)
        return state.replace(
            params=f64(state.params), batch_stats=f64(state.batch_stats),
            opt_state=f64(state.opt_state),
            model=tasks.multitask_generator(num_classes=5, dtype=jnp.float64),
            discriminator=models.PatchDiscriminator(dtype=jnp.float64))

    state = make_state(config)
    rng = np.random.default_rng(0)
    batch = {"L": rng.uniform(-1, 1, (8, 32, 32, 1)),
             "ab": rng.uniform(-0.4, 0.4, (8, 32, 32, 2)),
             "label": np.arange(8, dtype=np.int32) % 5}

    def one_iteration(n, step_fn=steps.train_step, base=None, data=None):
        mesh = sharding.make_mesh(jax.devices()[:n])
        s = sharding.replicate(jax.tree.map(jnp.copy, state if base is None else base), mesh)
        b = sharding.put_batch(batch if data is None else data, mesh)
        assert len(b["L"].sharding.device_set) == n
        # A fresh jit per call: the injected bugs change code that jit's cache cannot see.
        step = jax.jit(lambda s, b: step_fn(s, b), out_shardings=sharding.replicated(mesh))
        new, metrics = step(s, b)
        # Adam's first moment after one step from zero is (1 - b1) * gradient, exactly.
        moments = [o for o in jax.tree.leaves(new.opt_state, is_leaf=lambda x: hasattr(x, "mu"))
                   if hasattr(o, "mu")]
        return jax.device_get({"grads": [o.mu for o in moments], "nu": [o.nu for o in moments],
                               "batch_stats": new.batch_stats, "metrics": metrics,
                               "params": new.params})

    def worst_relative(a, b):
        return max(float(np.max(np.abs(x - y)) / (np.max(np.abs(x)) + 1e-300))
                   for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)) if np.size(x))

    def compare(reference, four):
        return {key: worst_relative(reference[key], four[key])
                for key in ("grads", "nu", "batch_stats", "metrics")}

    reference = one_iteration(1)
    moved = max(float(np.max(np.abs(np.asarray(x) - np.asarray(y))))
                for x, y in zip(jax.tree.leaves(reference["params"]),
                                jax.tree.leaves(jax.device_get(state.params))))
    results = {"moved": moved, "correct": compare(reference, one_iteration(4))}
    # The multi-task methods: learned weights, per-task backbone gradients projected by PCGrad,
    # classification over the labelled rows only.
    config.loss.weighting, config.loss.gradient = "uncertainty", "pcgrad"
    mtl_state = make_state(config)
    mtl_batch = dict(batch, has_label=(np.arange(8) % 3 != 0).astype(np.float32))
    # The generator step alone: the methods act there (the D step is the one compared above).
    g_step = lambda s, b: steps.generator_step(s, b, steps.iteration_rng(s))
    results["mtl"] = compare(one_iteration(1, g_step, base=mtl_state, data=mtl_batch),
                             one_iteration(4, g_step, base=mtl_state, data=mtl_batch))
    d_step = lambda s, b: steps.discriminator_step(s, b, steps.iteration_rng(s))
    d_reference = one_iteration(1, d_step)
    for bug in ("bn_per_device", "dropout_per_device"):
        inject(bug)
        GROUPS = 4
        results[bug] = compare(d_reference, one_iteration(4, d_step))
    print("RESULT " + json.dumps(results))
"""
)


def test_four_devices_match_one_device_and_catch_sharding_bugs():
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    env["XLA_FLAGS"] = f"{env.get('XLA_FLAGS', '')} --xla_force_host_platform_device_count=4"
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env["PYTHONPATH"] = root + os.pathsep + env.get("PYTHONPATH", "")
    proc = subprocess.run(
        [sys.executable, "-c", SCRIPT],
        env=env,
        cwd=root,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    line = [l for l in proc.stdout.splitlines() if l.startswith("RESULT ")][-1]
    result = json.loads(line[len("RESULT ") :])
    assert result["moved"] > 1e-4  # the update did something (Adam's first step moves ~lr = 2e-4)
    # The real code: every gradient, second moment, BN statistic and loss agrees.
    assert max(result["correct"].values()) < TOLERANCE, result
    # With PCGrad and uncertainty weighting too. Their projections and Gram matrices are computed
    # in float32 whatever the model's dtype (mtcolor.mtl.gradient), so the bound there is
    # float32's: rounding the float64 gradients to float32 differs by at most one ulp (6e-8),
    # which the projections can amplify by the cancellation in g_i - (g_i.g_j / |g_j|^2) g_j.
    assert max(result["mtl"].values()) < MTL_TOLERANCE, result
    # Each injected bug is caught by the same comparison, by a wide margin.
    for bug in ("bn_per_device", "dropout_per_device"):
        assert max(result[bug].values()) > 1e3 * TOLERANCE, (bug, result)
    # Both bugs change the discriminator's losses (its BN statistics, or the fake it is shown).
    assert result["bn_per_device"]["metrics"] > 1e-3, result
    assert result["dropout_per_device"]["metrics"] > 1e-3, result
