"""Batching for the grain pipeline: which rows of a global batch a process reads (`BatchSlots`)
and the batcher that skips and counts bad records while it fills batches (`SkipCountBatcher`).

Both run in the calling process, after the worker outputs are interleaved back into index order,
so batches do not depend on the worker count and bad-file counts cannot be lost in a worker.
A position is a row count per stream, so it converts between process counts.
"""

from __future__ import annotations

import dataclasses
import logging

import grain
import numpy as np

from mtcolor.data.bad_inputs import (
    EXAMPLES_PER_REASON,
    REASON_INDEX,
    SKIP_REASONS,
    BadInputTracker,
    TooManyBadInputsError,
    example_line,
)


class BatchSlots(grain.MapDataset):
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
            raise ValueError(
                f"{global_count} rows per batch are not divisible by {shard_count} processes"
            )
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
        return (
            f"BatchSlots(rows {self._shard_index * self._rows}:"
            f"{(self._shard_index + 1) * self._rows} of {self._global_count}, start {self._start})"
        )


@dataclasses.dataclass(frozen=True)
class BatchLayout:
    """What a batch is made of: `counts[i]` good records of stream i (named `names[i]`; its rows
    are labelled or not), stream i giving up after `skip_limits[i]` skipped files in a row
    (None: never); with `pad_to_batches` (evaluation) every process yields exactly that many
    batches, zero-padded. `process_count`: the processes sharing each global batch."""

    counts: tuple[int, ...]
    labelled: tuple[bool, ...]
    names: tuple[str, ...]
    skip_limits: tuple[int | None, ...]
    image_size: int
    pad_to_batches: int | None = None
    process_count: int = 1


class SkipCountBatcher(grain.IterDataset):
    """Batches of `layout.counts[i]` good records from stream i, in stream order (labelled first).

    One stream: the labelled one (training or evaluation). Two: the labelled and the unlabeled
    training streams (`layout.labelled` says which; unlabeled rows get label 0 and has_label 0).
    Each stream is a function ``start -> IterDataset`` of this process's rows from its
    ``start``-th on (``BatchSlots``), so a position is a row count per stream and converts to
    another process count (``layout.process_count``). `tracker_args` make each iterator's
    `BadInputTracker`.
    """

    def __init__(self, streams: list, *, layout: BatchLayout, tracker_args: dict):
        super().__init__([stream(start=0) for stream in streams])
        self._streams = streams
        self._layout = layout
        self._tracker_args = tracker_args

    def __iter__(self):
        return SkipCountBatchIterator(
            [parent.__iter__() for parent in self._parents],
            streams=self._streams,
            layout=self._layout,
            tracker=BadInputTracker(**self._tracker_args),
        )

    def __str__(self) -> str:
        return f"SkipCountBatcher({self._layout})"


class SkipCountBatchIterator(grain.DatasetIterator):
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
        layout: BatchLayout,
        tracker: BadInputTracker,
        streams: list | None = None,
    ):
        super().__init__(parents)
        if layout.pad_to_batches is not None and len(parents) != 1:
            raise ValueError("a padded (evaluation) pass reads one stream")
        self._streams = streams
        self._process_count = layout.process_count
        self._counts = layout.counts
        self._labelled = layout.labelled
        self._names = layout.names
        self._skip_limits = layout.skip_limits
        self._batch_size = sum(layout.counts)
        self._image_size = layout.image_size
        self._pad_to_batches = layout.pad_to_batches
        self._taken = [0] * len(parents)  # rows read from each stream, skipped ones included
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
                index = REASON_INDEX[record["reason"]]
                bad_counts[index] += 1
                example = example_line(record["reason"], record["key"], record.get("detail") or "")
                if bad_counts[index] <= EXAMPLES_PER_REASON:
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
                        "left out",
                        state["process_count"],
                        self._process_count,
                        sum(state["tracker"]["counts"]),
                    )
            # The iterators made for position 0 hold grain's worker processes (worker_count > 0):
            # closed here, not left running beside their replacements until garbage collection.
            for parent in self._parents:
                parent.close()
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
