"""`init_variables`: a whole model's variables, fresh or with the ImageNet backbone loaded.

New layers get the initializers built into the modules (`mtcolor.models.initializers`: the
pix2pix scheme of the paper's reference); with `pretrained`, the ResNet-18 backbone's params and
batch_stats are replaced by `mtcolor.weights.load_resnet18`'s.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import linen as nn

from mtcolor.models.resnet import ResNet18


def init_variables(
    model: nn.Module,
    rng: jax.Array,
    image_size: int,
    in_channels: int,
    pretrained: str | None = None,
) -> dict[str, Any]:
    """Initialise `model` for (1, image_size, image_size, in_channels) inputs.

    Returns {"params": ..., "batch_stats": ...} (plain dicts). New layers get the pix2pix init built
    into the modules. With `pretrained` (a path or "torchvision"), the ImageNet ResNet-18 weights
    from `mtcolor.weights.load_resnet18` replace the backbone's params and batch_stats: the whole
    tree when `model` is a `ResNet18`, else `variables[...]["backbone"]`.
    """
    params_rng, dropout_rng = jax.random.split(rng)
    dummy = jnp.zeros((1, image_size, image_size, in_channels), jnp.float32)
    # Not jitted here: it runs under whatever jit the caller chose. `mtcolor.train.state` jits the
    # whole call when no weights file is read (op by op, a full model's init takes ~10 s on CPU);
    # reading a weights file (below) is host work that cannot be traced.
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
        return {
            "params": _to_dict(backbone["params"]),
            "batch_stats": _to_dict(backbone["batch_stats"]),
        }
    if "backbone" not in variables["params"]:
        raise ValueError(
            f"{type(model).__name__} has no `backbone` submodule to load pretrained weights into"
        )
    current = {
        "params": variables["params"]["backbone"],
        "batch_stats": variables["batch_stats"]["backbone"],
    }
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
    exp = {
        jax.tree_util.keystr(p): jnp.shape(v)
        for p, v in jax.tree_util.tree_leaves_with_path(expected)
    }
    got = {
        jax.tree_util.keystr(p): jnp.shape(v)
        for p, v in jax.tree_util.tree_leaves_with_path(loaded)
    }
    missing = sorted(set(exp) - set(got))
    unexpected = sorted(set(got) - set(exp))
    mismatched = sorted(k for k in set(exp) & set(got) if tuple(exp[k]) != tuple(got[k]))
    if missing or unexpected or mismatched:
        lines = [f"pretrained weights do not fit {where}:"]
        lines += [f"  missing {k}" for k in missing]
        lines += [f"  unexpected {k}" for k in unexpected]
        lines += [f"  shape {k}: model {exp[k]} vs loaded {got[k]}" for k in mismatched]
        raise ValueError("\n".join(lines))
