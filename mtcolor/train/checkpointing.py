"""orbax checkpoints of a run.

workdir/checkpoints/<step>/      the whole TrainState ("state") plus the grain train-iterator
                                 state ("data_iter", one file per process) or, for iterators with
                                 ``checkpoint_as_json`` (the device-resident input path), their
                                 JSON position ("data_position", one for all processes), kept by
                                 ``max_to_keep`` (most recent N).
workdir/checkpoints_best/<step>/ the model's {"params", "batch_stats"} ("model") at the best
                                 validation value of ``best_metric``; a separate manager with
                                 max_to_keep=1 and orbax ``best_fn``/``best_mode`` (a save is only
                                 requested when the metric improved; orbax keeps the best one).

orbax writes each checkpoint into a temporary directory and renames it when complete, so a run
killed during a save leaves no half checkpoint that a restart could pick up (the temporary
directory is ignored and cleaned up).
"""

from __future__ import annotations

import json
import logging
import os
import pathlib
import re
import shutil
import sys
import traceback

import jax
import jax.numpy as jnp
import orbax.checkpoint as ocp

STATE = "state"
DATA_ITER = "data_iter"
EXTRA = "extra"  # JSON: the data pipeline's bad-input counters
DATA_POSITION = (
    "data_position"  # JSON: a checkpoint_as_json iterator's state (mtcolor.data.resident)
)
BEST_MODEL = "model"


def checkpoint_dir(workdir: str) -> str:
    return os.path.join(os.path.abspath(workdir), "checkpoints")


def best_dir(workdir: str) -> str:
    return os.path.join(os.path.abspath(workdir), "checkpoints_best")


def make_manager(workdir: str, *, max_to_keep: int = 3, asynchronous: bool = True):
    options = ocp.CheckpointManagerOptions(
        max_to_keep=max_to_keep,
        create=True,
        enable_async_checkpointing=asynchronous,
        cleanup_tmp_directories=True,
    )
    return ocp.CheckpointManager(checkpoint_dir(workdir), options=options)


def make_best_manager(workdir: str, *, metric: str, mode: str):
    options = ocp.CheckpointManagerOptions(
        max_to_keep=1,
        create=True,
        best_fn=lambda m: m[metric],
        best_mode=mode,
        enable_async_checkpointing=False,
        cleanup_tmp_directories=True,
    )
    return ocp.CheckpointManager(best_dir(workdir), options=options)


def _saves_as_json(train_iter) -> bool:
    return bool(getattr(train_iter, "checkpoint_as_json", False))


def save(manager, step: int, state, train_iter=None, extra: dict | None = None) -> None:
    import grain

    items = {STATE: ocp.args.StandardSave(state)}
    if _saves_as_json(train_iter):
        items[DATA_POSITION] = ocp.args.JsonSave(train_iter.get_state())
    elif train_iter is not None:
        items[DATA_ITER] = grain.checkpoint.CheckpointSave(train_iter)
    if extra is not None:
        items[EXTRA] = ocp.args.JsonSave(extra)
    manager.save(int(step), args=ocp.args.Composite(**items), force=True)


def restore(manager, step: int, abstract_state, train_iter=None):
    """Restore ``state`` (into the structure/shardings of ``abstract_state``) and, if given, the
    train iterator in place. Returns the state.

    Each process saves its own data-iterator position (``process_<i>-of-<n>.json``). A checkpoint
    written by another number of processes gives its position to this one through
    ``set_state``, which converts it (mtcolor's positions are row counts of each global batch).
    """
    import grain

    items = {STATE: ocp.args.StandardRestore(abstract_state)}
    other_count_position = None
    if _saves_as_json(train_iter):
        items[DATA_POSITION] = ocp.args.JsonRestore()  # one global position for all processes
    elif train_iter is not None:
        other_count_position = _position_of_another_process_count(manager, step)
        if other_count_position is None:
            items[DATA_ITER] = grain.checkpoint.CheckpointRestore(train_iter)
    _restoring(os.path.join(manager.directory, str(step)))
    restored = manager.restore(int(step), args=ocp.args.Composite(**items))
    if _saves_as_json(train_iter):
        train_iter.set_state(restored[DATA_POSITION])
    elif other_count_position is not None:
        train_iter.set_state(other_count_position)
    return restored[STATE]


class _AbandonedReadsFilter(logging.Filter):
    """Drops what orbax's abandoned reads of a checkpoint that fails to restore print.

    orbax reads a checkpoint's arrays concurrently on an asyncio event loop and stops at the first
    error, closing the loop while tensorstore's other reads are still in flight. Each of them then
    either fails too, as an asyncio task whose exception nobody retrieved (logged by the "asyncio"
    logger with tensorstore's whole spec, about 30 kB each), or completes into the closed loop
    (``RuntimeError: Event loop is closed``, printed through ``sys.unraisablehook`` from
    tensorstore's threads). For the tiny test model with truncated files that was 1,600 tracebacks
    and 340 kB of stderr before the one warning that says which checkpoint is damaged and why.
    Dropped: unretrieved-task messages whose error names a checkpoint being read, and every
    "Event loop is closed" raised in asyncio's ``call_soon_threadsafe`` (nothing in them names a
    checkpoint, and nothing in them is for a user to act on). Everything else passes.
    """

    def __init__(self):
        super().__init__()
        self.step_dirs: set[str] = set()
        self._previous_unraisablehook = sys.unraisablehook

    def install(self) -> None:
        """In front of the current sys.unraisablehook (again, if something replaced it since)."""
        if sys.unraisablehook != self._unraisablehook:
            self._previous_unraisablehook = sys.unraisablehook
            sys.unraisablehook = self._unraisablehook
        logging.getLogger("asyncio").addFilter(self)  # once: logging skips a filter it has

    def filter(self, record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else None
        return not (
            "exception was never retrieved" in record.getMessage()
            and any(step_dir in str(error) for step_dir in self.step_dirs)
        )

    def _unraisablehook(self, unraisable) -> None:
        frames = traceback.extract_tb(unraisable.exc_traceback)
        if not (
            isinstance(unraisable.exc_value, RuntimeError)
            and str(unraisable.exc_value) == "Event loop is closed"
            and any(frame.name == "call_soon_threadsafe" for frame in frames)
        ):
            self._previous_unraisablehook(unraisable)


_abandoned_reads_filter: _AbandonedReadsFilter | None = None


def _restoring(step_dir) -> None:
    """Called before orbax reads ``step_dir``: a failure there stays one error (the caller's), not
    thousands of lines (_AbandonedReadsFilter, installed at the first restore)."""
    global _abandoned_reads_filter
    if _abandoned_reads_filter is None:
        _abandoned_reads_filter = _AbandonedReadsFilter()
    _abandoned_reads_filter.install()
    _abandoned_reads_filter.step_dirs.add(os.path.abspath(str(step_dir)))


def damaged_dir(workdir: str) -> str:
    """Where damaged checkpoints are moved (kept for inspection, out of orbax's sight)."""
    return os.path.join(os.path.abspath(workdir), "checkpoints_damaged")


class ProcessCountChangedError(RuntimeError):
    """A checkpoint's data-iterator position was written by another number of processes in a
    format that cannot be converted (mtcolor before positions were row counts)."""


def _position_of_another_process_count(manager, step: int) -> dict | None:
    """None when checkpoint ``step`` has this process's own data-iterator file (or none at all);
    else the position saved by another process count, for the iterator to convert.

    Raises ProcessCountChangedError when that position cannot be converted."""
    directory = os.path.join(manager.directory, str(step), DATA_ITER)
    if not os.path.isdir(directory):
        return None
    if os.path.exists(
        os.path.join(directory, _position_file(jax.process_index(), jax.process_count()))
    ):
        return None
    found = sorted(f for f in os.listdir(directory) if f.startswith("process_") and "-of-" in f)
    counts = sorted({int(f.split("-of-")[1].split(".")[0]) for f in found})
    if len(counts) != 1:
        raise ProcessCountChangedError(
            f"checkpoint {os.path.join(manager.directory, str(step))} holds data-iterator "
            f"positions {found or 'of no process'}: cannot tell which to resume from"
        )
    saved_count = counts[0]
    # Every process of a run is at the same global batch; any one's position converts.
    name = _position_file(jax.process_index() % saved_count, saved_count)
    with open(os.path.join(directory, name), encoding="utf-8") as f:
        position = json.load(f)
    if "taken" not in position:
        raise ProcessCountChangedError(
            f"checkpoint {os.path.join(manager.directory, str(step))} was written by "
            f"{saved_count} process(es) and this run has {jax.process_count()}: its data-iterator "
            f"positions ({', '.join(found)}) are in an older format that cannot be converted. "
            "Resume with the same number of processes; the model itself loads anywhere "
            "(load_for_inference, evaluate, colorize, report)."
        )
    logging.info(
        "checkpoint %d was written by %d process(es); this run has %d: the data "
        "position is converted",
        step,
        saved_count,
        jax.process_count(),
    )
    return position


def _position_file(process_index: int, process_count: int) -> str:
    # grain.checkpoint's file name for one process's iterator state.
    return f"process_{process_index}-of-{process_count}.json"


class InputPathChangedError(RuntimeError):
    """A checkpoint's data position was written by the other input path (data.input_path)."""


def _input_path_of(step_dir: str) -> str | None:
    if os.path.isdir(os.path.join(step_dir, DATA_POSITION)):
        return "resident"
    if os.path.isdir(os.path.join(step_dir, DATA_ITER)):
        return "grain"
    return None


def saved_input_path(workdir: str) -> str | None:
    """ "grain" or "resident": the input path that wrote the newest checkpoint of ``workdir``
    (None: no checkpoint, or one without a data position)."""
    directory = checkpoint_dir(workdir)
    if not os.path.isdir(directory):
        return None
    steps = [int(name) for name in os.listdir(directory) if name.isdigit()]
    return _input_path_of(os.path.join(directory, str(max(steps)))) if steps else None


def check_data_iterator_kind(manager, step: int, train_iter) -> None:
    """Raises InputPathChangedError if checkpoint ``step`` holds the other input path's data
    position (restoring it would fail and could be taken for damage)."""
    saved = _input_path_of(os.path.join(manager.directory, str(step)))
    wanted = "resident" if _saves_as_json(train_iter) else "grain"
    if saved is not None and saved != wanted:
        raise InputPathChangedError(
            f"checkpoint {os.path.join(manager.directory, str(step))} was written by the {saved} "
            f"input path and this run reads data through the {wanted} one: resume with "
            f"--config.data.input_path={saved} (or auto, which follows the checkpoints)"
        )


class NoIntactCheckpointError(RuntimeError):
    """Every checkpoint of a run failed to restore; the message names each one and why."""


class CheckpointStructureError(NoIntactCheckpointError):
    """A checkpoint holds other arrays than the state this config builds (another decoder, class
    count, optimizer): not damage, so nothing older is tried. ``mismatches`` lists them."""

    def __init__(self, message: str, mismatches: list[str]):
        super().__init__(message)
        self.mismatches = mismatches


def _path_name(path) -> str:
    names = []
    for key in path:
        for attribute in ("key", "name", "idx"):  # DictKey, GetAttrKey, SequenceKey
            if hasattr(key, attribute):
                names.append(str(getattr(key, attribute)))
                break
        else:
            names.append(str(key))
    return "/".join(names)


def structure_mismatches(directory: str, step: int, abstract_state) -> list[str]:
    """The arrays whose presence or shape differ between checkpoint ``step``'s state and
    ``abstract_state``, read from the checkpoint's metadata alone (no array is read). Empty when
    they agree or the metadata cannot be read (then the restore itself says what is wrong)."""
    try:
        metadata = ocp.StandardCheckpointHandler().metadata(
            pathlib.Path(directory) / str(step) / STATE
        )
        saved = _shapes(metadata)
    except Exception:  # noqa: BLE001 - unreadable metadata is damage, for the restore to report
        return []
    return _shape_mismatches(saved, _shapes(abstract_state), "this config")


def _shapes(tree) -> dict[str, tuple[int, ...]]:
    """{"params/model/head/fc1/kernel": shape, ...} of a tree of arrays or their metadata."""
    return {
        _path_name(path): tuple(leaf.shape)
        for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]
    }


def _shape_mismatches(saved: dict, wanted: dict, wanted_is: str) -> list[str]:
    """One line per array whose presence or shape differs, the checkpoint's (``saved``) against
    what ``wanted_is`` (e.g. "this config") builds."""
    mismatches = [
        f"{name}: the checkpoint has {saved[name]}, {wanted_is} {wanted[name]}"
        for name in sorted(saved.keys() & wanted.keys())
        if saved[name] != wanted[name]
    ]
    mismatches += [f"{name}: only in the checkpoint" for name in sorted(saved.keys() - wanted)]
    mismatches += [f"{name}: only in {wanted_is}" for name in sorted(wanted.keys() - saved)]
    return mismatches


def restore_newest_intact(workdir: str, manager, abstract_state_at, train_iter=None):
    """The newest checkpoint that restores, trying older ones when a newer one is damaged.

    A checkpoint orbax finished writing can still be damaged afterwards (a full disk, a copy
    interrupted, files overwritten): its restore fails (e.g. tensorstore's OUT_OF_RANGE). Then a
    warning names it and the error, the next older checkpoint is tried, and once one restores the
    damaged ones are moved to ``damaged_dir(workdir)`` (nothing is deleted; later saves reuse their
    step numbers). ``abstract_state_at(step)`` gives the state's structure at a step (the phase
    follows from it).

    Returns (step, state, extra JSON or None, manager). Raises NoIntactCheckpointError naming
    every checkpoint if none restores.
    """
    damaged = []
    for step in sorted(manager.all_steps(), reverse=True):
        if train_iter is not None:
            check_data_iterator_kind(manager, step, train_iter)  # not damage: say what it is
            _position_of_another_process_count(manager, step)
        abstract_state = abstract_state_at(step)
        _restoring(os.path.join(manager.directory, str(step)))  # its metadata is read first
        mismatches = structure_mismatches(manager.directory, step, abstract_state)
        if mismatches:
            manager.close()
            shown = "\n".join(f"  {m}" for m in mismatches[:10])
            more = f"\n  ... ({len(mismatches)} in all)" if len(mismatches) > 10 else ""
            raise CheckpointStructureError(
                f"checkpoint {os.path.join(manager.directory, str(step))} holds other arrays than "
                f"the state this config builds ({len(mismatches)} differ):\n{shown}{more}\n"
                "Nothing was changed. Resume with the run's own config, or start a new workdir.",
                mismatches,
            )
        try:
            state = restore(manager, step, abstract_state, train_iter)
            extra = restore_extra(manager, step)
        except Exception as error:  # noqa: BLE001 - any failure means: try the older one
            reason = _failure_reason(error)
            logging.warning(
                # Damaged, or written with another structure (a changed model option): the
                # caller names changed options when none restores.
                "checkpoint %s does not restore (%s); trying an older one",
                os.path.join(manager.directory, str(step)),
                reason,
            )
            damaged.append((step, reason))
            continue
        if damaged:
            manager = _set_aside(workdir, manager, [s for s, _ in damaged])
        return step, state, extra, manager
    manager.close()
    lines = "\n".join(f"  step {s}: {reason}" for s, reason in damaged)
    raise NoIntactCheckpointError(
        f"no checkpoint in {checkpoint_dir(workdir)} restores:\n{lines}\n"
        "Nothing was changed. Move the checkpoints away to start the run again from step 0."
    )


def _failure_reason(error: Exception) -> str:
    """One line saying why a restore failed. tensorstore nests its errors as "CODE: outer: ...:
    inner" and appends its specs (kilobytes of JSON); the code and the two innermost parts say
    what is wrong (e.g. 'Error reading Byte range [0, 96219) of local file ".../d/c5b3...":
    Requested byte range [0, 96219) is not valid for value of size 48109', a truncated file)."""
    text = str(error).splitlines()[0] if str(error) else ""
    text = re.sub(r" \[tensorstore_spec.*$", "", text)
    parts = text.split(": ")
    if len(parts) > 4:
        text = ": ".join([parts[0], "...", *parts[-2:]])
    return f"{type(error).__name__}: {text[:500]}"


def _set_aside(workdir: str, manager, steps):
    """Moves the checkpoints of ``steps`` to damaged_dir; the manager no longer lists them."""
    manager.wait_until_finished()
    target_root = damaged_dir(workdir)
    os.makedirs(target_root, exist_ok=True)
    for step in steps:
        target = os.path.join(target_root, str(step))
        suffix = 1
        while os.path.exists(target):
            suffix += 1
            target = os.path.join(target_root, f"{step}_{suffix}")
        shutil.move(os.path.join(checkpoint_dir(workdir), str(step)), target)
        logging.warning("moved damaged checkpoint step %d to %s", step, target)
    manager.reload()  # orbax caches the step list; the directory changed under it
    return manager


def restore_extra(manager, step: int):
    """The JSON item saved with ``extra=`` at ``step``, or None if that checkpoint has none."""
    if not os.path.isdir(os.path.join(manager.directory, str(step), EXTRA)):
        return None
    return manager.restore(int(step), args=ocp.args.Composite(**{EXTRA: ocp.args.JsonRestore()}))[
        EXTRA
    ]


def save_best(best_manager, step: int, state, metrics: dict) -> None:
    variables = {"params": state.params["model"], "batch_stats": state.batch_stats["model"]}
    best_manager.save(
        int(step),
        args=ocp.args.Composite(**{BEST_MODEL: ocp.args.StandardSave(variables)}),
        metrics=metrics,
        force=True,
    )


def abstract_like(tree, sharding=None):
    """ShapeDtypeStructs (with ``sharding`` if given) describing ``tree``'s arrays."""

    def leaf(x):
        return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding)

    return jax.tree.map(leaf, tree)


def load_config(workdir: str):
    import ml_collections

    with open(os.path.join(workdir, "config.json"), encoding="utf-8") as f:
        return ml_collections.ConfigDict(json.load(f))


class ModelMismatchError(ValueError):
    """A run's checkpoint holds other arrays than the model load_for_inference builds for it: it
    was trained with tasks or a model of its own (pass them), not those its config.json names."""


class UnreadableCheckpointError(RuntimeError):
    """The checkpoint asked for does not restore (damaged files); the message names it, why, and
    the run's other checkpoints."""


def _restore_on_this_process(directory: str, step: int, item: str):
    """``item`` of checkpoint ``step`` as arrays on this process's first device, whatever mesh
    and number of processes wrote it: the target is built from the checkpoint's own metadata
    (shapes, dtypes) with a one-device sharding. Restoring without a target would ask orbax for
    the saved topology, which fails ("Topology mismatch") for a multi-host run read on one host."""
    manager = ocp.CheckpointManager(
        directory, item_handlers={item: ocp.StandardCheckpointHandler()}
    )
    step_dir = os.path.join(directory, str(step))
    try:
        _restoring(step_dir)
        # The item's own metadata: the manager's item_metadata reads every item of the step and
        # warns once per item it has no handler for (the data position, the bad-input counters).
        metadata = ocp.StandardCheckpointHandler().metadata(
            pathlib.Path(directory) / str(step) / item
        )
        here = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
        target = jax.tree.map(
            lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=here), metadata
        )
        restored = manager.restore(
            step, args=ocp.args.Composite(**{item: ocp.args.StandardRestore(target)})
        )
    except Exception as error:  # noqa: BLE001 - damaged files fail in tensorstore in many ways
        others = [s for s in manager.all_steps() if s != step]
        raise UnreadableCheckpointError(
            f"checkpoint {step_dir} does not restore ({_failure_reason(error)}); "
            f"the other checkpoints in {directory}: {sorted(others) or 'none'}"
        ) from error
    finally:
        manager.close()
    return restored[item]


def load_for_inference(workdir: str, step=None, *, model=None, tasks=None):
    """The trained network of a run, for colorizing / classifying / evaluating.

    Args:
      workdir: a training run's directory (holds config.json and checkpoints/).
      step: None for the latest checkpoint, "best" for the best-by-validation one
        (checkpoints_best/), or an int step present in checkpoints/.
      model: the flax module to return instead of the one the config describes (for runs trained
        with a custom model passed to ``train_and_evaluate``).
      tasks: the task list the run was trained with, for runs trained with custom tasks
        (default: config.experiment's, mtcolor.tasks.paper).

    Returns:
      (config, model, variables): the run's ml_collections config, the model
      (``MultiTaskModel`` of the run's tasks) and {"params", "batch_stats"} as host numpy arrays.
      ``model.apply(variables, L, train=False)`` on L normalized to [-1, 1], shape (N, H, W, 1),
      returns {task name: output}.
    """
    from mtcolor.train import state as state_lib

    config = load_config(workdir)
    custom_model = model is not None
    model = model if custom_model else state_lib.build_model(config, tasks)
    if step == "best":
        manager = ocp.CheckpointManager(best_dir(workdir))
        chosen = manager.best_step() if manager.best_step() is not None else manager.latest_step()
        if chosen is None:
            raise FileNotFoundError(f"no best checkpoint under {best_dir(workdir)}")
        manager.close()
        variables = _restore_on_this_process(best_dir(workdir), chosen, BEST_MODEL)
    else:
        manager = ocp.CheckpointManager(checkpoint_dir(workdir))
        chosen = manager.latest_step() if step is None else int(step)
        if chosen is None:
            raise FileNotFoundError(f"no checkpoint under {checkpoint_dir(workdir)}")
        manager.close()
        # Nested dicts of arrays (no TrainState needed), of which the model's part is taken.
        restored = _restore_on_this_process(checkpoint_dir(workdir), chosen, STATE)
        variables = {
            "params": restored["params"]["model"],
            "batch_stats": restored["batch_stats"]["model"],
        }
    variables = jax.device_get(variables)
    _check_model_fits(workdir, config, model, variables, custom=tasks is not None or custom_model)
    return config, model, variables


def _check_model_fits(workdir, config, model, variables, *, custom: bool) -> None:
    """Raises ModelMismatchError naming the arrays that differ when ``variables`` are not the
    variables ``model`` has (shapes from tracing its init, nothing computed): found here, not as a
    flax shape error deep inside the first prediction."""
    size = int(config.data.image_size)
    abstract = jax.eval_shape(
        lambda: model.init(jax.random.PRNGKey(0), jnp.zeros((1, size, size, 1)), train=False)
    )
    abstract = {name: abstract[name] for name in ("params", "batch_stats") if name in abstract}
    mismatches = _shape_mismatches(
        _shapes(variables), _shapes(abstract), "the model" if custom else "the config's model"
    )
    if mismatches:
        how = (
            "the tasks or model given here are not those it was trained with"
            if custom
            else "a run trained with tasks or a model of its own (train_and_evaluate(tasks=..., "
            "model=...)) loads in Python with load_for_inference(workdir, tasks=..., model=...), "
            "evaluate_workdir(workdir, split, tasks=...)"
        )
        shown = "; ".join(mismatches[:3]) + (
            f"; ... ({len(mismatches)} in all)" if len(mismatches) > 3 else ""
        )
        raise ModelMismatchError(
            f"{workdir}: its checkpoint holds other arrays than the model built for it ({shown}): "
            f"{how}"
        )
