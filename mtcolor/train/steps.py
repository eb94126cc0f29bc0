"""Pure training and evaluation steps (no Python side effects; jit them, see ``jit_steps``).

One cGAN iteration follows the reference tutorial (paper III-D): the generator colorizes the batch
once, D is updated on D(L, fake) vs 0 and D(L, ab) vs 1 (two separate forward passes, fake first,
loss 0.5 * (fake + real)), then G is updated on the same fake through the updated D. Here the
fake is recomputed in the G step with the same dropout key and the same (not yet updated) G
parameters, so both steps see the same colorization while each stays a pure function.

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
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import optax

from mtcolor.train import losses
from mtcolor.train import optim
from mtcolor.train.state import DISCRIMINATOR, MODEL, TrainState
from mtcolor.precision import at_least_float32

BACKBONE = optim.BACKBONE


def iteration_rng(state: TrainState) -> jax.Array:
    return jax.random.fold_in(state.rng, state.step)


def _apply_model(state: TrainState, params, batch_stats, L, *, train: bool, rng=None):
    """Model forward -> ((ab, logits), new_batch_stats)."""
    variables = {"params": params, "batch_stats": batch_stats}
    if not train:
        out = state.model.apply(variables, L, train=False)
        return state.objective.split_outputs(out), batch_stats
    out, mutated = state.model.apply(
        variables,
        L,
        train=True,
        backbone_train=state.optimizer.backbone_bn_train,
        rngs={"dropout": rng},
        mutable=["batch_stats"],
    )
    return state.objective.split_outputs(out), mutated["batch_stats"]


def _apply_discriminator(state: TrainState, params, batch_stats, L, ab, *, train: bool):
    variables = {"params": params, "batch_stats": batch_stats}
    x = jnp.concatenate([L, ab.astype(L.dtype)], axis=-1)
    if not train:
        return state.discriminator.apply(variables, x, train=False), batch_stats
    logits, mutated = state.discriminator.apply(variables, x, train=True, mutable=["batch_stats"])
    return logits, mutated["batch_stats"]


def _mean_sigmoid(logits):
    return jax.nn.sigmoid(at_least_float32(logits)).mean()


def discriminator_step(state: TrainState, batch, rng):
    """One D update. Returns (state, metrics: loss_d, loss_d_real, loss_d_fake, d_real, d_fake)."""
    if state.discriminator is None:
        raise ValueError(f"the {state.objective.experiment} experiment has no discriminator")
    L, ab = batch["L"], batch["ab"]
    (fake, _), _ = _apply_model(
        state, state.params[MODEL], state.batch_stats[MODEL], L, train=True, rng=rng
    )
    fake = jax.lax.stop_gradient(fake)
    mode = state.objective.gan_mode

    def loss_fn(d_params):
        stats = state.batch_stats[DISCRIMINATOR]
        fake_logits, stats = _apply_discriminator(state, d_params, stats, L, fake, train=True)
        real_logits, stats = _apply_discriminator(state, d_params, stats, L, ab, train=True)
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


def _model_losses(state: TrainState, params, batch, rng):
    """Total model loss and its terms for one training batch (train mode)."""
    obj = state.objective
    (ab_pred, logits), new_stats = _apply_model(
        state, params, state.batch_stats[MODEL], batch["L"], train=True, rng=rng
    )
    total = jnp.zeros((), jnp.float32)
    metrics = {}
    if obj.has_color:
        l1 = losses.l1_loss(ab_pred, batch["ab"])
        fake_logits, _ = _apply_discriminator(
            state,
            state.params[DISCRIMINATOR],
            state.batch_stats[DISCRIMINATOR],
            batch["L"],
            ab_pred,
            train=True,
        )
        loss_gan = losses.gan_loss(fake_logits, True, obj.gan_mode)
        metrics.update(l1=l1, loss_l1=obj.l1_weight * l1, loss_gan=loss_gan)
        total = total + obj.l1_weight * l1 + obj.gan_weight * loss_gan
    if obj.has_class:
        loss_cls = losses.cross_entropy(logits, batch["label"])
        metrics.update(
            loss_cls=loss_cls, accuracy=losses.correct_per_example(logits, batch["label"]).mean()
        )
        total = total + obj.cls_weight * loss_cls
    metrics["loss_g" if obj.has_color else "loss"] = total
    return total, (new_stats, metrics)


def _keep_frozen(state: TrainState, new_params, new_stats):
    """While frozen, the backbone subtree is the old one (bitwise), whatever the arithmetic."""
    if not state.optimizer.backbone_frozen:
        return new_params, new_stats
    old_params, old_stats = state.params[MODEL], state.batch_stats[MODEL]
    new_params = {**new_params, BACKBONE: old_params[BACKBONE]}
    if not state.optimizer.update_frozen_bn_stats and BACKBONE in old_stats:
        new_stats = {**new_stats, BACKBONE: old_stats[BACKBONE]}
    return new_params, new_stats


def generator_step(state: TrainState, batch, rng):
    """One generator (or classifier) update; increments ``state.step``."""
    grads, (new_stats, metrics) = jax.grad(_model_losses, argnums=1, has_aux=True)(
        state, state.params[MODEL], batch, rng
    )
    tx = optim.model_tx(state.optimizer)
    updates, new_opt = tx.update(grads, state.opt_state[MODEL], state.params[MODEL])
    new_params = optax.apply_updates(state.params[MODEL], updates)
    new_params, new_stats = _keep_frozen(state, new_params, new_stats)
    state = state.replace(
        step=state.step + 1,
        params={**state.params, MODEL: new_params},
        batch_stats={**state.batch_stats, MODEL: new_stats},
        opt_state={**state.opt_state, MODEL: new_opt},
    )
    return state, metrics


def classifier_step(state: TrainState, batch, rng):
    """The single-task classifier's update (cross-entropy only)."""
    if state.discriminator is not None:
        raise ValueError("classifier_step is for the classification experiment")
    return generator_step(state, batch, rng)


def train_step(state: TrainState, batch):
    """A full iteration: D then G for the cGAN models (same dropout key), else the classifier."""
    rng = iteration_rng(state)
    metrics = {}
    if state.discriminator is not None:
        state, metrics = discriminator_step(state, batch, rng)
    state, model_metrics = generator_step(state, batch, rng)
    return state, {**metrics, **model_metrics}


def eval_step(state: TrainState, batch):
    """Per-example validation values (eval mode everywhere) plus ``mask`` for clu's Average."""
    obj = state.objective
    L = batch["L"]
    (ab_pred, logits), _ = _apply_model(
        state, state.params[MODEL], state.batch_stats[MODEL], L, train=False
    )
    out = {}
    total = jnp.zeros((L.shape[0],), jnp.float32)
    if obj.has_color:
        d_params, d_stats = state.params[DISCRIMINATOR], state.batch_stats[DISCRIMINATOR]
        fake_logits, _ = _apply_discriminator(state, d_params, d_stats, L, ab_pred, train=False)
        real_logits, _ = _apply_discriminator(state, d_params, d_stats, L, batch["ab"], train=False)
        l1 = losses.l1_per_example(ab_pred, batch["ab"])
        loss_gan = losses.gan_per_example(fake_logits, True, obj.gan_mode)
        d_real = losses.gan_per_example(real_logits, True, obj.gan_mode)
        d_fake = losses.gan_per_example(fake_logits, False, obj.gan_mode)
        per_ex_sigmoid = lambda z: (
            jax.nn.sigmoid(at_least_float32(z)).reshape(z.shape[0], -1).mean(1)
        )
        out.update(
            l1=l1,
            loss_l1=obj.l1_weight * l1,
            loss_gan=loss_gan,
            loss_d=0.5 * (d_real + d_fake),
            loss_d_real=d_real,
            loss_d_fake=d_fake,
            d_real=per_ex_sigmoid(real_logits),
            d_fake=per_ex_sigmoid(fake_logits),
        )
        total = total + obj.l1_weight * l1 + obj.gan_weight * loss_gan
    if obj.has_class:
        loss_cls = losses.cross_entropy_per_example(logits, batch["label"])
        out.update(loss_cls=loss_cls, accuracy=losses.correct_per_example(logits, batch["label"]))
        total = total + obj.cls_weight * loss_cls
    out["loss_g" if obj.has_color else "loss"] = total
    mask = batch.get("mask")
    out["mask"] = jnp.ones((L.shape[0],), jnp.float32) if mask is None else mask
    return out


def predict_ab(state: TrainState, L):
    """Eval-mode colorization (for image grids)."""
    (ab_pred, _), _ = _apply_model(
        state, state.params[MODEL], state.batch_stats[MODEL], L, train=False
    )
    return ab_pred


@functools.lru_cache(maxsize=None)
def jit_steps(mesh=None):
    """Jitted (train_step, eval_step, predict_ab, discriminator_step, generator_step,
    classifier_step) with the state donated; with a mesh, outputs are replicated over it (the
    batch arrives sharded along "data", so XLA all-reduces gradients and BN batch statistics)."""
    kwargs = {}
    if mesh is not None:
        from mtcolor.train import sharding

        kwargs["out_shardings"] = sharding.replicated(mesh)
    return JittedSteps(
        iteration_rng=jax.jit(iteration_rng, **kwargs),
        train_step=jax.jit(train_step, donate_argnums=0, **kwargs),
        eval_step=jax.jit(eval_step, **kwargs),
        predict_ab=jax.jit(predict_ab, **kwargs),
        discriminator_step=jax.jit(discriminator_step, donate_argnums=0, **kwargs),
        generator_step=jax.jit(generator_step, donate_argnums=0, **kwargs),
        classifier_step=jax.jit(classifier_step, donate_argnums=0, **kwargs),
    )


class JittedSteps(NamedTuple):
    """The jitted step functions of ``jit_steps`` (one compilation cache per mesh)."""

    iteration_rng: Callable
    train_step: Callable
    eval_step: Callable
    predict_ab: Callable
    discriminator_step: Callable
    generator_step: Callable
    classifier_step: Callable
