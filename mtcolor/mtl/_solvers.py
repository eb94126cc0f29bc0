"""Small, deterministic, jittable solvers on T x T Gram matrices (T = number of tasks).

Everything here works on float32 arrays of shape [T] / [T, T] with fixed iteration counts
(`jax.lax.fori_loop`), so it compiles once, runs the same on every backend and never branches on
data in Python. T is small (2-10), so each iteration costs a handful of T x T products; what
matters is robustness (no NaN for zero, identical or opposite gradients), not speed.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

# Candidate step sizes of the projected-gradient search, for a Gram matrix scaled to a mean
# diagonal of 1 (so its largest eigenvalue is at most T). Small steps (down to 2^-30) serve the
# curved directions, large ones (up to 2^24) the nearly flat directions of a task whose gradient
# is orders of magnitude smaller than the others' (its weight must move by O(1) although its
# partial derivative is tiny); the projection keeps every trial point feasible.
# numpy, not jnp: a jnp constant would start JAX's backends at import (before jax.distributed).
_STEPS = 2.0 ** -np.arange(-24, 31, dtype=np.float32)


def project_simplex(v: jax.Array) -> jax.Array:
    """Euclidean projection of v onto {x >= 0, sum(x) = 1} (Duchi et al. 2008, fig. 1: sort,
    find the largest k with u_k > (cumsum_k - 1) / k, shift and clip)."""
    t = v.shape[-1]
    # The projection commutes with adding a constant to every entry; shifting the largest entry to
    # 0 keeps the entries that matter (within ~1 of the largest) exact in float32 even after a
    # huge gradient step (x - 2^24 g), where cumsum(u) - 1 would round the 1 away.
    v = v - jnp.max(v)
    u = jnp.sort(v)[::-1]
    css = jnp.cumsum(u) - 1.0
    k = jnp.arange(1, t + 1, dtype=v.dtype)
    active = u - css / k > 0
    rho = jnp.max(jnp.where(active, k, 1.0))
    theta = jnp.take(css, rho.astype(jnp.int32) - 1) / rho
    return jnp.maximum(v - theta, 0.0)


def normalized_gram(gram: jax.Array) -> tuple[jax.Array, jax.Array]:
    """gram / mean(diag(gram)) and that scale; a zero Gram matrix gets scale 1 (stays zero).

    The solvers' weights are scale invariant (or made so), so working on a unit-scale matrix keeps
    step sizes and tolerances meaningful for gradients of any magnitude (1e-8 or 1e4)."""
    scale = jnp.mean(jnp.diagonal(gram))
    scale = jnp.where(scale > jnp.finfo(jnp.float32).tiny, scale, 1.0)
    return gram / scale, scale


def simplex_descent(
    grad_fn: Callable[[jax.Array], jax.Array],
    decrease_fn: Callable[[jax.Array, jax.Array], jax.Array],
    x0: jax.Array,
    num_iters: int,
) -> jax.Array:
    """Minimise a convex function over the probability simplex by projected gradient descent.

    Each iteration tries every step size in `_STEPS` at once (vectorised, so no data-dependent
    loop), projects each trial point, and keeps the one with the largest decrease; a step that does
    not decrease the objective is rejected. The objective enters only through
    `decrease_fn(x, d) = f(x + d) - f(x)`, which each caller writes in a cancellation-free form
    (e.g. 2 d.Ax + d.Ad for x.Ax): comparing f(x + d) with f(x) in float32 would stall about
    sqrt(eps) ~ 3e-4 away from the minimiser, the exact difference does not.
    """

    def body(_, x):
        g = grad_fn(x)
        trials = jax.vmap(lambda s: project_simplex(x - s * g))(_STEPS)
        deltas = jax.vmap(lambda y: decrease_fn(x, y - x))(trials)
        best = jnp.argmin(deltas)
        return jnp.where(deltas[best] < 0, trials[best], x)

    return jax.lax.fori_loop(0, num_iters, body, x0)


def min_norm_weights(gram: jax.Array, num_iters: int = 200) -> jax.Array:
    """argmin_{w in simplex} w^T K w: the weights of the min-norm point of the convex hull of the
    gradients (MGDA, Sener & Koltun 2018, eq. 3 / Desideri 2012). Starts from the uniform point,
    like Frank-Wolfe in the paper's Algorithm 2."""
    k, _ = normalized_gram(gram)
    t = gram.shape[0]

    def decrease(x, d):
        return 2.0 * jnp.dot(d, k @ x) + jnp.dot(d, k @ d)

    x = simplex_descent(lambda x: 2.0 * (k @ x), decrease, jnp.full((t,), 1.0 / t), num_iters)
    # Polish: projected gradient is slow when 0 is nearly in the hull (conflicting gradients);
    # on the support S it found, the minimiser solves the KKT system [2K_SS 1; 1^T 0] [x; mu] =
    # [0; 1] exactly (pinv: K_SS may be singular). Accepted only if feasible and not worse.
    support = x > 1e-7
    m = jnp.zeros((t + 1, t + 1))
    m = m.at[:t, :t].set(jnp.where(support[:, None] & support[None, :], 2.0 * k, 0.0))
    m = m.at[:t, :t].add(jnp.diag(jnp.where(support, 0.0, 1.0)))
    m = m.at[:t, t].set(support.astype(k.dtype)).at[t, :t].set(support.astype(k.dtype))
    rhs = jnp.zeros((t + 1,)).at[t].set(1.0)
    y = (jnp.linalg.pinv(m, hermitian=True) @ rhs)[:t]
    ok = jnp.all(y >= -1e-6) & (jnp.abs(jnp.sum(y) - 1.0) < 1e-4) & jnp.all(jnp.isfinite(y))
    y = jnp.maximum(y, 0.0)
    y = y / jnp.where(jnp.sum(y) > 0, jnp.sum(y), 1.0)
    ok = ok & (decrease(x, y - x) <= 0)
    return jnp.where(ok, y, x)


def cagrad_inner_weights(gram: jax.Array, c: float, num_iters: int = 300) -> jax.Array:
    """argmin_{w in simplex} w^T K b + c ||g0|| sqrt(w^T K w), b = 1/T, ||g0||^2 = b^T K b: the
    dual problem of CAGrad (Liu et al. 2021, eq. 4 and the official `cagrad`), on a unit-scale K
    (the minimiser is invariant to scaling K). The official code adds 1e-8 inside the square root
    (absolute, so scale dependent); here 1e-12 relative to the unit-scale K, only to keep the
    gradient finite when 0 is in the hull."""
    k, _ = normalized_gram(gram)
    t = gram.shape[0]
    b = jnp.full((t,), 1.0 / t)
    kb = k @ b
    phi = c * jnp.sqrt(jnp.maximum(jnp.dot(b, kb), 0.0))
    eps = 1e-12

    def q(x):
        return jnp.maximum(jnp.dot(x, k @ x), 0.0) + eps

    def grad(x):
        return kb + phi * (k @ x) / jnp.sqrt(q(x))

    def decrease(x, d):
        # sqrt(q(y)) - sqrt(q(x)) = (q(y) - q(x)) / (sqrt(q(y)) + sqrt(q(x))), q(y) - q(x) exact.
        dq = 2.0 * jnp.dot(d, k @ x) + jnp.dot(d, k @ d)
        return jnp.dot(d, kb) + phi * dq / (jnp.sqrt(q(x + d)) + jnp.sqrt(q(x)))

    return simplex_descent(grad, decrease, b, num_iters)


def nash_weights(
    gram: jax.Array, alpha0: jax.Array, num_iters: int = 30, ridge: float = 1e-6
) -> jax.Array:
    """The Nash bargaining solution alpha > 0 of K alpha = 1 / alpha (Navon et al. 2022, eq. 2 /
    Claim 3.1: G^T G alpha = 1 / alpha), K the raw Gram matrix.

    The official code (and torchjd) hands cvxpy K_n = K / ||K||_F for conditioning, but its
    constraint log(alpha ||K||_F) + log((K_n alpha)_i) >= 0 makes the fixed point that of the raw
    K; so here beta solves K_n beta = 1 / beta and alpha = beta / sqrt(||K||_F). Consequence
    (the paper's): |alpha @ G|^2 = alpha^T K alpha = T, whatever the gradients' scale.

    K_n beta = 1/beta is the stationarity condition of the strictly convex, self-concordant
    F(beta) = 1/2 beta^T K_n beta - sum(log beta), so damped Newton (Nesterov 2004, sec. 4.1.5:
    step 1/(1 + lambda) while the Newton decrement lambda >= 1/4, full steps after) converges
    globally from any positive start and quadratically near the solution, and never leaves
    beta > 0. ridge * diag(K_n) (+ 1e-12) is added to K_n's diagonal so that a solution exists
    when K is singular in a positive direction (two opposite gradients, where F is unbounded below,
    or zero gradients); it moves a well-conditioned solution by O(ridge). `alpha0` (the previous
    solution) warm-starts the iteration, as the official CCP loop does.
    """
    norm = jnp.linalg.norm(gram)
    norm = jnp.where(norm > jnp.finfo(jnp.float32).tiny, norm, 1.0)
    k = gram / norm
    # Relative to each diagonal entry, so that a task whose gradient is 100x smaller than the
    # others' is not swamped; the absolute floor covers zero gradients.
    k = k + jnp.diag(ridge * jnp.diagonal(k) + 1e-12)
    beta0 = alpha0 * jnp.sqrt(norm)
    # Without a previous solution (alpha0 not positive, e.g. the zeros of a fresh state) start at
    # 1 / sqrt(diag K_n), the solution for orthogonal gradients: Newton's damped phase is slow
    # for gradients of very different scales when started from ones.
    cold = 1.0 / jnp.sqrt(jnp.diagonal(k))
    beta0 = jnp.where(jnp.all(beta0 > 0) & jnp.all(jnp.isfinite(beta0)), beta0, cold)

    def body(_, a):
        g = k @ a - 1.0 / a
        h = k + jnp.diag(1.0 / (a * a))
        step = jnp.linalg.solve(h, g)
        lam = jnp.sqrt(jnp.maximum(jnp.dot(g, step), 0.0))
        t_step = jnp.where(lam < 0.25, 1.0, 1.0 / (1.0 + lam))
        new = a - t_step * step
        # A full step is safe for lambda < 1 in exact arithmetic; guard float32 all the same.
        return jnp.where(jnp.all(new > 0) & jnp.all(jnp.isfinite(new)), new, a)

    return jax.lax.fori_loop(0, num_iters, body, beta0) / jnp.sqrt(norm)
