"""The device-resident data set: each split decoded once into a cache file, put on the devices
once, and every batch made on device by jitted code.

For data sets that fit in memory (the paper's 6,500 images are 1.3 GB as uint8 at 256 px) this
replaces the grain pipeline's per-step host work (decode, resize, flip, Lab, batching, host->device
copy) with one gather per step. It has the same functions as `mtcolor.data.pipeline`
(`num_examples`, `steps_per_epoch`, `make_train_iterator`, `make_eval_iterator`,
`make_bad_input_tracker`); `data.input_path` chooses between them (`mtcolor.data.input_paths`).

1. Cache (`mtcolor.data.decoded_cache`): a split is decoded and resized ONCE, by the grain path's
   own transform, into a uint8 file keyed by the source's content and the decode options.
2. Device: the cache is put on the mesh of `mtcolor.sharding.make_mesh()` REPLICATED (every
   device holds the whole uint8 set: a batch is then a local gather on each device, with no
   communication; a set that does not fit in one device's memory belongs on the grain path).
3. Training batches (`ResidentTrainIterator`): the data is one endless stream of epochs, epoch e
   being the permutation `jax.random.permutation(fold_in(key(seed), 0) -> fold_in e, n)` of the n
   usable images; global batch k is positions [k B, (k+1) B) of that stream (a batch may span two
   epochs, so no example is dropped, like grain's repeated stream). Inside one jitted function:
   permutation, gather, horizontal flip (p = 0.5, one draw per (epoch, position)), RGB -> Lab,
   L/50 - 1 and ab/110. The output is the GLOBAL batch as `jax.Array`s sharded along the batch
   axis, exactly what `sharding.put_batch` produces, so the train step is unchanged. The global
   batch depends on the seed and the position only: neither on the number of devices nor of
   processes; with P processes (devices ordered by process, as `jax.devices()` is) process p holds
   rows [p B/P, (p+1) B/P). Position = (epoch, index in epoch): `get_state()` / `set_state()`,
   stored by `mtcolor.train.checkpointing` as a JSON item, so a resumed run yields exactly the
   batches an uninterrupted one would.
4. Evaluation batches (`make_eval_iterator`): file order, no flip, no grayscale filter, the last
   batch zero-padded with `mask` 0, as the grain evaluation iterator.

Bad-input accounting as on the grain path: the batch that starts an epoch carries that epoch's
skipped files in `bad_counts` / `bad_examples` (the files the cache build skipped, plus the images
the grayscale filter drops), so `BadInputTracker` totals, `data/*` scalars and the final report read
as they do with grain. Every process counts the whole split (grain: its shard).

Not supported: `data.unlabeled` (a second, often large stream): `"auto"` then chooses grain and
`"resident"` is a config error.
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import logging
import math
import os

import jax
import jax.numpy as jnp
import numpy as np

from mtcolor import sharding
from mtcolor.data import color, decoded_cache
from mtcolor.data.bad_inputs import (
    BAD_REASONS,
    EXAMPLES_PER_REASON,
    NEAR_GRAYSCALE,
    SKIP_REASONS,
    TooManyBadInputsError,
    example_line,
    make_bad_input_tracker,
)
from mtcolor.data.config import SPLITS

_log = logging.getLogger(__name__)

_DEVICE_SPLITS_KEPT = 4  # device-resident splits memoized (train and val of up to two configs)


# ----------------------------------------------------------------------------------------------
# On the devices.


@dataclasses.dataclass(frozen=True)
class DeviceSplit:
    """A cached split replicated on a mesh, plus what the host needs to count skipped files."""

    mesh: jax.sharding.Mesh
    cached_path: str
    digest: str
    rgb: jax.Array  # (N, S, S, 3) uint8, replicated
    label: jax.Array  # (N,) int32, replicated
    chroma: np.ndarray
    key: np.ndarray
    skipped: tuple[tuple[str, str, str], ...]
    num_files: int

    @property
    def num_examples(self) -> int:
        return int(self.rgb.shape[0])

    def usable(self, grayscale_threshold: float | None) -> np.ndarray:
        """Indices of the images a training epoch uses (the grayscale filter's survivors)."""
        if grayscale_threshold is None:
            return np.arange(self.num_examples, dtype=np.int32)
        return np.flatnonzero(self.chroma >= grayscale_threshold).astype(np.int32)


_device_splits: collections.OrderedDict = collections.OrderedDict()


def _put_replicated(array: np.ndarray, mesh) -> jax.Array:
    # make_array_from_callback: also right with several processes (each fills its own devices).
    return jax.make_array_from_callback(
        array.shape, sharding.replicated(mesh), lambda index: array[index]
    )


def device_split(data_config, split: str, mesh=None) -> DeviceSplit:
    """`split` loaded (built if needed) and put on `mesh` (default: sharding.make_mesh()) once;
    later calls with the same cache file and mesh return the same device arrays."""
    mesh = sharding.make_mesh() if mesh is None else mesh
    path, _ = decoded_cache.cache_path(data_config, split)
    memo_key = (path, mesh)
    if memo_key in _device_splits:
        _device_splits.move_to_end(memo_key)
        return _device_splits[memo_key]
    cached, _ = decoded_cache.load_or_build_cache(data_config, split)
    if cached.num_files and not len(cached.label):
        reasons = collections.Counter(s[0] for s in cached.skipped)
        raise TooManyBadInputsError(
            f"the {split} split has no usable image: all {cached.num_files} files were skipped "
            f"({dict(reasons)}; e.g. {[example_line(*s) for s in cached.skipped[:3]]})"
        )
    placed = DeviceSplit(
        mesh=mesh,
        cached_path=cached.path,
        digest=cached.digest,
        rgb=_put_replicated(cached.rgb, mesh),
        label=_put_replicated(cached.label, mesh),
        chroma=cached.chroma,
        key=cached.key,
        skipped=cached.skipped,
        num_files=cached.num_files,
    )
    # A source whose files changed has a new cache file: free the device copy of the old one.
    source_prefix = os.path.basename(path).rsplit("-", 1)[0]
    for old in [
        k
        for k in _device_splits
        if k[1] == mesh and os.path.basename(k[0]).rsplit("-", 1)[0] == source_prefix
    ]:
        del _device_splits[old]
    _device_splits[memo_key] = placed
    while len(_device_splits) > _DEVICE_SPLITS_KEPT:
        _device_splits.popitem(last=False)
    return placed


def clear() -> None:
    """Forgets every device-resident split (their device memory is freed once unreferenced)."""
    _device_splits.clear()


def _normalized_lab_batch(images: jax.Array) -> dict:
    L_norm, ab_norm = color.rgb_uint8_to_normalized_L_ab_jax(images)  # noqa: N806
    return {"L": L_norm, "ab": ab_norm}


def epoch_permutation(seed_key: jax.Array, epoch, n: int) -> jax.Array:
    """The order of epoch `epoch`: a permutation of range(n) from (seed, epoch) alone."""
    shuffle_key = jax.random.fold_in(seed_key, 0)
    return jax.random.permutation(jax.random.fold_in(shuffle_key, epoch), n)


def flip_draws(seed_key: jax.Array, epochs: jax.Array, positions: jax.Array) -> jax.Array:
    """Whether the example at (epoch, position in epoch) is flipped: p = 0.5, one draw each."""
    flip_key = jax.random.fold_in(seed_key, 1)

    def draw(epoch, position):
        return jax.random.bernoulli(
            jax.random.fold_in(jax.random.fold_in(flip_key, epoch), position)
        )

    return jax.vmap(draw)(epochs, positions)


def _train_batch(rgb, labels, usable, seed_data, epoch, index, *, batch_size, shuffle, flip, mesh):
    """Global batch at stream position (epoch, index): positions index .. index + B - 1 of the
    epoch, continuing into the next epoch(s) past its end."""
    n = usable.shape[0]
    offsets = index + jnp.arange(batch_size, dtype=jnp.int32)
    epochs = epoch + offsets // n
    positions = offsets % n
    seed_key = jax.random.wrap_key_data(seed_data)
    if shuffle:
        # The epochs a window of B positions can touch (static): 2 when B <= n.
        span = (batch_size + n - 2) // n + 1
        orders = jax.vmap(lambda e: epoch_permutation(seed_key, e, n))(epoch + jnp.arange(span))
        order = orders[epochs - epoch, positions]
    else:
        order = positions
    # Each device gathers its own rows from its replica: no communication.
    rows = jax.lax.with_sharding_constraint(usable[order], sharding.batch_sharded(mesh))
    images = jnp.take(rgb, rows, axis=0)
    if flip:
        flipped = flip_draws(seed_key, epochs, positions)
        images = jnp.where(flipped[:, None, None, None], images[:, :, ::-1], images)
    batch = _normalized_lab_batch(images)
    batch["label"] = jnp.take(labels, rows, axis=0)
    batch["has_label"] = jnp.ones((batch_size,), jnp.float32)
    return batch


def _eval_batch(rgb, labels, start, *, batch_size, mesh):
    """Global batch of examples start .. start + B - 1 in file order; rows past the end are zeros
    with mask 0 (the grain evaluation iterator's padding)."""
    n = rgb.shape[0]
    positions = start + jnp.arange(batch_size, dtype=jnp.int32)
    real = positions < n
    rows = jax.lax.with_sharding_constraint(
        jnp.minimum(positions, n - 1), sharding.batch_sharded(mesh)
    )
    batch = _normalized_lab_batch(jnp.take(rgb, rows, axis=0))
    mask = real.astype(jnp.float32)
    batch["L"] = jnp.where(real[:, None, None, None], batch["L"], 0.0)
    batch["ab"] = jnp.where(real[:, None, None, None], batch["ab"], 0.0)
    batch["label"] = jnp.where(real, jnp.take(labels, rows, axis=0), 0)
    batch["has_label"] = jnp.ones((batch_size,), jnp.float32)
    batch["mask"] = mask
    return batch


@functools.lru_cache(maxsize=16)
def _jitted_train_batch(mesh, batch_size: int, shuffle: bool, flip: bool):
    fn = functools.partial(
        _train_batch, batch_size=batch_size, shuffle=shuffle, flip=flip, mesh=mesh
    )
    return jax.jit(fn, out_shardings=sharding.batch_sharded(mesh))


@functools.lru_cache(maxsize=16)
def _jitted_eval_batch(mesh, batch_size: int):
    fn = functools.partial(_eval_batch, batch_size=batch_size, mesh=mesh)
    return jax.jit(fn, out_shardings=sharding.batch_sharded(mesh))


def process_rows(
    batch: dict, shard_index: int | None = None, shard_count: int | None = None
) -> dict:
    """Rows [p B/P, (p+1) B/P) of a global batch as numpy: what process p of P feeds (the rows its
    devices hold when devices are ordered by process). Non-array fields pass unchanged."""
    shard_index = jax.process_index() if shard_index is None else shard_index
    shard_count = jax.process_count() if shard_count is None else shard_count
    out = {}
    for name, value in batch.items():
        if not isinstance(value, jax.Array):
            out[name] = value
            continue
        rows = value.shape[0] // shard_count
        lo, hi = shard_index * rows, (shard_index + 1) * rows
        if value.is_fully_addressable:
            out[name] = np.asarray(value[lo:hi])
        else:  # several processes: this process's devices hold exactly its rows
            shards = sorted(value.addressable_shards, key=lambda s: s.index[0].start or 0)
            local = np.concatenate([np.asarray(s.data) for s in shards if s.replica_id == 0])
            out[name] = local
    return out


# ----------------------------------------------------------------------------------------------
# The input-path functions (as mtcolor.data.pipeline's; mtcolor.data.input_paths.InputPipeline).


def supports(data_config) -> tuple[bool, str]:
    """(whether the resident path can read this data config, why not)."""
    unlabeled = data_config.get("unlabeled")
    if unlabeled is not None and unlabeled.get("source") is not None:
        return False, "data.unlabeled mixes in a second stream, which only the grain path reads"
    return True, ""


def _check_supported(data_config) -> None:
    ok, why_not = supports(data_config)
    if not ok:
        raise ValueError(f"data.input_path 'resident': {why_not}; use 'grain' or 'auto'")


def _check_shard(shard_index, shard_count) -> None:
    # Batches are global arrays: each process's devices hold its rows; no other split is possible.
    if shard_index not in (None, jax.process_index()) or shard_count not in (
        None,
        jax.process_count(),
    ):
        raise ValueError(
            f"the resident input path yields global batches: shard ({shard_index}, {shard_count}) "
            f"must be this process's ({jax.process_index()}, {jax.process_count()}) or None"
        )


def num_examples(data_config, split: str) -> int:
    """Usable (decodable) images of a split, over all processes; the grayscale filter not
    applied."""
    _check_supported(data_config)
    return device_split(data_config, split).num_examples


def steps_per_epoch(data_config) -> int:
    """Full global batches in one pass over the training images the grayscale filter keeps (an
    epoch of the stream; the remainder continues into the next epoch)."""
    _check_supported(data_config)
    split = device_split(data_config, "train")
    usable = len(split.usable(data_config.grayscale_filter_threshold))
    return max(1, usable // int(data_config.batch_size))


class ResidentTrainIterator:
    """Endless iterator of global training batches made on device (see the module docstring).

    `get_state()` is JSON ({"epoch", "index", ...}); `mtcolor.train.checkpointing` saves it as a
    JSON item (`checkpoint_as_json`) instead of grain's iterator files.
    """

    checkpoint_as_json = True

    def __init__(self, split: DeviceSplit, data_config, *, seed: int):
        self._split = split
        self._batch_size = int(data_config.batch_size)
        self._seed = int(seed)
        self._seed_data = np.asarray(jax.random.key_data(jax.random.key(self._seed)))
        threshold = data_config.grayscale_filter_threshold
        usable = split.usable(threshold)
        if not len(usable):
            raise TooManyBadInputsError(
                f"no training image has mean chroma >= grayscale_filter_threshold {threshold}"
            )
        self._n = len(usable)
        self._usable = _put_replicated(usable, split.mesh)
        self._fn = _jitted_train_batch(
            split.mesh, self._batch_size, bool(data_config.shuffle), bool(data_config.random_flip)
        )
        # What one epoch skips: the build's bad files, then the grayscale filter's drops.
        counts = np.zeros(len(SKIP_REASONS), np.int64)
        lines = []
        for reason, key, detail in split.skipped:
            counts[SKIP_REASONS.index(reason)] += 1
            lines.append((reason, example_line(reason, key, detail)))
        if threshold is not None:
            for i in np.flatnonzero(split.chroma < threshold):
                counts[SKIP_REASONS.index(NEAR_GRAYSCALE)] += 1
                lines.append(
                    (
                        NEAR_GRAYSCALE,
                        example_line(
                            NEAR_GRAYSCALE, str(split.key[i]), f"mean chroma {split.chroma[i]:.2f}"
                        ),
                    )
                )
        self._epoch_bad_counts = counts
        self._epoch_bad_examples = tuple(
            line
            for reason in SKIP_REASONS
            for line in [x for r, x in lines if r == reason][:EXAMPLES_PER_REASON]
        )
        # The grain iterator enforces the ceiling itself too ("even if nobody else looks").
        self._tracker = make_bad_input_tracker(data_config)
        self.epoch = 0
        self.index = 0

    def __iter__(self):
        return self

    def __next__(self) -> dict:
        epoch, index = self.epoch, self.index
        batch = self._fn(
            self._split.rgb,
            self._split.label,
            self._usable,
            self._seed_data,
            np.int32(epoch),
            np.int32(index),
        )
        # Epoch starts inside this window (positions epoch * n + index .. + B - 1).
        starts = (index + self._batch_size - 1) // self._n - (index - 1) // self._n
        bad_counts = self._epoch_bad_counts * starts
        examples = self._epoch_bad_examples if starts else ()
        self._tracker.update(bad_counts, self._batch_size, examples)
        offset = index + self._batch_size
        self.epoch, self.index = epoch + offset // self._n, offset % self._n
        batch["bad_counts"] = bad_counts
        batch["bad_examples"] = examples
        return batch

    def get_state(self) -> dict:
        return {
            "input_path": "resident",
            "epoch": self.epoch,
            "index": self.index,
            "num_examples": self._n,
            "seed": self._seed,
            "cache": self._split.digest,
            "tracker": self._tracker.get_state(),
        }

    def set_state(self, state: dict) -> None:
        if state.get("input_path") != "resident":
            raise ValueError(
                "this data-iterator state was not written by the resident input path: restore "
                "with the data.input_path the run was started with"
            )
        if int(state["num_examples"]) != self._n or state.get("cache") != self._split.digest:
            _log.warning(
                "resuming on other data than the checkpoint's (%s images, cache %s; now %d, %s): "
                "the batches from here on differ from an uninterrupted run's",
                state["num_examples"],
                state.get("cache"),
                self._n,
                self._split.digest,
            )
        self.epoch = int(state["epoch"])
        self.index = int(state["index"]) % self._n
        self._tracker.set_state(state["tracker"])

    def close(self) -> None:
        pass


def make_train_iterator(
    data_config, *, seed: int, shard_index: int | None = None, shard_count: int | None = None
):
    """Endless iterator of GLOBAL training batches, jax.Arrays sharded over the mesh's batch axis
    (see the module docstring); shard_index/shard_count, if given, must be this process's."""
    _check_supported(data_config)
    _check_shard(shard_index, shard_count)
    return ResidentTrainIterator(device_split(data_config, "train"), data_config, seed=seed)


def make_eval_iterator(
    data_config,
    split: str = "val",
    *,
    shard_index: int | None = None,
    shard_count: int | None = None,
):
    """One pass over `split` in file order, no flip, no grayscale filter; the last global batch
    zero-padded (`mask` 0). The first batch carries the split's skipped files in `bad_counts`.

    One process: global jax.Arrays as in training. Several: this process's rows as numpy
    (`process_rows`), as the grain evaluation iterator yields them, so code that reads the batch
    on the host (the validation image grid) works unchanged; `sharding.put_batch` reassembles them.
    """
    if split not in SPLITS:
        raise ValueError(f"evaluation split must be one of {SPLITS}, got {split!r}")
    _check_supported(data_config)
    _check_shard(shard_index, shard_count)
    placed = device_split(data_config, split)
    batch_size = int(data_config.batch_size)
    fn = _jitted_eval_batch(placed.mesh, batch_size)
    counts = np.zeros(len(SKIP_REASONS), np.int64)
    for reason, _, _ in placed.skipped:
        counts[SKIP_REASONS.index(reason)] += 1
    examples = tuple(
        line
        for reason in BAD_REASONS
        for line in [example_line(*s) for s in placed.skipped if s[0] == reason][
            :EXAMPLES_PER_REASON
        ]
    )
    return _eval_batches(placed, fn, batch_size, counts, examples)


def _eval_batches(placed: DeviceSplit, fn, batch_size: int, counts: np.ndarray, examples: tuple):
    several = jax.process_count() > 1
    for k in range(math.ceil(placed.num_examples / batch_size)):
        batch = fn(placed.rgb, placed.label, np.int32(k * batch_size))
        if several:
            batch = process_rows(batch)
        batch["bad_counts"] = counts if k == 0 else np.zeros_like(counts)
        batch["bad_examples"] = examples if k == 0 else ()
        yield batch


__all__ = [
    "DeviceSplit",
    "ResidentTrainIterator",
    "clear",
    "device_split",
    "epoch_permutation",
    "flip_draws",
    "make_bad_input_tracker",
    "make_eval_iterator",
    "make_train_iterator",
    "num_examples",
    "process_rows",
    "supports",
    "steps_per_epoch",
]
