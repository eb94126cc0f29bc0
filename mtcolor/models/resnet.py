"""torchvision's ResNet-18 body (no avgpool, no fc) in flax linen, NHWC.

Exact port: every padding is explicit, because flax's 'SAME' pads a stride-2 conv on an even size
by (0, 1) where torchvision pads (1, 1), which shifts the sampling grid. BatchNorm uses eps 1e-5 and
flax momentum 0.9 (= PyTorch momentum 0.1). Parameter names are the interface that
`mtcolor.weights` maps torchvision's state-dict keys onto:

    conv1, bn1, layer{1..4}_{0,1}/{conv1,bn1,conv2,bn2},
    layer{2,3,4}_0/{downsample_conv,downsample_bn}

One difference remains with PyTorch and is inherent to flax: in training mode PyTorch updates
`running_var` with the unbiased batch variance, flax with the biased one (n/(n-1) apart); the
normalisation itself (biased variance) is the same. See tests/test_models.py.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import jax.numpy as jnp
from flax import linen as nn

from mtcolor.models.conv import conv_general_dilated
from mtcolor.models.initializers import pix2pix_kernel_init, pix2pix_scale_init
from mtcolor.models.pooling import max_pool

Initializer = Callable[..., Any]

BN_MOMENTUM = 0.9  # flax convention: running = momentum * running + (1 - momentum) * batch
BN_EPSILON = 1e-5


def batch_norm(train: bool, dtype: Any, scale_init: Initializer, name: str) -> nn.BatchNorm:
    # use_fast_variance=False: E[(x-mean)^2] instead of E[x^2]-mean^2, which loses float32 digits on
    # post-ReLU maps with a large mean (measured against PyTorch in the golden tests).
    return nn.BatchNorm(
        use_running_average=not train,
        momentum=BN_MOMENTUM,
        epsilon=BN_EPSILON,
        dtype=dtype,
        scale_init=scale_init,
        use_fast_variance=False,
        name=name,
    )


class BasicBlock(nn.Module):
    """torchvision BasicBlock: 3x3/stride conv-BN-ReLU, 3x3 conv-BN, + (downsampled) identity,
    ReLU."""

    features: int
    strides: int = 1
    downsample: bool = False
    dtype: Any = jnp.float32
    kernel_init: Initializer = pix2pix_kernel_init
    scale_init: Initializer = pix2pix_scale_init

    @nn.compact
    def __call__(self, x: jnp.ndarray, train: bool = False) -> jnp.ndarray:
        conv = functools.partial(
            nn.Conv,
            use_bias=False,
            dtype=self.dtype,
            kernel_init=self.kernel_init,
            conv_general_dilated=conv_general_dilated,
        )
        bn = functools.partial(batch_norm, train, self.dtype, self.scale_init)
        s = (self.strides, self.strides)

        y = conv(self.features, (3, 3), strides=s, padding=((1, 1), (1, 1)), name="conv1")(x)
        y = nn.relu(bn("bn1")(y))
        y = conv(self.features, (3, 3), padding=((1, 1), (1, 1)), name="conv2")(y)
        y = bn("bn2")(y)

        identity = x
        if self.downsample:
            identity = conv(
                self.features, (1, 1), strides=s, padding=((0, 0), (0, 0)), name="downsample_conv"
            )(x)
            identity = bn("downsample_bn")(identity)
        return nn.relu(y + identity)


class ResNet18(nn.Module):
    """ResNet-18 feature extractor: (N, H, W, in_channels) -> (N, H/32, W/32, 512).

    Attributes:
      in_channels: 3 for RGB, 1 for the grayscale L channel (fastai `create_body(n_in=1)`; the
        pretrained conv1 is then the sum of the RGB kernels, done by `mtcolor.weights`). Only used
        to document/validate the input; flax infers conv1's input width from the data.
      dtype: computation dtype (params stay float32).
      kernel_init / scale_init: init of the convs and BN scales when NOT loading pretrained weights.
        Default: pix2pix N(0, 0.02) / N(1, 0.02), what the paper's reference applies to a
        non-pretrained generator. `mtcolor.models.initializers.torchvision_conv_kernel_init` gives
        torchvision's own from-scratch init.
    """

    in_channels: int = 3
    dtype: Any = jnp.float32
    kernel_init: Initializer = pix2pix_kernel_init
    scale_init: Initializer = pix2pix_scale_init

    @nn.compact
    def __call__(self, x: jnp.ndarray, train: bool = False, return_stages: bool = False):
        if x.shape[-1] != self.in_channels:
            raise ValueError(
                f"ResNet18(in_channels={self.in_channels}) got input with {x.shape[-1]} channels"
            )
        x = jnp.asarray(x, self.dtype)
        x = nn.Conv(
            64,
            (7, 7),
            strides=(2, 2),
            padding=((3, 3), (3, 3)),
            use_bias=False,
            dtype=self.dtype,
            kernel_init=self.kernel_init,
            conv_general_dilated=conv_general_dilated,
            name="conv1",
        )(x)
        x = nn.relu(batch_norm(train, self.dtype, self.scale_init, "bn1")(x))
        stem = x
        # Pads with -inf, as torch's MaxPool2d(3, 2, padding=1) does.
        x = max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))

        stages = [stem]
        for stage, features in enumerate((64, 128, 256, 512), start=1):
            for index in range(2):
                first_of_strided_stage = index == 0 and stage > 1
                x = BasicBlock(
                    features,
                    strides=2 if first_of_strided_stage else 1,
                    downsample=first_of_strided_stage,
                    dtype=self.dtype,
                    kernel_init=self.kernel_init,
                    scale_init=self.scale_init,
                    name=f"layer{stage}_{index}",
                )(x, train=train)
            stages.append(x)
        if return_stages:
            return x, tuple(stages)
        return x
