"""Loss terms of the paper's three models (section III-C), as pure jnp functions.

Every function returns a scalar mean unless its name says ``per_example``; the per-example forms
exist so evaluation can ignore the padded rows of the last batch (a ``mask``).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from mtcolor.precision import at_least_float32

GAN_MODES = ("l1", "vanilla", "lsgan")


def l1_per_example(pred: jax.Array, target: jax.Array) -> jax.Array:
    """Mean |pred - target| over every axis but the first (normalized ab, so the unweighted L1)."""
    diff = jnp.abs(at_least_float32(pred) - at_least_float32(target))
    return diff.reshape(diff.shape[0], -1).mean(axis=1)


def l1_loss(pred: jax.Array, target: jax.Array) -> jax.Array:
    return l1_per_example(pred, target).mean()


def gan_per_example(logits: jax.Array, target_is_real: bool, mode: str) -> jax.Array:
    """Adversarial loss of patch logits against an all-real (1) or all-fake (0) label map.

    mode:
      "l1": the paper's wording (section III-C: "the discriminator used L1 loss, comparing each
        patch's prediction with the true label"); a patch's prediction is its probability
        sigmoid(logit), so the loss is mean |sigmoid(logit) - label|.
      "vanilla": binary cross-entropy with logits, the reference tutorial's (pix2pix's) choice.
      "lsgan": mean squared error of the raw logits against the label (LSGAN).
    """
    logits = at_least_float32(logits)
    label = jnp.full_like(logits, 1.0 if target_is_real else 0.0)
    if mode == "l1":
        per_patch = jnp.abs(jax.nn.sigmoid(logits) - label)
    elif mode == "vanilla":
        per_patch = optax.sigmoid_binary_cross_entropy(logits, label)
    elif mode == "lsgan":
        per_patch = jnp.square(logits - label)
    else:
        raise ValueError(f"unknown GAN loss mode {mode!r}; expected one of {GAN_MODES}")
    return per_patch.reshape(per_patch.shape[0], -1).mean(axis=1)


def gan_loss(logits: jax.Array, target_is_real: bool, mode: str) -> jax.Array:
    return gan_per_example(logits, target_is_real, mode).mean()


def discriminator_loss(real_logits: jax.Array, fake_logits: jax.Array, mode: str):
    """0.5 * (loss(D(real), 1) + loss(D(fake), 0)) and its two terms (paper III-D, tutorial)."""
    real = gan_loss(real_logits, True, mode)
    fake = gan_loss(fake_logits, False, mode)
    return 0.5 * (real + fake), real, fake


def cross_entropy_per_example(logits: jax.Array, labels: jax.Array) -> jax.Array:
    return optax.softmax_cross_entropy_with_integer_labels(at_least_float32(logits), labels)


def cross_entropy(logits: jax.Array, labels: jax.Array) -> jax.Array:
    return cross_entropy_per_example(logits, labels).mean()


def correct_per_example(logits: jax.Array, labels: jax.Array) -> jax.Array:
    return (jnp.argmax(logits, axis=-1) == labels).astype(jnp.float32)
