"""What a run directory records of its run, and the lines a finished run prints.

``config.json`` (this run's options; a resume that changed some keeps the previous file and names
the changes, and one whose checkpoints cannot hold the new state gets one error line per changed
option), ``best.json`` (the best validation so far), ``summary.json`` (the finished run) and the
end-of-run report (bad inputs, the result beside its baselines, where the outputs are). Only
process 0 calls the writers (mtcolor.train.loop).
"""

from __future__ import annotations

import json
import logging
import os

import jax

from mtcolor.train import state as state_lib


def json_ready(config) -> dict:
    return json.loads(config.to_json_best_effort())


def flat_config(tree: dict, prefix: str = "") -> dict:
    """{"data.image_size": 64, ...}: a nested config dict by dotted option name."""
    flat = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            flat.update(flat_config(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def flat_hparams(tree: dict) -> dict:
    """The flat config as TensorBoard's hparams take it: scalars, and the rest as text."""
    return {
        name: value if isinstance(value, (bool, int, float, str)) else str(value)
        for name, value in flat_config(tree).items()
    }


def saved_config_changes(workdir: str, config) -> list[tuple[str, object, object]]:
    """(option, the value in workdir/config.json, this run's) for each option that differs: what
    a resume changes. Empty for a new run directory."""
    saved = _read_json_record(os.path.join(workdir, "config.json"), "is rewritten once resumed")
    if saved is None:
        return []
    saved = flat_config(saved)
    now = flat_config(json_ready(config))
    missing = "(absent)"
    return [
        (name, saved.get(name, missing), now.get(name, missing))
        for name in sorted(saved.keys() | now.keys())
        if saved.get(name, missing) != now.get(name, missing)
    ]


def changed_config_problems(workdir: str, changes, mismatches) -> list[str]:
    """The lines of the error a resume gets when the checkpoints hold arrays of other shapes than
    the new state's (``mismatches``) and options differ from the run's config.json (``changes``;
    e.g. another decoder)."""
    return [
        f"--workdir={workdir!r}: its checkpoints cannot hold the state of this config "
        f"({len(mismatches)} arrays differ, e.g. {mismatches[0]}), which differs "
        f"from the run's config.json in {len(changes)} option(s) below; resume with the run's "
        "values, or start a new --workdir"
    ] + [f"--config.{name}={new!r}: the run was trained with {old!r}" for name, old, new in changes]


def write_config(workdir: str, config, changes, resumed_step: int | None) -> None:
    """workdir/config.json: this run's config. A resume that changed options keeps the previous
    file as config_before_step_<step>.json, logs the changes, and goes on (a longer schedule, a
    new learning rate: the checkpoints restored, so the change is the user's to make)."""
    path = os.path.join(workdir, "config.json")
    if resumed_step is not None and changes:
        kept = os.path.join(workdir, f"config_before_step_{resumed_step}.json")
        os.replace(path, kept)
        logging.warning(
            "resumed at step %d with %d option(s) changed from the run's config.json (kept as "
            "%s): %s",
            resumed_step,
            len(changes),
            os.path.basename(kept),
            "; ".join(f"{name} {old!r} -> {new!r}" for name, old, new in changes),
        )
    write_json(path, json_ready(config), indent=2, sort_keys=True)


def write_json(path: str, tree, **dump_options) -> None:
    """Writes ``path`` whole or not at all (a temporary file renamed over it): a run killed while
    writing leaves the previous file, not a truncated one that its resume could not read."""
    partial = f"{path}.partial"
    try:
        with open(partial, "w", encoding="utf-8") as f:
            json.dump(tree, f, **dump_options)
        os.replace(partial, path)
    finally:
        if os.path.exists(partial):
            os.remove(partial)


def _read_json_record(path: str, what_then: str):
    """The JSON in ``path``, or None if there is none or it does not parse (a file damaged
    outside the run; write_json never leaves one half-written): a warning names it and says what
    happens instead (``what_then``), and the run goes on."""
    if not os.path.exists(path):
        return None
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (OSError, ValueError) as error:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        logging.warning("%s does not parse (%s); it %s", path, error, what_then)
        return None


def write_summary(
    config, workdir: str, state, step: int, schedule, wall: float, final, best, *, is_main
) -> dict:
    """The run's summary (returned by train_and_evaluate), written to summary.json."""
    summary = {
        "experiment": config.experiment,
        "steps": step,
        "epochs": schedule.epoch(step),
        "wall_time_s": wall,
        "steps_this_run": step - schedule.start_step,
        "finished": step >= schedule.total_steps or not state_lib.active_tasks(state),
        "early_stopping": early_stopping_summary(state),
        "final": final,
        "best": best,
        "config": json_ready(config),
    }
    if is_main:
        write_json(
            os.path.join(workdir, "summary.json"), summary, indent=2, sort_keys=True, default=float
        )
    return summary


def print_run_report(workdir: str, state, step: int, val: dict, tracker) -> None:
    """The end-of-run lines: bad inputs, the result beside its baselines, where outputs are."""
    if tracker is not None:
        print(tracker.report())
    headline = result_headline(state.objective.tasks, val)
    if headline:
        print(f"Result (validation, step {step}): {headline}")
    tensorboard = os.path.join(workdir, "tensorboard")
    print(f"TensorBoard logs: {tensorboard}  (tensorboard --logdir {tensorboard})")
    print(f"Image grids:      {os.path.join(workdir, 'images')}/step_<N>.png")
    print(f"Scalars:          {os.path.join(workdir, 'scalars.jsonl')}")
    print(f"Summary:          {os.path.join(workdir, 'summary.json')}")


def result_headline(tasks, val: dict) -> str:
    """Each task's final validation numbers beside their baseline, in one line, so a newcomer
    sees that the run learned (accuracy vs chance, L1 vs predicting ab = 0, colorfulness vs the
    real images)."""
    return "; ".join(filter(None, (task.headline(val) for task in tasks))) if val else ""


def early_stopping_summary(state) -> dict | None:
    """Per task: still training, best validation loss and its step (None without early stopping)."""
    es = state.mtl.get("early_stopping")
    if es is None:
        return None
    es = jax.device_get({k: v for k, v in es.items() if k != "best"})
    return {
        task: {
            "active": bool(es["active"][i] > 0),
            "best_val_loss": float(es["best_loss"][i]),
            "best_step": int(es["best_step"][i]),
        }
        for i, task in enumerate(state.objective.task_names)
    }


def read_best(workdir):
    """best.json of an earlier invocation of this run (resume), or None."""
    return _read_json_record(
        os.path.join(workdir, "best.json"),
        "is written again at the next validation (checkpoints_best/ keeps the best model by the "
        "values orbax saved with it)",
    )
