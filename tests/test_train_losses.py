"""Loss terms against numbers computed by hand (math module only)."""

import math

import jax.numpy as jnp
import numpy as np
import pytest

from mtcolor.tasks import losses


def sigmoid(z):
    return 1.0 / (1.0 + math.exp(-z))


def test_l1_is_mean_absolute_difference_per_example_then_batch():
    pred = jnp.array([[[0.5, -0.5]], [[1.0, 0.0]]])  # (2, 1, 2)
    target = jnp.array([[[0.0, 0.0]], [[0.0, 0.5]]])
    np.testing.assert_allclose(losses.l1_per_example(pred, target), [0.5, 0.75], rtol=1e-7)
    assert float(losses.l1_loss(pred, target)) == pytest.approx(0.625, rel=1e-7)


# Two examples, two patches each: logits 0, 2 | -1, 3.
LOGITS = jnp.array([[[[0.0]], [[2.0]]], [[[-1.0]], [[3.0]]]])  # (2, 2, 1, 1)
ZS = [[0.0, 2.0], [-1.0, 3.0]]


@pytest.mark.parametrize("real", [True, False])
def test_vanilla_gan_is_bce_with_logits(real):
    y = 1.0 if real else 0.0
    # BCE(z, y) = -y log s(z) - (1 - y) log(1 - s(z))
    per_ex = [
        np.mean([-(y * math.log(sigmoid(z)) + (1 - y) * math.log(1 - sigmoid(z))) for z in zs])
        for zs in ZS
    ]
    np.testing.assert_allclose(losses.gan_per_example(LOGITS, real, "vanilla"), per_ex, rtol=1e-6)
    assert float(losses.gan_loss(LOGITS, real, "vanilla")) == pytest.approx(
        np.mean(per_ex), rel=1e-6
    )
    if real:  # the textbook value: logit 0 vs label 1 costs log 2
        assert float(losses.gan_loss(jnp.zeros((1, 3, 3, 1)), True, "vanilla")) == pytest.approx(
            math.log(2)
        )


@pytest.mark.parametrize("real", [True, False])
def test_l1_gan_compares_patch_probability_with_label(real):
    y = 1.0 if real else 0.0
    per_ex = [np.mean([abs(sigmoid(z) - y) for z in zs]) for zs in ZS]
    np.testing.assert_allclose(losses.gan_per_example(LOGITS, real, "l1"), per_ex, rtol=1e-6)


@pytest.mark.parametrize("real", [True, False])
def test_lsgan_is_squared_error_of_raw_logits(real):
    y = 1.0 if real else 0.0
    per_ex = [np.mean([(z - y) ** 2 for z in zs]) for zs in ZS]
    np.testing.assert_allclose(losses.gan_per_example(LOGITS, real, "lsgan"), per_ex, rtol=1e-6)


def test_discriminator_loss_averages_real_and_fake():
    real_logits = jnp.full((1, 2, 2, 1), 2.0)
    fake_logits = jnp.full((1, 2, 2, 1), -1.0)
    total, real, fake = losses.discriminator_loss(real_logits, fake_logits, "vanilla")
    want_real = math.log(1 + math.exp(-2.0))  # -log s(2)
    want_fake = math.log(1 + math.exp(-1.0))  # -log(1 - s(-1)) = log(1 + e^-1)
    assert float(real) == pytest.approx(want_real, rel=1e-6)
    assert float(fake) == pytest.approx(want_fake, rel=1e-6)
    assert float(total) == pytest.approx(0.5 * (want_real + want_fake), rel=1e-6)


def test_unknown_gan_mode_is_refused():
    with pytest.raises(ValueError, match="unknown GAN loss"):
        losses.gan_loss(LOGITS, True, "hinge")


def test_cross_entropy_and_accuracy():
    logits = jnp.array([[1.0, 2.0, 3.0], [0.0, 0.0, 0.0]])
    labels = jnp.array([2, 0])
    # -log softmax: log(e^1 + e^2 + e^3) - 3 and log 3
    want = [math.log(math.exp(1) + math.exp(2) + math.exp(3)) - 3.0, math.log(3.0)]
    np.testing.assert_allclose(losses.cross_entropy_per_example(logits, labels), want, rtol=1e-6)
    assert float(losses.cross_entropy(logits, labels)) == pytest.approx(np.mean(want), rel=1e-6)
    # argmax of a tie is the first index, so the second row counts as correct for label 0.
    np.testing.assert_array_equal(losses.correct_per_example(logits, labels), [1.0, 1.0])
    np.testing.assert_array_equal(losses.correct_per_example(logits, jnp.array([0, 1])), [0.0, 0.0])
