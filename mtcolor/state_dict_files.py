"""PyTorch state dicts read from files without torch: {name: numpy array}.

`read_state_dict` reads `.pth` files in PyTorch's zip format (>= 1.6) and in its legacy pre-1.6
format, both through a restricted unpickler that can never run code (a file that wants to raises
`UnsafeWeightsFileError` naming the refused global), as well as `.safetensors` and `.npz`.
Everything here is numpy-only: importing this module pulls in neither torch, TensorFlow nor JAX.
What the arrays mean (key layouts, conversion to flax variables) is `mtcolor.weights`' concern.
"""

from __future__ import annotations

import collections
import pickle
import zipfile
from collections.abc import Mapping
from pathlib import Path

import numpy as np

__all__ = ["UnsafeWeightsFileError", "WeightsFileFormatError", "read_state_dict"]


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


def _rebuild_tensor(
    storage, storage_offset, size, stride, requires_grad=False, backward_hooks=None, metadata=None
):
    """`torch._utils._rebuild_tensor_v2`, for numpy: a (copied) strided view of the storage."""
    del requires_grad, backward_hooks, metadata  # autograd state means nothing here
    if not isinstance(storage, np.ndarray) or storage.ndim != 1:
        raise WeightsFileFormatError("tensor rebuilt from something that is not a storage")
    size, stride = tuple(int(n) for n in size), tuple(int(s) for s in stride)
    offset = int(storage_offset)
    if (
        len(size) != len(stride)
        or offset < 0
        or any(n < 0 for n in size)
        or any(s < 0 for s in stride)
    ):
        raise WeightsFileFormatError(
            f"invalid tensor layout: offset {offset}, size {size}, stride {stride}"
        )
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
        storage[offset:],
        shape=size,
        strides=[s * storage.itemsize for s in stride],
        writeable=False,
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
        if self._read_storage is None or not (
            isinstance(pid, tuple)
            and len(pid) == length
            and pid[0] == "storage"
            and isinstance(pid[1], _StorageType)
        ):
            raise WeightsFileFormatError(f"{self._source}: unsupported persistent id {pid!r:.200}")
        if self._legacy and pid[5] is not None:
            raise WeightsFileFormatError(
                f"{self._source}: storage views (torch < 1.0 legacy files) are not supported"
            )
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
            raise WeightsFileFormatError(
                f"{path}: storage {key} is declared with two types or sizes"
            )
        return np.zeros(numel, np.uint8)  # only its size matters on this pass

    with open(path, "rb") as f:
        try:
            if load_record(f) != _LEGACY_MAGIC:
                raise WeightsFileFormatError(f"{path}: not a torch.save file (bad magic number)")
            if (protocol := load_record(f)) != _LEGACY_PROTOCOL:
                raise WeightsFileFormatError(
                    f"{path}: unknown legacy protocol version {protocol!r:.50}"
                )
            sys_info = load_record(f)
            if not isinstance(sys_info, Mapping):
                raise WeightsFileFormatError(f"{path}: malformed sys_info record")
            if not sys_info.get("little_endian", True):
                raise WeightsFileFormatError(f"{path}: big-endian legacy files are not supported")
            start = f.tell()
            load_record(f, note_storage)
            keys = load_record(f)
            if not isinstance(keys, list) or set(map(str, keys)) != set(specs):
                raise WeightsFileFormatError(
                    f"{path}: the storage key list does not match the pickle"
                )
            storages: dict[str, np.ndarray] = {}
            for key in map(str, keys):
                type_name, numel = specs[key]
                dtype = _numpy_dtype(_STORAGE_DTYPES[type_name], "little")
                header = f.read(8)
                stored = int.from_bytes(header, "little", signed=True) if len(header) == 8 else None
                if stored != numel:
                    raise WeightsFileFormatError(
                        f"{path}: storage {key} holds {stored} elements, the pickle says {numel}"
                    )
                raw = f.read(numel * dtype.itemsize)
                if len(raw) != numel * dtype.itemsize:
                    raise WeightsFileFormatError(f"{path}: storage {key} is truncated")
                storages[key] = np.frombuffer(raw, dtype)
            f.seek(start)
            obj = load_record(f, lambda type_name, key, numel: storages[key])
        except (UnsafeWeightsFileError, WeightsFileFormatError):
            raise
        except Exception as e:  # a corrupt or foreign file: say which
            raise WeightsFileFormatError(
                f"{path}: cannot read as a legacy torch.save file: {e}"
            ) from e
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


PTH_SUFFIXES = (".pth", ".pt", ".bin", ".ckpt")  # torch.save files, by the names they go by
WEIGHTS_FILE_SUFFIXES = PTH_SUFFIXES + (".safetensors", ".npz")


def read_state_dict(path) -> dict[str, np.ndarray]:
    """{name: numpy array} from a `.pth` (torch zip or legacy format, read without torch through
    a restricted unpickler: a file that wants to run code raises `UnsafeWeightsFileError` naming
    the refused global), `.safetensors` or `.npz`."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"weights file not found: {path}")
    suffix = path.suffix.lower()
    if suffix in PTH_SUFFIXES:
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
        f"{path}: unknown weights format '{suffix}' (expected one of "
        f"{', '.join(WEIGHTS_FILE_SUFFIXES)})"
    )
