"""Initializers of new layers: the pix2pix scheme, PyTorch's nn.Linear default, torchvision's.

The paper trains "with all hyper-parameters as in [3]" (its reference tutorial), whose `init_model`
is pix2pix's `init_weights(init_type="normal", gain=0.02)`:
  * every Conv / ConvTranspose kernel ~ N(0, 0.02), biases 0,
  * every BatchNorm scale ~ N(1, 0.02), BN bias 0.
The tutorial applies it to the discriminator always and to the generator only when the generator
is not pretrained; imported ImageNet weights are left untouched. The tutorial's `init_weights`
matches on "Conv" and "BatchNorm" class names only, so the paper's fully connected class head keeps
PyTorch's default `nn.Linear` init (U(+-1/sqrt(fan_in)) for weight and bias); `pytorch_dense_*`
reproduces that.

`torchvision_conv_kernel_init` is the init of an untrained torchvision ResNet (kaiming normal,
fan_out, ReLU gain) for anyone training the backbone from scratch without the pix2pix scheme:
`ResNet18(kernel_init=torchvision_conv_kernel_init)`.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import linen as nn

PIX2PIX_INIT_STD = 0.02

# N(0, 0.02) for conv and transposed-conv kernels (pix2pix `init.normal_(w, 0.0, gain)`).
pix2pix_kernel_init = nn.initializers.normal(stddev=PIX2PIX_INIT_STD)


def pix2pix_scale_init(key: jax.Array, shape, dtype=jnp.float32) -> jax.Array:
    """BatchNorm scale ~ N(1, 0.02) (pix2pix `init.normal_(bn.weight, 1.0, gain)`)."""
    return 1.0 + PIX2PIX_INIT_STD * jax.random.normal(key, shape, dtype)


# torchvision ResNet: kaiming_normal_(mode="fan_out", nonlinearity="relu") = N(0, 2/fan_out),
# untruncated.
torchvision_conv_kernel_init = nn.initializers.variance_scaling(2.0, "fan_out", "normal")

# PyTorch nn.Linear default: kaiming_uniform_(a=sqrt(5)) = U(+-1/sqrt(fan_in)), i.e. variance
# 1/(3 fan_in).
pytorch_dense_kernel_init = nn.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform")


def pytorch_dense_bias_init(fan_in: int):
    """nn.Linear default bias: U(-1/sqrt(fan_in), 1/sqrt(fan_in)); fan_in is not known to flax's
    bias init signature, so the caller binds it."""
    bound = 1.0 / float(fan_in) ** 0.5

    def init(key: jax.Array, shape, dtype=jnp.float32) -> jax.Array:
        return jax.random.uniform(key, shape, dtype, -bound, bound)

    return init
