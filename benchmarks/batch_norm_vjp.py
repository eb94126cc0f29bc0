"""A candidate BatchNorm for ``benchmarks/form_ab.py``: flax's ``nn.BatchNorm`` (training mode,
``use_fast_variance=False``, as ``mtcolor.models.resnet.batch_norm`` builds it) with a hand-written
backward pass, to time against autodiff's.

Why a candidate: autodiff of flax's BatchNorm saves float32 intermediates of the forward
(x - mean, the normalized map) for the backward pass; in bfloat16 these are twice the size of
the activation itself, and each is one more pass over a large map unless XLA recomputes it. This
backward saves only x (in its own dtype), the mean and 1 / std, and computes the input gradient
in one pass after two sums (the textbook formula). Same variables, same forward, same running
statistics; gradients equal up to float32 rounding (``check`` below). On this project's CPU it
gained 1.6 % of the multi-task iteration at 128 px and 0.7 % at 256 px (docs/benchmarks.md), too
little to replace flax's module; it is kept to time on a GPU in bfloat16, where the saved
intermediates weigh more:

    python benchmarks/form_ab.py --arms mtcolor batch_norm_vjp --size 256 --batch_size 256 \
        --dtype bfloat16
    python benchmarks/batch_norm_vjp.py        # the equality check against flax's module
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn

from mtcolor.models import resnet


def _statistics(x):
    """Mean and biased variance over all but the feature axis, in float32, in two passes (as
    flax's ``use_fast_variance=False``)."""
    xf = x.astype(jnp.float32)
    axes = tuple(range(x.ndim - 1))
    mean = jnp.mean(xf, axes)
    return mean, jnp.mean(jnp.square(xf - mean), axes)


def _normalize(x, mean, var, scale, bias, epsilon):
    # flax's order: (x - mean) * (rsqrt(var + eps) * scale) + bias, in float32.
    inv_std = jax.lax.rsqrt(var + epsilon)
    return (x.astype(jnp.float32) - mean) * (scale * inv_std) + bias, inv_std


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def batch_norm_train(x, scale, bias, epsilon):
    """(y in x's dtype, batch mean, batch variance) of BatchNorm in training mode."""
    mean, var = _statistics(x)
    y, _ = _normalize(x, mean, var, scale, bias, epsilon)
    return y.astype(x.dtype), mean, var


def _forward(x, scale, bias, epsilon):
    mean, var = _statistics(x)
    y, inv_std = _normalize(x, mean, var, scale, bias, epsilon)
    return (y.astype(x.dtype), mean, var), (x, mean, inv_std, scale)


def _backward(epsilon, residuals, cotangents):
    x, mean, inv_std, scale = residuals
    dy, dmean, dvar = cotangents
    axes = tuple(range(x.ndim - 1))
    n = np.prod([x.shape[axis] for axis in axes])
    centered = x.astype(jnp.float32) - mean
    normalized = centered * inv_std
    dy = dy.astype(jnp.float32)
    dbias = jnp.sum(dy, axes)
    dscale = jnp.sum(dy * normalized, axes)
    dx = (scale * inv_std / n) * (n * dy - dbias - normalized * dscale)
    # The statistics' own cotangents (zero when only the running averages use them).
    dx = dx + dmean / n + dvar * (2.0 / n) * centered
    return dx.astype(x.dtype), dscale, dbias


batch_norm_train.defvjp(_forward, _backward)


class BatchNorm(nn.Module):
    """``nn.BatchNorm``'s variables and results (``scale``, ``bias``; ``mean``, ``var``)."""

    use_running_average: bool
    momentum: float
    epsilon: float
    dtype: Any
    scale_init: Any = nn.initializers.ones

    @nn.compact
    def __call__(self, x):
        features = x.shape[-1]
        running_mean = self.variable(
            "batch_stats", "mean", lambda: jnp.zeros((features,), jnp.float32)
        )
        running_var = self.variable(
            "batch_stats", "var", lambda: jnp.ones((features,), jnp.float32)
        )
        scale = self.param("scale", self.scale_init, (features,), jnp.float32)
        bias = self.param("bias", nn.initializers.zeros, (features,), jnp.float32)
        if self.use_running_average:
            y, _ = _normalize(x, running_mean.value, running_var.value, scale, bias, self.epsilon)
            return y.astype(self.dtype)
        y, mean, var = batch_norm_train(x, scale, bias, self.epsilon)
        if not self.is_initializing():
            running_mean.value = self.momentum * running_mean.value + (1 - self.momentum) * mean
            running_var.value = self.momentum * running_var.value + (1 - self.momentum) * var
        return y.astype(self.dtype)


def batch_norm(train: bool, dtype: Any, scale_init: Any, name: str) -> BatchNorm:
    """Drop-in for ``mtcolor.models.resnet.batch_norm``."""
    return BatchNorm(
        use_running_average=not train,
        momentum=resnet.BN_MOMENTUM,
        epsilon=resnet.BN_EPSILON,
        dtype=dtype,
        scale_init=scale_init,
        name=name,
    )


def check() -> None:
    """This module against flax's on a map with a large mean: outputs, running statistics and
    gradients (float32 and bfloat16), printed as max absolute differences."""
    for dtype in (jnp.float32, jnp.bfloat16):
        reference = nn.BatchNorm(
            use_running_average=False,
            momentum=0.9,
            epsilon=1e-5,
            dtype=dtype,
            use_fast_variance=False,
        )
        candidate = BatchNorm(use_running_average=False, momentum=0.9, epsilon=1e-5, dtype=dtype)
        x = (jax.random.normal(jax.random.key(0), (4, 8, 8, 16)) * 3 + 5).astype(dtype)
        weights = jax.random.normal(jax.random.key(1), x.shape)

        def gradients(module, x=x, weights=weights):
            variables = module.init(jax.random.key(2), x)

            def loss(params, x):
                y, updates = module.apply(
                    {"params": params, "batch_stats": variables["batch_stats"]},
                    x,
                    mutable=["batch_stats"],
                )
                return jnp.sum(jnp.tanh(y.astype(jnp.float32)) * weights), (y, updates)

            grad = jax.grad(loss, argnums=(0, 1), has_aux=True)
            return grad(variables["params"], x)

        ours, theirs = gradients(candidate), gradients(reference)
        differences = jax.tree.map(
            lambda a, b: float(jnp.max(jnp.abs(a.astype(jnp.float32) - b.astype(jnp.float32)))),
            ours,
            theirs,
        )
        print(jnp.dtype(dtype).name, differences)


if __name__ == "__main__":
    check()
