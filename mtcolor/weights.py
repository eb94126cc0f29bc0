"""ImageNet ResNet-18 weights for `mtcolor.models.ResNet18`, imported without PyTorch.

Reads torchvision/timm state dicts (`.pth` zip archives through a restricted unpickler that can
never run code, `.safetensors`, `.npz`) and maps their keys onto the flax parameter names of
`mtcolor.models.ResNet18`. Everything here is numpy-only: importing this module pulls in neither
torch, TensorFlow nor JAX.
"""

from __future__ import annotations

from collections.abc import Mapping
import numpy as np

__all__ = [
    "WeightsMismatchError",
    "convert_torchvision_state_dict",
    "expected_torchvision_shapes",
]


class WeightsMismatchError(ValueError):
    """A state dict does not fit ResNet-18: lists every missing, unexpected and mis-shaped key."""

    def __init__(self, missing=(), unexpected=(), shape_mismatches=(), path=None):
        self.missing = list(missing)
        self.unexpected = list(unexpected)
        # (key, found shape, expected shape(s))
        self.shape_mismatches = list(shape_mismatches)
        self.path = None if path is None else str(path)
        lines = [
            "ResNet-18 weights do not match"
            + (f" in {self.path}" if self.path else "")
            + f": {len(self.missing)} missing, {len(self.unexpected)} unexpected, "
            f"{len(self.shape_mismatches)} shape mismatches."
        ]
        if self.missing:
            lines.append("Missing keys: " + ", ".join(self.missing))
        if self.unexpected:
            lines.append("Unexpected keys: " + ", ".join(self.unexpected))
        for key, found, expected in self.shape_mismatches:
            lines.append(f"Shape mismatch for {key}: found {found}, expected {expected}")
        super().__init__("\n".join(lines))


# torchvision ResNet-18: (stage, output channels, input channels of the stage's first block).
_STAGES = ((1, 64, 64), (2, 128, 64), (3, 256, 128), (4, 512, 256))
_BN_FIELDS = {
    # torch name -> (flax collection, flax name)
    "weight": ("params", "scale"),
    "bias": ("params", "bias"),
    "running_mean": ("batch_stats", "mean"),
    "running_var": ("batch_stats", "var"),
}


def _torchvision_layout() -> dict[str, tuple[tuple[int, ...], str, tuple[str, ...]]]:
    """torch key -> (torch shape for 3 input channels, flax collection, flax path).

    A hand table rather than shapes traced from the flax model, so a wrong model shape and a
    wrong mapping cannot hide each other.
    """
    layout = {}

    def conv(torch_prefix, shape, flax_path):
        layout[f"{torch_prefix}.weight"] = (shape, "params", (*flax_path, "kernel"))

    def bn(torch_prefix, channels, flax_path):
        for field, (collection, name) in _BN_FIELDS.items():
            layout[f"{torch_prefix}.{field}"] = ((channels,), collection, (*flax_path, name))

    conv("conv1", (64, 3, 7, 7), ("conv1",))
    bn("bn1", 64, ("bn1",))
    for stage, out_ch, in_ch in _STAGES:
        for block in (0, 1):
            block_in = in_ch if block == 0 else out_ch
            tp, fp = f"layer{stage}.{block}", f"layer{stage}_{block}"
            conv(f"{tp}.conv1", (out_ch, block_in, 3, 3), (fp, "conv1"))
            bn(f"{tp}.bn1", out_ch, (fp, "bn1"))
            conv(f"{tp}.conv2", (out_ch, out_ch, 3, 3), (fp, "conv2"))
            bn(f"{tp}.bn2", out_ch, (fp, "bn2"))
            if block == 0 and stage > 1:
                conv(f"{tp}.downsample.0", (out_ch, block_in, 1, 1), (fp, "downsample_conv"))
                bn(f"{tp}.downsample.1", out_ch, (fp, "downsample_bn"))
    return layout


_LAYOUT = _torchvision_layout()


def expected_torchvision_shapes(in_channels: int = 3) -> dict[str, tuple[int, ...]]:
    """The torch (OIHW) shape of every ResNet-18 key this module needs, for `in_channels` input."""
    shapes = {key: shape for key, (shape, _, _) in _LAYOUT.items()}
    shapes["conv1.weight"] = (64, in_channels, 7, 7)
    return shapes


def _is_ignored(key: str) -> bool:
    # The ImageNet classifier is not part of the body; BN's step counter has no flax counterpart.
    return key.startswith("fc.") or key.endswith(".num_batches_tracked")


def _strip_prefix(keys) -> str:
    """The prefix in front of the torchvision names ('' for torchvision/timm files).

    Wrapped models store e.g. 'module.conv1.weight' (DataParallel) or 'backbone.conv1.weight';
    the prefix is whatever precedes 'conv1.weight' when 'layer1.0.conv1.weight' shares it.
    """
    keys = set(keys)
    if "conv1.weight" in keys:
        return ""
    candidates = sorted(
        (k[: -len("conv1.weight")] for k in keys if k.endswith(".conv1.weight")), key=len
    )
    for prefix in candidates:
        if f"{prefix}layer1.0.conv1.weight" in keys:
            return prefix
    return ""


def _set_nested(tree: dict, path: tuple[str, ...], value) -> None:
    for name in path[:-1]:
        tree = tree.setdefault(name, {})
    tree[path[-1]] = value


def convert_torchvision_state_dict(
    state_dict: Mapping[str, np.ndarray], in_channels: int = 3, *, path=None
) -> dict[str, dict]:
    """Map a torchvision/timm ResNet-18 state dict onto `mtcolor.models.ResNet18` variables.

    Returns {"params": ..., "batch_stats": ...} as nested dicts of float32 numpy arrays. Conv
    kernels go from torch OIHW to flax HWIO. With `in_channels=1`, an RGB conv1 becomes the sum
    of its three input-channel kernels (fastai's `create_body(n_in=1)`), so a gray image gives
    the same features as that image repeated in three channels; a conv1 that already has one
    input channel is taken as is. `fc.*` and `num_batches_tracked` are ignored. Any missing,
    unexpected or mis-shaped key raises one `WeightsMismatchError` listing all of them.
    """
    if in_channels not in (1, 3):
        raise ValueError(f"in_channels must be 1 or 3, got {in_channels}")
    prefix = _strip_prefix(state_dict.keys())
    found = {}
    unexpected = []
    for key, value in state_dict.items():
        name = key[len(prefix):] if prefix and key.startswith(prefix) else key
        if prefix and not key.startswith(prefix):
            unexpected.append(key)
        elif _is_ignored(name):
            continue
        elif name not in _LAYOUT:
            unexpected.append(key)
        elif not isinstance(value, np.ndarray | np.generic):
            unexpected.append(f"{key} (a {type(value).__name__}, not an array)")
        else:
            found[name] = np.asarray(value)

    missing = [prefix + k for k in _LAYOUT if k not in found]
    mismatches = []
    for name, value in found.items():
        expected = _LAYOUT[name][0]
        allowed = [expected]
        if name == "conv1.weight" and in_channels == 1:
            allowed.append((64, 1, 7, 7))
        if value.shape not in allowed:
            shown = expected if len(allowed) == 1 else " or ".join(map(str, allowed))
            mismatches.append((prefix + name, tuple(value.shape), shown))
    if missing or unexpected or mismatches:
        raise WeightsMismatchError(missing, unexpected, mismatches, path=path)

    variables: dict[str, dict] = {"params": {}, "batch_stats": {}}
    for name, value in found.items():
        _, collection, flax_path = _LAYOUT[name]
        value = value.astype(np.float32)
        if name == "conv1.weight" and in_channels == 1 and value.shape[1] == 3:
            # Sum in float64: the grayscale parity (1-channel on L == 3-channel on L,L,L) is
            # then limited only by the final float32 rounding.
            value = value.astype(np.float64).sum(axis=1, keepdims=True).astype(np.float32)
        if value.ndim == 4:
            value = np.ascontiguousarray(value.transpose(2, 3, 1, 0))  # OIHW -> HWIO
        _set_nested(variables[collection], flax_path, value)
    return variables
