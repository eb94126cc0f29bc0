"""The grain input pipeline: source -> decode -> resize -> flip (train) -> Lab -> skip/count -> batch.

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
reason instead of an exception. Skipping, counting and batching run in the calling process after the
workers' outputs are interleaved back into index order, so the batches do not depend on
`worker_count` (0, 1, 2, ... give identical batches), bad-file counts cannot be lost in a worker, and
the `max_bad_fraction` ceiling is enforced where the run can be stopped.
"""

from __future__ import annotations

import functools
import logging
import math

import grain
import ml_collections
import numpy as np

from mtcolor.data import color
from mtcolor.data import decode as decode_lib
from mtcolor.data.decode import BAD_REASONS, BadImageError

NEAR_GRAYSCALE = "near_grayscale"  # dropped by the grayscale filter: a valid file, not an error
SKIP_REASONS = BAD_REASONS + (NEAR_GRAYSCALE,)
_REASON_INDEX = {r: i for i, r in enumerate(SKIP_REASONS)}
INFO_KEYS = ("bad_counts", "bad_examples")
_EXAMPLES_PER_REASON = 2  # example lines per reason carried by one batch
SPLITS = ("train", "val")


def default_data_config() -> ml_collections.ConfigDict:
    """The data options, with defaults (the paper's preprocessing on the synthetic set)."""
    c = ml_collections.ConfigDict()
    # Where images come from: "synthetic" (generated, no download), "folder" (an ImageNet-style
    # tree root/<wnid or name>/*.JPEG), or "tfds" (a tfds image classification dataset read with
    # tfds.data_source from array_record files).
    c.source = "synthetic"
    # Square output size in pixels (the paper: 256). Must be a multiple of 32 for the models.
    c.image_size = 256
    # GLOBAL batch size; each of shard_count processes yields batch_size // shard_count.
    c.batch_size = 16
    # "stretch": bicubic to size x size, aspect not kept (the paper's reference tutorial);
    # "shorter_side_crop": shorter side to size, then the central square.
    c.resize_mode = "stretch"
    # Random horizontal flip with p=0.5 on training batches only (the paper's augmentation).
    c.random_flip = True
    # Shuffle the training set, with a new permutation each epoch (derived from the seed).
    c.shuffle = True
    # grain worker processes for decoding (0: decode in this process, with `read_threads` threads).
    # >0 needs absl flags parsed (absl.app.run); otherwise they are marked parsed here.
    c.worker_count = 0
    # Threads per process reading and decoding elements (Pillow and numpy release the GIL).
    c.read_threads = 2
    # Elements buffered per process ahead of use, and per worker in the worker->main queue.
    c.prefetch_buffer_size = 32
    c.worker_buffer_size = 2
    # Class subset: a list of wnids or class names (relabelled 0..k-1 in list order), or None for
    # every class of the source. The paper: [c.wnid for c in mtcolor.data.PAPER_CLASSES].
    # Ignored by the synthetic source (its classes are synthetic.num_classes).
    c.classes = None
    # Stop with TooManyBadInputsError once more than this fraction of files seen were bad (zero-byte,
    # truncated, corrupt, ...), checked after bad_check_min_examples files. None: never stop.
    c.max_bad_fraction = 0.05
    c.bad_check_min_examples = 200
    # Files with a side below this (e.g. 1x1 pixels) are skipped as "too_small".
    c.min_image_side = decode_lib.DEFAULT_MIN_IMAGE_SIDE
    # Files declaring more pixels than this are skipped as "decompression_bomb" (Pillow's default).
    c.max_image_pixels = decode_lib.DEFAULT_MAX_IMAGE_PIXELS
    # Decode large JPEGs at a reduced DCT scale that is still >= image_size (much faster on
    # full-size photos; not bit-identical to a full decode + resize). False: always full decode.
    c.jpeg_draft = True
    # Drop near-grayscale photos from TRAINING batches: an image whose mean chroma
    # sqrt(a^2 + b^2) (CIELAB units, after resizing) is below this is skipped and counted as
    # "near_grayscale". None: off. 1.0 is a good value: on 1,300 ImageNet validation photos it drops
    # the 13 stored-as-RGB grayscale ones (chroma 0) and 8 nearly colourless ones (docs/data.md).
    # A typed placeholder so that command-line overrides (--config.data.grayscale_filter_threshold=1)
    # work although the default is None.
    c.grayscale_filter_threshold = ml_collections.config_dict.placeholder(float)
    # How training reads the data (docs/data.md, "Device-resident input"). "grain": this module's
    # pipeline, decoding every step on the host. "resident" (mtcolor.data.resident): each split
    # decoded once into a cache file, kept on the devices, batches (flip, Lab) made on device;
    # labelled data only (not with data.unlabeled). "auto": resident when the uint8 images fit
    # in resident.max_memory_fraction of a device's memory (CPU: host RAM) and data.unlabeled is
    # off, else grain; a resumed run keeps the path its checkpoints were written with.
    c.input_path = "grain"
    c.resident = ml_collections.ConfigDict()
    # Where the decoded caches live ("" : ~/.cache/mtcolor/resident); one .npz per split, named by
    # the source and a digest of its files (paths, sizes, mtimes), the image size and decode options.
    c.resident.cache_dir = ""
    c.resident.max_memory_fraction = 0.25  # "auto"'s ceiling for the replicated uint8 images

    c.synthetic = ml_collections.ConfigDict()
    c.synthetic.train_size = 2000
    c.synthetic.val_size = 250
    c.synthetic.num_classes = 5
    c.synthetic.seed = 0  # the generator's seed: the same pixels every run (not the shuffle seed)

    c.folder = ml_collections.ConfigDict()
    c.folder.train_root = ""  # e.g. /data/imagenet/train
    # e.g. /data/imagenet/val (re-sorted into class folders); "" means train_root, which then needs
    # split files so that validation is not the training set.
    c.folder.val_root = ""
    # Optional lists of files per split (see mtcolor.data.folder): "relative/path [class]" lines or
    # a CSV with file and wnid/class/name columns.
    c.folder.train_split_file = ""
    c.folder.val_split_file = ""

    c.tfds = ml_collections.ConfigDict()
    c.tfds.name = "imagenet2012"  # any tfds image classification dataset prepared as array_record
    c.tfds.data_dir = ""  # "" : tfds's default (~/tensorflow_datasets or $TFDS_DATA_DIR)
    c.tfds.train_split = "train"
    c.tfds.val_split = "validation"
    c.tfds.image_key = "image"
    c.tfds.label_key = "label"
    # Where the per-split label index for class subsets is cached ("" : ~/.cache/mtcolor/tfds).
    c.tfds.label_cache_dir = ""

    # A second, UNLABELED training source for colorization (the paper's section V-B: colorization is
    # self-supervised, so it can learn from far more images than classification has labels). Every
    # training batch then holds batch_size - n labelled examples followed by n unlabeled ones,
    # n = round(fraction * batch_size); unlabeled rows have label 0 and has_label 0. Evaluation and
    # the epoch length (labelled examples only) are unaffected; docs/data.md, "Unlabeled images".
    c.unlabeled = ml_collections.ConfigDict()
    # None: off (labelled data only). "folder": every image under unlabeled.folder.root at any depth
    # (a flat folder or a class tree; labels are not read). "tfds": a split of any tfds dataset with
    # images. "synthetic": generated images distinct from the labelled synthetic ones.
    # A typed placeholder so that --config.data.unlabeled.source=folder works.
    c.unlabeled.source = ml_collections.config_dict.placeholder(str)
    # Fraction of every global training batch drawn from the unlabeled source, 0 < fraction < 1. The
    # same number, round(fraction * batch_size), in every batch; it must be divisible by the number
    # of processes (each process takes its share of both streams).
    c.unlabeled.fraction = 0.5
    # The grayscale filter of the unlabeled stream, ON by default: an unlabeled image with mean
    # chroma below this (CIELAB units, as grayscale_filter_threshold) is skipped and counted as
    # "near_grayscale"; such photos only teach a colorizer to predict grey, and unlabeled photo
    # collections are unvetted. 2.0 is below the just-noticeable colour difference (about 2.3), so
    # it drops photos that look grey: 31 of 1,300 ImageNet validation photos (13 of them grayscale
    # stored as RGB), keeping muted ones. None: off.
    c.unlabeled.grayscale_threshold = 2.0
    c.unlabeled.folder = ml_collections.ConfigDict()
    # e.g. /data/photos or /data/imagenet/train (class folders are just folders here)
    c.unlabeled.folder.root = ""
    # Optional list of files: "relative/path" lines (a class column is ignored) or a CSV with a
    # file column (as data.folder split files).
    c.unlabeled.folder.split_file = ""
    c.unlabeled.tfds = ml_collections.ConfigDict()
    c.unlabeled.tfds.name = ""  # any tfds dataset with an image feature, prepared as array_record
    c.unlabeled.tfds.data_dir = ""  # "" : tfds's default (~/tensorflow_datasets or $TFDS_DATA_DIR)
    c.unlabeled.tfds.split = "train"  # any tfds split expression, e.g. "train[10%:]"
    c.unlabeled.tfds.image_key = "image"
    c.unlabeled.synthetic = ml_collections.ConfigDict()
    c.unlabeled.synthetic.size = 2000  # number of generated unlabeled images
    # The generator's seed; the unlabeled images differ from the labelled ones even with one seed.
    c.unlabeled.synthetic.seed = 0
    return c


# ----------------------------------------------------------------------------------------------
# Bad-input accounting (calling process).


class TooManyBadInputsError(RuntimeError):
    """More than max_bad_fraction of the files seen were unusable."""


class BadInputTracker:
    """Accumulates skipped-file counts and enforces a ceiling on the fraction of bad files.

    The pipeline uses one internally (so the ceiling holds even if nobody else looks); a training
    loop makes its own to log totals:

        tracker = BadInputTracker()                # counts only; the iterator enforces the ceiling
        for batch in it:
            batch = tracker.observe(batch)         # strips bad_counts / bad_examples
            ...
        writer.write_scalars(step, tracker.scalars())
        logging.info(tracker.report())
    """

    def __init__(self, max_bad_fraction: float | None = None, min_examples: int = 200, examples_kept: int = 3):
        self.max_bad_fraction = max_bad_fraction
        self.min_examples = min_examples
        self.counts = np.zeros(len(SKIP_REASONS), np.int64)
        self.num_good = 0
        self.examples: dict[str, list[str]] = {}
        self._examples_kept = examples_kept

    @property
    def num_bad(self) -> int:
        """Unusable files (BAD_REASONS); near-grayscale drops are not errors and not included."""
        return int(self.counts[: len(BAD_REASONS)].sum())

    @property
    def num_seen(self) -> int:
        return self.num_good + int(self.counts.sum())

    @property
    def bad_fraction(self) -> float:
        return self.num_bad / self.num_seen if self.num_seen else 0.0

    def update(self, bad_counts, num_good: int, examples=()) -> None:
        """Adds per-reason counts (ordered as SKIP_REASONS), usable files, "reason: key" lines."""
        self.counts += np.asarray(bad_counts, np.int64)
        self.num_good += int(num_good)
        for line in examples:
            self._keep_example(line)
        self.check()

    def add_skipped(self, reason: str, example: str) -> None:
        self.counts[_REASON_INDEX[reason]] += 1
        self._keep_example(example)
        self.check()

    def _keep_example(self, line: str) -> None:
        kept = self.examples.setdefault(line.split(":", 1)[0], [])
        if len(kept) < self._examples_kept:
            kept.append(line)

    def observe(self, batch: dict) -> dict:
        """Accumulates a batch's skip info; returns the batch without the non-array info fields."""
        mask = batch.get("mask")
        num_good = int(np.sum(mask)) if mask is not None else len(batch["label"])
        self.update(batch.get("bad_counts", np.zeros(len(SKIP_REASONS))), num_good, batch.get("bad_examples", ()))
        return {k: v for k, v in batch.items() if k not in INFO_KEYS}

    def check(self) -> None:
        if self.max_bad_fraction is None or self.num_seen < self.min_examples:
            return
        if self.bad_fraction > self.max_bad_fraction:
            shown = [line for reason in BAD_REASONS for line in self.examples.get(reason, [])]
            raise TooManyBadInputsError(
                f"{self.num_bad} of {self.num_seen} input files were unusable "
                f"({self.bad_fraction:.1%} > max_bad_fraction {self.max_bad_fraction:.1%}): "
                f"{self.totals()}; examples: {shown}. Fix or remove these files, or raise "
                f"data.max_bad_fraction."
            )

    def totals(self) -> dict[str, int]:
        """{reason: count} for every reason with a non-zero count."""
        return {r: int(n) for r, n in zip(SKIP_REASONS, self.counts) if n}

    def scalars(self, prefix: str = "data/") -> dict[str, float]:
        """Cumulative counts for a metric writer: <prefix>skipped_<reason>, bad_fraction, good."""
        out = {f"{prefix}skipped_{r}": float(n) for r, n in zip(SKIP_REASONS, self.counts)}
        out[f"{prefix}bad_fraction"] = self.bad_fraction
        out[f"{prefix}good_examples"] = float(self.num_good)
        return out

    def report(self) -> str:
        if not self.counts.any():
            return f"input files: {self.num_good} used, none skipped"
        parts = ", ".join(f"{n} {r}" for r, n in self.totals().items())
        examples = "; ".join(line for lines in self.examples.values() for line in lines)
        return f"input files: {self.num_good} used, skipped {parts} (e.g. {examples})"

    def get_state(self) -> dict:
        return {"counts": [int(n) for n in self.counts], "good": self.num_good}

    def set_state(self, state: dict) -> None:
        self.counts = np.asarray(state["counts"], np.int64)
        self.num_good = int(state["good"])


# ----------------------------------------------------------------------------------------------
# Per-element transforms (worker processes: picklable, numpy/Pillow only).


class DecodeAndResize(grain.transforms.Map):
    """Source record -> {"rgb" uint8 (S, S, 3), "label", "key"} or {"reason", "detail", "key"}."""

    def __init__(self, *, size: int, resize_mode: str, min_image_side: int, max_image_pixels: int, jpeg_draft: bool):
        if resize_mode not in decode_lib.RESIZE_MODES:
            raise ValueError(f"resize_mode must be one of {decode_lib.RESIZE_MODES}, got {resize_mode!r}")
        self.size = size
        self.resize_mode = resize_mode
        self.min_image_side = min_image_side
        self.max_image_pixels = max_image_pixels
        self.jpeg_draft = jpeg_draft

    def map(self, record: dict) -> dict:
        try:
            if "rgb" in record:
                rgb = decode_lib.resize_array(record["rgb"], self.size, self.resize_mode)
            else:
                data = record["encoded"] if "encoded" in record else decode_lib.read_file(record["path"])
                rgb = decode_lib.decode_image(
                    data,
                    size=self.size,
                    resize_mode=self.resize_mode,
                    min_image_side=self.min_image_side,
                    max_image_pixels=self.max_image_pixels,
                    jpeg_draft=self.jpeg_draft,
                )
        except BadImageError as e:
            return {"reason": e.reason, "detail": e.detail, "key": record["key"]}
        return {"rgb": rgb, "label": record["label"], "key": record["key"]}


class RandomHorizontalFlip(grain.transforms.RandomMap):
    """Flips with p=0.5 using the per-element generator grain seeds from (seed, index)."""

    def random_map(self, record: dict, rng: np.random.Generator) -> dict:
        flip = rng.random() < 0.5  # drawn for every element, so bad ones do not shift others
        if flip and "rgb" in record:
            record = dict(record, rgb=record["rgb"][:, ::-1])
        return record


class ToNormalizedLab(grain.transforms.Map):
    """{"rgb"} -> {"L": (S, S, 1) L/50-1, "ab": (S, S, 2) ab/110} float32; optional grayscale filter."""

    def __init__(self, grayscale_filter_threshold: float | None = None):
        self.grayscale_filter_threshold = grayscale_filter_threshold

    def map(self, record: dict) -> dict:
        if "rgb" not in record:
            return record
        L_norm, ab_norm = color.rgb_uint8_to_normalized_L_ab(np.ascontiguousarray(record["rgb"]))  # noqa: N806
        if self.grayscale_filter_threshold is not None:
            chroma = mean_chroma(ab_norm)
            if chroma < self.grayscale_filter_threshold:
                return {"reason": NEAR_GRAYSCALE, "detail": f"mean chroma {chroma:.2f}", "key": record["key"]}
        return {"L": L_norm, "ab": ab_norm, "label": np.int32(record["label"]), "key": record["key"]}


def mean_chroma(ab_normalized: np.ndarray) -> float:
    """Mean of sqrt(a^2 + b^2) in CIELAB units over an image's pixels, from ab/110 (..., 2)."""
    ab = ab_normalized * np.float32(color.AB_SCALE)
    return float(np.sqrt(np.square(ab).sum(-1)).mean())


# ----------------------------------------------------------------------------------------------
# Sharding over processes (calling process).


class _BatchSlots(grain.MapDataset):
    """This process's rows of every global batch, from its ``start``-th row on.

    Records are grouped in global batches of ``global_count`` consecutive records; process p of P
    takes rows [p*b, (p+1)*b) of each (b = global_count // P). So the global batch of P processes
    is the same records in the same order as one process's batch (a strided shard would hold the
    same records in another order, and per-row randomness such as dropout would differ), the
    processes' records are disjoint, and a position is a row count that converts between process
    counts (``global row = batches * global_count``). With ``num_records`` (an evaluation pass),
    global indices from it on do not exist; they fall at the end of each process's rows.
    """

    def __init__(
        self,
        parent: grain.MapDataset,
        *,
        global_count: int,
        shard: tuple[int, int],
        start: int = 0,
        num_records: int | None = None,
    ):
        super().__init__(parent)
        self._shard_index, shard_count = shard
        if global_count % shard_count:
            raise ValueError(f"{global_count} rows per batch are not divisible by {shard_count} processes")
        self._global_count = global_count
        self._rows = global_count // shard_count
        self._start = start
        if num_records is None:
            self._length = len(parent) // shard_count - start
        else:
            full, rest = divmod(num_records, global_count)
            mine = min(max(rest - self._shard_index * self._rows, 0), self._rows)
            self._length = max(full * self._rows + mine - start, 0)

    def __len__(self) -> int:
        return self._length

    def _global_index(self, index: int) -> int:
        batch, row = divmod(index + self._start, self._rows)
        return batch * self._global_count + self._shard_index * self._rows + row

    def __getitem__(self, index):
        if isinstance(index, slice):
            return self.slice(index)
        return self._parent[self._global_index(index)]

    def __str__(self) -> str:
        return (f"BatchSlots(rows {self._shard_index * self._rows}:"
                f"{(self._shard_index + 1) * self._rows} of {self._global_count}, start {self._start})")


# ----------------------------------------------------------------------------------------------
# Skip, count and batch (calling process).


class _SkipCountBatchIterDataset(grain.IterDataset):
    """Batches of `counts[i]` good records from stream i, in stream order (labelled first).

    One stream: the labelled one (training or evaluation). Two: the labelled and the unlabeled
    training streams (`labelled` says which; unlabeled rows get label 0 and has_label 0). Each
    stream is a function ``start -> IterDataset`` of this process's rows from its ``start``-th on
    (``_BatchSlots``), so a position is a row count per stream and converts to another process
    count (``process_count``).
    """

    def __init__(
        self,
        streams: list,
        *,
        counts: tuple[int, ...],
        labelled: tuple[bool, ...],
        names: tuple[str, ...],
        skip_limits: tuple[int | None, ...],
        image_size: int,
        pad_to_batches: int | None,
        tracker_args: dict,
        process_count: int = 1,
    ):
        super().__init__([stream(start=0) for stream in streams])
        self._streams = streams
        self._counts = counts
        self._labelled = labelled
        self._names = names
        self._skip_limits = skip_limits
        self._image_size = image_size
        self._pad_to_batches = pad_to_batches
        self._tracker_args = tracker_args
        self._process_count = process_count

    def __iter__(self):
        return _SkipCountBatchIterator(
            [parent.__iter__() for parent in self._parents],
            streams=self._streams,
            counts=self._counts,
            labelled=self._labelled,
            names=self._names,
            skip_limits=self._skip_limits,
            image_size=self._image_size,
            pad_to_batches=self._pad_to_batches,
            tracker=BadInputTracker(**self._tracker_args),
            process_count=self._process_count,
        )

    def __str__(self) -> str:
        return f"SkipCountBatch(counts={self._counts}, pad_to_batches={self._pad_to_batches})"


class _SkipCountBatchIterator(grain.DatasetIterator):
    """Takes good records until a batch is full; bad ones are counted, never batched.

    Each batch holds counts[0] good records of the first parent, then counts[1] of the second, ...
    (each parent is one stream in index order, so batches do not depend on worker_count). Bad
    records of every stream are counted together, in one tracker and one bad_counts.

    With pad_to_batches (evaluation), the stream ends with a zero-padded partial batch and, if
    needed, all-padding batches so that every process yields exactly pad_to_batches batches.
    """

    def __init__(
        self,
        parents: list,
        *,
        counts: tuple[int, ...],
        labelled: tuple[bool, ...],
        names: tuple[str, ...],
        skip_limits: tuple[int | None, ...],
        image_size: int,
        pad_to_batches: int | None,
        tracker: BadInputTracker,
        streams: list | None = None,
        process_count: int = 1,
    ):
        super().__init__(parents)
        if pad_to_batches is not None and len(parents) != 1:
            raise ValueError("a padded (evaluation) pass reads one stream")
        self._streams = streams
        self._process_count = process_count
        self._taken = [0] * len(parents)  # rows read from each stream, skipped ones included
        self._counts = counts
        self._labelled = labelled
        self._names = names
        self._skip_limits = skip_limits
        self._batch_size = sum(counts)
        self._image_size = image_size
        self._pad_to_batches = pad_to_batches
        self._tracker = tracker
        self._batches_emitted = 0
        self._skips_in_a_row = [0] * len(parents)  # guards against a stream with no usable file
        self._exhausted = False

    def __next__(self) -> dict:
        padded = self._pad_to_batches is not None
        if padded and self._batches_emitted >= self._pad_to_batches:
            raise StopIteration
        bad_counts = np.zeros(len(SKIP_REASONS), np.int64)
        examples: list[str] = []
        rows = [self._take(i, bad_counts, examples) for i in range(len(self._parents))]
        if sum(len(r) for r in rows) < self._batch_size and not padded:
            # Only a finite (non-repeating) stream gets here: no ragged training batches.
            raise StopIteration
        batch = self._make_batch(rows, padded)
        batch["bad_counts"] = bad_counts
        batch["bad_examples"] = tuple(examples)
        self._batches_emitted += 1
        return batch

    def _take(self, stream: int, bad_counts: np.ndarray, examples: list[str]) -> list[dict]:
        """counts[stream] good records of one stream; skipped ones are counted into bad_counts."""
        parent = self._parents[stream]
        limit = self._skip_limits[stream]
        good: list[dict] = []
        while len(good) < self._counts[stream] and not self._exhausted:
            try:
                record = next(parent)
            except StopIteration:
                self._exhausted = True
                break
            self._taken[stream] += 1
            if "reason" in record:
                index = _REASON_INDEX[record["reason"]]
                bad_counts[index] += 1
                detail = f" ({record['detail']})" if record.get("detail") else ""
                example = f"{record['reason']}: {record['key']}{detail}"
                if bad_counts[index] <= _EXAMPLES_PER_REASON:
                    examples.append(example)
                # The ceiling is enforced as soon as it is crossed, not only at batch boundaries.
                self._tracker.add_skipped(record["reason"], example)
                self._skips_in_a_row[stream] += 1
                if limit is not None and self._skips_in_a_row[stream] >= limit:
                    raise TooManyBadInputsError(
                        f"the {self._names[stream]} training stream skipped its last "
                        f"{self._skips_in_a_row[stream]} files in a row (the last: {example}): it "
                        f"has no usable image (near-grayscale photos are skipped too, see "
                        f"grayscale_filter_threshold / unlabeled.grayscale_threshold); so far "
                        f"{self._tracker.totals()}"
                    )
            else:
                good.append(record)
                self._tracker.num_good += 1
                self._skips_in_a_row[stream] = 0
        return good

    def _make_batch(self, rows: list[list[dict]], padded: bool) -> dict:
        n, size = self._batch_size, self._image_size
        records = [r for stream in rows for r in stream]
        labels = [
            r["label"] if labelled else 0
            for stream, labelled in zip(rows, self._labelled)
            for r in stream
        ]
        if len(records) == n:
            batch = {
                "L": np.stack([r["L"] for r in records]),
                "ab": np.stack([r["ab"] for r in records]),
                "label": np.array(labels, np.int32),
            }
        else:  # the padded end of an evaluation pass
            batch = {
                "L": np.zeros((n, size, size, 1), np.float32),
                "ab": np.zeros((n, size, size, 2), np.float32),
                "label": np.zeros((n,), np.int32),
            }
            for i, record in enumerate(records):
                batch["L"][i] = record["L"]
                batch["ab"][i] = record["ab"]
                batch["label"][i] = labels[i]
        # Per row: 1.0 labelled, 0.0 unlabeled (evaluation: all ones, padding rows included).
        batch["has_label"] = np.repeat(
            np.asarray(self._labelled, np.float32), np.asarray(self._counts)
        )
        if padded:
            mask = np.zeros((n,), np.float32)
            mask[: len(records)] = 1.0
            batch["mask"] = mask
        return batch

    def get_state(self) -> dict:
        return {
            "taken": list(self._taken),
            "process_count": self._process_count,
            "batches_emitted": self._batches_emitted,
            "tracker": self._tracker.get_state(),
            "skips_in_a_row": list(self._skips_in_a_row),
        }

    def set_state(self, state: dict) -> None:
        """Restores a position saved by this or another number of processes.

        Another process count: every process read ``batches_emitted * counts[i]`` rows of stream
        i, exact unless files were skipped (a skipped file moves only its own process's rows on;
        then a few records of the current epoch may be read twice or not at all).
        """
        if "taken" not in state:
            self._set_grain_state(state)
        else:
            if len(state["taken"]) != len(self._parents):
                self._raise_stream_mismatch(len(state["taken"]) > 1)
            if int(state["process_count"]) == self._process_count:
                taken = [int(n) for n in state["taken"]]
            else:
                taken = [int(state["batches_emitted"]) * count for count in self._counts]
                if any(state["tracker"]["counts"]):
                    logging.warning(
                        "data position of %s processes resumed on %s from the batch count; %s "
                        "files had been skipped, so a few records of this epoch may repeat or be "
                        "left out", state["process_count"], self._process_count,
                        sum(state["tracker"]["counts"]))
            self._parents = [iter(stream(start=n)) for stream, n in zip(self._streams, taken)]
            self._taken = taken
        self._batches_emitted = int(state["batches_emitted"])
        self._tracker.set_state(state["tracker"])
        self._skips_in_a_row = [
            int(n) for n in state.get("skips_in_a_row", [0] * len(self._parents))
        ]
        self._exhausted = False

    def _set_grain_state(self, state: dict) -> None:
        """A state saved before positions were row counts: the streams' own grain states."""
        has_unlabeled = "unlabeled" in state
        if has_unlabeled != (len(self._parents) > 1):
            self._raise_stream_mismatch(has_unlabeled)
        self._parents[0].set_state(state["parent"])
        if has_unlabeled:
            self._parents[1].set_state(state["unlabeled"])
        self._taken = [
            int(s.get("next_index", int(state["batches_emitted"]) * count))
            for s, count in zip([state["parent"], state.get("unlabeled", {})], self._counts)
        ]

    @staticmethod
    def _raise_stream_mismatch(saved_unlabeled: bool):
        saved, now = ("with", "without") if saved_unlabeled else ("without", "with")
        raise ValueError(
            f"the data iterator state was saved {saved} an unlabeled stream but this pipeline "
            f"is {now} one (data.unlabeled.source): restore with the same data config"
        )

    def __str__(self) -> str:
        return f"SkipCountBatchIterator(counts={self._counts})"


# ----------------------------------------------------------------------------------------------
# Sources and iterators.

UNLABELED_SOURCES = ("folder", "tfds", "synthetic")
# A training stream that skips max(_SKIP_LIMIT_MIN, _SKIP_LIMIT_PASSES * len(source)) files in a
# row has no usable image (e.g. an all-grayscale folder under the unlabeled grayscale filter, which
# does not count towards max_bad_fraction): stop with TooManyBadInputsError, not loop forever.
_SKIP_LIMIT_MIN = 100
_SKIP_LIMIT_PASSES = 10


def make_source(data_config: ml_collections.ConfigDict, split: str):
    """The random-access source (grain data source protocol) of one split: "train" or "val", or
    "unlabeled" (the source of data.unlabeled; its records' labels are not used)."""
    if split == "unlabeled":
        return _make_unlabeled_source(data_config)
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS + ('unlabeled',)}, got {split!r}")
    kind = data_config.source
    if kind == "synthetic":
        from mtcolor.data.synthetic import SyntheticSource

        s = data_config.synthetic
        return SyntheticSource(
            split=split,
            size=data_config.image_size,
            num_examples=s.train_size if split == "train" else s.val_size,
            num_classes=s.num_classes,
            seed=s.seed,
        )
    if kind == "folder":
        from mtcolor.data.folder import FolderSource

        f = data_config.folder
        train_root = f.train_root
        root = train_root if split == "train" else (f.val_root or train_root)
        split_file = f.train_split_file if split == "train" else f.val_split_file
        if split == "val" and not f.val_root and not (f.train_split_file and f.val_split_file):
            raise ValueError(
                "data.folder.val_root is empty: set it to the validation tree, or give both "
                "data.folder.train_split_file and val_split_file so train_root is split in two"
            )
        if not root:
            raise ValueError("data.source is 'folder' but data.folder.train_root is empty")
        return FolderSource(root, classes=_as_list(data_config.classes), split_file=split_file or None)
    if kind == "tfds":
        from mtcolor.data.tfds_source import TfdsSource

        t = data_config.tfds
        return TfdsSource(
            t.name,
            split=t.train_split if split == "train" else t.val_split,
            data_dir=t.data_dir or None,
            classes=_as_list(data_config.classes),
            image_key=t.image_key,
            label_key=t.label_key,
            label_cache_dir=t.label_cache_dir or None,
        )
    raise ValueError(f"data.source must be 'synthetic', 'folder' or 'tfds', got {kind!r}")


def _make_unlabeled_source(data_config: ml_collections.ConfigDict):
    u = data_config.get("unlabeled")
    kind = u.source if u is not None else None
    if kind is None:
        raise ValueError("data.unlabeled.source is None: there is no unlabeled source")
    if kind == "folder":
        from mtcolor.data.folder import ImageFilesSource

        if not u.folder.root:
            raise ValueError(
                "data.unlabeled.source is 'folder' but data.unlabeled.folder.root is empty"
            )
        return ImageFilesSource(u.folder.root, split_file=u.folder.split_file or None)
    if kind == "tfds":
        from mtcolor.data.tfds_source import TfdsSource

        if not u.tfds.name:
            raise ValueError(
                "data.unlabeled.source is 'tfds' but data.unlabeled.tfds.name is empty"
            )
        return TfdsSource(
            u.tfds.name,
            split=u.tfds.split,
            data_dir=u.tfds.data_dir or None,
            image_key=u.tfds.image_key,
            label_key=None,
        )
    if kind == "synthetic":
        from mtcolor.data.synthetic import SyntheticSource

        return SyntheticSource(
            split="unlabeled",
            size=data_config.image_size,
            num_examples=u.synthetic.size,
            num_classes=data_config.synthetic.num_classes,
            seed=u.synthetic.seed,
        )
    raise ValueError(
        f"data.unlabeled.source must be None or one of {UNLABELED_SOURCES}, got {kind!r}"
    )


def unlabeled_per_batch(data_config: ml_collections.ConfigDict) -> int:
    """Unlabeled examples in every GLOBAL training batch: round(fraction * batch_size), 0 if off."""
    u = data_config.get("unlabeled")
    if u is None or u.source is None:
        return 0
    if u.source not in UNLABELED_SOURCES:
        raise ValueError(
            f"data.unlabeled.source must be None or one of {UNLABELED_SOURCES}, got {u.source!r}"
        )
    fraction = u.fraction
    if fraction is None or not 0.0 < fraction < 1.0:
        raise ValueError(f"data.unlabeled.fraction must be in (0, 1), got {fraction!r}")
    batch_size = int(data_config.batch_size)
    count = int(math.floor(fraction * batch_size + 0.5))
    if not 0 < count < batch_size:
        raise ValueError(
            f"data.unlabeled.fraction {fraction} of batch_size {batch_size} gives {count} "
            f"unlabeled examples per batch: need at least one labelled and one unlabeled"
        )
    return count


def labelled_per_batch(data_config: ml_collections.ConfigDict) -> int:
    """Labelled examples in every GLOBAL training batch (batch_size without unlabeled ones)."""
    return int(data_config.batch_size) - unlabeled_per_batch(data_config)


def steps_per_epoch(data_config: ml_collections.ConfigDict) -> int:
    """Training steps per epoch of the LABELLED source: num_examples("train") // labelled_per_batch
    (at least 1); the unlabeled stream does not count (it cycles on its own)."""
    return max(1, num_examples(data_config, "train") // labelled_per_batch(data_config))


def _as_list(classes) -> list[str] | None:
    if classes is None:
        return None
    if isinstance(classes, str):
        return [c.strip() for c in classes.split(",") if c.strip()]
    return list(classes)


def num_examples(data_config: ml_collections.ConfigDict, split: str) -> int:
    """Number of files/records of a split, over all processes, before bad files are skipped."""
    return len(make_source(data_config, split))


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
        raise ValueError(f"global batch_size {data_config.batch_size} is not divisible by {shard_count} processes")
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


def _to_iter_dataset(ds: grain.MapDataset, data_config, *, workers: int) -> grain.IterDataset:
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
    source, data_config, *, seed: int, streams: tuple[int, int], threshold, global_count: int,
    shard, workers, start: int,
):
    """One infinite, per-epoch reshuffled, decoded stream of a training source: this process's
    ``global_count // shard_count`` rows of each global batch (``_BatchSlots``), from its
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
    ds = _BatchSlots(ds, global_count=global_count, shard=shard, start=start)
    return _to_iter_dataset(ds, data_config, workers=workers)


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
    return _SkipCountBatchIterDataset(
        streams,
        counts=counts,
        labelled=(True, False)[: len(streams)],
        names=("labelled", "unlabeled")[: len(streams)],
        skip_limits=tuple(max(_SKIP_LIMIT_MIN, _SKIP_LIMIT_PASSES * len(s)) for s in sources),
        image_size=data_config.image_size,
        pad_to_batches=None,
        tracker_args=_tracker_args(data_config, enforce=True),
        process_count=shard_count,
    )


def make_train_iterator(data_config, *, seed: int, shard_index: int | None = None, shard_count: int | None = None):
    """Infinite iterator of training batches (see module docstring); a grain DatasetIterator.

    shard_index / shard_count default to jax.process_index() / jax.process_count().
    """
    return iter(make_train_dataset(data_config, seed=seed, shard_index=shard_index, shard_count=shard_count))


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
    batches, padding where its rows run out, so multi-host evaluation steps stay in lockstep. Skipped files are counted in `bad_counts` like in training, without the ceiling.
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
        ds = _BatchSlots(ds, global_count=data_config.batch_size, shard=(shard_index, shard_count),
                         start=start, num_records=len(source))
        return _to_iter_dataset(ds, data_config, workers=data_config.worker_count)

    return iter(
        _SkipCountBatchIterDataset(
            [stream],
            counts=(batch_size,),
            labelled=(True,),
            names=(split,),
            skip_limits=(None,),
            image_size=data_config.image_size,
            pad_to_batches=math.ceil(len(source) / data_config.batch_size),
            tracker_args=_tracker_args(data_config, enforce=False),
            process_count=shard_count,
        )
    )


__all__ = [
    "BAD_REASONS",
    "NEAR_GRAYSCALE",
    "SKIP_REASONS",
    "BadInputTracker",
    "TooManyBadInputsError",
    "UNLABELED_SOURCES",
    "default_data_config",
    "labelled_per_batch",
    "make_eval_iterator",
    "make_source",
    "make_train_dataset",
    "make_train_iterator",
    "num_examples",
    "steps_per_epoch",
    "unlabeled_per_batch",
]
