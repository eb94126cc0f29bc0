"""A U-Net colorization decoder: ColorDecoder plus skips from the ResNet-18 stages (paper, V-B).

The paper's proposed improvement (Sec. V-B) is a U-Net generator, whose decoder sees the encoder's
maps at every resolution instead of the 8x8x512 bottleneck alone. :class:`UNetDecoder` keeps the
five upsampling blocks of :class:`mtcolor.models.decoder.ColorDecoder` and, pix2pix style,
concatenates the ResNet-18 map of the same resolution after each of the first four blocks, so
the next block reads ``[x, skip]`` along channels.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax.numpy as jnp
from flax import linen as nn

from mtcolor.models.decoder import ColorDecoder

# Names of the skips, in the order `ResNet18(return_stages=True)` returns them (its fifth map,
# layer4 at /32, is the bottleneck `features` itself and is not a skip).
SKIP_STAGE_NAMES = ("stem", "layer1", "layer2", "layer3")


class UNetDecoder(ColorDecoder):
    """ColorDecoder with U-Net skips: (features, stages) -> ab (N, 32h, 32w, 2), float32.

    ``features, stages = ResNet18(..., return_stages=True)(L)``; ``stages`` is
    ``(stem, layer1, layer2, layer3, layer4)`` (the 4-tuple without layer4 is accepted too):

      * stem: conv1 7x7/2 -> BN -> ReLU, before the max-pool, /2, 64 channels;
      * layer1 (after the max-pool and layer1) /4, 64; layer2 /8, 128; layer3 /16, 256;
      * layer4 /32, 512: the bottleneck ``features`` itself, the decoder's input, not a skip.

    Block i (ConvTranspose 4x4/2 -> BN -> [Dropout in the first three] -> ReLU, widths (256, 128,
    64, 64, 32), exactly as ColorDecoder) doubles the resolution; after blocks 0, 1, 2, 3 (at /16,
    /8, /4, /2) the output is concatenated with layer3, layer2, layer1, stem, so blocks 1..4 read
    512, 256, 128, 128 channels (ColorDecoder's 256, 128, 64, 64 plus the skip). The last block
    (at full resolution) has no skip, then a 3x3 conv with bias to 2 channels and tanh.

    The stem skip at /2 is not awkward here: the stem map is taken before the max-pool, at exactly
    /2, and :class:`ConvTranspose4x4Stride2` exactly doubles H and W (PyTorch ConvTranspose2d(4, 2,
    1)), so block 3's output matches it for any image size divisible by 32; no cropping, padding
    or resampling. Both skip and decoder maps are post-ReLU; the ReLU of pix2pix's up blocks,
    which sits at the start of the next block and acts on ``[x, skip]``, is therefore the same.
    (pix2pix concatenates ``[skip, x]``; the order only permutes the next kernel's input channels.)

    Skips are cast to ``dtype`` before the concatenation; params stay float32, the output is
    float32. A skip whose spatial size does not match raises ``ValueError``. Dropout (rng
    collection ``"dropout"``) and batch statistics are active only with ``train=True``.
    Parameter count: 3,606,146 (see tests/test_unet_decoder.py), vs ColorDecoder's 2,852,482.
    """

    @nn.compact
    def __call__(  # type: ignore[override]  # the U-Net also reads the encoder's stages
        self, features: jnp.ndarray, stages: Sequence[jnp.ndarray], train: bool = False
    ) -> jnp.ndarray:
        if len(stages) not in (len(SKIP_STAGE_NAMES), len(SKIP_STAGE_NAMES) + 1):
            raise ValueError(
                "UNetDecoder expects the stages of ResNet18(return_stages=True), "
                f"(stem, layer1, layer2, layer3[, layer4]); got {len(stages)} maps"
            )
        if len(self.features) != len(SKIP_STAGE_NAMES) + 1:
            raise ValueError(
                f"UNetDecoder needs {len(SKIP_STAGE_NAMES) + 1} blocks (one skip after each but "
                f"the last), got features={tuple(self.features)}"
            )
        # Deepest first: block 0 (at /16) meets layer3, ..., block 3 (at /2) meets the stem.
        skips = list(zip(SKIP_STAGE_NAMES, stages[: len(SKIP_STAGE_NAMES)]))[::-1]

        x = jnp.asarray(features, self.dtype)
        for index, width in enumerate(self.features):
            x = self.upsampling_block(x, index, width, train)
            if index < len(skips):
                name, skip = skips[index]
                if skip.shape[:3] != x.shape[:3]:
                    raise ValueError(
                        f"UNetDecoder block {index} output {x.shape} does not match the {name} "
                        f"skip {skip.shape} (batch and spatial size must agree)"
                    )
                x = jnp.concatenate([x, jnp.asarray(skip, self.dtype)], axis=-1)
        return self.to_ab(x)
