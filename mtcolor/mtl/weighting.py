"""Loss weightings: per-task scalar weights of the task losses, as pure functions over state.

Every method is a `LossWeighting(init, weights, task_terms, update)`:

    state = weighting.init()
    terms = weighting.task_terms(state, losses)   # f32[T]; jax.grad of terms.sum() trains the model
    ...model update...
    state = weighting.update(state, StepStats(losses, shared_grad_norms, losses_after, epoch_end))
    log(weighting.weights(state))                 # f32[T], stop_gradient

`losses` are the UNWEIGHTED task losses (e.g. L1 and cross-entropy); the base weights (e.g. the
paper's L1 x100, classification x10) are an argument of every method, and every method's weights
start at them. Learned parameters (uncertainty's log-variances, gradnorm's weights, famo's logits)
live in the state and are trained inside `update` by their own optax optimizer, so the model's
optimizer never sees them. States are NamedTuples of arrays (and optax states), so they jit, sit
in a train state and checkpoint with orbax.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from mtcolor.mtl.method_options import check_method_options

WEIGHTING_METHODS = ("fixed", "uncertainty", "dwa", "gradnorm", "famo")


class StepStats(NamedTuple):
    losses: jax.Array  # f32[T] unweighted task losses of this step (before the update)
    shared_grad_norms: jax.Array | None = None  # f32[T] |d loss_i / d W_last_shared| (gradnorm)
    losses_after: jax.Array | None = None  # f32[T] same batch's losses after the update (famo)
    epoch_end: jax.Array | bool = False  # True at the last step of an epoch (dwa)


class LossWeighting(NamedTuple):
    init: Callable[[], Any]
    weights: Callable[[Any], jax.Array]
    task_terms: Callable[[Any, jax.Array], jax.Array]
    update: Callable[[Any, StepStats], Any]


def _base(num_tasks: int, base_weights: Sequence[float] | jax.Array | None) -> jax.Array:
    if base_weights is None:
        return jnp.ones((num_tasks,), jnp.float32)
    base = jnp.asarray(base_weights, jnp.float32).reshape(-1)
    if base.shape != (num_tasks,):
        raise ValueError(f"base_weights has {base.shape[0]} entries for {num_tasks} tasks")
    return base


def _f32(x: jax.Array) -> jax.Array:
    return jnp.asarray(x, jnp.float32)


# ---------------------------------------------------------------------------------------------
# fixed


class FixedState(NamedTuple):
    step: jax.Array  # int32
    weights: jax.Array  # f32[T]


def fixed(num_tasks: int, base_weights=None) -> LossWeighting:
    """Constant weights: the paper's weighted sum (section III-C: L1 x100, classification x10)."""
    base = _base(num_tasks, base_weights)

    def init():
        return FixedState(step=jnp.zeros((), jnp.int32), weights=base)

    def weights(state):
        return jax.lax.stop_gradient(state.weights)

    def task_terms(state, losses):
        return weights(state) * _f32(losses)

    def update(state, stats):
        return state._replace(step=state.step + 1)

    return LossWeighting(init, weights, task_terms, update)


# ---------------------------------------------------------------------------------------------
# uncertainty


class UncertaintyState(NamedTuple):
    step: jax.Array
    log_var: jax.Array  # f32[T] s_i = log sigma_i^2
    opt_state: Any


def uncertainty(
    num_tasks: int, base_weights=None, lr: float = 1e-3, init_log_var: float | None = None
) -> LossWeighting:
    """Homoscedastic uncertainty weighting (Kendall, Gal & Cipolla 2018, "Multi-Task Learning
    Using Uncertainty to Weigh Losses for Scene Geometry and Semantics", eq. 7 with s = log
    sigma^2, i.e. 1/(2 sigma^2) L + log sigma).

    term_i = L_i / (2 exp(s_i)) + s_i / 2, the form LibMTL's UW uses for every task (Kendall's
    classification form 1/sigma^2 L + log sigma differs by a factor 2 in the weight; one form for
    all tasks keeps the weights comparable, and is what the common reference implements). The
    weight of L_i is 1 / (2 exp(s_i)). s starts at -log(2 b_i), so the weights start at the base
    weights b (b = 1: s = -0.69; LibMTL starts at s = -0.5, pass init_log_var=-0.5 to match).
    s is trained by Adam(lr) on the gradient of sum(term) w.r.t. s, 1/2 - L_i / (2 exp(s_i)) (in
    LibMTL s is a model parameter under the model's optimizer). The optimum exp(s_i) = L_i gives
    weight 1 / (2 L_i), whatever the base weights.
    """
    base = _base(num_tasks, base_weights)
    if init_log_var is None:
        s0 = -jnp.log(2.0 * base)
    else:
        s0 = jnp.full((num_tasks,), init_log_var, jnp.float32)
    opt = optax.adam(lr)

    def init():
        return UncertaintyState(step=jnp.zeros((), jnp.int32), log_var=s0, opt_state=opt.init(s0))

    def weights(state):
        return jax.lax.stop_gradient(0.5 * jnp.exp(-state.log_var))

    def task_terms(state, losses):
        s = jax.lax.stop_gradient(state.log_var)
        return _f32(losses) * 0.5 * jnp.exp(-s) + 0.5 * s

    def update(state, stats):
        losses = jax.lax.stop_gradient(_f32(stats.losses))
        grad = jax.grad(lambda s: jnp.sum(losses * 0.5 * jnp.exp(-s) + 0.5 * s))(state.log_var)
        upd, opt_state = opt.update(grad, state.opt_state, state.log_var)
        return UncertaintyState(state.step + 1, optax.apply_updates(state.log_var, upd), opt_state)

    return LossWeighting(init, weights, task_terms, update)


# ---------------------------------------------------------------------------------------------
# DWA


class DWAState(NamedTuple):
    step: jax.Array
    epoch: jax.Array  # int32: completed epochs
    loss_sum: jax.Array  # f32[T] running sum of this epoch's losses
    count: jax.Array  # f32 number of steps in the running sum
    avg_last: jax.Array  # f32[T] average loss of the last completed epoch
    avg_before: jax.Array  # f32[T] ... of the one before


def dwa_factors(avg_last: jax.Array, avg_before: jax.Array, temperature: float) -> jax.Array:
    """T softmax(r / temperature), r_i = avg_last_i / avg_before_i (Liu, Johns & Davison 2019,
    "End-to-End Multi-Task Learning with Attention", eq. 1)."""
    r = avg_last / jnp.where(avg_before != 0, avg_before, 1.0)
    return r.shape[0] * jax.nn.softmax(r / temperature)


def dwa(num_tasks: int, base_weights=None, temperature: float = 2.0) -> LossWeighting:
    """Dynamic Weight Average (Liu, Johns & Davison 2019, eq. 1): weight_i = b_i T
    softmax_i(r / temperature) with r_i the ratio of the epoch-averaged loss of the last two
    epochs, and b_i for the first two epochs (the paper sets the weights to 1 for t = 1, 2).
    As in the official code (lorenmt/mtan) and LibMTL, the averages are over every step of an
    epoch and the weights change only at epoch boundaries (`StepStats.epoch_end`)."""
    base = _base(num_tasks, base_weights)
    zeros = jnp.zeros((num_tasks,), jnp.float32)

    def init():
        return DWAState(
            step=jnp.zeros((), jnp.int32),
            epoch=jnp.zeros((), jnp.int32),
            loss_sum=zeros,
            count=jnp.zeros((), jnp.float32),
            avg_last=zeros,
            avg_before=zeros,
        )

    def weights(state):
        factors = dwa_factors(state.avg_last, state.avg_before, temperature)
        return jax.lax.stop_gradient(base * jnp.where(state.epoch >= 2, factors, 1.0))

    def task_terms(state, losses):
        return weights(state) * _f32(losses)

    def update(state, stats):
        loss_sum = state.loss_sum + jax.lax.stop_gradient(_f32(stats.losses))
        count = state.count + 1.0
        end = jnp.asarray(stats.epoch_end, bool)
        avg = loss_sum / count
        return DWAState(
            step=state.step + 1,
            epoch=state.epoch + end.astype(jnp.int32),
            loss_sum=jnp.where(end, 0.0, loss_sum),
            count=jnp.where(end, 0.0, count),
            avg_last=jnp.where(end, avg, state.avg_last),
            avg_before=jnp.where(end, state.avg_last, state.avg_before),
        )

    return LossWeighting(init, weights, task_terms, update)


# ---------------------------------------------------------------------------------------------
# GradNorm


class GradNormState(NamedTuple):
    step: jax.Array
    w: jax.Array  # f32[T] learned multipliers, sum T
    initial_losses: jax.Array  # f32[T] L_i(0)
    opt_state: Any


def gradnorm_objective(
    weights: jax.Array, grad_norms: jax.Array, loss_ratios: jax.Array, alpha: float
) -> jax.Array:
    """L_grad = sum_i |G_i - mean(G) r_i^alpha| (Chen et al. 2018, "GradNorm", eq. 2), with
    G_i = weights_i * grad_norms_i the norm of the weighted loss's gradient on the shared layer,
    r_i = ratio_i / mean(ratio), ratio_i = L_i(t) / L_i(0). The target mean(G) r^alpha is a
    constant (stop_gradient), as in the paper and LibMTL."""
    g = weights * grad_norms
    r = loss_ratios / jnp.mean(loss_ratios)
    target = jax.lax.stop_gradient(jnp.mean(g) * r**alpha)
    return jnp.sum(jnp.abs(g - target))


def gradnorm(
    num_tasks: int,
    base_weights=None,
    alpha: float = 1.5,
    lr: float = 0.025,
    min_weight: float = 1e-3,
) -> LossWeighting:
    """GradNorm (Chen, Badrinarayanan, Lee & Rabinovich 2018, "GradNorm: Gradient Normalization
    for Adaptive Loss Balancing in Deep Multitask Networks", Algorithm 1).

    weight_i = b_i w_i. w starts at 1 and, after each model update, takes one Adam(lr) step on
    `gradnorm_objective(b w, shared_grad_norms, L(t) / L(0), alpha)`, is clipped at `min_weight`
    (a weight at 0 or below would zero or flip a task) and renormalised to sum(w) = T (the
    paper's "renormalize so that sum_i w_i(t) = T"). `shared_grad_norms` are the norms of the
    UNWEIGHTED task losses' gradients w.r.t. the last shared layer's weights (the paper's W), so
    G_i = b_i w_i |grad L_i|. L(0) is the loss of the first step (the paper's t = 0).
    Deliberate differences from LibMTL's GradNorm (checked in tests/test_mtl_weighting.py only
    through the shared part, `gradnorm_objective` and its gradient): LibMTL parametrises the
    weights as T softmax(p) instead of renormalising, takes the norms on all shared parameters,
    uses the first epoch's average loss as L(0) and starts after one epoch; the paper's lr 0.025
    is for the weights here too.
    """
    base = _base(num_tasks, base_weights)
    opt = optax.adam(lr)
    w0 = jnp.ones((num_tasks,), jnp.float32)

    def init():
        return GradNormState(
            step=jnp.zeros((), jnp.int32),
            w=w0,
            initial_losses=jnp.ones((num_tasks,), jnp.float32),
            opt_state=opt.init(w0),
        )

    def weights(state):
        return jax.lax.stop_gradient(base * state.w)

    def task_terms(state, losses):
        return weights(state) * _f32(losses)

    def update(state, stats):
        if stats.shared_grad_norms is None:
            raise ValueError("gradnorm needs StepStats.shared_grad_norms")
        losses = jax.lax.stop_gradient(_f32(stats.losses))
        norms = jax.lax.stop_gradient(_f32(stats.shared_grad_norms))
        initial = jnp.where(state.step == 0, losses, state.initial_losses)
        ratios = losses / jnp.where(initial != 0, initial, 1.0)
        grad = jax.grad(lambda w: gradnorm_objective(base * w, norms, ratios, alpha))(state.w)
        upd, opt_state = opt.update(grad, state.opt_state, state.w)
        w = jnp.maximum(optax.apply_updates(state.w, upd), min_weight)
        w = num_tasks * w / jnp.sum(w)
        return GradNormState(state.step + 1, w, initial, opt_state)

    return LossWeighting(init, weights, task_terms, update)


# ---------------------------------------------------------------------------------------------
# FAMO


class FAMOState(NamedTuple):
    step: jax.Array
    logits: jax.Array  # f32[T] z; the task distribution is softmax(z)
    opt_state: Any


def famo(
    num_tasks: int,
    base_weights=None,
    lr: float = 0.025,
    gamma: float = 1e-3,
    min_losses: Sequence[float] | None = None,
    eps: float = 1e-8,
) -> LossWeighting:
    """FAMO (Liu, Liang, Stone & Liu 2023, "FAMO: Fast Adaptive Multitask Optimization",
    Algorithm 1 and the official code Cranial-XIX/FAMO `FAMO.get_weighted_loss` / `update`).

    The objective is sum_i z_i / c log(L_i - m_i + eps) with z = softmax(logits), m the minimum
    losses (zeros), c = sum_j z_j / (L_j - m_j + eps) a constant (stop_gradient): the gradient is
    sum_i z_i / (c (L_i - m_i)) grad L_i, a log-loss weighting whose multipliers sum to 1. After the
    model update, with delta_i = log(L_i - m_i + eps) - log(L_i^after - m_i + eps) (the log-loss
    decrease), the logits take one step of Adam(lr, coupled L2 weight decay gamma, i.e. torch's
    Adam(weight_decay=gamma)) along J_softmax(z)^T delta (official `update`, eq. 6).

    Base weights: the log makes each task's scale irrelevant, so b enters twice, as in the
    official code for b = 1 up to a constant: the logits start at log(b) - mean(log b) (softmax(z)
    proportional to b; official: zeros) and the objective is multiplied by sum(b), so that at
    equal losses the multipliers of the raw losses start at exactly b (official: sum to 1; a
    constant factor T for b = 1, absorbed by the learning rate). `weights(state)` returns
    sum(b) softmax(z); the actual
    multiplier of the raw loss L_i at a step is weights_i / (c (L_i - m_i + eps)) (`task_terms`),
    c computed from softmax(z).
    gamma: the official code's default is 1e-5 and its experiments use 1e-3 to 1e-2 (the paper's
    section 5 reports a decay of 1e-3 on NYUv2); 1e-3 here.
    """
    base = _base(num_tasks, base_weights)
    total = jnp.sum(base)
    m = jnp.zeros((num_tasks,), jnp.float32) if min_losses is None else _base(num_tasks, min_losses)
    opt = optax.chain(optax.add_decayed_weights(gamma), optax.adam(lr))
    # Centred so that b = 1 gives the official zeros (the weight decay is not shift invariant).
    z0 = jnp.log(base) - jnp.mean(jnp.log(base))

    def init():
        return FAMOState(step=jnp.zeros((), jnp.int32), logits=z0, opt_state=opt.init(z0))

    def weights(state):
        return jax.lax.stop_gradient(total * jax.nn.softmax(state.logits))

    def task_terms(state, losses):
        z = jax.lax.stop_gradient(jax.nn.softmax(state.logits))
        d = _f32(losses) - m + eps
        # c from the unscaled distribution, so that sum(b) survives as an overall factor.
        c = jax.lax.stop_gradient(jnp.sum(z / d))
        return total * z / c * jnp.log(d)

    def update(state, stats):
        if stats.losses_after is None:
            raise ValueError("famo needs StepStats.losses_after")
        before = jax.lax.stop_gradient(_f32(stats.losses))
        after = jax.lax.stop_gradient(_f32(stats.losses_after))
        delta = jnp.log(before - m + eps) - jnp.log(after - m + eps)
        _, vjp = jax.vjp(jax.nn.softmax, state.logits)
        (grad,) = vjp(delta)
        upd, opt_state = opt.update(grad, state.opt_state, state.logits)
        return FAMOState(state.step + 1, optax.apply_updates(state.logits, upd), opt_state)

    return LossWeighting(init, weights, task_terms, update)


# ---------------------------------------------------------------------------------------------
# config

_OPTIONS = {
    "fixed": (),
    "uncertainty": ("lr", "init_log_var"),
    "dwa": ("temperature",),
    "gradnorm": ("alpha", "lr", "min_weight"),
    "famo": ("lr", "gamma", "min_losses", "eps"),
}


def weighting_from_config(
    name: str, num_tasks: int, base_weights=None, **options: Any
) -> LossWeighting:
    """The weighting called `name` (one of WEIGHTING_METHODS) for `num_tasks` tasks:
    fixed: no options; uncertainty: lr=1e-3, init_log_var=None (from the base weights);
    dwa: temperature=2.0; gradnorm: alpha=1.5, lr=0.025, min_weight=1e-3;
    famo: lr=0.025, gamma=1e-3, min_losses=None (zeros), eps=1e-8.
    Unknown names or options raise ValueError."""
    check_method_options("loss weighting", name, options, _OPTIONS)
    match name:
        case "fixed":
            return fixed(num_tasks, base_weights)
        case "uncertainty":
            return uncertainty(num_tasks, base_weights, **options)
        case "dwa":
            return dwa(num_tasks, base_weights, **options)
        case "gradnorm":
            return gradnorm(num_tasks, base_weights, **options)
        case "famo":
            return famo(num_tasks, base_weights, **options)
    raise AssertionError(name)
