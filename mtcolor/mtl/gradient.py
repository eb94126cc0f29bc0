"""Gradient combinations: per-task gradients of the shared parameters -> one update.

Every method is a `GradientCombination(init, update)`, an optax-like pair of pure functions:

    state = combination.init(num_tasks)
    combined, state, weights = combination.update(task_grads, state, key)

`task_grads` is f32[T, P] (row i: the gradient of task i's *weighted* loss w.r.t. the P shared
parameters, raveled), `combined` is f32[P], `weights` is f32[T] with `combined == weights @
task_grads` for every method here (so a trainer can log one number per task whatever the method).
`combine_trees` does the ravel / unravel for parameter pytrees. Non-shared parameters (task heads)
do not go through a combination: their gradient is the plain sum of the per-task gradients.

The methods only need the T x T Gram matrix K = G G^T to find their weights (the rows of G enter
only through inner products), and the T x P matrix once more for `weights @ G`. Both products run
in float32 at HIGHEST precision whatever dtype comes in (TPU/GPU default matmuls may use bf16 or
TF32 passes, which would make the solvers see a different K); under sharding XLA computes K as
a local product plus an all-reduce of T x T numbers.

All solvers run a fixed number of iterations (`jax.lax.fori_loop`), are deterministic, and return
finite weights for zero, identical or exactly opposite gradients and for T = 1.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from mtcolor.mtl import _solvers
from mtcolor.mtl.method_options import check_method_options

GRADIENT_METHODS = ("sum", "mean", "pcgrad", "cagrad", "mgda", "imtl_g", "nash_mtl")

_HI = jax.lax.Precision.HIGHEST


class CombinationState(NamedTuple):
    """State of every combination (one type, so a train state's structure does not depend on the
    method): `step` counts updates; `alpha` is nash_mtl's previous solution (warm start and the
    weights reused between `update_weights_every` solves); zeros (none yet) in a fresh state."""

    step: jax.Array  # int32 scalar
    alpha: jax.Array  # f32[T]


class GradientCombination(NamedTuple):
    init: Callable[[int], CombinationState]
    update: Callable[
        [jax.Array, CombinationState, jax.Array],
        tuple[jax.Array, CombinationState, jax.Array],
    ]


def gram_matrix(task_grads: jax.Array) -> jax.Array:
    """K = G G^T in float32 at full precision."""
    g = task_grads.astype(jnp.float32)
    return jnp.matmul(g, g.T, precision=_HI)


def _init(num_tasks: int) -> CombinationState:
    return CombinationState(
        step=jnp.zeros((), jnp.int32), alpha=jnp.zeros((num_tasks,), jnp.float32)
    )


def _from_weights(weights_fn) -> GradientCombination:
    """A combination whose weights depend only on K (and the key): combined = weights @ G."""

    def update(task_grads, state, key):
        g = task_grads.astype(jnp.float32)
        weights = weights_fn(gram_matrix(g), key).astype(jnp.float32)
        combined = jnp.matmul(weights, g, precision=_HI)
        return combined, state._replace(step=state.step + 1), weights

    return GradientCombination(init=_init, update=update)


# ---------------------------------------------------------------------------------------------
# sum / mean


def sum_combination() -> GradientCombination:
    """The plain sum of the (already weighted) task gradients: what backpropagating the weighted
    total loss gives. The default."""
    return _from_weights(lambda k, key: jnp.ones((k.shape[0],), jnp.float32))


def mean_combination() -> GradientCombination:
    """The mean of the task gradients (torchjd's `Mean`; CAGrad with c = 0)."""
    return _from_weights(lambda k, key: jnp.full((k.shape[0],), 1.0 / k.shape[0], jnp.float32))


# ---------------------------------------------------------------------------------------------
# PCGrad


def pcgrad_weights(gram: jax.Array, orders: jax.Array) -> jax.Array:
    """PCGrad's weights for given task orders (Yu et al. 2020, "Gradient Surgery for Multi-Task
    Learning", Algorithm 1), on the Gram matrix.

    For each task i, g_i^PC starts at g_i and, for j in orders[i] (a permutation of the tasks;
    j = i is skipped as in Algorithm 1 and torchjd), if g_i^PC . g_j < 0 it is projected on the
    normal plane of the ORIGINAL g_j: g_i^PC -= (g_i^PC . g_j / |g_j|^2) g_j (eq. in Alg. 1).
    g_i^PC stays a combination c_i @ G of the original gradients, and g_i^PC . g_j = (c_i K)_j,
    so only K is needed. The update is sum_i g_i^PC (Algorithm 1's sum, as in torchjd and LibMTL),
    i.e. weights = sum_i c_i. A zero g_j is never projected on (0/0 in the formula).
    """
    k = gram.astype(jnp.float32)
    t = k.shape[0]
    sq = jnp.diagonal(k)
    tiny = jnp.finfo(jnp.float32).tiny

    def one_task(i, order):
        def body(n, c):
            j = order[n]
            inner = jnp.dot(c, k[:, j])
            project = (j != i) & (inner < 0) & (sq[j] > tiny)
            coef = jnp.where(project, inner / jnp.where(sq[j] > tiny, sq[j], 1.0), 0.0)
            return c.at[j].add(-coef)

        return jax.lax.fori_loop(0, t, body, jax.nn.one_hot(i, t, dtype=jnp.float32))

    return jax.vmap(one_task)(jnp.arange(t), orders).sum(axis=0)


def pcgrad() -> GradientCombination:
    """PCGrad with a fresh random order per task per step, drawn from `key` (the paper shuffles
    the other tasks for every g_i)."""

    def weights_fn(k, key):
        t = k.shape[0]
        # One uniformly random permutation per task: the argsort of i.i.d. uniforms.
        orders = jnp.argsort(jax.random.uniform(key, (t, t)), axis=1)
        return pcgrad_weights(k, orders)

    return _from_weights(weights_fn)


# ---------------------------------------------------------------------------------------------
# CAGrad

CAGRAD_RESCALES = (0, 1, 2)


def cagrad_weights(gram: jax.Array, c: float = 0.4, rescale: int = 1, num_iters: int = 300):
    """CAGrad's weights (Liu et al. 2021, "Conflict-Averse Gradient Descent for Multi-task
    Learning", Algorithm 1 and the official code `cagrad(grads, alpha, rescale)`).

    w* = argmin_{w in simplex} g_w . g0 + c |g0| |g_w| (eq. 4's dual), g0 = mean gradient; the
    update is d = g0 + (c |g0| / |g_w*|) g_w*, divided by (1 + c^2) for rescale=1 (the official
    default and LibMTL's), by (1 + c) for rescale=2, not at all for rescale=0 (torchjd). As weights
    on the task gradients: (1/T + c |g0| / |g_w*| w*) / rescale_factor. When |g_w*| vanishes (0 in
    the hull, so g0 = 0 as well) the correction term is dropped (the official code divides by
    |g_w| + 1e-8; torchjd returns zeros) and the mean remains.
    """
    k, _ = _solvers.normalized_gram(gram.astype(jnp.float32))
    t = k.shape[0]
    w = _solvers.cagrad_inner_weights(k, c, num_iters)
    b = jnp.full((t,), 1.0 / t, jnp.float32)
    g0_norm = jnp.sqrt(jnp.maximum(jnp.dot(b, k @ b), 0.0))
    gw_norm = jnp.sqrt(jnp.maximum(jnp.dot(w, k @ w), 0.0))
    ok = gw_norm > 1e-6  # relative to the unit-scale K
    lam = jnp.where(ok, c * g0_norm / jnp.where(ok, gw_norm, 1.0), 0.0)
    factor = {0: 1.0, 1: 1.0 + c**2, 2: 1.0 + c}[rescale]
    return (b + lam * w) / factor


def cagrad(c: float = 0.4, rescale: int = 1, num_iters: int = 300) -> GradientCombination:
    """CAGrad; c = 0.4 is the official code's value for NYUv2 and Cityscapes (LibMTL's default is
    0.5, torchjd has none), rescale = 1 the official and LibMTL default."""
    if c < 0:
        raise ValueError(f"cagrad option c must be >= 0, got {c}")
    if rescale not in CAGRAD_RESCALES:
        raise ValueError(f"cagrad option rescale must be one of {CAGRAD_RESCALES}, got {rescale!r}")
    return _from_weights(lambda k, key: cagrad_weights(k, c, rescale, num_iters))


# ---------------------------------------------------------------------------------------------
# MGDA

MGDA_NORMALIZATIONS = ("none", "l2")


def mgda_weights(gram: jax.Array, normalization: str = "none", num_iters: int = 200):
    """MGDA-UB's weights (Sener & Koltun 2018, "Multi-Task Learning as Multi-Objective
    Optimization", eq. 3): the min-norm point sum_i w_i g_i of the convex hull, w on the simplex.
    normalization="l2" first divides each gradient by its norm (the paper's section 3.2 / LibMTL
    mgda_gn="l2"; the "loss" modes need the losses, which a combination does not see), and the
    returned weights then apply to the original gradients: w_i / |g_i|. Solved by projected
    gradient descent (see `_solvers.min_norm_weights`) instead of Frank-Wolfe, which the paper
    and torchjd stop at a tolerance; here the KKT conditions hold to float32 precision."""
    k = gram.astype(jnp.float32)
    if normalization == "l2":
        n = jnp.sqrt(jnp.maximum(jnp.diagonal(k), 0.0))
        inv = jnp.where(n > jnp.finfo(jnp.float32).tiny, 1.0 / jnp.where(n > 0, n, 1.0), 0.0)
        return _solvers.min_norm_weights(k * inv[:, None] * inv[None, :], num_iters) * inv
    return _solvers.min_norm_weights(k, num_iters)


def mgda(normalization: str = "none", num_iters: int = 200) -> GradientCombination:
    if normalization not in MGDA_NORMALIZATIONS:
        raise ValueError(
            f"mgda option normalization must be one of {MGDA_NORMALIZATIONS}, got {normalization!r}"
        )
    return _from_weights(lambda k, key: mgda_weights(k, normalization, num_iters))


# ---------------------------------------------------------------------------------------------
# IMTL-G


def imtl_g_weights(gram: jax.Array) -> jax.Array:
    """IMTL-G's weights (Liu et al. 2021, "Towards Impartial Multi-task Learning", ICLR, eq. 7 /
    Theorem 1): the combination g = sum_i a_i g_i, sum_i a_i = 1, whose projections on every unit
    gradient u_i = g_i / |g_i| are equal. g . u_i = (K a)_i / |g_i| = const gives
    a = K^+ |g| / sum(K^+ |g|) (torchjd's form, which also covers linearly dependent gradients;
    equal to the paper's (T-1) x (T-1) closed form when K is invertible). Computed on K scaled to
    unit mean diagonal (a is scale invariant). If the weights' sum vanishes (e.g. all gradients
    zero) the weights are zero, as in torchjd."""
    k, _ = _solvers.normalized_gram(gram.astype(jnp.float32))
    d = jnp.sqrt(jnp.maximum(jnp.diagonal(k), 0.0))
    v = jnp.linalg.pinv(k, hermitian=True) @ d
    s = jnp.sum(v)
    ok = jnp.abs(s) > 1e-6
    return jnp.where(ok, v / jnp.where(ok, s, 1.0), 0.0)


def imtl_g() -> GradientCombination:
    return _from_weights(lambda k, key: imtl_g_weights(k))


# ---------------------------------------------------------------------------------------------
# Nash-MTL


def nash_mtl(
    max_norm: float = 1.0,
    update_weights_every: int = 1,
    num_iters: int = 30,
) -> GradientCombination:
    """Nash-MTL (Navon et al. 2022, "Multi-Task Learning as a Bargaining Game", Algorithm 1).

    alpha solves K alpha = 1 / alpha, alpha > 0 (eq. 2; the fixed point the official code's CCP
    reaches, see `_solvers.nash_weights`), by damped Newton warm-started from the previous
    solution like the official CCP loop; |alpha @ G| = sqrt(T) before clipping. It is recomputed
    every `update_weights_every` steps and reused in between (official option). If
    |alpha @ G| > max_norm the weights are scaled down to max_norm (torchjd's form of the official
    clip_grad_norm_ on the shared parameters; 0 turns it off).
    """
    if update_weights_every < 1:
        raise ValueError(
            f"nash_mtl option update_weights_every must be >= 1, got {update_weights_every}"
        )
    if max_norm < 0:
        raise ValueError(f"nash_mtl option max_norm must be >= 0, got {max_norm}")

    def update(task_grads, state, key):
        g = task_grads.astype(jnp.float32)
        k = gram_matrix(g)
        alpha = jax.lax.cond(
            state.step % update_weights_every == 0,
            lambda: _solvers.nash_weights(k, state.alpha, num_iters),
            lambda: state.alpha,
        )
        weights = alpha
        if max_norm > 0:
            norm = jnp.sqrt(jnp.maximum(jnp.dot(alpha, k @ alpha), 0.0))
            weights = jnp.where(norm > max_norm, alpha * (max_norm / norm), alpha)
        combined = jnp.matmul(weights, g, precision=_HI)
        return combined, CombinationState(step=state.step + 1, alpha=alpha), weights

    return GradientCombination(init=_init, update=update)


# ---------------------------------------------------------------------------------------------
# config and pytrees


def gradient_from_config(name: str, **options: Any) -> GradientCombination:
    """The combination called `name` (one of GRADIENT_METHODS) with its options:
    sum, mean, pcgrad, imtl_g: none; cagrad: c=0.4, rescale=1, num_iters=300;
    mgda: normalization="none", num_iters=200; nash_mtl: max_norm=1.0, update_weights_every=1,
    num_iters=30. Unknown names or options raise ValueError."""
    allowed = {
        "sum": (),
        "mean": (),
        "pcgrad": (),
        "imtl_g": (),
        "cagrad": ("c", "rescale", "num_iters"),
        "mgda": ("normalization", "num_iters"),
        "nash_mtl": ("max_norm", "update_weights_every", "num_iters"),
    }
    check_method_options("gradient combination", name, options, allowed)
    match name:
        case "sum":
            return sum_combination()
        case "mean":
            return mean_combination()
        case "pcgrad":
            return pcgrad()
        case "imtl_g":
            return imtl_g()
        case "cagrad":
            return cagrad(**options)
        case "mgda":
            return mgda(**options)
        case "nash_mtl":
            return nash_mtl(**options)
    raise AssertionError(name)


def combine_trees(
    combination: GradientCombination, task_grad_trees: Any, state: CombinationState, key: jax.Array
) -> tuple[Any, CombinationState, jax.Array]:
    """Combine per-task gradient pytrees: every leaf has a leading task axis T (from `jax.vmap`
    over tasks, or `jax.tree.map(lambda *g: jnp.stack(g), *per_task_trees)`). The leaves are
    raveled in float32 into G f32[T, P], combined, and unraveled to the original shapes and leaf
    dtypes. Returns (combined tree, new state, weights f32[T])."""
    leaves, treedef = jax.tree.flatten(task_grad_trees)
    if not leaves:
        raise ValueError("combine_trees needs at least one gradient leaf")
    t = leaves[0].shape[0]
    for leaf in leaves:
        if leaf.shape[:1] != (t,):
            raise ValueError(f"every leaf needs the same leading task axis {t}, got {leaf.shape}")
    g = jnp.concatenate([leaf.reshape(t, -1).astype(jnp.float32) for leaf in leaves], axis=1)
    combined, state, weights = combination.update(g, state, key)
    out, start = [], 0
    for leaf in leaves:
        size = leaf[0].size
        out.append(combined[start : start + size].reshape(leaf.shape[1:]).astype(leaf.dtype))
        start += size
    return jax.tree.unflatten(treedef, out), state, weights
