"""The decoded-image cache of the resident input path: a split decoded and resized ONCE into
`<cache_dir>/<split>-<kind>-<size>px-<source>-<digest>.npz`.

The file holds uint8 RGB (N, S, S, 3), int32 labels, each image's mean chroma (for the grayscale
filter, applied at load time so the cache does not depend on it), its key, and the skipped files
with their reasons. Decoding runs the grain path's own `DecodeAndResize` through grain (threads /
workers as `read_threads` / `worker_count`), so the pixels are the grain path's. The digest covers
everything the pixels depend on: the source (kind; folder root with every file's relative path,
label, size and mtime; tfds name, version, split and classes; synthetic parameters), the image
size, the decode options and the code of `decode.py` (and `synthetic.py`), so a changed file or
option builds a new cache and the stale one of the same source is deleted. Written to a temporary
file and renamed: a killed build leaves nothing half-written. Bad files are skipped and counted as
the grain path does (same reasons, `max_bad_fraction` enforced while building). No JAX here.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import re
import tempfile
import time

import grain
import numpy as np

from mtcolor.data import color, pipeline, sources
from mtcolor.data import decode as decode_lib
from mtcolor.data.bad_inputs import example_line, make_bad_input_tracker
from mtcolor.data.transforms import DecodeAndResize, mean_chroma

_log = logging.getLogger(__name__)


def default_cache_dir() -> str:
    """$XDG_CACHE_HOME/mtcolor/resident (default ~/.cache/mtcolor/resident), as torch's hub cache
    follows XDG_CACHE_HOME (mtcolor.hub)."""
    return os.path.join(os.environ.get("XDG_CACHE_HOME") or "~/.cache", "mtcolor", "resident")


# Bumped whenever the file layout or the meaning of a field changes: old caches are then rebuilt.
FORMAT_VERSION = 1


def cache_directory(data_config) -> str:
    """data.resident.cache_dir, "~" expanded ("": `default_cache_dir()`)."""
    options = data_config.get("resident")
    directory = (options.get("cache_dir") if options is not None else None) or default_cache_dir()
    return os.path.expanduser(str(directory))


@dataclasses.dataclass(frozen=True)
class CachedSplit:
    """One split as decoded: the usable images in file order and the files that were skipped."""

    path: str  # the cache file
    digest: str  # of the source identity (part of the file name)
    rgb: np.ndarray  # (N, S, S, 3) uint8
    label: np.ndarray  # (N,) int32
    chroma: np.ndarray  # (N,) float32: mean sqrt(a^2 + b^2), CIELAB units (transforms.mean_chroma)
    key: np.ndarray  # (N,) str: the source's key of each image (file path, tfds record, ...)
    skipped: tuple[tuple[str, str, str], ...]  # (reason, key, detail) of each skipped file
    num_files: int  # files/records in the split, skipped ones included


def _file_digest(path: str) -> str:
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()[:16]


def source_identity(source, data_config, split: str) -> dict:
    """What the cached pixels and labels of `split` depend on (JSON-ready); its hash names the
    cache file. Folder sources list every file with its size and mtime, so editing, adding or
    removing a file changes it."""
    from mtcolor.data import synthetic
    from mtcolor.data.folder import FolderSource
    from mtcolor.data.synthetic import SyntheticSource
    from mtcolor.data.tfds_source import TfdsSource

    identity = {
        "format": FORMAT_VERSION,
        "split": split,
        "image_size": int(data_config.image_size),
        "resize_mode": data_config.resize_mode,
        "min_image_side": int(data_config.min_image_side),
        "max_image_pixels": int(data_config.max_image_pixels),
        "jpeg_draft": bool(data_config.jpeg_draft),
        "decode_code": _file_digest(decode_lib.__file__),
    }
    if isinstance(source, SyntheticSource):
        identity["source"] = {
            "kind": "synthetic",
            **_attributes(source, "split", "size", "num_examples", "num_classes", "seed"),
            "generator_code": _file_digest(synthetic.__file__),
        }
    elif isinstance(source, FolderSource):
        root = os.path.abspath(source.root)
        files = []
        for path, label in zip(source.paths, source.labels):
            try:
                st = os.stat(path)
                stat = [st.st_size, st.st_mtime_ns]
            except OSError:  # unreadable now: counted when decoded; a later fix changes the key
                stat = [None, None]
            files.append([os.path.relpath(path, root), int(label)] + stat)
        identity["source"] = {"kind": "folder", "root": root, "files": files}
    elif isinstance(source, TfdsSource):
        data_dir = source.data_dir
        identity["source"] = {
            "kind": "tfds",
            **_attributes(source, "name", "version", "split", "image_key", "label_key"),
            "data_dir": os.path.abspath(os.path.expanduser(data_dir)) if data_dir else None,
            "classes": list(source.class_names),
            "num_examples": len(source),
        }
    else:
        raise TypeError(f"the resident input path cannot cache a {type(source).__name__}")
    return identity


def _attributes(source, *names: str) -> dict:
    return {name: getattr(source, name) for name in names}


def _source_name(identity: dict) -> str:
    """The stable part of a cache file name: which source, whatever its current content."""
    source = identity["source"]
    where = {"synthetic": ("seed", "num_examples"), "folder": ("root",), "tfds": ("name", "split")}
    text = json.dumps([source["kind"]] + [source[k] for k in where[source["kind"]]])
    return hashlib.sha256(text.encode()).hexdigest()[:8]


def cache_path(data_config, split: str, *, source=None) -> tuple[str, dict]:
    """(the cache file of `split`, its source identity); the file may not exist yet."""
    source = sources.make_source(data_config, split) if source is None else source
    identity = source_identity(source, data_config, split)
    digest = hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:20]
    directory = cache_directory(data_config)
    kind = identity["source"]["kind"]
    prefix = f"{split}-{kind}-{identity['image_size']}px-{_source_name(identity)}"
    return os.path.join(directory, f"{prefix}-{digest}.npz"), identity


def load_or_build_cache(data_config, split: str) -> tuple[CachedSplit, bool]:
    """(the cached split, whether it was built now). Builds the cache file if it does not exist
    or cannot be read; raises TooManyBadInputsError as the grain path would."""
    source = sources.make_source(data_config, split)
    path, identity = cache_path(data_config, split, source=source)
    digest = os.path.basename(path).rsplit("-", 1)[1][: -len(".npz")]
    if os.path.exists(path):
        try:
            return _read(path, digest), False
        except Exception as error:  # noqa: BLE001 - a damaged cache is rebuilt, not fatal
            _log.warning("resident cache %s is unreadable (%s); rebuilding it", path, error)
    cached = _build(source, data_config, split, path, digest)
    try:
        _write(cached, identity)
    except OSError as error:  # a read-only or full cache directory costs a decode next run
        _log.warning(
            "could not write the resident cache %s (%s); using it from memory", path, error
        )
        return cached, True
    _remove_stale(path)
    return cached, True


def _read(path: str, digest: str) -> CachedSplit:
    with np.load(path, allow_pickle=False) as npz:
        meta = json.loads(str(npz["meta"]))
        if meta.get("format") != FORMAT_VERSION or meta.get("digest") != digest:
            raise ValueError(f"format {meta.get('format')} / digest {meta.get('digest')} mismatch")
        cached = CachedSplit(
            path=path,
            digest=digest,
            rgb=npz["rgb"],
            label=npz["label"],
            chroma=npz["chroma"],
            key=npz["key"],
            skipped=tuple(tuple(s) for s in meta["skipped"]),
            num_files=int(meta["num_files"]),
        )
    if not len(cached.rgb) == len(cached.label) == len(cached.chroma) == len(cached.key):
        raise ValueError("arrays of different lengths")
    return cached


def _build(source, data_config, split: str, path: str, digest: str) -> CachedSplit:
    """Decodes every file once with the grain path's DecodeAndResize, in file order."""
    size = int(data_config.image_size)
    start = time.perf_counter()
    ds = grain.MapDataset.source(source).map(
        DecodeAndResize(
            size=size,
            resize_mode=data_config.resize_mode,
            min_image_side=data_config.min_image_side,
            max_image_pixels=data_config.max_image_pixels,
            jpeg_draft=data_config.jpeg_draft,
        )
    )
    iterator = iter(pipeline.to_iter_dataset(ds, data_config, workers=data_config.worker_count))
    tracker = make_bad_input_tracker(data_config)
    num_files = len(source)
    rgb = np.empty((num_files, size, size, 3), np.uint8)
    labels, chroma, keys, skipped = [], [], [], []
    try:
        for record in iterator:
            if "reason" in record:
                detail = record.get("detail") or ""
                skipped.append((record["reason"], str(record["key"]), detail))
                tracker.add_skipped(record["reason"], example_line(*skipped[-1]))
                continue
            rgb[len(labels)] = record["rgb"]
            labels.append(int(record["label"]))
            keys.append(str(record["key"]))
            _, ab = color.rgb_uint8_to_normalized_L_ab(np.ascontiguousarray(record["rgb"]))
            chroma.append(mean_chroma(ab))
            tracker.num_good += 1  # the grain path checks the ceiling on skips only
    finally:
        close = getattr(iterator, "close", None)
        if close is not None:
            close()
    _log.info(
        "resident cache of %s: %d of %d files decoded in %.1f s (%s)",
        split,
        len(labels),
        num_files,
        time.perf_counter() - start,
        tracker.report(),
    )
    return CachedSplit(
        path=path,
        digest=digest,
        rgb=rgb[: len(labels)],
        label=np.asarray(labels, np.int32),
        chroma=np.asarray(chroma, np.float32),
        key=np.asarray(keys, dtype=str) if keys else np.zeros((0,), "<U1"),
        skipped=tuple(skipped),
        num_files=num_files,
    )


def _write(cached: CachedSplit, identity: dict) -> None:
    """Temporary file in the cache directory, then an atomic rename."""
    directory = os.path.dirname(cached.path)
    os.makedirs(directory, exist_ok=True)
    meta = {
        "format": FORMAT_VERSION,
        "digest": cached.digest,
        "num_files": cached.num_files,
        "skipped": [list(s) for s in cached.skipped],
        "source": {k: v for k, v in identity["source"].items() if k != "files"},
    }
    fd, tmp = tempfile.mkstemp(
        prefix=os.path.basename(cached.path) + ".", suffix=".tmp", dir=directory
    )
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(
                f,
                rgb=cached.rgb,
                label=cached.label,
                chroma=cached.chroma,
                key=cached.key,
                meta=np.asarray(json.dumps(meta)),
            )
        os.replace(tmp, cached.path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def _remove_stale(path: str) -> None:
    """Deletes the older caches of the same split and source (another content digest)."""
    directory, name = os.path.split(path)
    prefix = name.rsplit("-", 1)[0] + "-"
    pattern = re.compile(re.escape(prefix) + r"[0-9a-f]+\.npz$")
    for other in os.listdir(directory):
        if other != name and pattern.match(other):
            try:
                os.remove(os.path.join(directory, other))
                _log.info("removed stale resident cache %s", other)
            except OSError:
                pass
