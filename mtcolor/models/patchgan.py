"""pix2pix's 70x70 PatchGAN discriminator (`NLayerDiscriminator(n_layers=3)`, BatchNorm)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax.numpy as jnp
from flax import linen as nn

from mtcolor.models.conv import conv_general_dilated
from mtcolor.models.initializers import pix2pix_kernel_init, pix2pix_scale_init
from mtcolor.models.resnet import batch_norm
from mtcolor.precision import at_least_float32

Initializer = Callable[..., Any]

# Every conv is 4x4 with padding 1 per side. Explicit padding matters twice here: 'SAME' would pad
# the stride-2 convs (1, 2) and keep 32x32 at the stride-1 convs, where PyTorch gives 31 then 30.
PATCH_PADDING = ((1, 1), (1, 1))
LEAKY_SLOPE = 0.2


class PatchDiscriminator(nn.Module):
    """concat(L, ab) (N, H, W, 3) -> patch logits (N, H/8 - 2, W/8 - 2, 1), 30x30 for 256x256.

    Layers (pix2pix with ndf=64, n_layers=3, norm=BatchNorm, so convs before a BN have no bias):
      conv1 C64  s2 + bias, LeakyReLU 0.2
      conv2 C128 s2, bn2, LeakyReLU 0.2
      conv3 C256 s2, bn3, LeakyReLU 0.2
      conv4 C512 s1, bn4, LeakyReLU 0.2
      conv5 C1   s1 + bias (logits; the loss applies the sigmoid)
    2,765,633 parameters for 3 input channels; receptive field 70x70.
    """

    base_features: int = 64
    dtype: Any = jnp.float32
    kernel_init: Initializer = pix2pix_kernel_init
    scale_init: Initializer = pix2pix_scale_init

    @nn.compact
    def __call__(self, x: jnp.ndarray, train: bool = False) -> jnp.ndarray:
        conv = lambda features, stride, use_bias, name: nn.Conv(  # noqa: E731
            features,
            (4, 4),
            strides=(stride, stride),
            padding=PATCH_PADDING,
            use_bias=use_bias,
            dtype=self.dtype,
            kernel_init=self.kernel_init,
            name=name,
            conv_general_dilated=conv_general_dilated,
        )
        x = jnp.asarray(x, self.dtype)
        x = nn.leaky_relu(conv(self.base_features, 2, True, "conv1")(x), LEAKY_SLOPE)
        for index, (multiplier, stride) in enumerate(((2, 2), (4, 2), (8, 1)), start=2):
            x = conv(self.base_features * multiplier, stride, False, f"conv{index}")(x)
            x = batch_norm(train, self.dtype, self.scale_init, f"bn{index}")(x)
            x = nn.leaky_relu(x, LEAKY_SLOPE)
        x = conv(1, 1, True, "conv5")(x)
        return at_least_float32(x)
