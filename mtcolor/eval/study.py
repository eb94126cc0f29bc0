"""Running and reading a study: variants x seeds of training runs, evaluated and compared.

A study file is a Python module with `get_study()` returning a dict:

    {
      "config": "experiments/configs/demo.py",   # the base training config (":arg" allowed)
      "overrides": {"image_size": 64, ...},       # applied to every run (config path -> value)
      "seeds": 3,                                 # seeds 0..n-1 (--seeds overrides)
      "references": {"classification": "classifier", "colorization": "colorizer"},
      "variants": [                               # in table order
        {"name": "classifier", "experiment": "classification"},
        {"name": "colorizer", "experiment": "colorization"},
        {"name": "paper"},                        # experiment defaults to "multitask"
        {"name": "unet", "overrides": {"model.decoder": "unet"}},
        ...
      ],
      "eval_split": "val",     # where checkpoints are selected (the trainer's best-on-val)
      "test_split": None,      # a held-out split of the source to report on, if one exists
    }

Run <variant>/seed<k> lives in <root>/<variant>/seed<k>/ (the training workdir, with log.txt).
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import math
import os
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from mtcolor.eval import compare
from mtcolor.eval.report import read_scalars
from mtcolor.train import config as config_lib

REPO_ROOT = Path(__file__).resolve().parents[2]


@dataclasses.dataclass
class RunSpec:
    variant: str
    experiment: str
    seed: int
    workdir: Path
    overrides: dict  # base overrides, then the variant's, then the seed

    def override_args(self) -> list[str]:
        return [f"--config.{key}={format_value(value)}" for key, value in self.overrides.items()]


def format_value(value) -> str:
    if isinstance(value, (list, tuple)):
        return ",".join(format_value(v) for v in value)
    return str(value)


def load_study(path) -> dict:
    """The dict of `get_study()` in the Python file `path`, with defaults filled in."""
    path = Path(path)
    spec = importlib.util.spec_from_file_location(f"_study_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    study = dict(module.get_study())
    study.setdefault("overrides", {})
    study.setdefault("seeds", 3)
    study.setdefault("eval_split", "val")
    study.setdefault("test_split", None)
    study.setdefault("references", {"classification": "classifier", "colorization": "colorizer"})
    for variant in study["variants"]:
        variant.setdefault("experiment", "multitask")
        variant.setdefault("overrides", {})
        if variant["experiment"] not in compare.EXPERIMENT_TASKS:
            raise ValueError(
                f"variant {variant['name']}: unknown experiment {variant['experiment']}"
            )
    names = [v["name"] for v in study["variants"]]
    if len(set(names)) != len(names):
        raise ValueError(f"duplicate variant names in {path}: {names}")
    for task, name in study["references"].items():
        if name not in names:
            raise ValueError(f"reference for {task}, {name!r}, is not a variant of {path}")
    return study


def argument_problems(study_path: str, seeds, only, overrides) -> list[str]:
    """The problems of experiments.compare's command line, one line each, before any run is read
    or trained."""
    problems = []
    names = None
    if not Path(study_path).is_file():
        problems.append(f"--study={study_path!r}: no such file")
    else:
        try:
            names = [variant["name"] for variant in load_study(study_path)["variants"]]
        except (ValueError, KeyError, AttributeError) as error:  # the study file's own mistakes
            problems.append(f"--study={study_path!r}: {type(error).__name__}: {error}")
    if seeds is not None and seeds < 1:
        problems.append(f"--seeds={seeds}: must be at least 1")
    unknown = [name for name in only or () if names is not None and name not in names]
    if unknown:
        problems.append(f"--only={','.join(only)}: no variant {unknown} (the study has {names})")
    problems += [
        f"--override={item!r}: must be KEY=VALUE (e.g. data.folder.train_root=/data/train)"
        for item in overrides
        if "=" not in item
    ]
    return problems


def plan(
    study: dict,
    root,
    seeds: int | None = None,
    only: Sequence[str] | None = None,
    extra_overrides: dict | None = None,
):
    """The RunSpecs of the study (every variant, or those named in `only`), seeds 0..n-1.
    Overrides: the study's, then the variant's, then `extra_overrides` (the command line's)."""
    root = Path(root)
    num_seeds = int(seeds if seeds is not None else study["seeds"])
    names = [v["name"] for v in study["variants"]]
    if only:
        unknown = [n for n in only if n not in names]
        if unknown:
            raise ValueError(f"--only names unknown variants {unknown}; the study has {names}")
    specs = []
    for variant in study["variants"]:
        if only and variant["name"] not in only:
            continue
        for seed in range(num_seeds):
            overrides = {
                **study["overrides"],
                **variant["overrides"],
                **(extra_overrides or {}),
                "seed": seed,
            }
            workdir = root / variant["name"] / f"seed{seed}"
            specs.append(RunSpec(variant["name"], variant["experiment"], seed, workdir, overrides))
    return specs


def load_config(config_path: str):
    """The ConfigDict of a config file path ("file.py" or "file.py:arg", relative to the
    repository), as config_flags loads it."""
    path, _, arg = str(config_path).partition(":")
    return config_lib.load_config_file(
        REPO_ROOT / path if not Path(path).is_absolute() else path, arg
    )


def unknown_overrides(config, overrides: dict) -> list[str]:
    """Override paths the config does not have. ml_collections' command-line overrides (with
    lock_config=False, as the entry points use) silently ADD an unknown field, which the trainer
    then ignores: such a run must be reported as failed, not trained as if it were the paper's."""
    unknown = []
    for key in overrides:
        node = config
        for part in key.split("."):
            try:
                keys = node.keys()
            except AttributeError:
                keys = ()
            if part not in keys:
                unknown.append(key)
                break
            node = node[part]
    return unknown


def command(spec: RunSpec, study: dict, python: str = sys.executable) -> list[str]:
    return [
        python,
        "-m",
        f"experiments.{spec.experiment}",
        f"--config={study['config']}",
        f"--workdir={spec.workdir}",
        *spec.override_args(),
    ]


# ---------------------------------------------------------------------------------------------
# State of a run's workdir


def run_state(workdir) -> str:
    """ "finished", "failed: ...", "partial" (checkpoints, not finished: resumable, or in
    progress), "started" (nothing usable yet) or "missing"."""
    workdir = Path(workdir)
    summary = workdir / "summary.json"
    if summary.exists():
        try:
            if json.loads(summary.read_text()).get("finished"):
                return "finished"
        except (OSError, json.JSONDecodeError):
            pass
    failed = workdir / "failed.json"
    if failed.exists():
        try:
            return "failed: " + json.loads(failed.read_text()).get("reason", "?")
        except (OSError, json.JSONDecodeError):
            return "failed: failed.json unreadable"
    checkpoints = workdir / "checkpoints"
    if checkpoints.is_dir() and any(p.name.isdigit() for p in checkpoints.iterdir()):
        return "partial"
    if workdir.is_dir():
        return "started"
    return "missing"


def _log_tail(path: Path, lines: int = 5) -> str:
    try:
        text = path.read_text(errors="replace").strip().splitlines()
    except OSError:
        return ""
    errors = [line for line in text if "Error" in line or "error:" in line]
    return (errors[-1] if errors else " | ".join(text[-lines:]))[-300:]


def launch(
    spec: RunSpec, study: dict, cwd=REPO_ROOT, compilation_cache: str | None = None
) -> tuple[str, float]:
    """Trains one run (a subprocess, stdout and stderr appended to <workdir>/log.txt; resumes
    from its checkpoints). Returns (state, seconds). A failure is written to failed.json.

    `compilation_cache`: a directory for JAX's persistent compilation cache (set as
    JAX_COMPILATION_CACHE_DIR unless the environment already sets it): the seeds of a variant
    compile the same programs, so only the first seed pays for compilation."""
    spec.workdir.mkdir(parents=True, exist_ok=True)
    failed = spec.workdir / "failed.json"
    if failed.exists():
        failed.unlink()  # retry
    unknown = unknown_overrides(load_config(study["config"]), spec.overrides)
    if unknown:
        reason = (
            f"unknown config field(s) {', '.join(unknown)} (not in {study['config']}: "
            "this trainer has no such option)"
        )
        failed.write_text(json.dumps({"reason": reason, "returncode": None}))
        return "failed: " + reason, 0.0
    cmd = command(spec, study)
    log = spec.workdir / "log.txt"
    start = time.time()
    with open(log, "a", encoding="utf-8") as out:
        out.write(f"\n# {time.strftime('%Y-%m-%d %H:%M:%S')} {' '.join(cmd)}\n")
        out.flush()
        env = dict(os.environ)
        if compilation_cache:
            env.setdefault("JAX_COMPILATION_CACHE_DIR", str(Path(compilation_cache).resolve()))
        code = subprocess.run(
            cmd, cwd=cwd, stdout=out, stderr=subprocess.STDOUT, env=env
        ).returncode
    seconds = time.time() - start
    if code != 0:
        reason = f"exit code {code}: {_log_tail(log)} (see {log})"
        failed.write_text(json.dumps({"reason": reason, "returncode": code}))
        return "failed: " + reason, seconds
    return run_state(spec.workdir), seconds


# ---------------------------------------------------------------------------------------------
# Evaluation and collection


def evaluate(spec: RunSpec, split: str, frechet: bool = False) -> dict:
    """The run's best-on-validation checkpoint evaluated on `split` (cached in
    <workdir>/eval_<split>.json; redone when best.json is newer or the cache is of another
    checkpoint)."""
    cache = spec.workdir / f"eval_{split}.json"
    best = spec.workdir / "best.json"
    if cache.exists() and (not best.exists() or cache.stat().st_mtime >= best.stat().st_mtime):
        try:
            result = json.loads(cache.read_text())
            if result.get("checkpoint") == "best":
                return result
        except (OSError, json.JSONDecodeError):
            pass
    from mtcolor.eval.evaluate import evaluate_workdir

    return evaluate_workdir(spec.workdir, split, step="best", frechet_features=frechet)


def collect(
    specs: Sequence[RunSpec],
    split: str,
    *,
    evaluate_runs: bool = True,
    frechet: bool = False,
    log=print,
) -> list[compare.RunMetrics]:
    """RunMetrics of every spec: finished runs (and, marked, unfinished ones with a best
    checkpoint) evaluated on `split`; the others with their state."""
    out = []
    for spec in specs:
        state = run_state(spec.workdir)
        has_best = (spec.workdir / "best.json").exists()
        if state == "finished" or (state in ("partial", "started") and has_best):
            status = "finished" if state == "finished" else "in progress"
            if not evaluate_runs:
                out.append(
                    compare.RunMetrics(
                        spec.variant, spec.seed, spec.experiment, "not evaluated: --noevaluate"
                    )
                )
                continue
            try:
                result = evaluate(spec, split, frechet)
            except Exception as error:  # noqa: BLE001 - report it in the table, go on
                log(f"{spec.workdir}: evaluation failed: {error!r}")
                out.append(
                    compare.RunMetrics(
                        spec.variant,
                        spec.seed,
                        spec.experiment,
                        f"not evaluated: {type(error).__name__}: {error}",
                    )
                )
                continue
            num_classes = (result.get("class_names") and len(result["class_names"])) or None
            out.append(
                compare.RunMetrics(
                    spec.variant,
                    spec.seed,
                    spec.experiment,
                    status,
                    compare.metrics_from_eval(result),
                    compare.baseline_from_eval(result, num_classes),
                )
            )
        else:
            status = {
                "partial": "in progress, no best checkpoint yet",
                "started": "started, nothing saved yet",
            }.get(state, state)
            out.append(compare.RunMetrics(spec.variant, spec.seed, spec.experiment, status))
    return out


# ---------------------------------------------------------------------------------------------
# Curves


def mean_curve(workdirs: Sequence[Path], key: str):
    """(steps, mean over the runs that logged each step) of one scalar; empty arrays if none."""
    import numpy as np

    per_step: dict[int, list[float]] = {}
    for workdir in workdirs:
        for row in read_scalars(Path(workdir) / "scalars.jsonl"):
            value = row.get(key)
            if value is not None and math.isfinite(value):
                per_step.setdefault(int(row["step"]), []).append(float(value))
    steps = sorted(per_step)
    return np.asarray(steps), np.asarray([sum(per_step[s]) / len(per_step[s]) for s in steps])


def plot_curves(specs: Sequence[RunSpec], keys: Sequence[str], path: Path, title: str) -> bool:
    """One panel per key, one line per variant (mean over its seeds). False if nothing logged."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    by_variant: dict[str, list[Path]] = {}
    for spec in specs:
        by_variant.setdefault(spec.variant, []).append(spec.workdir)
    fig, axes = plt.subplots(1, len(keys), figsize=(5.5 * len(keys), 4), squeeze=False)
    drawn = False
    for ax, key in zip(axes[0], keys):
        for i, (variant, workdirs) in enumerate(by_variant.items()):
            steps, values = mean_curve(workdirs, key)
            if len(steps):
                # Line styles cycle too: equal curves (fixed weights) stay visible.
                ax.plot(
                    steps,
                    values,
                    label=f"{variant} (n={len(workdirs)})",
                    marker=".",
                    linestyle=("-", "--", ":", "-.")[i % 4],
                )
                drawn = True
        ax.set_xlabel("step")
        ax.set_title(key)
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
    fig.suptitle(title)
    fig.tight_layout()
    if drawn:
        fig.savefig(path, dpi=100)
    plt.close(fig)
    return drawn


# ---------------------------------------------------------------------------------------------
# The whole study


def header(study: dict, split: str, study_path: str) -> str:
    if study.get("test_split") and split == study["test_split"]:
        where = f"held-out `{split}` split; checkpoints selected on `{study['eval_split']}`"
    else:
        where = (
            f"`{split}` split. **These are validation numbers that were also used to select "
            "each run's checkpoint (best on validation)**: the source has no separate test "
            "split, so they are optimistic"
        )
    return (
        f"# Study {study_path}\n\nBest-on-validation checkpoint of each run, evaluated on the "
        f"{where}. Mean ± std (sample, ddof 1) over seeds; seeds marked * are still in "
        "progress. Delta_m: Maninis et al. 2019 eq. 4 against the single-task references "
        f"({', '.join(f'{t}: {n}' for t, n in study['references'].items())}), in %, "
        "higher is better (see docs/compare.md)."
    )


def write_outputs(study: dict, study_path: str, specs: Sequence[RunSpec], runs, root) -> list[Path]:
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    split = study["test_split"] or study["eval_split"]
    variants = [
        (v["name"], v["experiment"])
        for v in study["variants"]
        if any(s.variant == v["name"] for s in specs)
    ]
    references = {t: n for t, n in study["references"].items()}
    rows = compare.build_table(variants, runs, references)
    files = []
    md = compare.table_markdown(rows, header(study, split, study_path))
    run_lines = ["", "## Runs", "", "| run | status | metrics |", "|---|---|---|"]
    for run in runs:
        shown = ", ".join(f"{k} {v:.4g}" for k, v in sorted(run.metrics.items()))
        run_lines.append(f"| {run.variant}/seed{run.seed} | {run.status} | {shown} |")
    (root / "compare.md").write_text(md + "\n".join(run_lines) + "\n")
    files.append(root / "compare.md")
    records = compare.table_records(rows)
    import csv

    with open(root / "compare.csv", "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=list(records[0]))
        writer.writeheader()
        writer.writerows(records)
    files.append(root / "compare.csv")
    payload = {
        "study": study_path,
        "split": split,
        "rows": records,
        "runs": [dataclasses.asdict(r) for r in runs],
        "metrics": [dataclasses.asdict(m) for m in compare.METRICS],
        "references": references,
    }
    (root / "compare.json").write_text(json.dumps(payload, indent=1, default=str))
    files.append(root / "compare.json")
    curves = root / "val_curves.png"
    if plot_curves(specs, ["val/l1", "val/loss_cls"], curves, "validation (mean over seeds)"):
        files.append(curves)
    tasks = ["train/weight_colorization", "train/weight_classification"]
    weights = root / "task_weights.png"
    if plot_curves(specs, tasks, weights, "per-task loss weights (mean over seeds)"):
        files.append(weights)
    return files


def run_study(
    study_path: str,
    root,
    *,
    run: bool = False,
    seeds: int | None = None,
    only: Sequence[str] | None = None,
    frechet: bool = False,
    evaluate_runs: bool = True,
    extra_overrides: dict | None = None,
    compilation_cache: str | None = "",
    log=print,
) -> list[Path]:
    """Trains (with `run`) and compares a study; returns the files written. `compilation_cache`:
    "" for <root>/jax_cache, None to leave JAX's default (no persistent cache)."""
    study = load_study(study_path)
    specs = plan(study, root, seeds, only, extra_overrides)
    if run:
        for spec in specs:
            state = run_state(spec.workdir)
            if state == "finished":
                log(f"{spec.workdir}: finished, skipped")
                continue
            log(f"{spec.workdir}: {'resuming' if state == 'partial' else 'training'} ...")
            cache = str(Path(root) / "jax_cache") if compilation_cache == "" else compilation_cache
            new_state, seconds = launch(spec, study, compilation_cache=cache)
            log(f"{spec.workdir}: {new_state} ({seconds:.0f} s)")
    split = study["test_split"] or study["eval_split"]
    runs = collect(specs, split, evaluate_runs=evaluate_runs, frechet=frechet, log=log)
    return write_outputs(study, str(study_path), specs, runs, root)
