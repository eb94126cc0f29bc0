"""torchvision's ResNet-18 body (no avgpool, no fc) in flax linen, NHWC.

Exact port: every padding is explicit, because flax's 'SAME' pads a stride-2 conv on an even size
by (0, 1) where torchvision pads (1, 1), which shifts the sampling grid. BatchNorm uses eps 1e-5 and
flax momentum 0.9 (= PyTorch momentum 0.1). Parameter names are the interface that
`mtcolor.weights` maps torchvision's state-dict keys onto:

    conv1, bn1, layer{1..4}_{0,1}/{conv1,bn1,conv2,bn2}, layer{2,3,4}_0/{downsample_conv,downsample_bn}

One difference remains with PyTorch and is inherent to flax: in training mode PyTorch updates
`running_var` with the unbiased batch variance, flax with the biased one (n/(n-1) apart); the
normalisation itself (biased variance) is the same. See tests/test_models.py.
"""

from __future__ import annotations

import functools
from typing import Any, Callable

import jax
import jax.numpy as jnp
from flax import linen as nn

from mtcolor.models.init import pix2pix_kernel_init, pix2pix_scale_init

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


_NHWC_HWIO = jax.lax.ConvDimensionNumbers((0, 3, 1, 2), (3, 2, 0, 1), (0, 3, 1, 2))


def conv_general_dilated(lhs, rhs, window_strides, padding, lhs_dilation=None, rhs_dilation=None,
                         dimension_numbers=None, feature_group_count=1, batch_group_count=1,
                         precision=None, preferred_element_type=None):
    """``jax.lax.conv_general_dilated`` that computes stride-1 convs on 2x2 maps as one matmul.

    Why: XLA:CPU sends a 3x3 conv over a 2x2 map with 512 channels (layer4 of a 64 px input) to a
    generic loop at about 0.7 GFLOP/s: measured here at batch 16, 0.45 s forward and 0.88 s forward
    + backward per conv, against 0.003 s / 0.008 s as a matmul over the nine shifted copies of the
    zero-padded map (im2col). On such a tiny map im2col costs nothing, and the result equals the
    convolution up to float32 summation order. Every other shape goes to XLA's convolution.
    """
    plain = (
        lhs.ndim == 4
        and rhs.ndim == 4
        and dimension_numbers is not None
        and jax.lax.conv_dimension_numbers(lhs.shape, rhs.shape, dimension_numbers) == _NHWC_HWIO
        and tuple(window_strides) == (1, 1)
        and lhs.shape[1:3] == (2, 2)
        and not isinstance(padding, str)
        and (lhs_dilation is None or tuple(lhs_dilation) == (1, 1))
        and (rhs_dilation is None or tuple(rhs_dilation) == (1, 1))
        and feature_group_count == 1
        and batch_group_count == 1
    )
    if not plain:
        return jax.lax.conv_general_dilated(
            lhs, rhs, window_strides, padding, lhs_dilation=lhs_dilation, rhs_dilation=rhs_dilation,
            dimension_numbers=dimension_numbers, feature_group_count=feature_group_count,
            batch_group_count=batch_group_count, precision=precision,
            preferred_element_type=preferred_element_type,
        )
    kh, kw, c_in, c_out = rhs.shape
    (top, bottom), (left, right) = padding
    padded = jnp.pad(lhs, ((0, 0), (top, bottom), (left, right), (0, 0)))
    out_h = padded.shape[1] - kh + 1
    out_w = padded.shape[2] - kw + 1
    # (N, out_h, out_w, kh * kw * c_in), ordered like rhs.reshape(kh * kw * c_in, c_out)
    columns = jnp.concatenate(
        [padded[:, i : i + out_h, j : j + out_w] for i in range(kh) for j in range(kw)], axis=-1
    )
    return jnp.einsum(
        "nhwk,ko->nhwo", columns, rhs.reshape(kh * kw * c_in, c_out),
        precision=precision, preferred_element_type=preferred_element_type,
    )


class BasicBlock(nn.Module):
    """torchvision BasicBlock: 3x3/stride conv-BN-ReLU, 3x3 conv-BN, + (downsampled) identity, ReLU."""

    features: int
    strides: int = 1
    downsample: bool = False
    dtype: Any = jnp.float32
    kernel_init: Initializer = pix2pix_kernel_init
    scale_init: Initializer = pix2pix_scale_init

    @nn.compact
    def __call__(self, x: jnp.ndarray, train: bool = False) -> jnp.ndarray:
        conv = functools.partial(
            nn.Conv, use_bias=False, dtype=self.dtype, kernel_init=self.kernel_init,
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
            identity = conv(self.features, (1, 1), strides=s, padding=((0, 0), (0, 0)), name="downsample_conv")(x)
            identity = bn("downsample_bn")(identity)
        return nn.relu(y + identity)


class ResNet18(nn.Module):
    """ResNet-18 feature extractor: (N, H, W, in_channels) -> (N, H/32, W/32, 512).

    Attributes:
      in_channels: 3 for RGB, 1 for the grayscale L channel (fastai `create_body(n_in=1)`; the
        pretrained conv1 is then the sum of the RGB kernels, done by `mtcolor.weights`). Only used to
        document/validate the input; flax infers conv1's input width from the data.
      dtype: computation dtype (params stay float32).
      kernel_init / scale_init: init of the convs and BN scales when NOT loading pretrained weights.
        Default: pix2pix N(0, 0.02) / N(1, 0.02), what the paper's reference applies to a
        non-pretrained generator. `mtcolor.models.init.torchvision_conv_kernel_init` gives
        torchvision's own from-scratch init.
    """

    in_channels: int = 3
    dtype: Any = jnp.float32
    kernel_init: Initializer = pix2pix_kernel_init
    scale_init: Initializer = pix2pix_scale_init

    @nn.compact
    def __call__(self, x: jnp.ndarray, train: bool = False, return_stages: bool = False):
        if x.shape[-1] != self.in_channels:
            raise ValueError(f"ResNet18(in_channels={self.in_channels}) got input with {x.shape[-1]} channels")
        x = jnp.asarray(x, self.dtype)
        x = nn.Conv(
            64, (7, 7), strides=(2, 2), padding=((3, 3), (3, 3)), use_bias=False,
            dtype=self.dtype, kernel_init=self.kernel_init, name="conv1",
        )(x)
        x = nn.relu(batch_norm(train, self.dtype, self.scale_init, "bn1")(x))
        stem = x
        # flax max_pool pads with -inf, as torch's MaxPool2d(3, 2, padding=1) does.
        x = nn.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))

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
