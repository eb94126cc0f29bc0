"""Bad-input accounting: why a file was skipped, how many were, and the ceiling that stops a run.

Every input path reports skipped files the same way: each batch carries ``bad_counts`` (per
reason, in `SKIP_REASONS` order) and ``bad_examples`` ("reason: key (detail)" lines);
`BadInputTracker` adds them up, logs them and raises `TooManyBadInputsError` once more than
``data.max_bad_fraction`` of the files seen were unusable. Runs in the calling process (no JAX).
"""

from __future__ import annotations

import numpy as np

from mtcolor.data.decode import BAD_REASONS

NEAR_GRAYSCALE = "near_grayscale"  # dropped by the grayscale filter: a valid file, not an error
SKIP_REASONS = BAD_REASONS + (NEAR_GRAYSCALE,)
REASON_INDEX = {r: i for i, r in enumerate(SKIP_REASONS)}
INFO_KEYS = ("bad_counts", "bad_examples")  # per-batch fields that are not model inputs
EXAMPLES_PER_REASON = 2  # example lines per reason carried by one batch


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

    def __init__(
        self, max_bad_fraction: float | None = None, min_examples: int = 200, examples_kept: int = 3
    ):
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
        self.counts[REASON_INDEX[reason]] += 1
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
        self.update(
            batch.get("bad_counts", np.zeros(len(SKIP_REASONS))),
            num_good,
            batch.get("bad_examples", ()),
        )
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
        """Cumulative counts for a metric writer: <prefix>skipped (all reasons), bad_fraction,
        good_examples, and skipped_<reason> for each reason seen so far. Reasons never seen are
        left out: ten constant zeros on every console line and as ten flat TensorBoard charts told
        a user less than the one ``skipped`` series does."""
        out = {f"{prefix}skipped_{r}": float(n) for r, n in self.totals().items()}
        out[f"{prefix}skipped"] = float(self.counts.sum())
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


def make_bad_input_tracker(data_config) -> BadInputTracker:
    """The tracker a training loop keeps for a run: data.max_bad_fraction after
    data.bad_check_min_examples files."""
    return BadInputTracker(
        data_config.get("max_bad_fraction"),
        min_examples=int(data_config.get("bad_check_min_examples", 200)),
    )


def example_line(reason: str, key: str, detail: str = "") -> str:
    """A skipped file as one "reason: key (detail)" line, as batches and reports show it."""
    return f"{reason}: {key}" + (f" ({detail})" if detail else "")
