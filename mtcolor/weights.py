"""ImageNet ResNet-18 weights for `mtcolor.models.ResNet18`, imported without PyTorch.

Maps torch state dicts onto flax variables: `convert_state_dict` for any model given its key
layout (also used for the FID Inception-v3 in `mtcolor.eval.inception`), and torchvision/timm's
ResNet-18 layout with `convert_torchvision_state_dict` / `load_resnet18`. The files themselves are
read by `mtcolor.state_dict_files` (`.pth` through a restricted unpickler that can never run code,
`.safetensors`, `.npz`); the official file is found in, or downloaded to, torch's hub cache by
`mtcolor.hub`. Their public names are re-exported here. Everything here is numpy-only: importing
this module pulls in neither torch, TensorFlow nor JAX.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import numpy as np

from mtcolor.hub import (
    WeightsNotAvailableError,
    download_checked,
    find_hub_checkpoint,
    torch_hub_checkpoint_dirs,
)
from mtcolor.state_dict_files import (
    UnsafeWeightsFileError,
    WeightsFileFormatError,
    read_state_dict,
)

__all__ = [
    "TORCHVISION_RESNET18_URL",
    "UnsafeWeightsFileError",
    "WeightsFileFormatError",
    "WeightsMismatchError",
    "WeightsNotAvailableError",
    "convert_state_dict",
    "convert_torchvision_state_dict",
    "download_checked",
    "expected_torchvision_shapes",
    "find_torchvision_resnet18",
    "load_resnet18",
    "load_torchvision_resnet18",
    "read_state_dict",
    "torch_hub_checkpoint_dirs",
]


class WeightsMismatchError(ValueError):
    """A state dict does not fit the model: lists every missing, unexpected and mis-shaped key."""

    model_name = "ResNet-18"  # subclasses name their model

    def __init__(self, missing=(), unexpected=(), shape_mismatches=(), path=None):
        self.missing = list(missing)
        self.unexpected = list(unexpected)
        # (key, found shape, expected shape(s))
        self.shape_mismatches = list(shape_mismatches)
        self.path = None if path is None else str(path)
        lines = [
            f"{self.model_name} weights do not match"
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


# torch BatchNorm field -> (flax collection, flax name).
TORCH_BN_FIELDS = {
    "weight": ("params", "scale"),
    "bias": ("params", "bias"),
    "running_mean": ("batch_stats", "mean"),
    "running_var": ("batch_stats", "var"),
}

# A model's key layout: torch key -> (torch shape, flax collection, flax path).
Layout = Mapping[str, tuple[tuple[int, ...], str, tuple[str, ...]]]


def is_classifier_or_step_counter(key: str) -> bool:
    """Keys a feature extractor does not load: the ImageNet classifier `fc.*` is not part of the
    body, and BatchNorm's `num_batches_tracked` step counter has no flax counterpart."""
    return key.startswith("fc.") or key.endswith(".num_batches_tracked")


def _set_nested(tree: dict, path: tuple[str, ...], value) -> None:
    for name in path[:-1]:
        tree = tree.setdefault(name, {})
    tree[path[-1]] = value


def convert_state_dict(
    state_dict: Mapping[str, np.ndarray],
    layout: Layout,
    *,
    ignored: Callable[[str], bool] = is_classifier_or_step_counter,
    prefix: str = "",
    allowed_shapes: Mapping[str, Sequence[tuple[int, ...]]] | None = None,
    error_type: type[WeightsMismatchError] = WeightsMismatchError,
    path=None,
) -> dict[str, dict]:
    """Map a torch state dict onto flax variables {"params": ..., "batch_stats": ...} by `layout`.

    The state dict's keys are `prefix` + a layout key; keys whose name (without the prefix)
    `ignored` accepts are skipped. A key's shape must be its layout shape, or one of
    `allowed_shapes[key]` where given. Any missing, unexpected or mis-shaped key raises one
    `error_type` listing all of them. Values become float32 numpy arrays in nested dicts, conv
    kernels going from torch OIHW to flax HWIO.
    """
    allowed_shapes = allowed_shapes or {}
    found = {}
    unexpected = []
    mismatches = []
    for key, value in state_dict.items():
        name = key[len(prefix) :]
        if not key.startswith(prefix):
            unexpected.append(key)
        elif ignored(name):
            continue
        elif name not in layout:
            unexpected.append(key)
        elif not isinstance(value, np.ndarray | np.generic):
            unexpected.append(f"{key} (a {type(value).__name__}, not an array)")
        else:
            expected = layout[name][0]
            allowed = [tuple(s) for s in allowed_shapes.get(name, [expected])]
            if np.shape(value) in allowed:
                found[name] = value
            else:
                shown = expected if len(allowed) == 1 else " or ".join(map(str, allowed))
                mismatches.append((key, np.shape(value), shown))
    missing = [prefix + name for name in layout if prefix + name not in state_dict]
    if missing or unexpected or mismatches:
        raise error_type(missing, unexpected, mismatches, path=path)

    variables: dict[str, dict] = {"params": {}, "batch_stats": {}}
    for name, value in found.items():
        _, collection, flax_path = layout[name]
        value = np.asarray(value).astype(np.float32)
        if value.ndim == 4:
            value = np.ascontiguousarray(value.transpose(2, 3, 1, 0))  # OIHW -> HWIO
        _set_nested(variables[collection], flax_path, value)
    return variables


# ---------------------------------------------------------------------------------------------
# torchvision/timm ResNet-18.

# torchvision ResNet-18: (stage, output channels, input channels of the stage's first block).
_STAGES = ((1, 64, 64), (2, 128, 64), (3, 256, 128), (4, 512, 256))


def _torchvision_layout() -> Layout:
    """torch key -> (torch shape for 3 input channels, flax collection, flax path).

    A hand table rather than shapes traced from the flax model, so a wrong model shape and a
    wrong mapping cannot hide each other.
    """
    layout = {}

    def conv(torch_prefix, shape, flax_path):
        layout[f"{torch_prefix}.weight"] = (shape, "params", (*flax_path, "kernel"))

    def bn(torch_prefix, channels, flax_path):
        for field, (collection, name) in TORCH_BN_FIELDS.items():
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
    conv1_shape = _LAYOUT["conv1.weight"][0]
    allowed_shapes = {"conv1.weight": [conv1_shape, (64, 1, 7, 7)]} if in_channels == 1 else None
    variables = convert_state_dict(
        state_dict,
        _LAYOUT,
        prefix=_strip_prefix(state_dict.keys()),
        allowed_shapes=allowed_shapes,
        path=path,
    )
    conv1 = variables["params"]["conv1"]
    if in_channels == 1 and conv1["kernel"].shape[2] == 3:
        # Sum in float64: the grayscale parity (1-channel on L == 3-channel on L,L,L) is then
        # limited only by the final float32 rounding.
        conv1["kernel"] = (
            conv1["kernel"].astype(np.float64).sum(axis=2, keepdims=True).astype(np.float32)
        )
    return variables


def load_torchvision_resnet18(path, in_channels: int = 3) -> dict[str, dict]:
    """`mtcolor.models.ResNet18` variables {"params", "batch_stats"} from a ResNet-18 weights file.

    `path`: a torchvision/timm state dict as `.pth` (PyTorch's zip or legacy pre-1.6 format, read
    through a restricted unpickler: torch is not imported and a file that wants to run code is
    refused with `UnsafeWeightsFileError`), `.safetensors` or `.npz` with the torchvision key names
    (a common prefix such as 'module.' is stripped). `in_channels=1` sums conv1's RGB kernels.
    """
    return convert_torchvision_state_dict(read_state_dict(path), in_channels, path=path)


# ---------------------------------------------------------------------------------------------
# "torchvision": the official ImageNet file, from torch's hub cache or downloaded there.

TORCHVISION_RESNET18_URL = "https://download.pytorch.org/models/resnet18-f37072fd.pth"


def find_torchvision_resnet18(*, download: bool = True, urlopen=None) -> Path:
    """The official `resnet18-f37072fd.pth`: from the torch hub cache, else downloaded there."""
    return find_hub_checkpoint(
        TORCHVISION_RESNET18_URL,
        how_to_fetch='run `python -c "import torchvision; '
        "torchvision.models.resnet18(weights='IMAGENET1K_V1')\"`",
        pass_path_hint="pass its path as `pretrained`",
        download=download,
        urlopen=urlopen,
    )


def load_resnet18(pretrained, in_channels: int = 3, *, download: bool = True) -> dict[str, dict]:
    """ResNet18 variables for a `pretrained` setting: a weights file path, or "torchvision".

    "torchvision" means the official ImageNet file `resnet18-f37072fd.pth`, looked up in
    torch's hub cache and, when absent, downloaded there with its hash checked (raises
    `WeightsNotAvailableError` with instructions when offline). Any other string or path is
    read by `load_torchvision_resnet18`.
    """
    if pretrained is None:
        raise ValueError("pretrained is None: there are no weights to load (random init)")
    if isinstance(pretrained, str) and pretrained == "torchvision":
        path = find_torchvision_resnet18(download=download)
    else:
        path = Path(pretrained).expanduser()
    return load_torchvision_resnet18(path, in_channels)
