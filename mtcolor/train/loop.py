"""``train_and_evaluate(config, workdir)``: the paper's training schedule for any of the three
experiments, resumable, data-parallel over every device.

Re-running with the same workdir resumes from the latest checkpoint (state + data iterator). The
steps at which a run logs, validates, saves and stops are mtcolor.train.schedule's (paper III-D:
``frozen_epochs`` with the ResNet-18 frozen, then ``unfrozen_epochs``, validating
``evals_per_epoch`` times per epoch on the whole val split); what the run directory records
(config.json, best.json, summary.json) and the lines a finished run prints are
mtcolor.train.run_record's.

``train_and_evaluate`` reads top to bottom as the run goes, and the functions after it come in
that order: ``restore_or_create_state``; the training loop, which runs ``train_iteration`` each
step and, on the schedule's steps, logs the training metrics (``TrainMetrics``, which also stops
the run on a non-finite loss), validates (``validate``: ``evaluate``, ``write_image_grids``,
``BestCheckpoint``), stops tasks early (``early_stop_tasks``) and saves (``save_checkpoint``).
"""

from __future__ import annotations

import functools
import logging
import os
import time

import jax
import jax.numpy as jnp
import numpy as np

from mtcolor import sharding
from mtcolor import tasks as tasks_lib
from mtcolor.data import input_paths
from mtcolor.train import checkpointing, compile_ahead, run_record, validation
from mtcolor.train import images as images_lib
from mtcolor.train import metrics as metrics_lib
from mtcolor.train import schedule as schedule_lib
from mtcolor.train import state as state_lib
from mtcolor.train import steps as steps_lib

BATCH_KEYS = ("L", "ab", "label", "mask", "has_label")


class NonFiniteLossError(FloatingPointError):
    """A loss term became NaN or infinite; the message names the step and the terms."""


def _model_inputs(batch: dict) -> dict:
    return {k: v for k, v in batch.items() if k in BATCH_KEYS}


def make_input_pipeline(config, workdir: str, data=None):
    """The `InputPipeline` the run reads through: a user's ``data=`` object, else the path
    config.data.input_path chooses (grain or device-resident; "auto" keeps the path a resumed
    run's checkpoints were written with)."""
    if data is not None:
        return input_paths.from_data_object(data)
    pipeline, why = input_paths.for_run(
        config.data, resumed=checkpointing.saved_input_path(workdir)
    )
    logging.info("input path: %s (%s)", pipeline.name, why)
    return pipeline


def check_class_count(config, objective, *, tasks_from_config: bool) -> None:
    """Raises validation.ConfigError when the training data has more classes than a class head
    predicts (data.classes None over a 1000-class tree, model.num_classes 5): found here, before
    any work, rather than as a NaN loss after the first step."""
    from mtcolor.data import sources

    data = config.data
    if data.source == "folder":
        unlabeled = (
            f"--config.data.folder.train_root={data.folder.train_root!r} has no class folders"
        )
    else:
        unlabeled = f"--config.data.{data.source}.label_key=None"
    problems = validation.class_count_problems(
        objective.tasks,
        sources.class_names(data),
        tasks_from_config=tasks_from_config,
        unlabeled_data=unlabeled,
    )
    if problems:
        raise validation.ConfigError(problems)


def discriminator_trains(state) -> bool:
    """Whether an iteration updates a discriminator: the objective has one and early stopping
    has not stopped its task (D stops with it)."""
    adversarial = state.objective.adversarial_task
    return adversarial is not None and adversarial.name in state_lib.active_tasks(state)


def train_iteration(fns, state, batch):
    """One training iteration: steps.train_step (one model forward, D then G), or the model's
    update alone when no discriminator trains (early stopping stopped the adversarial task)."""
    if state.objective.adversarial_task is not None and not discriminator_trains(state):
        return fns.generator_step(state, batch, fns.iteration_rng(state))
    return fns.train_step(state, batch)


def compile_steps_ahead(fns, state, raw_batch, mesh, schedule) -> compile_ahead.CompileAhead:
    """Submits the programs the run will call, in the order it calls them: this phase's training
    step, evaluation (for a validation batch laid out like ``raw_batch`` plus its ``mask``), then
    phase 2's training step (mtcolor.train.compile_ahead)."""
    ahead = compile_ahead.CompileAhead()
    if raw_batch is None:
        return ahead
    batch = sharding.put_batch(_model_inputs(raw_batch), mesh)
    ahead.submit("train_step", fns.train_step, state, batch)
    rows = batch["L"].shape[0]
    mask = jax.ShapeDtypeStruct((rows,), jnp.float32, sharding=sharding.batch_sharded(mesh))
    view = steps_lib.evaluation_view(state)
    ahead.submit("eval_step", fns.eval_step.__wrapped__, view, {**batch, "mask": mask})
    if state.optimizer.backbone_frozen and schedule.phase1_steps < schedule.stop_at:
        ahead.submit("unfreeze_backbone", fns.unfreeze_backbone, state)
        phase2 = jax.eval_shape(fns.unfreeze_backbone, state)  # its jit replicates the output
        replicated = sharding.replicated(mesh)
        phase2 = jax.tree.map(
            lambda x: jax.ShapeDtypeStruct(
                x.shape, x.dtype, sharding=replicated, weak_type=x.weak_type
            ),
            phase2,
        )
        ahead.submit("train_step_phase2", fns.train_step, phase2, batch)
    return ahead


def _best_metric(config, objective) -> tuple[str, str]:
    """(validation metric, "min"/"max") that picks the best checkpoint: config.train.best_metric,
    else the checkpoint metric of the task that selects checkpoints (the paper: accuracy)."""
    from mtcolor import tasks as tasks_lib

    name = config.train.best_metric
    if name is None:
        return tasks_lib.checkpoint_task(objective.tasks).checkpoint_metric
    for task in objective.tasks:
        if task.checkpoint_metric[0] == name:
            return task.checkpoint_metric
    return name, "max" if name == "accuracy" else "min"


def train_and_evaluate(config, workdir: str, *, tasks=None, model=None, data=None) -> dict:
    """Trains ``config.experiment`` in ``workdir`` (resuming if it holds checkpoints).

    Args:
      config: an ml_collections ConfigDict as made by experiments/configs/*.py.
      workdir: output directory (config.json, checkpoints/, checkpoints_best/, tensorboard/,
        scalars.jsonl, images/, summary.json).
      tasks: optional tuple of mtcolor.tasks.Task replacing config.experiment's task list (the
        paper's, mtcolor.tasks.paper): the model is then ``MultiTaskModel(tasks)``.
      model: optional flax module replacing ``MultiTaskModel(tasks)`` (library use: another
        backbone or head layout). It must have a ``backbone`` submodule (frozen in phase 1),
        accept ``(L, train=..., backbone_train=...)`` and return ``{task name: output}``.
      data: optional object with the mtcolor.data.pipeline functions ``num_examples``,
        ``make_train_iterator`` and ``make_eval_iterator`` (optional: ``steps_per_epoch`` and
        ``make_bad_input_tracker``; `mtcolor.data.input_paths.from_data_object`), for another
        data set (default: the grain or device-resident path, as config.data.input_path
        chooses).

    Returns:
      The summary dict also written to workdir/summary.json.
    """
    sharding.maybe_initialize_distributed(config)
    # Before anything is written or built; a user's own data pipeline reads its own data.
    validation.check_config(config, device_count=jax.device_count(), data_source=data is None)
    workdir = os.path.abspath(workdir)
    pipeline = make_input_pipeline(config, workdir, data)
    objective = state_lib.objective_from_config(config, tasks=tasks)
    if data is None:
        check_class_count(config, objective, tasks_from_config=tasks is None)
    os.makedirs(workdir, exist_ok=True)
    is_main = jax.process_index() == 0  # only process 0 writes files (and prints the report)
    # config.json is written once the checkpoints restore: a resume that fails keeps the run's
    # record of what its checkpoints were trained with. Process 0 alone reads and writes it.
    changes = run_record.saved_config_changes(workdir, config) if is_main else []

    mesh = sharding.make_mesh()
    sharding.check_batch_divisible(int(config.data.batch_size), mesh)
    # An epoch is one pass over the labelled examples, whatever share of each batch unlabeled
    # colorization data takes (data.unlabeled).
    steps_per_epoch = max(1, int(pipeline.steps_per_epoch(config.data)))
    train_iter = pipeline.make_train_iterator(
        config.data,
        seed=int(config.seed),
        shard_index=jax.process_index(),
        shard_count=jax.process_count(),
    )
    manager = checkpointing.make_manager(workdir, max_to_keep=int(config.train.max_to_keep))
    try:
        state, extra, manager, resumed_step = restore_or_create_state(
            config, workdir, mesh, manager, train_iter, steps_per_epoch, model=model, tasks=tasks
        )
    except checkpointing.NoIntactCheckpointError as error:
        input_paths.close_iterator(train_iter)
        # Only a state of another structure is the options' fault; damaged checkpoints are not.
        if not (changes and isinstance(error, checkpointing.CheckpointStructureError)):
            raise
        raise validation.ConfigError(
            run_record.changed_config_problems(workdir, changes, error.mismatches)
        ) from error
    if is_main:
        run_record.write_config(workdir, config, changes, resumed_step)
    best = BestCheckpoint(workdir, *_best_metric(config, objective), is_main=is_main)
    schedule = schedule_lib.make_schedule(config, steps_per_epoch, state)
    step = schedule.start_step
    fns = steps_lib.jit_steps(mesh)
    if state.optimizer.backbone_frozen and step >= schedule.phase1_steps:
        state = fns.unfreeze_backbone(state)
    # The first batch now, so that the steps compile for it while the writers start up.
    pending_batch = next(train_iter) if step < schedule.stop_at else None
    ahead = compile_steps_ahead(fns, state, pending_batch, mesh, schedule)

    from mtcolor.train import writers

    writer = writers.create_writer(workdir, is_main_process=is_main)
    from clu import periodic_actions  # imports TensorFlow, as create_writer did, quietly

    if resumed_step is None:
        writer.write_hparams(run_record.flat_hparams(run_record.json_ready(config)))
    report_progress = periodic_actions.ReportProgress(
        num_train_steps=schedule.total_steps, writer=writer
    )
    tracker = pipeline.make_bad_input_tracker(config.data)
    if tracker is not None and extra is not None:
        tracker.set_state(extra)
    train_metrics = TrainMetrics(
        _train_metric_names(state), schedule, writer, tracker, manager, workdir
    )
    patience = config.train.get("early_stopping_patience")
    validate_state = functools.partial(
        validate,
        config=config,
        pipeline=pipeline,
        mesh=mesh,
        fns=fns,
        schedule=schedule,
        writer=writer,
        best=best,
        workdir=workdir,
        is_main=is_main,
    )
    val: dict = {}  # the latest validation metrics

    t0 = time.time()
    ahead.wait("train_step")
    try:
        while step < schedule.stop_at:
            batch = pending_batch if pending_batch is not None else next(train_iter)
            pending_batch = None
            if tracker is not None:
                tracker.observe(batch)
                tracker.check()  # stops the run (TooManyBadInputsError) above data.max_bad_fraction
            arrays = _model_inputs(batch)
            state, step_metrics = train_iteration(fns, state, sharding.put_batch(arrays, mesh))
            step += 1
            train_metrics.add(step, step_metrics)
            if state.optimizer.backbone_frozen and step >= schedule.phase1_steps:
                # Phase 2 starts now, so a checkpoint taken at this step is already in phase 2 and
                # restore rebuilds it from the step alone (state.backbone_frozen_at).
                ahead.wait("unfreeze_backbone")
                state = fns.unfreeze_backbone(state)
                logging.info("step %d: backbone unfrozen (phase 2)", step)
                ahead.wait("train_step_phase2")
            report_progress(step)
            if schedule.logs_at(step):
                train_metrics.write(step)
            if schedule.evaluates_at(step):
                train_metrics.check()
                ahead.wait("eval_step")
                val = validate_state(step, state)
                if patience is not None:
                    state = early_stop_tasks(
                        state, val, step, int(patience), train_metrics, schedule, writer, mesh
                    )
                    if not state_lib.active_tasks(state):
                        logging.info("step %d: every task has stopped early; ending the run", step)
                        save_checkpoint(step, state, manager, train_iter, tracker, train_metrics)
                        break
            if schedule.saves_at(step):
                save_checkpoint(step, state, manager, train_iter, tracker, train_metrics)
    finally:
        ahead.close()
        # grain's worker processes and the shared memory of their prefetched batches are freed
        # here, not by garbage collection at exit (which ended runs with grain's errors).
        input_paths.close_iterator(train_iter)
    train_metrics.check()
    manager.wait_until_finished()
    wall = time.time() - t0

    if not val and step == schedule.total_steps:
        val = validate_state(step, state)  # resumed at the end: validate the final state
    final = {"train": train_metrics.last, "val": val}
    summary = run_record.write_summary(
        config, workdir, state, step, schedule, wall, final, best.record, is_main=is_main
    )
    writer.flush()
    writer.close()
    manager.close()
    best.close()
    if is_main:
        run_record.print_run_report(workdir, state, step, val, tracker)
    return summary


def restore_or_create_state(
    config, workdir: str, mesh, manager, train_iter, steps_per_epoch: int, *, model, tasks
):
    """The state of the newest intact checkpoint in ``manager`` (``train_iter`` is moved to its
    data position), or a fresh one, replicated over ``mesh``.

    Returns (state, the checkpoint's extra JSON (the bad-input tracker's state) or None, the
    manager to save with (checkpointing.restore_newest_intact may set damaged checkpoints
    aside), the restored step or None for a fresh state).
    """
    phase1 = state_lib.phase1_steps(config, steps_per_epoch)
    rng = jax.random.PRNGKey(int(config.seed))
    if manager.latest_step() is None:
        state = state_lib.create_train_state(
            config,
            rng,
            backbone_frozen=phase1 > 0,
            model=model,
            tasks=tasks,
            steps_per_epoch=steps_per_epoch,
        )
        return sharding.replicate(state, mesh), None, manager, None

    # The structure only: pretrained weights are not read again, the checkpoint has them.
    abstract_config = config.copy_and_resolve_references()
    abstract_config.model.pretrained = None

    def abstract_state_at(step):
        abstract = jax.eval_shape(
            lambda r: state_lib.create_train_state(
                abstract_config,
                r,
                backbone_frozen=state_lib.backbone_frozen_at(step, phase1),
                model=model,
                tasks=tasks,
                steps_per_epoch=steps_per_epoch,
            ),
            rng,
        )
        return checkpointing.abstract_like(abstract, sharding.replicated(mesh))

    step, state, extra, manager = checkpointing.restore_newest_intact(
        workdir, manager, abstract_state_at, train_iter
    )
    logging.info("resumed from %s step %d", checkpointing.checkpoint_dir(workdir), step)
    return state, extra, manager, step


def _train_metric_names(state) -> tuple[str, ...]:
    return metrics_lib.metric_names(
        state.objective, train=True, discriminator=discriminator_trains(state)
    )


class TrainMetrics:
    """The training metrics since the last ``write``, logged as ``train/<name>`` scalars.

    Each step's metrics stay on the devices (``add``) until ``check`` fetches them: fetching
    every step would make the host wait for the devices. ``check`` raises NonFiniteLossError at
    the first NaN or infinite loss; it runs before every write, validation and checkpoint.
    """

    def __init__(
        self, names, schedule: schedule_lib.Schedule, writer, tracker, manager, workdir: str
    ):
        self.names = names
        self.last: dict = {}  # the latest window written (the summary's final train metrics)
        self._schedule = schedule
        self._writer = writer
        self._tracker = tracker
        self._manager = manager  # the message of a non-finite loss names its latest checkpoint
        self._workdir = workdir
        self._pending: list[tuple[int, dict]] = []  # (step after the update, device metrics)
        self._window = metrics_lib.empty(names)

    def add(self, step: int, step_metrics: dict) -> None:
        self._pending.append((step, step_metrics))

    def check(self) -> None:
        """Fetch and NaN-check every step since the last check; fold them into the window."""
        if not self._pending:
            return
        host = jax.device_get([m for _, m in self._pending])
        for (step, _), values in zip(self._pending, host):
            bad = metrics_lib.first_non_finite(values)
            if bad:
                self._raise_non_finite(step, values, bad)
        self._window = self._window.merge(metrics_lib.from_step_outputs(self.names, host))
        self._pending.clear()

    def _raise_non_finite(self, step: int, values: dict, bad: list[str]):
        self._manager.wait_until_finished()
        good = self._manager.latest_step()
        self._writer.flush()
        terms = ", ".join(f"{n}={float(np.asarray(values[n]).mean())}" for n in bad)
        raise NonFiniteLossError(
            f"non-finite loss at step {step} (the update from step {step - 1} to {step}): "
            + terms
            + f"; the last good checkpoint is step {good} in "
            f"{checkpointing.checkpoint_dir(self._workdir)} (nothing after it was saved)"
        )

    def write(self, step: int) -> None:
        """Log the window's averages (with the bad-input tracker's scalars) and empty it."""
        self.check()
        values = metrics_lib.compute(self._window)
        self.last = values
        scalars = {f"train/{k}": v for k, v in values.items()}
        if self._tracker is not None:
            scalars.update(self._tracker.scalars())
        scalars["epoch"] = self._schedule.epoch(step)
        self._writer.write_scalars(step, scalars)
        self._window = metrics_lib.empty(self.names)

    def restart(self, names) -> None:
        """An empty window of other metrics (the discriminator stopped training)."""
        self.names = names
        self._window = metrics_lib.empty(names)


def validate(
    step: int, state, *, config, pipeline, mesh, fns, schedule, writer, best, workdir, is_main
) -> dict:
    """Evaluates ``state`` on the val split, logs ``val/<name>`` scalars and the image grids,
    keeps the best checkpoint. Returns the validation metrics."""
    values, first_batch, first_outputs = evaluate(
        state, config=config, pipeline=pipeline, mesh=mesh, fns=fns
    )
    scalars = {f"val/{k}": v for k, v in values.items()}
    scalars["epoch"] = schedule.epoch(step)
    writer.write_scalars(step, scalars)
    if first_batch is not None:
        write_image_grids(
            step,
            state,
            first_batch,
            first_outputs,
            config=config,
            writer=writer,
            images_dir=os.path.join(workdir, "images"),
            is_main=is_main,
        )
    best.update(step, state, values)
    writer.flush()
    return values


def evaluate(state, *, config, pipeline, mesh, fns) -> tuple[dict, dict | None, dict | None]:
    """The metrics of ``state`` over the whole val split, each task's averaged over the examples
    that have the task. Returns (metrics, the first batch's model inputs and the model's outputs
    for it, {task name: output}; both None if the split is empty)."""
    names = metrics_lib.metric_names(state.objective)
    masks = metrics_lib.eval_masks(state.objective)
    outputs = []  # on the devices until the end: fetching each batch would wait for it
    first = first_outputs = None
    batches = pipeline.make_eval_iterator(
        config.data,
        split="val",
        shard_index=jax.process_index(),
        shard_count=jax.process_count(),
    )
    try:
        for batch in batches:
            arrays = _model_inputs(batch)
            if first is None:
                first = arrays
            dev = sharding.put_batch(arrays, mesh)
            values, model_outputs = fns.eval_step(state, dev)
            outputs.append(values)
            if first_outputs is None:
                first_outputs = model_outputs  # the other batches' are dropped, never fetched
    finally:
        input_paths.close_iterator(batches)
    if not outputs:
        return metrics_lib.compute(metrics_lib.empty(names, masks)), first, None
    metrics = metrics_lib.compute(metrics_lib.from_step_outputs(names, outputs, masks))
    return metrics, first, first_outputs


def write_image_grids(step: int, state, batch, outputs, *, config, writer, images_dir, is_main):
    """Each task's picture of the first validation examples (``batch``, the model's ``outputs``
    for it; tasks without a picture skip)."""
    n = min(int(config.train.num_image_examples), batch["L"].shape[0])
    fetched = None
    for task in state.objective.tasks:
        if type(task).image_rows is tasks_lib.Task.image_rows:
            continue
        if fetched is None:
            # Sliced on the host: slicing on the device would compile a program per shape.
            fetched = jax.tree.map(lambda x: x[:n], jax.device_get(outputs))
        head = {k: v[:n] for k, v in batch.items()}
        rows = task.image_rows(head, fetched[task.name])
        if rows is None:
            continue
        grid = images_lib.make_grid(rows)
        # The paper's colorization grid keeps its file name (step_<N>.png).
        suffix = "" if task.name == "colorization" else f"_{task.name}"
        if is_main:
            images_lib.save_png(grid, os.path.join(images_dir, f"step_{step}{suffix}.png"))
        writer.write_images(step, {f"val/{task.name}": grid[None]})


class BestCheckpoint:
    """The best validation so far by one metric: its model in checkpoints_best/ and ``record``
    ({"metric", "step", "val": all its validation metrics}) in best.json, read back on resume."""

    def __init__(self, workdir: str, metric: str, mode: str, *, is_main: bool):
        self.metric, self.mode = metric, mode
        self._workdir, self._is_main = workdir, is_main
        self._manager = checkpointing.make_best_manager(workdir, metric=metric, mode=mode)
        self.record = run_record.read_best(workdir) or {"metric": metric, "step": None, "val": {}}
        # An earlier invocation's best by another metric is no value to beat.
        same_metric = self.record["metric"] == metric
        self._value = self.record["val"].get(metric) if same_metric else None

    def update(self, step: int, state, values: dict) -> None:
        """Saves ``state`` as the best if ``values`` beat the best so far (NaN never does)."""
        value = values.get(self.metric)
        if value is None or not np.isfinite(value):
            return
        if self._value is not None:
            better = value > self._value if self.mode == "max" else value < self._value
            if not better:
                return
        self._value = value
        checkpointing.save_best(self._manager, step, state, {self.metric: value})
        self.record.update(step=step, val=dict(values))
        if self._is_main:
            run_record.write_json(os.path.join(self._workdir, "best.json"), self.record)

    def close(self) -> None:
        self._manager.close()


def save_checkpoint(step: int, state, manager, train_iter, tracker, train_metrics) -> None:
    """Checkpoints the state, the data position and the bad-input tracker's counts."""
    train_metrics.check()  # never checkpoint a state produced by a non-finite loss
    checkpointing.save(
        manager,
        step,
        state,
        train_iter,
        extra=tracker.get_state() if tracker is not None else None,
    )


def early_stop_tasks(
    state, val: dict, step: int, patience: int, train_metrics, schedule, writer, mesh
):
    """Task-specific early stopping after a validation (train.early_stopping_patience): stops
    the tasks whose validation loss has not improved for ``patience`` validations, their heads
    back at their best weights. Returns the new state, replicated over ``mesh``."""
    state, stopped = state_lib.early_stopping_update(state, val, step, patience)
    names = _train_metric_names(state)
    if names != train_metrics.names:
        # The discriminator stopped with its task: the window logged so far had its metrics,
        # the steps from here on have none (write the window unless this step just wrote it).
        if not schedule.logs_at(step):
            train_metrics.write(step)
        train_metrics.restart(names)
    for task in stopped:
        logging.info("step %d: %s stopped early (its best head restored)", step, task)
        print(f"step {step}: task {task} stopped early; its head is back at its best weights")
    active = state_lib.active_tasks(state)
    writer.write_scalars(
        step,
        {f"early_stopping/active_{t}": float(t in active) for t in state.objective.task_names},
    )
    return sharding.replicate(state, mesh)
