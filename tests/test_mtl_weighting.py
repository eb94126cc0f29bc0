"""mtcolor.mtl.weighting against LibMTL 1.1.5 (UW, DWA, GradNorm's shared part) and the official
FAMO code, driven on a tiny torch model by benchmarks/make_mtl_fixtures.py; hand-computed cases.

Tolerances: 1e-5 relative for closed forms (DWA, GradNorm objective and gradient, FAMO
multipliers); 1e-4 for trajectories through Adam (UW, FAMO), where float32 Adam steps in torch and
optax round differently.
"""

import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mtcolor.mtl import weighting as W

FIX = np.load(pathlib.Path(__file__).parent / "fixtures" / "mtl_reference.npz")


@pytest.mark.parametrize("t", [2, 3])
def test_uncertainty_matches_libmtl_uw(t):
    losses = FIX[f"libmtl/uw/t{t}/losses"]
    lw = W.uncertainty(t, lr=1e-3, init_log_var=-0.5)  # LibMTL's start and its Adam lr
    state = lw.init()
    for step, loss in enumerate(losses):
        np.testing.assert_allclose(
            lw.weights(state), FIX[f"libmtl/uw/t{t}/weights"][step], rtol=1e-4
        )
        state = lw.update(state, W.StepStats(jnp.asarray(loss)))
        np.testing.assert_allclose(
            state.log_var, FIX[f"libmtl/uw/t{t}/log_var_after"][step], rtol=1e-4, atol=1e-6
        )
    # The regulariser: term = L / (2 exp(s)) + s / 2.
    s = np.asarray(state.log_var)
    np.testing.assert_allclose(
        lw.task_terms(state, jnp.asarray(losses[0])), losses[0] / (2 * np.exp(s)) + s / 2, rtol=1e-6
    )


@pytest.mark.parametrize("t", [2, 3])
def test_dwa_matches_libmtl(t):
    losses, expected = FIX[f"libmtl/dwa/t{t}/losses"], FIX[f"libmtl/dwa/t{t}/weights"]
    lw = W.dwa(t)
    state, update = lw.init(), jax.jit(lw.update)
    for step, loss in enumerate(losses):
        np.testing.assert_allclose(lw.weights(state), expected[step], rtol=1e-5)
        state = update(state, W.StepStats(jnp.asarray(loss), epoch_end=(step % 3 == 2)))
    # Base weights multiply: epochs 0 and 1 give exactly the base weights.
    base = np.arange(1.0, t + 1)
    np.testing.assert_array_equal(W.dwa(t, base).weights(W.dwa(t, base).init()), base)


@pytest.mark.parametrize("t", [2, 3])
def test_gradnorm_objective_matches_libmtl(t):
    key = f"libmtl/gradnorm/t{t}"
    p = jnp.asarray(FIX[f"{key}/loss_scale"])
    norms, ratios = jnp.asarray(FIX[f"{key}/grad_norms"]), jnp.asarray(FIX[f"{key}/loss_ratios"])

    def objective(p):
        return W.gradnorm_objective(t * jax.nn.softmax(p), norms, ratios, 1.5)

    np.testing.assert_allclose(objective(p), FIX[f"{key}/L_grad"], rtol=1e-5)
    np.testing.assert_allclose(
        jax.grad(objective)(p), FIX[f"{key}/loss_scale_grad"], rtol=1e-4, atol=1e-7
    )


def test_gradnorm_hand_computed():
    # Two tasks, base 1, w = 1, norms (2, 1), losses equal to L(0): r = 1, target = mean G = 1.5;
    # d L_grad / d w = sign(G - target) * norm = (+2, -1); Adam's first step is -lr * sign.
    lw = W.gradnorm(2, lr=0.1)
    state = lw.update(lw.init(), W.StepStats(jnp.array([1.0, 3.0]), jnp.array([2.0, 1.0])))
    np.testing.assert_allclose(state.w, [0.9, 1.1], rtol=1e-5)  # sums to T = 2
    np.testing.assert_allclose(state.initial_losses, [1.0, 3.0])
    np.testing.assert_allclose(lw.weights(state).sum(), 2.0, rtol=1e-6)
    base = jnp.array([100.0, 10.0])
    np.testing.assert_allclose(W.gradnorm(2, base).weights(W.gradnorm(2, base).init()), base)


@pytest.mark.parametrize("t", [2, 3])
def test_famo_matches_official(t):
    key = f"famo/t{t}"
    lw = W.famo(t, gamma=1e-3, lr=0.025)
    state, update = lw.init(), jax.jit(lw.update)
    for step in range(len(FIX[f"{key}/losses"])):
        losses = jnp.asarray(FIX[f"{key}/losses"][step])
        mult = jax.grad(lambda l, state=state: lw.task_terms(state, l).sum())(losses)
        # mtcolor's objective is the official one times sum(base) = T (docstring).
        np.testing.assert_allclose(mult, t * FIX[f"{key}/multipliers"][step], rtol=1e-5)
        state = update(
            state, W.StepStats(losses, losses_after=jnp.asarray(FIX[f"{key}/losses_after"][step]))
        )
        np.testing.assert_allclose(
            state.logits, FIX[f"{key}/logits_after"][step], rtol=1e-4, atol=1e-6
        )


def test_famo_base_weights_start():
    base = jnp.array([100.0, 10.0])
    lw = W.famo(2, base)
    state = lw.init()
    np.testing.assert_allclose(lw.weights(state), base, rtol=1e-6)
    # Equal losses: the multipliers of the raw losses are the base weights.
    mult = jax.grad(lambda l: lw.task_terms(state, l).sum())(jnp.array([0.7, 0.7]))
    np.testing.assert_allclose(mult, base, rtol=1e-5)


@pytest.mark.parametrize("name", W.WEIGHTING_METHODS)
def test_common_contract(name):
    base = jnp.array([100.0, 10.0, 1.0])
    lw = W.weighting_from_config(name, 3, base)
    state = lw.init()
    np.testing.assert_allclose(lw.weights(state), base, rtol=1e-5)
    stats = W.StepStats(
        jnp.array([0.5, 2.0, 1.0], jnp.bfloat16),
        jnp.array([1.0, 0.5, 0.1]),
        jnp.array([0.4, 1.9, 1.0]),
        True,
    )
    state = jax.jit(lw.update)(state, stats)
    w = lw.weights(state)
    assert w.dtype == jnp.float32 and w.shape == (3,) and np.all(np.isfinite(w))
    terms = jax.jit(lw.task_terms)(state, jnp.array([0.5, 2.0, 1.0], jnp.bfloat16))
    assert terms.dtype == jnp.float32 and np.all(np.isfinite(terms))
    leaves, treedef = jax.tree.flatten(state)
    again = jax.tree.unflatten(treedef, [np.asarray(x) for x in leaves])
    np.testing.assert_array_equal(lw.weights(again), w)
    # Zero losses stay finite.
    zero = W.StepStats(jnp.zeros(3), jnp.zeros(3), jnp.zeros(3), True)
    assert np.all(np.isfinite(lw.weights(lw.update(lw.init(), zero))))


def test_config_errors():
    with pytest.raises(ValueError, match="famo"):
        W.weighting_from_config("famo2", 2)
    with pytest.raises(ValueError, match="temperature"):
        W.weighting_from_config("dwa", 2, T=2.0)
    with pytest.raises(ValueError, match="base_weights"):
        W.weighting_from_config("fixed", 2, [1.0, 2.0, 3.0])
