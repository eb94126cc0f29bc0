"""Which leaves each step changes, on the real models at 32 px (one compile per step kind)."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from experiments.configs import tiny
from mtcolor import sharding
from mtcolor.train import state as state_lib
from mtcolor.train import steps

SIZE, BATCH = 32, 4
# train_step against the pair of steps, relative to each leaf's largest entry: measured 2e-8 at most
# (float32 rounding of float64 gradients in Adam's moments); the steps in the wrong order (G before
# D) give 0.08 to 2.
TOLERANCE = 1e-6


def _batch(seed=0, mask=None):
    rng = np.random.default_rng(seed)
    batch = {
        "L": rng.uniform(-1, 1, (BATCH, SIZE, SIZE, 1)).astype(np.float32),
        "ab": rng.uniform(-0.4, 0.4, (BATCH, SIZE, SIZE, 2)).astype(np.float32),
        "label": np.asarray([0, 1, 2, 3], np.int32),
    }
    if mask is not None:
        batch["mask"] = np.asarray(mask, np.float32)
    return sharding.put_batch(batch, MESH)


def _host(tree):
    return jax.tree.map(np.array, jax.device_get(tree))


def _leaves(tree):
    return dict(jax.tree_util.tree_flatten_with_path(tree)[0])


def _changed(before, after):
    """{path: changed?} over the leaves of two trees of the same structure."""
    b, a = _leaves(before), _leaves(after)
    assert b.keys() == a.keys()
    return {k: not np.array_equal(b[k], a[k]) for k in b}


def _all_equal(before, after):
    return not any(_changed(before, after).values())


def _all_changed(before, after):
    flags = _changed(before, after)
    return all(flags.values()), [jax.tree_util.keystr(k) for k, v in flags.items() if not v]


# The tiny test config on the 1-device mesh, replicated as the loop places it: the compiled steps
# are then the ones tests/test_experiments.py's runs use (jit cache hits, not recompiles).
MESH = sharding.make_mesh(jax.devices()[:1])


def _fns():
    return steps.jit_steps(MESH)


def _key(seed):
    return sharding.replicate(jax.random.PRNGKey(seed), MESH)


def _copy(state):
    return sharding.replicate(jax.tree.map(jnp.copy, state), MESH)


@pytest.fixture(scope="module")
def multitask_state():
    config = tiny.get_config()
    assert (config.image_size, config.batch_size) == (SIZE, BATCH)
    state = state_lib.create_train_state(config, jax.random.PRNGKey(0), backbone_frozen=True)
    return sharding.replicate(state, MESH)


@pytest.fixture(scope="module")
def phase1_update(multitask_state):
    before = _host(multitask_state)
    after, metrics = _fns().generator_step(_copy(multitask_state), _batch(), _key(1))
    return before, after, metrics


def test_phase1_generator_step_changes_exactly_the_trainable_leaves(phase1_update):
    before, after, metrics = phase1_update
    after_h = _host(after)
    model_b, model_a = before.params["model"], after_h.params["model"]
    # Frozen backbone: weights and BN running statistics bitwise unchanged.
    assert _all_equal(model_b["backbone"], model_a["backbone"])
    assert _all_equal(
        before.batch_stats["model"]["backbone"], after_h.batch_stats["model"]["backbone"]
    )
    # Decoder and head: every parameter moved; the decoder's BN statistics moved.
    for name in ("decoder", "head"):
        ok, unchanged = _all_changed(model_b[name], model_a[name])
        assert ok, f"{name} leaves not updated: {unchanged}"
    ok, unchanged = _all_changed(
        before.batch_stats["model"]["decoder"], after_h.batch_stats["model"]["decoder"]
    )
    assert ok, unchanged
    # The G step leaves the discriminator alone (params and BN statistics).
    assert _all_equal(before.params["discriminator"], after_h.params["discriminator"])
    assert _all_equal(before.batch_stats["discriminator"], after_h.batch_stats["discriminator"])
    assert _all_equal(before.opt_state["discriminator"], after_h.opt_state["discriminator"])
    assert int(after_h.step) == 1
    assert set(metrics) >= {"l1", "loss_l1", "loss_gan", "loss_g", "loss_cls", "accuracy"}
    assert float(metrics["loss_l1"]) == pytest.approx(100 * float(metrics["l1"]), rel=1e-6)


def test_frozen_backbone_carries_no_adam_state(multitask_state):
    inner = multitask_state.opt_state["model"].inner_states
    assert jax.tree_util.tree_leaves(inner["backbone"]) == []
    rest_leaves = _leaves(inner["rest"])
    assert not any("'backbone'" in jax.tree_util.keystr(k) for k in rest_leaves)
    assert any("'decoder'" in jax.tree_util.keystr(k) for k in rest_leaves)


def test_phase2_trains_backbone_and_keeps_rest_adam_state(phase1_update):
    _, after1, _ = phase1_update
    state = _copy(state_lib.unfreeze_backbone(jax.tree.map(jnp.copy, after1)))
    assert not state.optimizer.backbone_frozen
    rest_before = _host(state.opt_state["model"].inner_states["rest"])
    assert int(rest_before.inner_state[0].count) == 1  # carried over from phase 1
    backbone_opt = state.opt_state["model"].inner_states["backbone"].inner_state[0]
    assert int(backbone_opt.count) == 0  # fresh Adam for the backbone
    before = _host(state)
    after, _ = _fns().generator_step(state, _batch(1), _key(2))
    after = _host(after)
    ok, unchanged = _all_changed(
        before.params["model"]["backbone"], after.params["model"]["backbone"]
    )
    assert ok, f"backbone leaves not updated in phase 2: {unchanged}"
    ok, unchanged = _all_changed(
        before.batch_stats["model"]["backbone"], after.batch_stats["model"]["backbone"]
    )
    assert ok, unchanged
    assert int(after.opt_state["model"].inner_states["rest"].inner_state[0].count) == 2


def test_discriminator_step_changes_only_the_discriminator(multitask_state):
    before = _host(multitask_state)
    after, metrics = _fns().discriminator_step(_copy(multitask_state), _batch(), _key(1))
    after = _host(after)
    for part in ("params", "batch_stats", "opt_state"):
        assert _all_equal(getattr(before, part)["model"], getattr(after, part)["model"]), part
    ok, unchanged = _all_changed(before.params["discriminator"], after.params["discriminator"])
    assert ok, unchanged
    ok, unchanged = _all_changed(
        before.batch_stats["discriminator"], after.batch_stats["discriminator"]
    )
    assert ok, unchanged
    assert int(after.step) == 0  # an iteration counts once, at its G update
    assert float(metrics["loss_d"]) == pytest.approx(
        0.5 * (float(metrics["loss_d_real"]) + float(metrics["loss_d_fake"])), rel=1e-6
    )
    assert 0.0 < float(metrics["d_real"]) < 1.0 and 0.0 < float(metrics["d_fake"]) < 1.0


def test_update_frozen_bn_stats_option_moves_only_the_statistics(multitask_state):
    state = multitask_state.replace(
        optimizer=dataclasses.replace(multitask_state.optimizer, update_frozen_bn_stats=True)
    )
    before = _host(state)
    after, _ = _fns().generator_step(_copy(state), _batch(), _key(1))
    after = _host(after)
    assert _all_equal(before.params["model"]["backbone"], after.params["model"]["backbone"])
    ok, unchanged = _all_changed(
        before.batch_stats["model"]["backbone"], after.batch_stats["model"]["backbone"]
    )
    assert ok, unchanged


def test_eval_step_masks_padded_rows(phase1_update):
    _, state, _ = phase1_update
    full = jax.device_get(_fns().eval_step(state, _batch(3, mask=[1, 1, 1, 1]))[0])
    np.testing.assert_array_equal(full["mask"], np.ones(BATCH))
    out = jax.device_get(_fns().eval_step(state, _batch(3, mask=[1, 1, 0, 0]))[0])
    np.testing.assert_array_equal(out["mask"], [1, 1, 0, 0])
    from mtcolor.train import metrics as metrics_lib

    names = metrics_lib.metric_names(state.objective)
    value = metrics_lib.compute(metrics_lib.from_step_outputs(names, out))["l1"]
    assert value == pytest.approx(float(np.mean(full["l1"][:2])), rel=1e-6)


def test_eval_step_returns_the_model_outputs_the_grids_draw(phase1_update):
    # Validation's image grids come from eval_step's second output. Reference: the flax model
    # applied in eval mode to the same inputs, outside mtcolor's steps.
    _, state, _ = phase1_update
    batch = _batch(3)
    values, outputs = jax.device_get(_fns().eval_step(state, batch))
    variables = {"params": state.params["model"], "batch_stats": state.batch_stats["model"]}
    want = jax.device_get(state.model.apply(variables, batch["L"], train=False))
    assert outputs.keys() == want.keys() == {"colorization", "classification"}
    for name in want:
        np.testing.assert_allclose(outputs[name], want[name], rtol=1e-5, atol=1e-6)
    assert values["mask"].shape == (BATCH,)


def test_evaluation_compiles_once_for_both_phases(phase1_update):
    """Phase 2 changes the optimizer (the backbone gets Adam state), which evaluation does not
    read: jitted evaluation and prediction of a phase-2 state reuse the phase-1 compilation
    (counted as traces: the persistent compilation cache would hide a second compile)."""
    _, state, _ = phase1_update
    phase2 = sharding.replicate(state_lib.unfreeze_backbone(_copy(state)), MESH)
    assert jax.tree.structure(phase2.opt_state) != jax.tree.structure(state.opt_state)
    fns, batch = _fns(), _batch(3)
    jax.clear_caches()  # so the first calls trace, whatever tests ran before
    traces, listening = [], [True]  # jax.monitoring has no public way to remove a listener
    jax.monitoring.register_event_duration_secs_listener(
        lambda event, _secs, **_: (
            traces.append(event)
            if listening[0] and event == "/jax/core/compile/jaxpr_trace_duration"
            else None
        )
    )
    try:
        jax.block_until_ready((fns.eval_step(state, batch), fns.predict(state, batch["L"])))
        first = len(traces)
        jax.block_until_ready((fns.eval_step(phase2, batch), fns.predict(phase2, batch["L"])))
    finally:
        listening[0] = False
    assert first >= 2 and len(traces) == first, (first, len(traces))


def _two_step_iteration(state, batch):
    """The iteration as two pure updates, each with its own generator forward (same key)."""
    fns = _fns()
    rng = fns.iteration_rng(state)
    state, d_metrics = fns.discriminator_step(state, batch, rng)
    state, g_metrics = fns.generator_step(state, batch, rng)
    return state, {**d_metrics, **g_metrics}


def _float64_state(case):
    """The tiny config computing in float64 (parameters, Adam and BatchNorm statistics stay
    float32), at the start of the case's iteration. Call under jax.enable_x64."""
    config = tiny.get_config()
    config.model.dtype = "float64"
    if case == "phase2_uncertainty_pcgrad":
        config.loss.weighting, config.loss.gradient = "uncertainty", "pcgrad"
    frozen = case == "phase1"
    state = state_lib.create_train_state(config, jax.random.PRNGKey(0), backbone_frozen=frozen)
    state = sharding.replicate(state, MESH)
    if case == "phase2":  # from a phase-1 state: the decoder's and head's Adam states carry over
        state, _ = _fns().generator_step(state, _batch(), _key(1))
        state = _copy(state_lib.unfreeze_backbone(state))
    return state


def _worst_relative(a, b):
    """The largest difference between two arrays, relative to the reference's largest entry."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.max(np.abs(a - b), initial=0.0) / max(np.max(np.abs(b), initial=0.0), 1e-30))


@pytest.mark.parametrize("case", ["phase1", "phase2", "phase2_uncertainty_pcgrad"])
def test_train_step_with_one_forward_equals_discriminator_then_generator_step(case):
    """train_step runs the generator once and pulls G's loss back through that forward; the
    reference is the pair of steps, each with its own forward. Two iterations, so the second
    starts from Adam states and D weights that the first one moved.

    Why float64. The two forms are different programs, so XLA may sum in other orders; in float32
    those ~1e-7 differences flip the signs of near-zero gradients in Adam's first steps (update
    = lr * sign) and LeakyReLU kinks in the PatchGAN, and after two iterations some parameters
    differ by 2 lr and the PCGrad projections by 3% (measured with XLA:CPU's other emitters, see
    tests/conftest.py). In float64 the differences are ~1e-14 and rounding them to the float32
    parameters changes a gradient by at most one float32 ulp. A real difference in the iteration
    (G's loss through the old D, a second forward's BatchNorm update, another dropout mask)
    changes the losses and most gradients by 1e-3 or more."""
    with jax.enable_x64(True):
        state = _float64_state(case)
        fused, two_step = _copy(state), _copy(state)
        for seed in (5, 6):
            fused, fused_metrics = _fns().train_step(fused, _batch(seed))
            two_step, two_metrics = _two_step_iteration(two_step, _batch(seed))
        fused, two_step = _host(fused), _host(two_step)
    assert set(fused_metrics) == set(two_metrics)
    for name in two_metrics:
        assert float(fused_metrics[name]) == pytest.approx(
            float(two_metrics[name]), rel=1e-9, abs=1e-12
        ), name
    assert int(fused.step) == int(two_step.step) == int(state.step) + 2
    for part in ("params", "batch_stats", "opt_state", "mtl"):
        a, b = _leaves(getattr(fused, part)), _leaves(getattr(two_step, part))
        assert a.keys() == b.keys(), part
        for path in a:
            assert _worst_relative(a[path], b[path]) <= TOLERANCE, (
                f"{part}{jax.tree_util.keystr(path)}"
            )


def test_compile_ahead_fills_the_cache_the_call_uses():
    # mtcolor.train.compile_ahead compiles the run's steps on a thread from their arguments'
    # abstract values (taken before the steps donate them); the later call must find that program
    # and not trace or compile again. Reference: JAX's own compile events (jax.monitoring).
    from jax.sharding import NamedSharding, PartitionSpec

    from mtcolor.train.compile_ahead import CompileAhead

    events = []
    recording = [True]
    jax.monitoring.register_event_duration_secs_listener(
        lambda name, duration, **kwargs: events.append(name) if recording[0] else None
    )
    replicated = NamedSharding(jax.make_mesh((1,), ("data",)), PartitionSpec())
    step = jax.jit(lambda x, y: (jnp.sin(x) @ y, x.sum()), donate_argnums=0)
    x = jax.device_put(jnp.arange(64.0).reshape(8, 8), replicated)
    y = jax.device_put(jnp.ones((8, 8)), replicated)
    ahead = CompileAhead()
    events.clear()
    try:
        ahead.submit("step", step, x, y)
        ahead.wait("step")
        compiled_ahead = events.count("/jax/core/compile/backend_compile_duration")
        events.clear()
        out, total = step(x, y)  # x is donated: its buffer is gone after the call
        assert events == []  # no tracing, lowering or compilation at the call
        assert float(total) == 2016.0 and out.shape == (8, 8)
        ahead.wait("step")  # waiting again, or for a name never submitted, returns at once
        ahead.wait("never submitted")
    finally:
        recording[0] = False
        ahead.close()
    assert compiled_ahead == 1
