"""Initialisation: the pix2pix scheme for new layers, and `init_variables` for whole models.

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

from typing import Any

import jax
import jax.numpy as jnp
from flax import linen as nn

PIX2PIX_INIT_STD = 0.02

# N(0, 0.02) for conv and transposed-conv kernels (pix2pix `init.normal_(w, 0.0, gain)`).
pix2pix_kernel_init = nn.initializers.normal(stddev=PIX2PIX_INIT_STD)


def pix2pix_scale_init(key: jax.Array, shape, dtype=jnp.float32) -> jax.Array:
    """BatchNorm scale ~ N(1, 0.02) (pix2pix `init.normal_(bn.weight, 1.0, gain)`)."""
    return 1.0 + PIX2PIX_INIT_STD * jax.random.normal(key, shape, dtype)


# torchvision ResNet: kaiming_normal_(mode="fan_out", nonlinearity="relu") = N(0, 2/fan_out), untruncated.
torchvision_conv_kernel_init = nn.initializers.variance_scaling(2.0, "fan_out", "normal")

# PyTorch nn.Linear default: kaiming_uniform_(a=sqrt(5)) = U(+-1/sqrt(fan_in)), i.e. variance 1/(3 fan_in).
pytorch_dense_kernel_init = nn.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform")


def pytorch_dense_bias_init(fan_in: int):
    """nn.Linear default bias: U(-1/sqrt(fan_in), 1/sqrt(fan_in)); fan_in is not known to flax's
    bias init signature, so the caller binds it."""
    bound = 1.0 / float(fan_in) ** 0.5

    def init(key: jax.Array, shape, dtype=jnp.float32) -> jax.Array:
        return jax.random.uniform(key, shape, dtype, -bound, bound)

    return init


def init_variables(
    model: nn.Module,
    rng: jax.Array,
    image_size: int,
    in_channels: int,
    pretrained: str | None = None,
) -> dict[str, Any]:
    """Initialise `model` for (1, image_size, image_size, in_channels) inputs.

    Returns {"params": ..., "batch_stats": ...} (plain dicts). New layers get the pix2pix init built
    into the modules. With `pretrained` (a path or "torchvision"), the ImageNet ResNet-18 weights from
    `mtcolor.weights.load_resnet18` replace the backbone's params and batch_stats: the whole tree when
    `model` is a `ResNet18`, else `variables[...]["backbone"]`.
    """
    from mtcolor.models.resnet import ResNet18  # local: resnet.py imports this module

    params_rng, dropout_rng = jax.random.split(rng)
    dummy = jnp.zeros((1, image_size, image_size, in_channels), jnp.float32)
    # Eager, not jitted: compiling a whole-model init costs more than the one forward pass it runs,
    # and eager op compilations are cached across models of the same shapes.
    variables = model.init({"params": params_rng, "dropout": dropout_rng}, dummy, train=False)
    variables = {
        "params": _to_dict(variables["params"]),
        "batch_stats": _to_dict(variables.get("batch_stats", {})),
    }
    if pretrained is None:
        return variables

    from mtcolor.weights import load_resnet18  # lazy: weights pulls in file readers

    backbone = load_resnet18(pretrained, in_channels)
    if isinstance(model, ResNet18):
        _check_same_structure(variables, backbone, where="ResNet18")
        return {"params": _to_dict(backbone["params"]), "batch_stats": _to_dict(backbone["batch_stats"])}
    if "backbone" not in variables["params"]:
        raise ValueError(f"{type(model).__name__} has no `backbone` submodule to load pretrained weights into")
    current = {"params": variables["params"]["backbone"], "batch_stats": variables["batch_stats"]["backbone"]}
    _check_same_structure(current, backbone, where=f"{type(model).__name__}.backbone")
    variables["params"]["backbone"] = _to_dict(backbone["params"])
    variables["batch_stats"]["backbone"] = _to_dict(backbone["batch_stats"])
    return variables


def _to_dict(tree):
    if hasattr(tree, "items"):
        return {k: _to_dict(v) for k, v in tree.items()}
    return tree


def _check_same_structure(expected, loaded, where: str) -> None:
    """Refuse loaded weights whose keys or shapes differ from the freshly initialised module's."""
    exp = {jax.tree_util.keystr(p): jnp.shape(v) for p, v in jax.tree_util.tree_leaves_with_path(expected)}
    got = {jax.tree_util.keystr(p): jnp.shape(v) for p, v in jax.tree_util.tree_leaves_with_path(loaded)}
    missing = sorted(set(exp) - set(got))
    unexpected = sorted(set(got) - set(exp))
    mismatched = sorted(k for k in set(exp) & set(got) if tuple(exp[k]) != tuple(got[k]))
    if missing or unexpected or mismatched:
        lines = [f"pretrained weights do not fit {where}:"]
        lines += [f"  missing {k}" for k in missing]
        lines += [f"  unexpected {k}" for k in unexpected]
        lines += [f"  shape {k}: model {exp[k]} vs loaded {got[k]}" for k in mismatched]
        raise ValueError("\n".join(lines))
