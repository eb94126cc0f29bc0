"""The colorization head: bottleneck features -> ab channels in [-1, 1]."""

from __future__ import annotations

from typing import Any, Callable, Sequence

import jax.numpy as jnp
from flax import linen as nn

from mtcolor.models.init import pix2pix_kernel_init, pix2pix_scale_init
from mtcolor.models.resnet import batch_norm

Initializer = Callable[..., Any]

# PyTorch ConvTranspose2d(kernel 4, stride 2, padding 1) doubles H and W. flax's ConvTranspose pads
# the stride-dilated input directly, so PyTorch padding p becomes k - 1 - p = 2 per side
# (with transpose_kernel=True the kernel is then PyTorch's weight transposed (2, 3, 1, 0)).
# benchmarks/make_golden_fixtures.py checks this mapping against torch itself.
UPSAMPLE_KERNEL = 4
UPSAMPLE_PADDING = ((2, 2), (2, 2))


class ColorDecoder(nn.Module):
    """Five upsampling blocks x2 each (ConvTranspose 4x4/2 -> BN -> [Dropout] -> ReLU), then a
    3x3 conv to 2 channels and tanh: (N, h, w, C) -> (N, 32h, 32w, 2), float32 output.

    The paper only says "blocks of transposed convolutions, ReLU activations, and batch
    normalization" with dropout and a Tanh output. Choices (see docs/architecture.md):
      * widths (256, 128, 64, 64, 32): at each resolution the same width as the ResNet-18 map of
        that resolution (layer3 256 @ /16, layer2 128 @ /8, layer1 64 @ /4, stem 64 @ /2), so a
        U-Net skip could later be concatenated without reshaping, and 32 at full resolution to
        keep the 256x256 block cheap;
      * dropout 0.5 in the first three blocks, as pix2pix's U-Net decoder (the GAN's noise source);
      * transposed convs have no bias (a BN follows, as in pix2pix with BatchNorm);
      * a final 3x3 stride-1 conv (with bias) maps to ab so the last layer sees a neighbourhood
        rather than one pixel, then tanh.
    Any input with h, w >= 1 works; for images this means sizes divisible by 32.
    """

    features: Sequence[int] = (256, 128, 64, 64, 32)
    dropout_rate: float = 0.5
    dropout_blocks: int = 3
    dtype: Any = jnp.float32
    kernel_init: Initializer = pix2pix_kernel_init
    scale_init: Initializer = pix2pix_scale_init

    @nn.compact
    def __call__(self, features: jnp.ndarray, train: bool = False) -> jnp.ndarray:
        x = jnp.asarray(features, self.dtype)
        for index, width in enumerate(self.features):
            x = nn.ConvTranspose(
                width,
                (UPSAMPLE_KERNEL, UPSAMPLE_KERNEL),
                strides=(2, 2),
                padding=UPSAMPLE_PADDING,
                transpose_kernel=True,
                use_bias=False,
                dtype=self.dtype,
                kernel_init=self.kernel_init,
                name=f"up{index}_convT",
            )(x)
            x = batch_norm(train, self.dtype, self.scale_init, f"up{index}_bn")(x)
            if index < self.dropout_blocks and self.dropout_rate > 0:
                # pix2pix order: ConvT -> BN -> Dropout -> ReLU.
                x = nn.Dropout(self.dropout_rate, deterministic=not train, name=f"up{index}_dropout")(x)
            x = nn.relu(x)
        x = nn.Conv(
            2, (3, 3), padding=((1, 1), (1, 1)), dtype=self.dtype, kernel_init=self.kernel_init, name="to_ab"
        )(x)
        return jnp.tanh(x).astype(jnp.float32)
