"""The grain input pipeline: source -> decode -> resize -> flip (train) -> Lab -> skip/count ->
batch.

This module assembles the pipeline; each part is its own module: the options
(`mtcolor.data.config`), the sources and batch split (`mtcolor.data.sources`), the per-element
transforms (`mtcolor.data.transforms`), the batcher (`mtcolor.data.batching`) and the skipped-file
accounting (`mtcolor.data.bad_inputs`). Their public names are re-exported here.

Public API (see docs/data.md):
- `default_data_config()`: an ml_collections.ConfigDict, every option commented.
- `make_train_iterator(data_config, *, seed, shard_index=None, shard_count=None)`: an infinite
  iterator of batches, reshuffled each epoch, flips seeded per element; `get_state()/set_state()`
  and `grain.checkpoint.CheckpointSave/CheckpointRestore` restore it exactly.
- `make_eval_iterator(data_config, split="val", *, shard_index=None, shard_count=None)`: one pass
  over a split, the last batch padded (`mask` 0 on pads); every call is a fresh pass.
- `num_examples(data_config, split)`: files/records in a split (before bad files are skipped).
- `unlabeled_per_batch`, `labelled_per_batch`, `steps_per_epoch`: the batch split and the epoch
  length (labelled examples) when `data.unlabeled` mixes unlabeled images into training batches.
- `BadInputTracker`, `TooManyBadInputsError`, `SKIP_REASONS`, `BAD_REASONS`, `NEAR_GRAYSCALE`.

Batches are dicts of numpy arrays:
  L (B, H, W, 1) float32 in [-1, 1] (L/50 - 1), ab (B, H, W, 2) float32 (ab/110, within [-1, 1]),
  label (B,) int32, has_label (B,) float32 (1 labelled, 0 unlabeled: the last
  unlabeled_per_batch // shard_count rows of a training batch with data.unlabeled, whose label is 0;
  all ones otherwise and in evaluation), eval only: mask (B,) float32 (1 real, 0 padding),
  bad_counts (len(SKIP_REASONS),) int64: files skipped since the previous batch, per reason,
  bad_examples: tuple of str, "reason: key (detail)" lines for those files (at most 2 per reason).
B is the per-process batch: data_config.batch_size (global) // shard_count.
`BadInputTracker.observe(batch)` strips `bad_counts`/`bad_examples` (non-batch fields that must not
go to the device), accumulates them and returns the model inputs.

Where things run: everything up to Lab (decode, resize, flip, Lab, grayscale test) runs per element
in grain worker processes (numpy and Pillow only); a bad file becomes a small record carrying its
reason instead of an exception. Skipping, counting and batching run in the calling process after
the workers' outputs are interleaved back into index order, so the batches do not depend on
`worker_count` (0, 1, 2, ... give identical batches), bad-file counts cannot be lost in a worker,
and the `max_bad_fraction` ceiling is enforced where the run can be stopped.
"""

from __future__ import annotations

import functools
import math

import grain
import numpy as np

from mtcolor.data.bad_inputs import (
    BAD_REASONS,
    NEAR_GRAYSCALE,
    SKIP_REASONS,
    BadInputTracker,
    TooManyBadInputsError,
    make_bad_input_tracker,
)
from mtcolor.data.batching import BatchLayout, BatchSlots, SkipCountBatcher
from mtcolor.data.config import SPLITS, default_data_config
from mtcolor.data.sources import (
    UNLABELED_SOURCES,
    class_names,
    labelled_per_batch,
    make_source,
    num_examples,
    steps_per_epoch,
    unlabeled_per_batch,
)
from mtcolor.data.transforms import DecodeAndResize, RandomHorizontalFlip, ToNormalizedLab

# A training stream that skips max(_SKIP_LIMIT_MIN, _SKIP_LIMIT_PASSES * len(source)) files in a
# row has no usable image (e.g. an all-grayscale folder under the unlabeled grayscale filter, which
# does not count towards max_bad_fraction): stop with TooManyBadInputsError, not loop forever.
_SKIP_LIMIT_MIN = 100
_SKIP_LIMIT_PASSES = 10


def _shard_args(shard_index: int | None, shard_count: int | None) -> tuple[int, int]:
    if shard_index is None or shard_count is None:
        import jax  # only the calling process asks jax; workers run numpy and Pillow only

        shard_index = jax.process_index() if shard_index is None else shard_index
        shard_count = jax.process_count() if shard_count is None else shard_count
    if not 0 <= shard_index < shard_count:
        raise ValueError(f"shard_index {shard_index} outside [0, {shard_count})")
    return shard_index, shard_count


def _per_process_batch(data_config, shard_count: int) -> int:
    if data_config.batch_size % shard_count:
        raise ValueError(
            f"global batch_size {data_config.batch_size} is not divisible by "
            f"{shard_count} processes"
        )
    return data_config.batch_size // shard_count


def _ensure_absl_flags_parsed() -> None:
    # grain's multiprocessing reads absl flags; in a script without absl.app.run they are unparsed.
    from absl import flags

    if not flags.FLAGS.is_parsed():
        flags.FLAGS.mark_as_parsed()


def _element_pipeline(
    ds: grain.MapDataset, data_config, *, flip_seed: int | None, grayscale_threshold: float | None
) -> grain.MapDataset:
    ds = ds.map(
        DecodeAndResize(
            size=data_config.image_size,
            resize_mode=data_config.resize_mode,
            min_image_side=data_config.min_image_side,
            max_image_pixels=data_config.max_image_pixels,
            jpeg_draft=data_config.jpeg_draft,
        )
    )
    if flip_seed is not None and data_config.random_flip:
        ds = ds.random_map(RandomHorizontalFlip(), seed=flip_seed)
    return ds.map(ToNormalizedLab(grayscale_threshold))


def _derived_seed(seed: int, stream: int) -> int:
    # Independent 32-bit seeds from one user seed: 0 shuffle and 1 flips of the labelled stream,
    # 2 shuffle and 3 flips of the unlabeled stream.
    return int(np.random.SeedSequence([seed, stream]).generate_state(1)[0])


def to_iter_dataset(ds: grain.MapDataset, data_config, *, workers: int) -> grain.IterDataset:
    iter_ds = ds.to_iter_dataset(
        grain.ReadOptions(
            num_threads=data_config.read_threads,
            prefetch_buffer_size=data_config.prefetch_buffer_size,
        )
    )
    if workers > 0:
        _ensure_absl_flags_parsed()
        iter_ds = iter_ds.mp_prefetch(
            grain.MultiprocessingOptions(
                num_workers=workers, per_worker_buffer_size=data_config.worker_buffer_size
            )
        )
    return iter_ds


def _tracker_args(data_config, *, enforce: bool) -> dict:
    return {
        "max_bad_fraction": data_config.max_bad_fraction if enforce else None,
        "min_examples": data_config.bad_check_min_examples,
    }


def _split_workers(worker_count: int, unlabeled_share: float) -> tuple[int, int]:
    """worker_count split between the labelled and unlabeled streams by their share of the batch,
    at least one each (worker_count 0: both decode in this process)."""
    if worker_count <= 0:
        return 0, 0
    unlabeled = max(1, int(math.floor(worker_count * unlabeled_share + 0.5)))
    return max(1, worker_count - unlabeled), unlabeled


def _train_stream(
    source,
    data_config,
    *,
    seed: int,
    streams: tuple[int, int],
    threshold,
    global_count: int,
    shard,
    workers,
    start: int,
):
    """One infinite, per-epoch reshuffled, decoded stream of a training source: this process's
    ``global_count // shard_count`` rows of each global batch (``BatchSlots``), from its
    ``start``-th row on."""
    ds = grain.MapDataset.source(source)
    if data_config.shuffle:
        ds = ds.shuffle(seed=_derived_seed(seed, streams[0]))
    # Infinite; every epoch gets a new permutation (and new flips) derived from the seed.
    ds = ds.repeat(None, reseed_each_epoch=True)
    # Maps are lazy (a record is decoded when read), so they go before the shard: each record's
    # flip is drawn from its global index, the same for any process count.
    ds = _element_pipeline(
        ds, data_config, flip_seed=_derived_seed(seed, streams[1]), grayscale_threshold=threshold
    )
    ds = BatchSlots(ds, global_count=global_count, shard=shard, start=start)
    return to_iter_dataset(ds, data_config, workers=workers)


def make_train_dataset(
    data_config, *, seed: int, shard_index: int | None = None, shard_count: int | None = None
):
    """The training pipeline as a grain IterDataset (`iter()` of it is `make_train_iterator`).

    With data.unlabeled.source set, two streams: the labelled source and the unlabeled one, each
    shuffled per epoch, repeated and sharded on its own; every batch takes its labelled rows from
    the first and unlabeled_per_batch // shard_count rows from the second.
    """
    shard_index, shard_count = _shard_args(shard_index, shard_count)
    batch_size = _per_process_batch(data_config, shard_count)
    num_unlabeled = unlabeled_per_batch(data_config)
    if num_unlabeled % shard_count:
        raise ValueError(
            f"{num_unlabeled} unlabeled examples per global batch (data.unlabeled.fraction "
            f"{data_config.unlabeled.fraction} of {data_config.batch_size}) are not divisible by "
            f"{shard_count} processes"
        )
    unlabeled = num_unlabeled // shard_count
    shard = (shard_index, shard_count)
    labelled_source = make_source(data_config, "train")
    sources = [labelled_source]
    workers = (data_config.worker_count,)
    if unlabeled:
        sources.append(make_source(data_config, "unlabeled"))
        workers = _split_workers(data_config.worker_count, num_unlabeled / data_config.batch_size)
    streams = [
        functools.partial(
            _train_stream,
            labelled_source,
            data_config,
            seed=seed,
            streams=(0, 1),
            threshold=data_config.grayscale_filter_threshold,
            global_count=data_config.batch_size - num_unlabeled,
            shard=shard,
            workers=workers[0],
        )
    ]
    if unlabeled:
        streams.append(
            functools.partial(
                _train_stream,
                sources[1],
                data_config,
                seed=seed,
                streams=(2, 3),
                threshold=data_config.unlabeled.grayscale_threshold,
                global_count=num_unlabeled,
                shard=shard,
                workers=workers[1],
            )
        )
    counts = (batch_size - unlabeled, unlabeled) if unlabeled else (batch_size,)
    layout = BatchLayout(
        counts=counts,
        labelled=(True, False)[: len(streams)],
        names=("labelled", "unlabeled")[: len(streams)],
        skip_limits=tuple(max(_SKIP_LIMIT_MIN, _SKIP_LIMIT_PASSES * len(s)) for s in sources),
        image_size=data_config.image_size,
        process_count=shard_count,
    )
    return SkipCountBatcher(
        streams, layout=layout, tracker_args=_tracker_args(data_config, enforce=True)
    )


def make_train_iterator(
    data_config, *, seed: int, shard_index: int | None = None, shard_count: int | None = None
):
    """Infinite iterator of training batches (see module docstring); a grain DatasetIterator.

    shard_index / shard_count default to jax.process_index() / jax.process_count().
    """
    return iter(
        make_train_dataset(data_config, seed=seed, shard_index=shard_index, shard_count=shard_count)
    )


def make_eval_iterator(
    data_config,
    split: str = "val",
    *,
    shard_index: int | None = None,
    shard_count: int | None = None,
):
    """One pass over `split` in file order, no flip, no grayscale filter; last batch zero-padded.

    Process p of P takes rows [p*b, (p+1)*b) of each global batch (b = batch_size // P), so the
    global batches are the same for any process count; every process yields ceil(len / batch_size)
    batches, padding where its rows run out, so multi-host evaluation steps stay in lockstep.
    Skipped files are counted in `bad_counts` like in training, without the ceiling.
    Labelled data only (data.unlabeled is not read); has_label is all ones.
    """
    if split not in SPLITS:
        raise ValueError(f"evaluation split must be one of {SPLITS}, got {split!r}")
    shard_index, shard_count = _shard_args(shard_index, shard_count)
    batch_size = _per_process_batch(data_config, shard_count)
    source = make_source(data_config, split)

    def stream(*, start: int):
        ds = grain.MapDataset.source(source)
        ds = _element_pipeline(ds, data_config, flip_seed=None, grayscale_threshold=None)
        ds = BatchSlots(
            ds,
            global_count=data_config.batch_size,
            shard=(shard_index, shard_count),
            start=start,
            num_records=len(source),
        )
        return to_iter_dataset(ds, data_config, workers=data_config.worker_count)

    return iter(
        SkipCountBatcher(
            [stream],
            layout=BatchLayout(
                counts=(batch_size,),
                labelled=(True,),
                names=(split,),
                skip_limits=(None,),
                image_size=data_config.image_size,
                pad_to_batches=math.ceil(len(source) / data_config.batch_size),
                process_count=shard_count,
            ),
            tracker_args=_tracker_args(data_config, enforce=False),
        )
    )


__all__ = [
    "BAD_REASONS",
    "NEAR_GRAYSCALE",
    "SKIP_REASONS",
    "SPLITS",
    "BadInputTracker",
    "TooManyBadInputsError",
    "UNLABELED_SOURCES",
    "class_names",
    "default_data_config",
    "labelled_per_batch",
    "make_bad_input_tracker",
    "make_eval_iterator",
    "make_source",
    "make_train_dataset",
    "make_train_iterator",
    "num_examples",
    "steps_per_epoch",
    "unlabeled_per_batch",
]
