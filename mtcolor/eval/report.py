"""The paper's results section from a set of runs: Table I, the loss curves of Figs. 3-7, Fig. 2.

Reads only what the training loop writes into each workdir (config.json, scalars.jsonl,
summary.json, checkpoints/), so it works on finished runs, on runs still in progress (the latest
logged values are used and marked "in progress") and on runs of different lengths (curves are drawn
against epochs, each run over its own range). Each run's role (classifier, colorizer, multi-task)
comes from its own config, not from the order of the arguments. A run that is not given, or whose
workdir holds nothing usable, is named in the table notes, in the figure titles and in the returned
`Report.problems`.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from mtcolor.data.color import lab_norm_to_rgb

EXPERIMENTS = ("classification", "colorization", "multitask")
ROLE_LABEL = {
    "classification": "single-task classifier",
    "colorization": "single-task colorizer",
    "multitask": "multi-task",
}
# The paper's Table I (accuracy in %, L1 loss = 100 * mean |ab error| on normalized ab).
PAPER_TABLE_ONE = {
    ("Train", "Single-task"): (96.4, 10.9),
    ("Train", "Multi-task"): (98.0, 11.1),
    ("Val", "Single-task"): (84.8, 13.3),
    ("Val", "Multi-task"): (81.6, 11.6),
}


# --------------------------------------------------------------------------------------------
# Reading runs


@dataclasses.dataclass
class Run:
    workdir: Path
    experiment: str | None
    config: dict | None
    scalars: list[dict]
    summary: dict | None
    problems: list[str]

    @property
    def finished(self) -> bool:
        return self.summary is not None

    @property
    def status(self) -> str:
        if self.finished:
            return f"finished, {self.summary.get('steps', '?')} steps"
        if self.scalars:
            last = self.scalars[-1]
            return (
                f"in progress, last logged step {last.get('step')} "
                f"(epoch {_fmt_epoch(last.get('epoch'))})"
            )
        return "no scalars logged yet"

    def series(self, key: str) -> tuple[np.ndarray, np.ndarray]:
        """(epochs, values) of one logged scalar such as "val/loss_l1", in logging order."""
        points = [
            (row.get("epoch", row.get("step")), row[key])
            for row in self.scalars
            if key in row and row[key] is not None and math.isfinite(row[key])
        ]
        if not points:
            return np.zeros(0), np.zeros(0)
        epochs, values = zip(*points)
        return np.asarray(epochs, float), np.asarray(values, float)

    def latest(self, split: str, name: str) -> tuple[float, str] | None:
        """The run's value of split/name and where it came from.

        A finished run's summary.json "final" block wins; otherwise the last logged scalar.
        """
        if self.summary is not None:
            value = self.summary.get("final", {}).get(split, {}).get(name)
            if value is not None:
                return float(value), f"final, step {self.summary.get('steps', '?')}"
        for row in reversed(self.scalars):
            value = row.get(f"{split}/{name}")
            if value is not None:
                state = "final" if self.finished else "in progress"
                return float(
                    value
                ), f"{state}, step {row.get('step')} (epoch {_fmt_epoch(row.get('epoch'))})"
        return None


def _fmt_epoch(epoch) -> str:
    return "?" if epoch is None else f"{float(epoch):.2f}"


def _read_json(path: Path, problems: list[str]) -> dict | None:
    if not path.exists():
        return None
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as error:
        problems.append(f"{path}: unreadable ({error})")
        return None


def read_scalars(path: Path) -> list[dict]:
    """Rows of scalars.jsonl; a line cut off by a run that is still writing is skipped."""
    rows = []
    if not path.exists():
        return rows
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line:
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(row, dict):
            rows.append(row)
    rows.sort(key=lambda row: row.get("step", 0))
    return rows


def load_run(workdir) -> Run:
    workdir = Path(workdir)
    problems: list[str] = []
    if not workdir.is_dir():
        return Run(workdir, None, None, [], None, [f"{workdir}: no such directory"])
    config = _read_json(workdir / "config.json", problems)
    summary = _read_json(workdir / "summary.json", problems)
    scalars = read_scalars(workdir / "scalars.jsonl")
    experiment = (config or {}).get("experiment") or (summary or {}).get("experiment")
    if experiment not in EXPERIMENTS:
        problems.append(
            f"{workdir}: cannot tell which experiment this is (config.json/summary.json "
            f"'experiment' is {experiment!r}, expected one of {EXPERIMENTS})"
        )
        experiment = None
    if not scalars:
        problems.append(f"{workdir}: scalars.jsonl missing or empty (run not started?)")
    return Run(workdir, experiment, config, scalars, summary, problems)


def assign_roles(workdirs: Sequence) -> tuple[dict[str, Run], list[str]]:
    """{experiment: Run} and the list of problems (unreadable, duplicate or missing runs)."""
    runs: dict[str, Run] = {}
    problems: list[str] = []
    for workdir in workdirs:
        run = load_run(workdir)
        problems.extend(run.problems)
        if run.experiment is None:
            continue
        if run.experiment in runs:
            problems.append(
                f"{run.workdir}: a second {ROLE_LABEL[run.experiment]} run; using "
                f"{runs[run.experiment].workdir}"
            )
            continue
        runs[run.experiment] = run
    for experiment in EXPERIMENTS:
        if experiment not in runs:
            problems.append(
                f"MISSING: no {ROLE_LABEL[experiment]} run ({experiment}) among the workdirs"
            )
    return runs, problems


# --------------------------------------------------------------------------------------------
# Table I


@dataclasses.dataclass
class TableRow:
    subset: str
    model: str
    accuracy_pct: float | None
    accuracy_source: str
    l1_x100: float | None
    l1_source: str


def _l1_x100(run: Run | None, split: str) -> tuple[float | None, str]:
    if run is None:
        return None, "run missing"
    found = run.latest(split, "loss_l1")
    if found is not None:
        return found[0], f"{run.workdir.name}: {found[1]}"
    found = run.latest(split, "l1")
    if found is not None:
        return 100.0 * found[0], f"{run.workdir.name}: {found[1]}"
    return None, f"{run.workdir.name}: nothing logged"


def _accuracy_pct(run: Run | None, split: str) -> tuple[float | None, str]:
    if run is None:
        return None, "run missing"
    found = run.latest(split, "accuracy")
    if found is None:
        return None, f"{run.workdir.name}: nothing logged"
    return 100.0 * found[0], f"{run.workdir.name}: {found[1]}"


def table_one(runs: dict[str, Run]) -> list[TableRow]:
    """Table I: single-task accuracy from the classifier, single-task L1 from the colorizer."""
    rows = []
    for split, subset in (("train", "Train"), ("val", "Val")):
        accuracy, accuracy_source = _accuracy_pct(runs.get("classification"), split)
        l1, l1_source = _l1_x100(runs.get("colorization"), split)
        rows.append(TableRow(subset, "Single-task", accuracy, accuracy_source, l1, l1_source))
        accuracy, accuracy_source = _accuracy_pct(runs.get("multitask"), split)
        l1, l1_source = _l1_x100(runs.get("multitask"), split)
        rows.append(TableRow(subset, "Multi-task", accuracy, accuracy_source, l1, l1_source))
    return rows


def _cell(value: float | None, source: str) -> str:
    return f"{value:.1f}" if value is not None else f"- ({source})"


def table_one_markdown(rows: list[TableRow], runs: dict[str, Run], problems: list[str]) -> str:
    lines = [
        "# Table I: multi-task vs single-task models",
        "",
        "| Subset | Model | Accuracy (%) | L1 loss (x100) | Paper accuracy (%) | Paper L1 |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for row in rows:
        paper_accuracy, paper_l1 = PAPER_TABLE_ONE[(row.subset, row.model)]
        lines.append(
            f"| {row.subset} | {row.model} | {_cell(row.accuracy_pct, row.accuracy_source)} | "
            f"{_cell(row.l1_x100, row.l1_source)} | {paper_accuracy} | {paper_l1} |"
        )
    lines += [
        "",
        "Single-task accuracy comes from the classifier run, "
        "single-task L1 from the colorizer run.",
        "L1 loss = 100 x mean |ab_pred - ab_true| on normalized ab (ab / 110), as in the paper.",
        "Finished runs report summary.json's final values; "
        "runs in progress their latest logged values.",
        "",
        "## Runs",
        "",
    ]
    for experiment in EXPERIMENTS:
        run = runs.get(experiment)
        if run is None:
            lines.append(f"- {ROLE_LABEL[experiment]}: **MISSING**")
        else:
            lines.append(f"- {ROLE_LABEL[experiment]}: `{run.workdir}` ({run.status})")
            lines += _early_stopping_lines(run)
    lines += ["", "## Sources", ""]
    for row in rows:
        lines.append(
            f"- {row.subset} / {row.model}: accuracy from {row.accuracy_source}; "
            f"L1 from {row.l1_source}"
        )
    if problems:
        lines += ["", "## Problems", ""] + [f"- {problem}" for problem in problems]
    return "\n".join(lines) + "\n"


def _early_stopping_lines(run: Run) -> list[str]:
    """Per-task early stopping of a run (config.train.early_stopping_patience), if it used it."""
    tasks = (run.summary or {}).get("early_stopping") or {}
    lines = []
    for task, info in tasks.items():
        state = "training to the end" if info.get("active") else "stopped early"
        lines.append(
            f"  - {task}: {state}, best validation loss {info.get('best_val_loss'):.4g} "
            f"at step {info.get('best_step')} (its head kept from that step)"
            if not info.get("active")
            else f"  - {task}: {state}, best validation loss {info.get('best_val_loss'):.4g} "
            f"at step {info.get('best_step')}"
        )
    return lines


def write_table_one_csv(rows: list[TableRow], path: Path):
    with open(path, "w", newline="") as file:
        writer = csv.writer(file)
        writer.writerow(
            ["subset", "model", "accuracy_pct", "l1_x100", "accuracy_source", "l1_source"]
        )
        for row in rows:
            writer.writerow(
                [
                    row.subset,
                    row.model,
                    "" if row.accuracy_pct is None else repr(row.accuracy_pct),
                    "" if row.l1_x100 is None else repr(row.l1_x100),
                    row.accuracy_source,
                    row.l1_source,
                ]
            )


# --------------------------------------------------------------------------------------------
# Figures 3-7


@dataclasses.dataclass(frozen=True)
class Curve:
    experiment: str
    key: str  # "val/loss_l1"
    label: str
    style: str = "-"


@dataclasses.dataclass(frozen=True)
class FigureSpec:
    filename: str
    title: str
    ylabel: str
    curves: tuple[Curve, ...]
    log_y: bool = False


def _l1_key(run: Run | None, split: str) -> str:
    """loss_l1 when logged, else l1 (plotted x100 so both read as the paper's L1 loss)."""
    if run is not None and any(f"{split}/loss_l1" in row for row in run.scalars):
        return f"{split}/loss_l1"
    return f"{split}/l1"


def figure_specs(runs: dict[str, Run]) -> list[FigureSpec]:
    multi, colorizer = runs.get("multitask"), runs.get("colorization")
    multitask_val_losses = sorted(
        {
            key
            for row in (multi.scalars if multi else [])
            for key in row
            if key.startswith("val/loss_")
        }
    ) or ["val/loss_l1", "val/loss_cls"]
    return [
        FigureSpec(
            "fig3_l1_multitask_vs_colorizer.png",
            "Fig. 3: L1 loss, multi-task vs single-task colorizer",
            "L1 loss (x100, normalized ab)",
            (
                Curve("multitask", _l1_key(multi, "train"), "multi-task, train", "--"),
                Curve("multitask", _l1_key(multi, "val"), "multi-task, validation"),
                Curve("colorization", _l1_key(colorizer, "train"), "colorizer, train", "--"),
                Curve("colorization", _l1_key(colorizer, "val"), "colorizer, validation"),
            ),
        ),
        FigureSpec(
            "fig4_cls_loss_multitask_vs_classifier.png",
            "Fig. 4: classification loss, multi-task vs single-task classifier",
            "cross-entropy (unweighted)",
            (
                Curve("multitask", "train/loss_cls", "multi-task, train", "--"),
                Curve("multitask", "val/loss_cls", "multi-task, validation"),
                Curve("classification", "train/loss_cls", "classifier, train", "--"),
                Curve("classification", "val/loss_cls", "classifier, validation"),
            ),
        ),
        FigureSpec(
            "fig5_multitask_val_losses.png",
            "Fig. 5: multi-task model, validation losses",
            "loss (log scale)",
            tuple(
                Curve("multitask", key, key.removeprefix("val/")) for key in multitask_val_losses
            ),
            log_y=True,
        ),
        FigureSpec(
            "fig6_multitask_l1_train_vs_val.png",
            "Fig. 6: multi-task model, L1 loss on train and validation",
            "L1 loss (x100, normalized ab)",
            (
                Curve("multitask", _l1_key(multi, "train"), "train"),
                Curve("multitask", _l1_key(multi, "val"), "validation"),
            ),
        ),
        FigureSpec(
            "fig7_multitask_cls_train_vs_val.png",
            "Fig. 7: multi-task model, classification loss on train and validation",
            "cross-entropy (unweighted)",
            (
                Curve("multitask", "train/loss_cls", "train"),
                Curve("multitask", "val/loss_cls", "validation"),
            ),
        ),
    ]


def plot_figure(spec: FigureSpec, runs: dict[str, Run], path: Path) -> list[str]:
    """Draws one figure; returns notes about curves that could not be drawn."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    notes = []
    missing_runs = sorted({c.experiment for c in spec.curves if c.experiment not in runs})
    fig, ax = plt.subplots(figsize=(7, 4.5))
    drawn = 0
    for curve in spec.curves:
        run = runs.get(curve.experiment)
        if run is None:
            continue
        epochs, values = run.series(curve.key)
        if curve.key.endswith("/l1"):
            values = 100.0 * values
        if len(values) == 0:
            notes.append(f"{spec.filename}: {run.workdir} has no '{curve.key}' logged")
            continue
        label = curve.label + ("" if run.finished else " (in progress)")
        ax.plot(epochs, values, curve.style, marker="o" if len(values) < 3 else None, label=label)
        drawn += 1
    title = spec.title
    if missing_runs:
        missing = ", ".join(ROLE_LABEL[e] for e in missing_runs)
        title += f"\n(MISSING run: {missing})"
        notes.append(f"{spec.filename}: missing run(s): {missing}")
    ax.set_title(title, fontsize=10)
    ax.set_xlabel("epoch")
    ax.set_ylabel(spec.ylabel)
    if spec.log_y and drawn:
        ax.set_yscale("log")
    if drawn:
        ax.legend()
    else:
        ax.text(0.5, 0.5, "no data", ha="center", va="center", transform=ax.transAxes)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return notes


# --------------------------------------------------------------------------------------------
# Figure 2


FIG2_ROWS = ("grayscale input", "single-task colorizer", "multi-task", "ground truth")


def figure_two_grid(
    L_norm, ab_single, ab_multi, ab_true, path: Path, missing: dict[str, str] | None = None
):
    """Fig. 2: rows grayscale / single-task / multi-task / ground truth, one column per image.

    `ab_single` or `ab_multi` may be None (run missing): that row is drawn as a labelled gray strip.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    missing = missing or {}
    L_norm = np.asarray(L_norm, np.float32)
    n = L_norm.shape[0]
    zeros = np.zeros(L_norm.shape[:-1] + (2,), np.float32)
    rows = [zeros, ab_single, ab_multi, ab_true]
    fig, axes = plt.subplots(4, n, figsize=(1.6 * n + 1.2, 1.6 * 4 + 0.3), squeeze=False)
    for r, ab in enumerate(rows):
        for c in range(n):
            ax = axes[r, c]
            ax.set_xticks([])
            ax.set_yticks([])
            if ab is None:
                ax.imshow(np.full(L_norm.shape[1:3], 0.85), cmap="gray", vmin=0, vmax=1)
                ax.text(
                    0.5,
                    0.5,
                    "MISSING",
                    transform=ax.transAxes,
                    fontsize=8,
                    color="red",
                    ha="center",
                    va="center",
                )
            else:
                ax.imshow(lab_norm_to_rgb(L_norm[c], ab[c]))
            if c == 0:
                reason = (
                    f"\n({missing[FIG2_ROWS[r]]})" if ab is None and FIG2_ROWS[r] in missing else ""
                )
                ax.set_ylabel(FIG2_ROWS[r] + reason, fontsize=7)
    fig.suptitle(
        "Fig. 2: validation batch "
        "(top to bottom: grayscale, single-task, multi-task, ground truth)",
        fontsize=9,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _fixed_validation_batch(config, num_images: int):
    """The first `num_images` examples of the validation split: deterministic across runs."""
    from mtcolor.data import input_paths
    from mtcolor.data.pipeline import make_eval_iterator

    L, ab = [], []
    batches = make_eval_iterator(config.data, split="val")
    try:
        for batch in batches:
            keep = np.asarray(batch.get("mask", np.ones(len(batch["L"])))) > 0
            L.append(np.asarray(batch["L"])[keep])
            ab.append(np.asarray(batch["ab"])[keep])
            if sum(len(x) for x in L) >= num_images:
                break
    finally:
        # Left early: grain's worker processes and their prefetched batches are freed now.
        input_paths.close_iterator(batches)
    return np.concatenate(L)[:num_images], np.concatenate(ab)[:num_images]


def predict_ab(workdir: Path, L_norm: np.ndarray) -> np.ndarray:
    """ab predictions of the colorizing run in `workdir` (latest checkpoint) for an L batch."""
    from mtcolor.train.checkpointing import load_for_inference

    _, model, variables = load_for_inference(str(workdir))
    return np.asarray(model.apply(variables, L_norm, train=False)["colorization"], np.float32)


def make_figure_two(
    runs: dict[str, Run], path: Path, num_images: int = 8, data_overrides: dict | None = None
) -> tuple[list[str], bool]:
    """Fig. 2 from the validation split of the multi-task run's data config (else the colorizer's),
    with ``data_overrides`` ({field of config.data: value}, data.config.parse_data_overrides)
    where the runs' data is elsewhere on this machine. Returns the notes for the report and
    whether the figure was drawn."""
    from mtcolor.data import DataNotFoundError
    from mtcolor.train.checkpointing import load_config
    from mtcolor.train.validation import data_problems

    source = runs.get("multitask") or runs.get("colorization")
    if source is None:
        return ["fig2: MISSING both colorizing runs (multitask, colorization); no Fig. 2"], False
    config = load_config(str(source.workdir))
    config.data.update_from_flattened_dict(dict(data_overrides or {}))
    # A run trained on another machine names folders that are not here: say which, and how to
    # point at this machine's copy, before any checkpoint is loaded.
    missing_data = data_problems(config, flag_prefix="--override=")
    if missing_data:
        return [f"fig2: not drawn: {line}" for line in missing_data] + [FIG2_DATA_HINT], False
    try:
        L_norm, ab_true = _fixed_validation_batch(config, num_images)
    except DataNotFoundError as error:  # what the check does not open (tfds, image files)
        return [f"fig2: not drawn: {error}", FIG2_DATA_HINT], False
    notes, predictions, missing = [], {}, {}
    for experiment, row in (("colorization", FIG2_ROWS[1]), ("multitask", FIG2_ROWS[2])):
        run = runs.get(experiment)
        if run is None:
            missing[row] = "run not given"
            notes.append(f"fig2: row '{row}' empty: no {ROLE_LABEL[experiment]} run")
            continue
        try:
            predictions[experiment] = predict_ab(run.workdir, L_norm)
        except Exception as error:  # noqa: BLE001 - an in-progress run may have no checkpoint yet
            missing[row] = "no checkpoint yet"
            notes.append(f"fig2: row '{row}' empty: cannot load {run.workdir} ({error})")
    figure_two_grid(
        L_norm,
        predictions.get("colorization"),
        predictions.get("multitask"),
        ab_true,
        path,
        missing,
    )
    return notes, True


FIG2_DATA_HINT = (
    "fig2: the validation images are read from the run's config.json; where they are elsewhere on "
    "this machine, --override=data.KEY=VALUE (e.g. --override=data.folder.val_root=/data/val)"
)


# --------------------------------------------------------------------------------------------
# Everything


@dataclasses.dataclass
class Report:
    files: list[Path]
    problems: list[str]
    rows: list[TableRow]


def make_report(
    workdirs: Sequence,
    out,
    *,
    figure_two: bool = True,
    num_images: int = 8,
    data_overrides: dict | None = None,
) -> Report:
    """Table I (markdown and CSV), the training-curve figures and Fig. 2 in ``out``; what is
    missing or not drawn is in ``Report.problems``, not raised. ``data_overrides``: see
    make_figure_two."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    runs, problems = assign_roles(workdirs)
    files = []
    for spec in figure_specs(runs):
        problems.extend(plot_figure(spec, runs, out / spec.filename))
        files.append(out / spec.filename)
    if figure_two:
        try:
            fig2_notes, drawn = make_figure_two(
                runs, out / "fig2_colorized_validation_batch.png", num_images, data_overrides
            )
            problems.extend(fig2_notes)
            if drawn:  # not a Fig. 2 an earlier report left in `out`
                files.append(out / "fig2_colorized_validation_batch.png")
        except Exception as error:  # noqa: BLE001 - the tables and curves are still worth writing
            problems.append(f"fig2: not drawn ({type(error).__name__}: {error})")
    rows = table_one(runs)
    (out / "table1.md").write_text(table_one_markdown(rows, runs, problems))
    write_table_one_csv(rows, out / "table1.csv")
    files += [out / "table1.md", out / "table1.csv"]
    return Report(files, problems, rows)
