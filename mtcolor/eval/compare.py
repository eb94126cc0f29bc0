"""The study's comparison table: per-variant mean and std over seeds, baselines, and Delta_m.

Pure functions on plain dicts (no JAX, no files), so the table can be tested with hand-computed
numbers. `mtcolor.eval.study` reads the runs and calls these.

A run's metrics are a flat dict {metric key: value} as made by `metrics_from_eval` from an
`eval_<split>.json` (mtcolor.eval.evaluate): accuracy (a fraction), l1_x100, psnr, colorfulness and
colorfulness_gap = |colorfulness - ground-truth colorfulness| (of the split's mean colorfulness).

Delta_m (Maninis, Radosavovic & Kokkinos 2019, eq. 4), in percent:

    Delta_m = 100 / T * sum_t 1 / |M_t| * sum_{j in M_t}
                  (-1)^{l_j} (M_multi,j - M_single,j) / M_single,j

with l_j = 1 where lower is better; M_t are the metrics of task t marked `in_delta_m` in METRICS;
M_single,j is the mean over seeds of the single-task run of task t on the same setup. Positive means
the multi-task model is better than the single-task models on average.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable, Mapping, Sequence


@dataclasses.dataclass(frozen=True)
class Metric:
    key: str
    label: str  # column header
    task: str  # "classification" or "colorization"
    lower_is_better: bool | None  # None: no better direction (not in Delta_m)
    in_delta_m: bool
    scale: float = 1.0  # display scale (accuracy shown in %)


# THE table: which metric belongs to which task, which direction is better, what enters Delta_m.
METRICS: tuple[Metric, ...] = (
    Metric("accuracy", "accuracy (%)", "classification", False, True, 100.0),
    Metric("l1_x100", "L1 x100", "colorization", True, True),
    Metric("psnr", "PSNR (dB)", "colorization", False, True),
    Metric("colorfulness", "colorfulness", "colorization", None, False),
    Metric("colorfulness_gap", "|colorfulness - GT|", "colorization", True, True),
)
METRIC_BY_KEY = {m.key: m for m in METRICS}
TASKS = ("classification", "colorization")
# The tasks each experiment is expected to report metrics for.
EXPERIMENT_TASKS = {
    "classification": ("classification",),
    "colorization": ("colorization",),
    "multitask": ("classification", "colorization"),
}


def expected_metrics(experiment: str) -> tuple[str, ...]:
    tasks = EXPERIMENT_TASKS[experiment]
    return tuple(m.key for m in METRICS if m.task in tasks)


def metrics_from_eval(result: Mapping) -> dict[str, float]:
    """The METRICS of the "model" row of an evaluate_workdir() result (those it has)."""
    model = result.get("model", {}) or {}
    keys = ("accuracy", "l1_x100", "psnr", "colorfulness")
    out = {k: float(model[k]) for k in keys if k in model}
    gt = (result.get("ground_truth", {}) or {}).get("colorfulness")
    if "colorfulness" in model and gt is not None:
        out["colorfulness_gap"] = abs(float(model["colorfulness"]) - float(gt))
    return out


def baseline_from_eval(result: Mapping, num_classes: int | None = None) -> dict[str, float]:
    """The baseline row of one evaluation: ab = 0 for the colorization metrics, chance
    (1 / num_classes) for accuracy, plus "gt_colorfulness"."""
    gray = result.get("grayscale_baseline", {}) or {}
    out = {k: float(gray[k]) for k in ("l1_x100", "psnr", "colorfulness") if k in gray}
    gt = (result.get("ground_truth", {}) or {}).get("colorfulness")
    if gt is not None:
        out["gt_colorfulness"] = float(gt)
        if "colorfulness" in gray:
            out["colorfulness_gap"] = abs(float(gray["colorfulness"]) - float(gt))
    if num_classes is None and result.get("class_names"):
        num_classes = len(result["class_names"])
    if num_classes:
        out["accuracy"] = 1.0 / num_classes
    return out


@dataclasses.dataclass
class RunMetrics:
    """One run (variant, seed): its metrics and status ("finished", "in progress", "failed: ...",
    "missing", "not evaluated: ...")."""

    variant: str
    seed: int
    experiment: str
    status: str
    metrics: dict[str, float] = dataclasses.field(default_factory=dict)
    baseline: dict[str, float] = dataclasses.field(default_factory=dict)

    @property
    def usable(self) -> bool:
        return self.status in ("finished", "in progress") and bool(self.metrics)


@dataclasses.dataclass
class Stat:
    mean: float | None
    std: float | None  # sample std (ddof = 1); 0 for one seed; None without values
    n: int


def mean_std(values: Sequence[float]) -> Stat:
    values = [float(v) for v in values if v is not None and math.isfinite(v)]
    if not values:
        return Stat(None, None, 0)
    mean = sum(values) / len(values)
    if len(values) == 1:
        return Stat(mean, 0.0, 1)
    var = sum((v - mean) ** 2 for v in values) / (len(values) - 1)
    return Stat(mean, math.sqrt(var), len(values))


@dataclasses.dataclass
class Row:
    variant: str
    experiment: str
    stats: dict[str, Stat]
    seeds_used: list[int]
    seeds_in_progress: list[int]
    problems: list[str]
    delta_m: float | None = None
    delta_m_per_task: dict[str, float] = dataclasses.field(default_factory=dict)
    delta_m_note: str = ""
    kind: str = "variant"  # "variant", "reference" (single-task), "baseline"

    def mean(self, key: str) -> float | None:
        stat = self.stats.get(key)
        return None if stat is None else stat.mean


def summarize_variant(variant: str, experiment: str, runs: Iterable[RunMetrics]) -> Row:
    """Mean and std over seeds of each expected metric. Every run that is not usable, or lacks an
    expected metric, is named in `problems` (never silently dropped); its other metrics still
    count."""
    expected = expected_metrics(experiment)
    values: dict[str, list[float]] = {k: [] for k in expected}
    problems, used, in_progress = [], [], []
    for run in sorted(runs, key=lambda r: r.seed):
        if not run.usable:
            problems.append(f"seed {run.seed}: {run.status}")
            continue
        used.append(run.seed)
        if run.status == "in progress":
            in_progress.append(run.seed)
        missing = [
            k
            for k in expected
            if k not in run.metrics or run.metrics[k] is None or not math.isfinite(run.metrics[k])
        ]
        if missing:
            problems.append(f"seed {run.seed}: incomplete, missing {', '.join(missing)}")
        for k in expected:
            if k not in missing:
                values[k].append(run.metrics[k])
    stats = {k: mean_std(v) for k, v in values.items()}
    return Row(variant, experiment, stats, used, in_progress, problems)


def delta_m(
    multi: Mapping[str, float | None], single: Mapping[str, float | None]
) -> tuple[float | None, dict[str, float], str]:
    """Delta_m in percent of `multi` against the single-task references `single` (both {metric
    key: mean}). Returns (Delta_m, {task: its term in percent}, note); Delta_m is None (and the
    note says why) when a metric in Delta_m is missing on either side or a reference is 0."""
    per_task: dict[str, float] = {}
    missing = []
    for task in TASKS:
        terms = []
        for m in METRICS:
            if m.task != task or not m.in_delta_m:
                continue
            a, b = multi.get(m.key), single.get(m.key)
            if a is None or b is None:
                missing.append(f"{m.key} ({'multi-task' if a is None else 'single-task'})")
                continue
            if b == 0:
                missing.append(f"{m.key} (single-task value is 0)")
                continue
            sign = -1.0 if m.lower_is_better else 1.0
            terms.append(sign * (a - b) / b)
        if terms:
            per_task[task] = 100.0 * sum(terms) / len(terms)
    if missing:
        return None, per_task, "missing " + ", ".join(missing)
    return sum(per_task.values()) / len(per_task), per_task, ""


def single_task_reference(rows: Mapping[str, Row], references: Mapping[str, str]) -> dict:
    """{metric key: mean} taken, for each task, from the single-task row named in `references`
    ({task: variant name})."""
    out: dict[str, float | None] = {}
    for task, name in references.items():
        row = rows.get(name)
        for m in METRICS:
            if m.task == task:
                out[m.key] = None if row is None else row.mean(m.key)
    return out


def baseline_row(runs: Iterable[RunMetrics]) -> Row:
    """Mean over the evaluated runs of their baseline values (the same split gives the same ab = 0
    numbers for every run; accuracy is chance, 1 / num_classes)."""
    values: dict[str, list[float]] = {}
    for run in runs:
        for k, v in run.baseline.items():
            values.setdefault(k, []).append(v)
    stats = {m.key: mean_std(values.get(m.key, [])) for m in METRICS}
    row = Row("baseline: chance / gray (ab = 0)", "baseline", stats, [], [], [], kind="baseline")
    gt = mean_std(values.get("gt_colorfulness", []))
    row.stats["gt_colorfulness"] = gt
    return row


def build_table(
    variants: Sequence[tuple[str, str]],
    runs: Iterable[RunMetrics],
    references: Mapping[str, str],
) -> list[Row]:
    """The comparison table: one row per variant ((name, experiment) in order), then the baseline
    row. Multi-task rows get Delta_m against the single-task rows named in `references`
    ({"classification": name, "colorization": name}); the baseline row gets it too (what a model
    that learned nothing scores)."""
    runs = list(runs)
    by_variant: dict[str, list[RunMetrics]] = {}
    for run in runs:
        by_variant.setdefault(run.variant, []).append(run)
    rows = {name: summarize_variant(name, exp, by_variant.get(name, [])) for name, exp in variants}
    for name, _exp in variants:
        if not by_variant.get(name):
            rows[name].problems.append("no runs")
    reference_names = set(references.values())
    single = single_task_reference(rows, references)
    for name, exp in variants:
        row = rows[name]
        if name in reference_names:
            row.kind = "reference"
        if exp == "multitask":
            row.delta_m, row.delta_m_per_task, row.delta_m_note = delta_m(
                {k: row.mean(k) for k in METRIC_BY_KEY}, single
            )
    base = baseline_row(r for r in runs if r.usable)
    base.delta_m, base.delta_m_per_task, base.delta_m_note = delta_m(
        {k: base.mean(k) for k in METRIC_BY_KEY}, single
    )
    return [rows[name] for name, _ in variants] + [base]


# ---------------------------------------------------------------------------------------------
# Output formats


def _fmt(stat: Stat | None, scale: float, digits: int = 2) -> str:
    if stat is None or stat.mean is None:
        return "-"
    if stat.n <= 1:
        return f"{scale * stat.mean:.{digits}f}"
    return f"{scale * stat.mean:.{digits}f} ± {scale * stat.std:.{digits}f}"


def _fmt_delta(row: Row) -> str:
    if row.experiment not in ("multitask", "baseline"):
        return "n/a"
    if row.delta_m is None:
        return "-"
    return f"{row.delta_m:+.2f}"


def table_markdown(rows: Sequence[Row], header: str = "") -> str:
    lines = [header, ""] if header else []
    cols = ["variant", "experiment", "seeds"] + [m.label.replace("|", "\\|") for m in METRICS]
    cols += ["Delta_m (%)", "Delta_m cls / col (%)", "notes"]
    lines += [
        "| " + " | ".join(cols) + " |",
        "|---|---|---|" + "---:|" * (len(METRICS) + 2) + "---|",
    ]
    for row in rows:
        seeds = (
            ""
            if row.kind == "baseline"
            else ",".join(f"{s}*" if s in row.seeds_in_progress else str(s) for s in row.seeds_used)
            or "none"
        )
        cells = [row.variant, row.experiment, seeds]
        cells += [_fmt(row.stats.get(m.key), m.scale) for m in METRICS]
        cells.append(_fmt_delta(row))
        per_task = " / ".join(
            f"{row.delta_m_per_task[t]:+.2f}" if t in row.delta_m_per_task else "-" for t in TASKS
        )
        cells.append(per_task if row.experiment in ("multitask", "baseline") else "n/a")
        notes = list(row.problems)
        if row.delta_m_note:
            notes.append(f"Delta_m: {row.delta_m_note}")
        if row.kind == "reference":
            notes.insert(0, "single-task reference")
        if row.kind == "baseline" and row.stats.get("gt_colorfulness", Stat(None, None, 0)).mean:
            notes.append(f"ground-truth colorfulness {row.stats['gt_colorfulness'].mean:.2f}")
        cells.append("; ".join(notes).replace("|", "\\|"))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def table_records(rows: Sequence[Row]) -> list[dict]:
    """One flat dict per row (for CSV and JSON): <metric>_mean, <metric>_std, <metric>_n, ..."""
    records = []
    for row in rows:
        rec: dict = {
            "variant": row.variant,
            "experiment": row.experiment,
            "kind": row.kind,
            "seeds": " ".join(map(str, row.seeds_used)),
            "seeds_in_progress": " ".join(map(str, row.seeds_in_progress)),
        }
        for m in METRICS:
            stat = row.stats.get(m.key)
            rec[f"{m.key}_mean"] = None if stat is None else stat.mean
            rec[f"{m.key}_std"] = None if stat is None else stat.std
            rec[f"{m.key}_n"] = 0 if stat is None else stat.n
        rec["delta_m_pct"] = row.delta_m
        for task in TASKS:
            rec[f"delta_m_{task}_pct"] = row.delta_m_per_task.get(task)
        rec["problems"] = "; ".join(row.problems + ([row.delta_m_note] if row.delta_m_note else []))
        records.append(rec)
    return records
