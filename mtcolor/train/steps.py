"""Pure training and evaluation steps (no Python side effects; jit them, see ``jit_steps``).

One cGAN iteration follows the reference tutorial (paper III-D): the generator colorizes the batch
once, D is updated on D(L, fake) vs 0 and D(L, ab) vs 1 (two separate forward passes, fake first,
loss 0.5 * (fake + real)), then G is updated on the same fake through the updated D.
``train_step`` does exactly that: one generator forward (``jax.vjp``, whose pullback later carries
G's loss gradient back through the generator), the D update on its output, then the G losses of
the same outputs through the updated D. ``discriminator_step`` and ``generator_step`` are the same
two updates as separate pure functions, each running its own forward with the same dropout key and
the same (not yet updated) G parameters, so composed they give ``train_step``'s result (tested);
``generator_step`` alone is the update while D is not training (early stopping stopped it).

Which state each step changes:
  discriminator_step: D params, D BatchNorm statistics, D optimizer state. G untouched (its
    forward pass for the fake runs in train mode but its BN updates are discarded).
  generator_step / classifier_step: model params, model BN statistics, model optimizer state and
    ``step``. D runs in train mode (batch statistics, as PyTorch's D stays in train mode) but its
    running-statistics updates are discarded.
While the backbone is frozen its params are copied through unchanged (bitwise) and, unless
``update_frozen_bn_stats``, its BatchNorm runs on running statistics (``backbone_train=False``).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

from mtcolor import mtl
from mtcolor import tasks as tasks_lib
from mtcolor.precision import at_least_float32
from mtcolor.tasks import losses
from mtcolor.train import metrics as metrics_lib
from mtcolor.train import optim
from mtcolor.train import state as state_lib
from mtcolor.train.state import DISCRIMINATOR, MODEL, TrainState

BACKBONE = optim.BACKBONE


def iteration_rng(state: TrainState) -> jax.Array:
    return jax.random.fold_in(state.rng, state.step)


def _stored_like(new_stats, old_stats):
    """New BatchNorm statistics in the dtypes the state stores. flax's update mixes the stored
    float32 statistics with the batch's in the compute dtype, so a float64 model would return
    float64 statistics: the next step would then see other input types and compile the whole
    step again (and evaluation too), and the checkpoint would change dtype mid-run."""
    return jax.tree.map(lambda new, old: new.astype(old.dtype), new_stats, old_stats)


def _apply_model(state: TrainState, params, batch_stats, L, *, train: bool, rng=None):
    """Model forward -> ({task name: output}, new_batch_stats)."""
    variables = {"params": params, "batch_stats": batch_stats}
    if not train:
        return state.model.apply(variables, L, train=False), batch_stats
    out, mutated = state.model.apply(
        variables,
        L,
        train=True,
        backbone_train=state.optimizer.backbone_bn_train,
        rngs={"dropout": rng},
        mutable=["batch_stats"],
    )
    return out, _stored_like(mutated["batch_stats"], batch_stats)


def _apply_discriminator(state: TrainState, params, batch_stats, x, *, train: bool):
    """Discriminator forward on its input (the adversarial task's ``critic_input``)."""
    variables = {"params": params, "batch_stats": batch_stats}
    if not train:
        return state.discriminator.apply(variables, x, train=False), batch_stats
    logits, mutated = state.discriminator.apply(variables, x, train=True, mutable=["batch_stats"])
    return logits, _stored_like(mutated["batch_stats"], batch_stats)


def _mean_sigmoid(logits):
    return jax.nn.sigmoid(at_least_float32(logits)).mean()


def discriminator_step(state: TrainState, batch, rng):
    """One D update. Returns (state, metrics: loss_d, loss_d_real, loss_d_fake, d_real, d_fake)."""
    _check_adversarial(state)
    outputs, _ = _apply_model(
        state, state.params[MODEL], state.batch_stats[MODEL], batch["L"], train=True, rng=rng
    )
    return _update_discriminator(state, batch, outputs)


def _check_adversarial(state: TrainState) -> None:
    if state.objective.adversarial_task is None or state.discriminator is None:
        raise ValueError(f"the {state.objective.experiment} experiment has no discriminator")


def _update_discriminator(state: TrainState, batch, outputs):
    """The D update on the generator's ``outputs`` ({task name: output}) of this batch."""
    task = state.objective.adversarial_task
    fake = task.critic_input(batch, jax.lax.stop_gradient(outputs[task.name]))
    real = task.critic_input(batch, task.target(batch))
    mode = task.adversary.gan_mode

    def loss_fn(d_params):
        stats = state.batch_stats[DISCRIMINATOR]
        fake_logits, stats = _apply_discriminator(state, d_params, stats, fake, train=True)
        real_logits, stats = _apply_discriminator(state, d_params, stats, real, train=True)
        loss_d, loss_real, loss_fake = losses.discriminator_loss(real_logits, fake_logits, mode)
        metrics = {
            "loss_d": loss_d,
            "loss_d_real": loss_real,
            "loss_d_fake": loss_fake,
            "d_real": _mean_sigmoid(real_logits),
            "d_fake": _mean_sigmoid(fake_logits),
        }
        return loss_d, (stats, metrics)

    grads, (new_stats, metrics) = jax.grad(loss_fn, has_aux=True)(state.params[DISCRIMINATOR])
    tx = optim.discriminator_tx(state.optimizer)
    updates, new_opt = tx.update(grads, state.opt_state[DISCRIMINATOR], state.params[DISCRIMINATOR])
    new_params = optax.apply_updates(state.params[DISCRIMINATOR], updates)
    state = state.replace(
        params={**state.params, DISCRIMINATOR: new_params},
        batch_stats={**state.batch_stats, DISCRIMINATOR: new_stats},
        opt_state={**state.opt_state, DISCRIMINATOR: new_opt},
    )
    return state, metrics


def _task_terms(task, outputs: dict, batch: dict, critic, *, train: bool) -> dict:
    """A task's per-example terms ("loss" and its metrics); only a task with an adversary gets
    the critic (the discriminator applied to its output)."""
    return task.per_example(
        outputs[task.name],
        batch,
        train=train,
        critic=critic if task.adversary is not None else None,
    )


def _critic(state: TrainState, *, train: bool):
    """The discriminator as the adversarial task's critic (its BN statistics updates, in train
    mode, are discarded: only the discriminator step changes them)."""
    if state.discriminator is None:
        return None
    d_params, d_stats = state.params[DISCRIMINATOR], state.batch_stats[DISCRIMINATOR]
    return lambda x: _apply_discriminator(state, d_params, d_stats, x, train=train)[0]


class ModelForward(NamedTuple):
    """The model's train-mode forward on one batch, kept for its backward pass."""

    outputs: dict  # {task name: output}
    pullback: Callable  # cotangents of ``outputs`` -> (gradient w.r.t. the model's params,)
    batch_stats: dict  # the model's new BatchNorm statistics


def _model_forward(state: TrainState, batch, rng) -> ModelForward:
    def forward(params):
        return _apply_model(
            state, params, state.batch_stats[MODEL], batch["L"], train=True, rng=rng
        )

    outputs, pullback, new_stats = jax.vjp(forward, state.params[MODEL], has_aux=True)
    return ModelForward(outputs, pullback, new_stats)


def _task_losses(state: TrainState, outputs, batch):
    """The unweighted loss of each task in ``objective.tasks`` order (f32[T]) and metrics, from
    the model's train-mode ``outputs`` (the critic is the current discriminator).

    Each task's per-example terms (mtcolor.tasks) are averaged over the examples that have the
    task (its ``example_mask``): the paper's colorization loss (L1 x100 + GAN) over every example,
    cross-entropy over the labelled ones.
    """
    critic = _critic(state, train=True)
    task_losses = []
    metrics = {}
    for task in state.objective.tasks:
        terms = _task_terms(task, outputs, batch, critic, train=True)
        mask = task.example_mask(batch)
        means = {name: tasks_lib.masked_mean(value, mask) for name, value in terms.items()}
        task_losses.append(means.pop("loss"))
        metrics.update(means)
    return jnp.stack(task_losses), metrics


def _keep_frozen(state: TrainState, new_params, new_stats):
    """While frozen, the backbone subtree is the old one (bitwise), whatever the arithmetic."""
    if not state.optimizer.backbone_frozen:
        return new_params, new_stats
    old_params, old_stats = state.params[MODEL], state.batch_stats[MODEL]
    new_params = {**new_params, BACKBONE: old_params[BACKBONE]}
    if not state.optimizer.update_frozen_bn_stats and BACKBONE in old_stats:
        new_stats = {**new_stats, BACKBONE: old_stats[BACKBONE]}
    return new_params, new_stats


# GradNorm's "last shared layer" (Chen et al. 2018, sec. 3.2): the backbone's last residual block,
# whose output is the bottleneck every task head reads.
LAST_SHARED_BLOCK = "layer4_1"


def task_losses_at(state: TrainState, params, batch, rng):
    """Each task's unweighted training loss (f32[T]) and metrics for the model's ``params``
    (train mode, dropout key ``rng``; BatchNorm statistics updates discarded)."""
    outputs, _ = _apply_model(
        state, params, state.batch_stats[MODEL], batch["L"], train=True, rng=rng
    )
    return _task_losses(state, outputs, batch)


def _model_gradients(state: TrainState, forward: ModelForward, batch, rng):
    """Gradient of the weighted multi-task objective w.r.t. the model's parameters.

    The losses are functions of the forward's outputs, so their gradients w.r.t. the outputs are
    taken first and then pulled back through the model (``forward.pullback``). With the "sum"
    combination (and no GradNorm) that is one backward pass of the weighted sum. Otherwise each
    task's gradient is taken separately (a Jacobian of the T task losses, T pullbacks): the
    backbone's per-task gradients are combined by the configured method (mtcolor.mtl.gradient)
    and every other parameter, which only one task reaches, gets the sum.
    Returns (grads, task_losses f32[T], metrics, new gradient-method state, shared-layer gradient
    norms f32[T] or None).
    """
    obj = state.objective
    weighting, combination = state_lib.mtl_methods(obj)
    weighting_state = state.mtl["weighting"]
    if not obj.needs_task_gradients:

        def weighted_sum(outputs):
            task_losses, metrics = _task_losses(state, outputs, batch)
            terms = weighting.task_terms(weighting_state, task_losses) * _active(state)
            return terms.sum(), (task_losses, metrics)

        output_grads, (task_losses, metrics) = jax.grad(weighted_sum, has_aux=True)(forward.outputs)
        (grads,) = forward.pullback(output_grads)
        return grads, task_losses, metrics, state.mtl["gradient"], None

    task_losses, losses_pullback, metrics = jax.vjp(
        lambda outputs: _task_losses(state, outputs, batch), forward.outputs, has_aux=True
    )
    # One backward pass per task (rows of the identity): leaves get a leading task axis.
    (output_grads,) = jax.vmap(losses_pullback)(
        jnp.eye(task_losses.shape[0], dtype=task_losses.dtype)
    )
    (jacobian,) = jax.vmap(forward.pullback)(output_grads)
    # Each task's term depends on its own loss only, so the weighted per-task gradient is the
    # task's gradient times d term_i / d loss_i (the weight, for every method but uncertainty's
    # and FAMO's nonlinear terms).
    scales = jax.grad(lambda l: (weighting.task_terms(weighting_state, l) * _active(state)).sum())(
        task_losses
    )
    weighted = jax.tree.map(
        lambda g: g * scales.reshape((-1,) + (1,) * (g.ndim - 1)).astype(g.dtype), jacobian
    )
    shared = weighted[BACKBONE]
    combined, gradient_state, _ = mtl.combine_trees(
        combination, shared, state.mtl["gradient"], jax.random.fold_in(rng, 1)
    )
    grads = {name: jax.tree.map(lambda g: g.sum(0), tree) for name, tree in weighted.items()}
    grads[BACKBONE] = combined
    last = jax.tree.leaves(jacobian[BACKBONE].get(LAST_SHARED_BLOCK, jacobian[BACKBONE]))
    norms = jnp.sqrt(
        sum(jnp.sum(jnp.square(g.reshape(g.shape[0], -1).astype(jnp.float32)), 1) for g in last)
    )
    return grads, task_losses, metrics, gradient_state, norms


def _active(state: TrainState) -> jax.Array:
    """1 for the tasks still training, 0 for those early stopping has stopped (f32[T])."""
    es = state.mtl.get("early_stopping")
    if es is None:
        return jnp.ones((len(state.objective.task_names),), jnp.float32)
    return es["active"]


def _freeze_stopped_heads(state: TrainState, updates, new_stats):
    """A stopped task's own parameters get no update (not even Adam's momentum) and its BN
    statistics stay, so its head stays at the best weights early stopping restored."""
    if "early_stopping" not in state.mtl:
        return updates, new_stats
    active = state.mtl["early_stopping"]["active"]
    updates, new_stats = dict(updates), dict(new_stats)
    old_stats = state.batch_stats[MODEL]
    for i, task in enumerate(state.objective.tasks):
        name = task.head_name
        # Default arguments bind this iteration's i (jax.tree.map calls the lambdas right away).
        updates[name] = jax.tree.map(lambda u, i=i: u * active[i].astype(u.dtype), updates[name])
        if name in new_stats:
            new_stats[name] = jax.tree.map(
                lambda new, old, i=i: jnp.where(active[i] > 0, new, old),
                new_stats[name],
                old_stats[name],
            )
    return updates, new_stats


def _update_weighting(state: TrainState, new_model_params, batch, rng, task_losses, norms):
    """The loss weighting's own update after the model's (learned weights, loss history)."""
    obj = state.objective
    weighting, _ = state_lib.mtl_methods(obj)
    losses_after = None
    if obj.weighting == "famo":
        # FAMO (Liu et al. 2023, Alg. 1) compares the same batch's losses before and after the
        # update: one extra forward pass, only for this method.
        losses_after, _ = task_losses_at(state, new_model_params, batch, rng)
        losses_after = jax.lax.stop_gradient(losses_after)
    epoch_end = False
    if obj.steps_per_epoch:
        epoch_end = (state.step + 1) % obj.steps_per_epoch == 0
    stats = mtl.StepStats(
        losses=jax.lax.stop_gradient(task_losses),
        shared_grad_norms=norms,
        losses_after=losses_after,
        epoch_end=epoch_end,
    )
    return weighting.update(state.mtl["weighting"], stats)


def generator_step(state: TrainState, batch, rng):
    """One generator (or classifier) update; increments ``state.step``."""
    return _update_model(state, _model_forward(state, batch, rng), batch, rng)


def _update_model(state: TrainState, forward: ModelForward, batch, rng):
    """The model's update from its forward on this batch (G's losses through the current D)."""
    obj = state.objective
    weighting, _ = state_lib.mtl_methods(obj)
    new_stats = forward.batch_stats
    grads, task_losses, metrics, gradient_state, norms = _model_gradients(
        state, forward, batch, rng
    )
    weights = weighting.weights(state.mtl["weighting"])
    metrics[obj.total_loss_name] = (
        weighting.task_terms(state.mtl["weighting"], task_losses) * _active(state)
    ).sum()
    for name, weight in zip(obj.task_names, weights):
        metrics[f"weight_{name}"] = weight
    tx = optim.model_tx(state.optimizer)
    updates, new_opt = tx.update(grads, state.opt_state[MODEL], state.params[MODEL])
    updates, new_stats = _freeze_stopped_heads(state, updates, new_stats)
    new_params = optax.apply_updates(state.params[MODEL], updates)
    new_params, new_stats = _keep_frozen(state, new_params, new_stats)
    weighting_state = _update_weighting(state, new_params, batch, rng, task_losses, norms)
    state = state.replace(
        step=state.step + 1,
        params={**state.params, MODEL: new_params},
        batch_stats={**state.batch_stats, MODEL: new_stats},
        opt_state={**state.opt_state, MODEL: new_opt},
        mtl={**state.mtl, "weighting": weighting_state, "gradient": gradient_state},
    )
    return state, metrics


def classifier_step(state: TrainState, batch, rng):
    """The single-task classifier's update (cross-entropy only)."""
    if state.discriminator is not None:
        raise ValueError("classifier_step is for the classification experiment")
    return generator_step(state, batch, rng)


def train_step(state: TrainState, batch):
    """A full iteration with one model forward: D on its outputs, then the model through the
    updated D for the cGAN models; the model's update alone for the classifier."""
    rng = iteration_rng(state)
    forward = _model_forward(state, batch, rng)
    metrics = {}
    if state.discriminator is not None:
        _check_adversarial(state)
        state, metrics = _update_discriminator(state, batch, forward.outputs)
    state, model_metrics = _update_model(state, forward, batch, rng)
    return state, {**metrics, **model_metrics}


def eval_step(state: TrainState, batch):
    """(per-example validation values, the eval-mode outputs {task name: output}).

    The values (eval mode everywhere) come with ``mask`` (1 for real rows, 0 for the padding of
    the last batch) and ``mask_<task>`` (mask x the task's example mask) for clu's masked Average
    (mtcolor.train.metrics). The total is each task's per-example loss times its current weight
    (the weighting's ``weights``: learned ones as they are now), over the rows that have every
    task's target. The outputs are :func:`predict`'s, so validation draws its image grids from
    them instead of compiling and running the model a second time (3 s of compiling in the CPU
    demo).
    """
    obj = state.objective
    weighting, _ = state_lib.mtl_methods(obj)
    weights = weighting.weights(state.mtl["weighting"]) * _active(state)
    L = batch["L"]
    outputs, _ = _apply_model(state, state.params[MODEL], state.batch_stats[MODEL], L, train=False)
    critic = _critic(state, train=False)
    mask = batch.get("mask")
    mask = jnp.ones((L.shape[0],), jnp.float32) if mask is None else mask.astype(jnp.float32)
    out = {"mask": mask}
    total = jnp.zeros((L.shape[0],), jnp.float32)
    total_mask = mask
    for i, task in enumerate(obj.tasks):
        terms = _task_terms(task, outputs, batch, critic, train=False)
        example_mask = task.example_mask(batch)
        task_mask = mask * example_mask
        total = total + weights[i] * jnp.where(task_mask > 0, terms.pop("loss"), 0.0)
        total_mask = total_mask * example_mask
        out.update(terms)
        out[metrics_lib.mask_name(task.name)] = task_mask
    out[obj.total_loss_name] = total
    out[metrics_lib.mask_name(obj.total_loss_name)] = total_mask
    return out, outputs


def predict(state: TrainState, L):
    """Eval-mode outputs {task name: output} (for image grids)."""
    outputs, _ = _apply_model(state, state.params[MODEL], state.batch_stats[MODEL], L, train=False)
    return outputs


@functools.cache
def jit_steps(mesh=None):
    """Jitted (train_step, eval_step, predict, discriminator_step, generator_step,
    classifier_step, and the phase switch unfreeze_backbone), the steps with the state donated;
    with a mesh, outputs are replicated over it (the batch arrives sharded along "data", so XLA
    all-reduces gradients and BN batch statistics)."""
    kwargs = {}
    if mesh is not None:
        from mtcolor import sharding

        kwargs["out_shardings"] = sharding.replicated(mesh)
    return JittedSteps(
        iteration_rng=jax.jit(iteration_rng, **kwargs),
        train_step=jax.jit(train_step, donate_argnums=0, **kwargs),
        eval_step=_on_evaluation_view(jax.jit(eval_step, **kwargs)),
        predict=_on_evaluation_view(jax.jit(predict, **kwargs)),
        discriminator_step=jax.jit(discriminator_step, donate_argnums=0, **kwargs),
        generator_step=jax.jit(generator_step, donate_argnums=0, **kwargs),
        classifier_step=jax.jit(classifier_step, donate_argnums=0, **kwargs),
        # One program: op by op, the backbone's fresh Adam state compiled a zeros program per
        # parameter shape (about 2 s of the CPU demo's phase switch).
        unfreeze_backbone=jax.jit(state_lib.unfreeze_backbone, **kwargs),
    )


def evaluation_view(state: TrainState) -> TrainState:
    """The state without what only training reads (the optimizer's state and spec). Phase 2
    changes both (the backbone gets Adam state; the spec is part of the jit key), so jitted
    evaluation and prediction of the whole state compiled again at the phase change; on this view
    one compilation serves both phases."""
    return state.replace(opt_state=None, optimizer=None)


def _on_evaluation_view(jitted: Callable) -> Callable:
    @functools.wraps(jitted)
    def call(state: TrainState, *args):
        return jitted(evaluation_view(state), *args)

    return call


class JittedSteps(NamedTuple):
    """The jitted step functions of ``jit_steps`` (one compilation cache per mesh)."""

    iteration_rng: Callable
    train_step: Callable
    eval_step: Callable
    predict: Callable
    discriminator_step: Callable
    generator_step: Callable
    classifier_step: Callable
    unfreeze_backbone: Callable
