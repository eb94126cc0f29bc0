"""The classification head forked from the ResNet-18 bottleneck."""

from __future__ import annotations

from typing import Any

import jax.numpy as jnp
from flax import linen as nn

from mtcolor.models.initializers import (
    pytorch_dense_bias_init,
    pytorch_dense_kernel_init,
)
from mtcolor.precision import at_least_float32


class ClassHead(nn.Module):
    """FC(hidden) -> ReLU -> FC(num_classes): (N, h, w, C) features -> (N, num_classes) float32
    logits.

    The paper's last layer has softmax activation; the module returns logits and the softmax lives
    in the cross-entropy loss (numerically stable), or `jax.nn.softmax` for probabilities.

    pooling:
      "flatten": the paper's head on the flattened 8x8x512 map of a 256 input
                 (32768*1000 + 1000 + 1000*5 + 5 = 32,774,005 parameters). Its size fixes the input
                 resolution: a model initialised at 256 px only runs at 256 px.
      "avg":     global average pool first (512*1000 + 1000 + 5005 = 518,005), any resolution.
    Flattening is in NHWC order (PyTorch flattens NCHW); the head is always new, so no weights
    need to be shared with a PyTorch layout.
    Init: PyTorch nn.Linear default, which the paper's head keeps (see mtcolor.models.initializers).
    """

    num_classes: int = 5
    pooling: str = "flatten"
    hidden: int = 1000
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, features: jnp.ndarray, train: bool = False) -> jnp.ndarray:
        del train  # no dropout/BN in the paper's head; kept for a uniform module signature
        x = jnp.asarray(features, self.dtype)
        if self.pooling == "flatten":
            x = x.reshape((x.shape[0], -1))
        elif self.pooling == "avg":
            x = jnp.mean(x, axis=(1, 2))
        else:
            raise ValueError(f"pooling must be 'flatten' or 'avg', got {self.pooling!r}")
        fan_in = x.shape[-1]
        x = nn.Dense(
            self.hidden,
            dtype=self.dtype,
            kernel_init=pytorch_dense_kernel_init,
            bias_init=pytorch_dense_bias_init(fan_in),
            name="fc1",
        )(x)
        x = nn.relu(x)
        x = nn.Dense(
            self.num_classes,
            dtype=self.dtype,
            kernel_init=pytorch_dense_kernel_init,
            bias_init=pytorch_dense_bias_init(self.hidden),
            name="fc2",
        )(x)
        return at_least_float32(x)
