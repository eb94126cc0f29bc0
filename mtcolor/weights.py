"""ImageNet ResNet-18 weights for `mtcolor.models.ResNet18`, imported without PyTorch.

Reads torchvision/timm state dicts (`.pth` in PyTorch's zip format or its legacy pre-1.6 format,
both through a restricted unpickler that can never run code; `.safetensors`; `.npz`) and maps their keys onto the flax parameter names of
`mtcolor.models.ResNet18`. Everything here is numpy-only: importing this module pulls in neither
torch, TensorFlow nor JAX.
"""

from __future__ import annotations

import collections
from collections.abc import Mapping
import logging
import os
from pathlib import Path
import pickle
import re
import zipfile

import numpy as np

__all__ = [
    "TORCHVISION_RESNET18_URL",
    "UnsafeWeightsFileError",
    "WeightsFileFormatError",
    "WeightsMismatchError",
    "WeightsNotAvailableError",
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


# ---------------------------------------------------------------------------------------------
# Reading state dicts from files, without torch.


class UnsafeWeightsFileError(ValueError):
    """A `.pth` pickle references a global that a plain tensor state dict never needs."""


class WeightsFileFormatError(ValueError):
    """A weights file is not in a format this module reads (or is corrupt)."""


# torch storage class name -> numpy dtype of its elements (little-endian unless the archive's
# `byteorder` record says otherwise).
_STORAGE_DTYPES = {
    "FloatStorage": "f4",
    "DoubleStorage": "f8",
    "HalfStorage": "f2",
    "BFloat16Storage": "bfloat16",
    "LongStorage": "i8",
    "IntStorage": "i4",
    "ShortStorage": "i2",
    "CharStorage": "i1",
    "ByteStorage": "u1",
    "BoolStorage": "?",
}


class _StorageType:
    """Stands in for a `torch.<X>Storage` class inside the pickle: carries only the dtype."""

    def __init__(self, name: str):
        self.name = name


def _numpy_dtype(code: str, byteorder: str) -> np.dtype:
    if code == "bfloat16":
        import ml_dtypes  # a JAX dependency; imported only when a file holds bfloat16

        if byteorder != "little":
            raise WeightsFileFormatError("big-endian bfloat16 storages are not supported")
        return np.dtype(ml_dtypes.bfloat16)
    return np.dtype(("<" if byteorder == "little" else ">") + code)


def _rebuild_tensor(storage, storage_offset, size, stride, requires_grad=False,
                    backward_hooks=None, metadata=None):
    """`torch._utils._rebuild_tensor_v2`, for numpy: a (copied) strided view of the storage."""
    del requires_grad, backward_hooks, metadata  # autograd state means nothing here
    if not isinstance(storage, np.ndarray) or storage.ndim != 1:
        raise WeightsFileFormatError("tensor rebuilt from something that is not a storage")
    size, stride = tuple(int(n) for n in size), tuple(int(s) for s in stride)
    offset = int(storage_offset)
    if len(size) != len(stride) or offset < 0 or any(n < 0 for n in size) or any(s < 0 for s in stride):
        raise WeightsFileFormatError(f"invalid tensor layout: offset {offset}, size {size}, stride {stride}")
    if 0 in size:
        return np.zeros(size, storage.dtype)
    # as_strided does no bounds checking: a hostile or corrupt file must not read past the storage.
    last = offset + sum((n - 1) * s for n, s in zip(size, stride))
    if last >= storage.size:
        raise WeightsFileFormatError(
            f"tensor (offset {offset}, size {size}, stride {stride}) reaches past its storage "
            f"of {storage.size} elements"
        )
    view = np.lib.stride_tricks.as_strided(
        storage[offset:], shape=size, strides=[s * storage.itemsize for s in stride], writeable=False
    )
    return np.array(view)  # copy: own, contiguous memory, free of the shared storage


def _rebuild_parameter(data, requires_grad=False, backward_hooks=None):
    """`torch._utils._rebuild_parameter`: an nn.Parameter is just its data here."""
    del requires_grad, backward_hooks
    return data


class _RestrictedUnpickler(pickle.Unpickler):
    """Unpickles a torch state dict; any global beyond tensors, storages and OrderedDict is refused.

    `find_class` runs when the pickle names a global, before anything can call it, so refusing
    there means a hostile file never imports a module nor calls a function.
    """

    _ALLOWED = {
        ("collections", "OrderedDict"): collections.OrderedDict,
        ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
        ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    }

    def __init__(self, file, read_storage, source, *, legacy: bool = False):
        super().__init__(file)
        # read_storage(type name, key, numel) -> 1-D array; None for records that hold no tensors.
        self._read_storage = read_storage
        self._source = source
        self._legacy = legacy

    def find_class(self, module, name):
        if (module, name) in self._ALLOWED:
            return self._ALLOWED[(module, name)]
        if module == "torch" and name in _STORAGE_DTYPES:
            return _StorageType(name)
        raise UnsafeWeightsFileError(
            f"{self._source}: refusing to load the global '{module}.{name}' from the pickle. "
            "A weights state dict only needs tensors; this file wants to create other objects or "
            "run code, so it was not loaded (and nothing in it was imported or called). "
            "If you trust its origin, load it with torch and re-save only the tensors "
            "(torch.save(model.state_dict(), path))."
        )

    def persistent_load(self, pid):
        # Zip archives: ('storage', type, key, location, numel). The legacy format appends
        # view_metadata, which torch >= 1.0 always writes as None (storage views predate it).
        length = 6 if self._legacy else 5
        if (self._read_storage is None
                or not (isinstance(pid, tuple) and len(pid) == length and pid[0] == "storage"
                        and isinstance(pid[1], _StorageType))):
            raise WeightsFileFormatError(f"{self._source}: unsupported persistent id {pid!r:.200}")
        if self._legacy and pid[5] is not None:
            raise WeightsFileFormatError(
                f"{self._source}: storage views (torch < 1.0 legacy files) are not supported")
        _, storage_type, key, _location, numel = pid[:5]
        return self._read_storage(storage_type.name, str(key), int(numel))


def _read_pth(path: Path) -> dict:
    """A `torch.save` file as {name: numpy array}: the zip archive (PyTorch >= 1.6), or the legacy
    format (a sequence of pickles, the default before 1.6; e.g. pytorch-fid's Inception weights)."""
    if not zipfile.is_zipfile(path):
        with open(path, "rb") as f:
            head = f.read(1)
        if head == b"\x80":  # a pickle's PROTO opcode: what a legacy file starts with
            return _read_legacy_pth(path)
        raise WeightsFileFormatError(
            f"{path}: neither a PyTorch zip archive nor a legacy torch.save file (pickles). "
            "Re-save it with a current PyTorch: "
            "torch.save(torch.load(path, weights_only=True), new_path)."
        )
    with zipfile.ZipFile(path) as archive:
        names = archive.namelist()
        pickles = [n for n in names if n.endswith("data.pkl") and n.count("/") == 1]
        if len(pickles) != 1:
            raise WeightsFileFormatError(
                f"{path}: expected exactly one '<archive>/data.pkl' record, found {pickles}"
            )
        root = pickles[0][: -len("data.pkl")]
        byteorder = "little"
        if root + "byteorder" in names:
            byteorder = archive.read(root + "byteorder").decode().strip()
            if byteorder not in ("little", "big"):
                raise WeightsFileFormatError(f"{path}: unknown byteorder {byteorder!r}")
        storages: dict[str, np.ndarray] = {}

        def read_storage(type_name: str, key: str, numel: int) -> np.ndarray:
            # Several tensors can view one storage; read it once.
            if key not in storages:
                record = f"{root}data/{key}"
                if record not in names:
                    raise WeightsFileFormatError(f"{path}: storage record {record} is missing")
                dtype = _numpy_dtype(_STORAGE_DTYPES[type_name], byteorder)
                raw = archive.read(record)
                if len(raw) < numel * dtype.itemsize:
                    raise WeightsFileFormatError(
                        f"{path}: storage {record} has {len(raw)} bytes, needs "
                        f"{numel} x {dtype.itemsize}"
                    )
                storages[key] = np.frombuffer(raw, dtype=dtype, count=numel)
            return storages[key]

        with archive.open(pickles[0]) as f:
            try:
                obj = _RestrictedUnpickler(f, read_storage, path).load()
            except (UnsafeWeightsFileError, WeightsFileFormatError):
                raise
            except Exception as e:  # a corrupt pickle: say which file
                raise WeightsFileFormatError(f"{path}: cannot unpickle data.pkl: {e}") from e
    return _unwrap_checkpoint(obj, path)


_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
_LEGACY_PROTOCOL = 1001


def _read_legacy_pth(path: Path) -> dict:
    """A legacy (pre-1.6, `_use_new_zipfile_serialization=False`) `torch.save` file.

    Layout: pickles of the magic number, the protocol version and a sys_info dict; the object
    pickle, whose storages are persistent ids; a pickled list of storage keys; then each storage
    as an int64 element count and its raw (native, here little-endian) bytes. Every pickle goes
    through `_RestrictedUnpickler`, the header records included, so a file cannot run code from
    any of them. The storages come after the object pickle that uses them, so that pickle is read
    twice: first with zero stand-ins to learn each storage's dtype and size, then for real.
    """

    def load_record(f, read_storage=None):
        return _RestrictedUnpickler(f, read_storage, path, legacy=True).load()

    specs: dict[str, tuple[str, int]] = {}

    def note_storage(type_name: str, key: str, numel: int) -> np.ndarray:
        if specs.setdefault(key, (type_name, numel)) != (type_name, numel):
            raise WeightsFileFormatError(f"{path}: storage {key} is declared with two types or sizes")
        return np.zeros(numel, np.uint8)  # only its size matters on this pass

    with open(path, "rb") as f:
        try:
            if load_record(f) != _LEGACY_MAGIC:
                raise WeightsFileFormatError(f"{path}: not a torch.save file (bad magic number)")
            if (protocol := load_record(f)) != _LEGACY_PROTOCOL:
                raise WeightsFileFormatError(f"{path}: unknown legacy protocol version {protocol!r:.50}")
            sys_info = load_record(f)
            if not isinstance(sys_info, Mapping):
                raise WeightsFileFormatError(f"{path}: malformed sys_info record")
            if not sys_info.get("little_endian", True):
                raise WeightsFileFormatError(f"{path}: big-endian legacy files are not supported")
            start = f.tell()
            load_record(f, note_storage)
            keys = load_record(f)
            if not isinstance(keys, list) or set(map(str, keys)) != set(specs):
                raise WeightsFileFormatError(f"{path}: the storage key list does not match the pickle")
            storages: dict[str, np.ndarray] = {}
            for key in map(str, keys):
                type_name, numel = specs[key]
                dtype = _numpy_dtype(_STORAGE_DTYPES[type_name], "little")
                header = f.read(8)
                stored = int.from_bytes(header, "little", signed=True) if len(header) == 8 else None
                if stored != numel:
                    raise WeightsFileFormatError(
                        f"{path}: storage {key} holds {stored} elements, the pickle says {numel}")
                raw = f.read(numel * dtype.itemsize)
                if len(raw) != numel * dtype.itemsize:
                    raise WeightsFileFormatError(f"{path}: storage {key} is truncated")
                storages[key] = np.frombuffer(raw, dtype)
            f.seek(start)
            obj = load_record(f, lambda type_name, key, numel: storages[key])
        except (UnsafeWeightsFileError, WeightsFileFormatError):
            raise
        except Exception as e:  # a corrupt or foreign file: say which
            raise WeightsFileFormatError(f"{path}: cannot read as a legacy torch.save file: {e}") from e
    return _unwrap_checkpoint(obj, path)


def _unwrap_checkpoint(obj, path) -> dict:
    """The state dict itself, also when a training checkpoint wraps it in {'state_dict': ...}."""
    if not isinstance(obj, Mapping):
        raise WeightsFileFormatError(f"{path}: holds a {type(obj).__name__}, not a state dict")
    if not any(isinstance(v, np.ndarray) for v in obj.values()):
        for wrapper in ("state_dict", "model", "model_state_dict"):
            if isinstance(obj.get(wrapper), Mapping):
                return dict(obj[wrapper])
    return dict(obj)


def read_state_dict(path) -> dict[str, np.ndarray]:
    """{name: numpy array} from a `.pth` (torch zip or legacy format, read without torch through
    a restricted unpickler: a file that wants to run code raises `UnsafeWeightsFileError` naming
    the refused global), `.safetensors` or `.npz`."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"weights file not found: {path}")
    suffix = path.suffix.lower()
    if suffix in (".pth", ".pt", ".bin", ".ckpt"):
        return _read_pth(path)
    if suffix == ".safetensors":
        import safetensors.numpy

        try:
            return dict(safetensors.numpy.load_file(str(path)))
        except Exception as e:
            raise WeightsFileFormatError(f"{path}: cannot read safetensors file: {e}") from e
    if suffix == ".npz":
        try:
            with np.load(path, allow_pickle=False) as data:
                return {k: data[k] for k in data.files}
        except Exception as e:
            raise WeightsFileFormatError(f"{path}: cannot read npz file: {e}") from e
    raise WeightsFileFormatError(
        f"{path}: unknown weights format '{suffix}' (expected .pth/.pt, .safetensors or .npz)"
    )


def load_torchvision_resnet18(path, in_channels: int = 3) -> dict[str, dict]:
    """`mtcolor.models.ResNet18` variables {"params", "batch_stats"} from a ResNet-18 weights file.

    `path`: a torchvision/timm state dict as `.pth` (PyTorch's zip or legacy pre-1.6 format, read
    through a restricted unpickler: torch is not imported and a file that wants to run code is refused
    with `UnsafeWeightsFileError`), `.safetensors` or `.npz` with the torchvision key names
    (a common prefix such as 'module.' is stripped). `in_channels=1` sums conv1's RGB kernels.
    """
    return convert_torchvision_state_dict(read_state_dict(path), in_channels, path=path)


# ---------------------------------------------------------------------------------------------
# "torchvision": the official ImageNet file, from torch's hub cache or downloaded there.

TORCHVISION_RESNET18_URL = "https://download.pytorch.org/models/resnet18-f37072fd.pth"


class WeightsNotAvailableError(FileNotFoundError):
    """The official weights are neither in the cache nor downloadable (e.g. offline)."""


def torch_hub_checkpoint_dirs() -> list[Path]:
    """Where torch's hub caches checkpoints: $TORCH_HOME/hub/checkpoints (TORCH_HOME defaulting,
    as in torch, to $XDG_CACHE_HOME/torch, then ~/.cache/torch), then ~/.cache/torch/hub/checkpoints.
    The first is where a download goes."""
    default_home = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "torch"
    torch_home = Path(os.environ.get("TORCH_HOME", default_home)).expanduser()
    dirs = [torch_home / "hub" / "checkpoints", Path.home() / ".cache" / "torch" / "hub" / "checkpoints"]
    return list(dict.fromkeys(dirs))


def _hash_prefix(filename: str) -> str:
    # torch.hub's convention: 'name-<sha256 prefix>.ext'.
    match = re.search(r"-([a-f0-9]{6,})\.", filename)
    if not match:
        raise ValueError(f"{filename!r} carries no sha256 prefix ('name-<hex>.ext')")
    return match.group(1)


def download_checked(url: str, directory, *, urlopen=None, timeout: float = 60.0) -> Path:
    """Download `url` into `directory`, verifying the sha256 prefix in its file name.

    Writes to a temporary file next to the target and renames it into place only after the hash
    matched, so an interrupted or corrupt download never leaves a file that looks cached.
    `urlopen` (default `urllib.request.urlopen`) is injectable for tests.
    """
    import hashlib
    import tempfile
    import urllib.parse
    import urllib.request

    urlopen = urlopen or urllib.request.urlopen
    filename = Path(urllib.parse.urlparse(url).path).name
    prefix = _hash_prefix(filename)
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    target = directory / filename
    fd, tmp_name = tempfile.mkstemp(prefix=f".{filename}.", suffix=".partial", dir=directory)
    tmp = Path(tmp_name)
    try:
        digest = hashlib.sha256()
        with os.fdopen(fd, "wb") as out, urlopen(url, timeout=timeout) as response:
            while chunk := response.read(1 << 20):
                digest.update(chunk)
                out.write(chunk)
        if not digest.hexdigest().startswith(prefix):
            raise ValueError(
                f"downloaded {url} has sha256 {digest.hexdigest()}, which does not start with "
                f"the '{prefix}' in its name; the file was deleted"
            )
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)
    return target


def find_hub_checkpoint(url: str, *, how_to_fetch: str, pass_path_hint: str,
                        download: bool = True, urlopen=None) -> Path:
    """A published weights file (its name carries a sha256 prefix, torch hub style): from torch's
    hub cache (`torch_hub_checkpoint_dirs()`), else downloaded there with `download_checked`.

    Offline (or with download=False) raises `WeightsNotAvailableError` saying where the file was
    looked for, where to put it, and `how_to_fetch` it on a machine with internet access.
    """
    import urllib.parse

    filename = Path(urllib.parse.urlparse(url).path).name
    dirs = torch_hub_checkpoint_dirs()
    for directory in dirs:
        if (directory / filename).is_file():
            return directory / filename
    instructions = (
        f"Put {filename} into {dirs[0]} (or point TORCH_HOME at a directory whose "
        f"hub/checkpoints holds it), or {pass_path_hint}. To fetch it on a machine with internet "
        f"access: `curl -LO {url}` (its sha256 starts with {_hash_prefix(filename)}), or "
        f"{how_to_fetch} there and copy ~/.cache/torch/hub/checkpoints/{filename}."
    )
    searched = ", ".join(str(d) for d in dirs)
    if not download:
        raise WeightsNotAvailableError(f"{filename} not found in {searched}. {instructions}")
    try:
        logging.info("Downloading %s to %s", url, dirs[0])
        return download_checked(url, dirs[0], urlopen=urlopen)
    except OSError as e:  # URLError, timeouts, DNS failures: offline
        raise WeightsNotAvailableError(
            f"{filename} not found in {searched} and the download from {url} failed ({e}). "
            f"{instructions}"
        ) from e


def find_torchvision_resnet18(*, download: bool = True, urlopen=None) -> Path:
    """The official `resnet18-f37072fd.pth`: from the torch hub cache, else downloaded there."""
    return find_hub_checkpoint(
        TORCHVISION_RESNET18_URL,
        how_to_fetch="run `python -c \"import torchvision; "
        "torchvision.models.resnet18(weights='IMAGENET1K_V1')\"`",
        pass_path_hint="pass its path as `pretrained`",
        download=download, urlopen=urlopen,
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
