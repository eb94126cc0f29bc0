"""``train_and_evaluate(config, workdir)``: the paper's training schedule for any of the three
experiments, resumable, data-parallel over every device.

Schedule (paper III-D): ``frozen_epochs`` with the ResNet-18 frozen, then ``unfrozen_epochs``
with it trained; validation ``evals_per_epoch`` (2) times per epoch on the whole val split.
Re-running with the same workdir resumes from the latest checkpoint (state + data iterator).
"""

from __future__ import annotations

import json
import logging
import os
import time
import jax
import numpy as np

from mtcolor import tasks as tasks_lib
from mtcolor.train import checkpointing
from mtcolor.train import images as images_lib
from mtcolor.train import metrics as metrics_lib
from mtcolor.train import sharding
from mtcolor.train import state as state_lib
from mtcolor.train import steps as steps_lib
from mtcolor.train import validation

BATCH_KEYS = ("L", "ab", "label", "mask", "has_label")


class NonFiniteLossError(FloatingPointError):
    """A loss term became NaN or infinite; the message names the step and the terms."""


def _json_ready(config) -> dict:
    return json.loads(config.to_json_best_effort())


def _flat_hparams(tree: dict, prefix: str = "") -> dict:
    out = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(_flat_hparams(value, name + "."))
        elif isinstance(value, (bool, int, float, str)):
            out[name] = value
        elif value is None:
            out[name] = "None"
        else:
            out[name] = str(value)
    return out


def _model_inputs(batch: dict) -> dict:
    return {k: v for k, v in batch.items() if k in BATCH_KEYS}


def _data_module(config, workdir: str):
    """mtcolor.data.pipeline (grain) or mtcolor.data.resident (device-resident), as
    config.data.input_path says; "auto" follows the run's checkpoints when it resumes."""
    from mtcolor.data import input_paths

    path, why = input_paths.choose_input_path(
        config.data, resumed=checkpointing.saved_input_path(workdir)
    )
    logging.info("input path: %s (%s)", path, why)
    if path == "resident":
        from mtcolor.data import resident

        return resident
    from mtcolor.data import pipeline

    return pipeline


def _make_tracker(pipeline, config):
    """The data pipeline's bad-input tracker (counts skipped files, enforces max_bad_fraction)."""
    tracker_type = getattr(pipeline, "BadInputTracker", None)
    if tracker_type is None:
        return None
    return tracker_type(
        config.data.get("max_bad_fraction"),
        min_examples=int(config.data.get("bad_check_min_examples", 200)),
    )


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
        ``make_train_iterator`` and ``make_eval_iterator`` (default: mtcolor.data.pipeline or
        mtcolor.data.resident, as config.data.input_path chooses), for another data set.

    Returns:
      The summary dict also written to workdir/summary.json.
    """
    own_data = data is not None

    sharding.maybe_initialize_distributed(config)
    # Before anything is written or built; a user's own data pipeline reads its own data.
    validation.check_config(config, device_count=jax.device_count(), data_source=not own_data)
    workdir = os.path.abspath(workdir)
    pipeline = data if own_data else _data_module(config, workdir)
    os.makedirs(workdir, exist_ok=True)
    is_main = jax.process_index() == 0
    if is_main:
        with open(os.path.join(workdir, "config.json"), "w", encoding="utf-8") as f:
            json.dump(_json_ready(config), f, indent=2, sort_keys=True)

    mesh = sharding.make_mesh()
    global_batch = int(config.data.batch_size)
    sharding.check_batch_divisible(global_batch, mesh)
    if hasattr(pipeline, "steps_per_epoch"):
        # An epoch is one pass over the labelled examples, whatever share of each batch
        # unlabeled colorization data takes (data.unlabeled).
        steps_per_epoch = max(1, int(pipeline.steps_per_epoch(config.data)))
    else:
        steps_per_epoch = max(1, int(pipeline.num_examples(config.data, "train")) // global_batch)
    phase1 = state_lib.phase1_steps(config, steps_per_epoch)
    total_steps = (
        int(config.train.frozen_epochs) + int(config.train.unfrozen_epochs)
    ) * steps_per_epoch
    eval_every = max(1, steps_per_epoch // max(1, int(config.train.evals_per_epoch)))
    ckpt_every = config.train.checkpoint_every_steps or eval_every
    log_every = max(1, int(config.train.log_every_steps))

    train_iter = pipeline.make_train_iterator(
        config.data,
        seed=int(config.seed),
        shard_index=jax.process_index(),
        shard_count=jax.process_count(),
    )
    manager = checkpointing.make_manager(workdir, max_to_keep=int(config.train.max_to_keep))
    objective = state_lib.objective_from_config(config, tasks=tasks)
    best_name, best_mode = _best_metric(config, objective)
    best_manager = checkpointing.make_best_manager(workdir, metric=best_name, mode=best_mode)

    rng = jax.random.PRNGKey(int(config.seed))
    latest = manager.latest_step()
    extra = None
    if latest is not None:
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

        latest, state, extra, manager = checkpointing.restore_newest_intact(
            workdir, manager, abstract_state_at, train_iter
        )
        logging.info("resumed from %s step %d", checkpointing.checkpoint_dir(workdir), latest)
    else:
        state = state_lib.create_train_state(
            config,
            rng,
            backbone_frozen=phase1 > 0,
            model=model,
            tasks=tasks,
            steps_per_epoch=steps_per_epoch,
        )
        state = sharding.replicate(state, mesh)
    step = int(jax.device_get(state.step))
    start_step = step

    from clu import periodic_actions  # imports TensorFlow

    from mtcolor.train import writers

    writer = writers.create_writer(workdir, is_main_process=is_main)
    if latest is None:
        writer.write_hparams(_flat_hparams(_json_ready(config)))
    hooks = [periodic_actions.ReportProgress(num_train_steps=total_steps, writer=writer)]
    fns = steps_lib.jit_steps(mesh)
    names = metrics_lib.metric_names(state.objective)
    eval_masks = metrics_lib.eval_masks(state.objective)
    train_names = metrics_lib.metric_names(
        state.objective, train=True, discriminator=discriminator_trains(state)
    )
    images_dir = os.path.join(workdir, "images")

    pending: list[tuple[int, dict]] = []  # (step after the update, device metrics)
    window = metrics_lib.empty(train_names)
    final = {"train": {}, "val": {}}
    best = _read_best(workdir) or {"metric": best_name, "step": None, "val": {}}
    best_value = best["val"].get(best_name) if best["metric"] == best_name else None
    tracker = _make_tracker(pipeline, config)
    if tracker is not None and extra is not None:
        tracker.set_state(extra)

    def check_pending():
        """Fetch and NaN-check every step since the last check; fold them into the window."""
        nonlocal window
        if not pending:
            return
        host = jax.device_get([m for _, m in pending])
        for (s, _), values in zip(pending, host):
            bad = metrics_lib.first_non_finite(values)
            if bad:
                manager.wait_until_finished()
                good = manager.latest_step()
                writer.flush()
                raise NonFiniteLossError(
                    f"non-finite loss at step {s} (the update from step {s - 1} to {s}): "
                    + ", ".join(f"{n}={float(np.asarray(values[n]).mean())}" for n in bad)
                    + f"; the last good checkpoint is step {good} in {checkpointing.checkpoint_dir(workdir)}"
                    " (nothing after it was saved)"
                )
            window = window.merge(metrics_lib.from_step_outputs(train_names, values))
        pending.clear()

    def write_train(s):
        nonlocal window
        check_pending()
        values = metrics_lib.compute(window)
        final["train"] = values
        scalars = {f"train/{k}": v for k, v in values.items()}
        if tracker is not None:
            scalars.update(tracker.scalars())
        scalars["epoch"] = s / steps_per_epoch
        writer.write_scalars(s, scalars)
        window = metrics_lib.empty(train_names)

    def evaluate(s):
        nonlocal best_value
        collection = metrics_lib.empty(names, eval_masks)
        first = None
        for batch in pipeline.make_eval_iterator(
            config.data,
            split="val",
            shard_index=jax.process_index(),
            shard_count=jax.process_count(),
        ):
            arrays = _model_inputs(batch)
            if first is None:
                first = arrays
            dev = sharding.put_batch(arrays, mesh)
            collection = collection.merge(
                metrics_lib.from_step_outputs(names, fns.eval_step(state, dev), eval_masks)
            )
        values = metrics_lib.compute(collection)
        final["val"] = values
        scalars = {f"val/{k}": v for k, v in values.items()}
        scalars["epoch"] = s / steps_per_epoch
        writer.write_scalars(s, scalars)
        if first is not None:
            write_image_grids(s, first)
        value = values.get(best_name)
        if value is not None and np.isfinite(value):
            improved = best_value is None or (
                value > best_value if best_mode == "max" else value < best_value
            )
            if improved:
                best_value = value
                checkpointing.save_best(best_manager, s, state, {best_name: value})
                best.update(step=s, val=dict(values))
                if is_main:
                    with open(os.path.join(workdir, "best.json"), "w", encoding="utf-8") as f:
                        json.dump(best, f)
        writer.flush()

    def write_image_grids(s, batch):
        """Each task's picture of the first validation examples (tasks without one skip)."""
        n = min(int(config.train.num_image_examples), batch["L"].shape[0])
        outputs = None
        for task in state.objective.tasks:
            if type(task).image_rows is tasks_lib.Task.image_rows:
                continue
            if outputs is None:
                outputs = jax.device_get(
                    fns.predict(state, sharding.put_batch({"L": batch["L"]}, mesh)["L"])
                )
            head = {k: v[:n] for k, v in batch.items()}
            rows = task.image_rows(head, jax.tree.map(lambda x: x[:n], outputs[task.name]))
            if rows is None:
                continue
            grid = images_lib.make_grid(rows)
            # The paper's colorization grid keeps its file name (step_<N>.png).
            suffix = "" if task.name == "colorization" else f"_{task.name}"
            if is_main:
                images_lib.save_png(grid, os.path.join(images_dir, f"step_{s}{suffix}.png"))
            writer.write_images(s, {f"val/{task.name}": grid[None]})

    def save(s):
        check_pending()  # never checkpoint a state produced by a non-finite loss
        checkpointing.save(
            manager,
            s,
            state,
            train_iter,
            extra=tracker.get_state() if tracker is not None else None,
        )

    patience = config.train.get("early_stopping_patience")

    def early_stop_tasks(state, s):
        nonlocal train_names, window
        state, stopped = state_lib.early_stopping_update(state, final["val"], s, int(patience))
        if train_names != metrics_lib.metric_names(
            state.objective, train=True, discriminator=discriminator_trains(state)
        ):
            # The discriminator stopped with its task: the window logged so far had its metrics,
            # the steps from here on have none (write the window unless step s just wrote it).
            if s % log_every and s != stop_at:
                write_train(s)
            train_names = metrics_lib.metric_names(state.objective, train=True, discriminator=False)
            window = metrics_lib.empty(train_names)
        for task in stopped:
            logging.info("step %d: %s stopped early (its best head restored)", s, task)
            print(f"step {s}: task {task} stopped early; its head is back at its best weights")
        active = state_lib.active_tasks(state)
        writer.write_scalars(
            s, {f"early_stopping/active_{t}": float(t in active) for t in state.objective.task_names}
        )
        return sharding.replicate(state, mesh)

    t0 = time.time()
    stop_at = total_steps
    if config.train.max_steps_per_run:
        stop_at = min(total_steps, start_step + int(config.train.max_steps_per_run))
    if patience is not None and not state_lib.active_tasks(state):
        stop_at = step  # resumed after every task had stopped early: nothing left to train
    if state.optimizer.backbone_frozen and step >= phase1:
        state = sharding.replicate(state_lib.unfreeze_backbone(state), mesh)
    while step < stop_at:
        batch = next(train_iter)
        if tracker is not None:
            tracker.observe(batch)
            tracker.check()  # stops the run (TooManyBadInputsError) above data.max_bad_fraction
        arrays = _model_inputs(batch)
        state, step_metrics = train_iteration(fns, state, sharding.put_batch(arrays, mesh))
        step += 1
        pending.append((step, step_metrics))
        if state.optimizer.backbone_frozen and step >= phase1:
            # Phase 2 starts now, so a checkpoint taken at this step is already in phase 2 and
            # restore rebuilds it from the step alone (state.backbone_frozen_at).
            state = sharding.replicate(state_lib.unfreeze_backbone(state), mesh)
            logging.info("step %d: backbone unfrozen (phase 2)", step)
        for hook in hooks:
            hook(step)
        if step % log_every == 0 or step == stop_at:
            write_train(step)
        if step % eval_every == 0 or step == total_steps:
            check_pending()
            evaluate(step)
            if patience is not None:
                state = early_stop_tasks(state, step)
                if not state_lib.active_tasks(state):
                    logging.info("step %d: every task has stopped early; ending the run", step)
                    save(step)
                    stop_at = step
                    break
        if step % ckpt_every == 0 or step == stop_at:
            save(step)
    check_pending()
    manager.wait_until_finished()
    wall = time.time() - t0

    if not final["val"] and step == total_steps:
        evaluate(step)
    summary = {
        "experiment": config.experiment,
        "steps": step,
        "epochs": step / steps_per_epoch,
        "wall_time_s": wall,
        "steps_this_run": step - start_step,
        "finished": step >= total_steps or not state_lib.active_tasks(state),
        "early_stopping": _early_stopping_summary(state),
        "final": final,
        "best": best,
        "config": _json_ready(config),
    }
    if is_main:
        with open(os.path.join(workdir, "summary.json"), "w", encoding="utf-8") as f:
            json.dump(summary, f, indent=2, sort_keys=True, default=float)
    writer.flush()
    writer.close()
    manager.close()
    best_manager.close()
    if is_main:
        if tracker is not None:
            print(tracker.report())
        headline = result_headline(state.objective.tasks, final["val"])
        if headline:
            print(f"Result (validation, step {step}): {headline}")
        print(
            f"TensorBoard logs: {os.path.join(workdir, 'tensorboard')}  "
            f"(tensorboard --logdir {os.path.join(workdir, 'tensorboard')})"
        )
        print(f"Image grids:      {images_dir}/step_<N>.png")
        print(f"Scalars:          {os.path.join(workdir, 'scalars.jsonl')}")
        print(f"Summary:          {os.path.join(workdir, 'summary.json')}")
    return summary


def result_headline(tasks, val: dict) -> str:
    """Each task's final validation numbers beside their baseline, in one line, so a newcomer
    sees that the run learned (accuracy vs chance, L1 vs predicting ab = 0, colorfulness vs the
    real images)."""
    return "; ".join(filter(None, (task.headline(val) for task in tasks))) if val else ""


def _early_stopping_summary(state) -> dict | None:
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


def _read_best(workdir):
    """best.json of an earlier invocation of this run (resume), or None."""
    path = os.path.join(workdir, "best.json")
    if not os.path.exists(path):
        return None
    with open(path, encoding="utf-8") as f:
        return json.load(f)
