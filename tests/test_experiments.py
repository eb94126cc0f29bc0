"""End-to-end tiny runs (32 px, batch 4, 3 steps per epoch) of the three experiments through
``train_and_evaluate``: outputs, resume equality across both phases, NaN stop, inference loading.

The runs share one process so the compiled steps are reused (equal static config -> jit cache).
"""

import json
import os
import shutil

import jax
import numpy as np
import pytest

from experiments.configs import tiny
from mtcolor.train import checkpointing, loop, validation, writers

COLOR_NAMES = {
    "l1",
    "loss_l1",
    "loss_gan",
    "loss_g",
    "loss_d",
    "loss_d_real",
    "loss_d_fake",
    "d_real",
    "d_fake",
}
CLASS_NAMES = {"loss_cls", "accuracy"}
# Validation only: the colorization's baselines (ab = 0's L1, the real images' colorfulness).
COLOR_VAL_NAMES = COLOR_NAMES | {"l1_gray", "colorfulness", "colorfulness_true"}


def _config(experiment="multitask", **train):
    config = tiny.get_config()
    config.experiment = experiment
    for key, value in train.items():
        config.train[key] = value
    return config


def _params(workdir, step=None):
    _, _, variables = checkpointing.load_for_inference(str(workdir), step)
    return variables


@pytest.fixture(scope="module")
def multitask_run(tiny_multitask_run):
    return tiny_multitask_run  # tests/conftest.py: the tiny config's multitask run, shared


def test_multitask_run_writes_every_output(multitask_run):
    workdir, summary = multitask_run
    assert summary["experiment"] == "multitask" and summary["steps"] == 6
    assert summary["epochs"] == pytest.approx(2.0)
    on_disk = json.load(open(workdir / "summary.json"))
    assert on_disk["final"]["val"].keys() == COLOR_VAL_NAMES | CLASS_NAMES
    assert on_disk["best"]["metric"] == "accuracy" and on_disk["best"]["step"] in (3, 6)
    assert json.load(open(workdir / "config.json"))["experiment"] == "multitask"
    records = writers.read_scalars(str(workdir / "scalars.jsonl"))
    val = [r for r in records if "val/l1" in r]
    train = [r for r in records if "train/l1" in r]
    # 3 steps per epoch, one evaluation per epoch in the tiny config; train logged every 2 steps.
    assert [r["step"] for r in val] == [3, 6]
    assert [r["epoch"] for r in val] == [1.0, 2.0]
    assert [r["step"] for r in train] == [2, 4, 6]
    assert {f"val/{n}" for n in COLOR_VAL_NAMES | CLASS_NAMES} <= val[-1].keys()
    # The val split has 6 examples in batches of 4: accuracy is a multiple of 1/6, not of 1/8.
    assert round(val[-1]["val/accuracy"] * 6) == pytest.approx(
        val[-1]["val/accuracy"] * 6, abs=1e-5
    )
    assert val[-1]["val/loss_l1"] == pytest.approx(100 * val[-1]["val/l1"], rel=1e-5)
    assert sorted(os.listdir(workdir / "images")) == ["step_3.png", "step_6.png"]
    from PIL import Image

    grid = np.asarray(Image.open(workdir / "images" / "step_6.png"))
    # rows input / prediction / truth, 4 columns; 32 px cells enlarged 3x (to >= 96 px), 2 px
    # gutters
    assert grid.shape == (3 * (3 * 32 + 2) + 2, 4 * (3 * 32 + 2) + 2, 3)
    assert any(f.startswith("events.out.tfevents") for f in os.listdir(workdir / "tensorboard"))
    assert sorted(int(s) for s in os.listdir(workdir / "checkpoints")) == [2, 4, 6]


def test_load_for_inference_latest_and_best(multitask_run):
    workdir, summary = multitask_run
    config, model, variables = checkpointing.load_for_inference(str(workdir))
    assert config.experiment == "multitask"
    L = np.zeros((2, 32, 32, 1), np.float32)
    outputs = model.apply(variables, L, train=False)
    assert outputs["colorization"].shape == (2, 32, 32, 2)
    assert outputs["classification"].shape == (2, 5)
    _, _, best = checkpointing.load_for_inference(str(workdir), "best")
    assert jax.tree.structure(best) == jax.tree.structure(variables)


def test_interrupted_runs_resume_to_identical_parameters(multitask_run, tmp_path):
    """Three invocations of 2 steps each (checkpoints at 2: phase 1, at 4: phase 2) end bitwise
    equal to the uninterrupted run."""
    reference, _ = multitask_run
    workdir = tmp_path / "resumed"
    for expected_step in (2, 4, 6):
        summary = loop.train_and_evaluate(_config("multitask", max_steps_per_run=2), str(workdir))
        assert summary["steps"] == expected_step
    a, b = _params(reference), _params(workdir)
    diffs = jax.tree.leaves(jax.tree.map(lambda x, y: np.abs(x - y).max(), a, b))
    assert max(diffs) == 0.0
    records = writers.read_scalars(str(workdir / "scalars.jsonl"))
    assert [r["step"] for r in records if "val/l1" in r] == [3, 6]


def test_half_written_checkpoint_is_ignored(multitask_run, tmp_path):
    """A save killed before orbax's final rename leaves only a tmp directory, never picked up."""
    reference, _ = multitask_run
    workdir = tmp_path / "copy"
    shutil.copytree(reference, workdir)
    partial = workdir / "checkpoints" / "8.orbax-checkpoint-tmp-1234"
    (partial / "state").mkdir(parents=True)
    (partial / "state" / "garbage").write_bytes(b"\0" * 10)
    manager = checkpointing.make_manager(str(workdir))
    assert manager.latest_step() == 6
    manager.close()


class _NaNAtStep:
    """The data pipeline with a NaN pixel in the training batch of one step (1-based); it records
    which of the iterators it made were closed."""

    def __init__(self, step):
        from mtcolor.data import pipeline

        self._pipeline, self._step = pipeline, step
        self.num_examples = pipeline.num_examples
        self.make_bad_input_tracker = pipeline.make_bad_input_tracker
        self.closed = {"train": 0, "eval": 0}
        self.made = {"train": 0, "eval": 0}

    def make_eval_iterator(self, *args, **kwargs):
        base = iter(self._pipeline.make_eval_iterator(*args, **kwargs))
        outer = self
        outer.made["eval"] += 1

        class Iterator:
            def __next__(self):
                return next(base)

            def __iter__(self):
                return self

            def close(self):
                outer.closed["eval"] += 1
                base.close()

        return Iterator()

    def make_train_iterator(self, *args, **kwargs):
        base = self._pipeline.make_train_iterator(*args, **kwargs)
        outer = self
        outer.made["train"] += 1

        class Iterator:
            count = 0

            def __next__(self):
                batch = dict(next(base))
                Iterator.count += 1
                if Iterator.count == outer._step:
                    batch["L"] = batch["L"].copy()
                    batch["L"][0, 0, 0, 0] = np.nan
                return batch

            def __iter__(self):
                return self

            # grain's orbax handler stores a non-DatasetIterator's state as bytes.
            def get_state(self):
                return json.dumps(base.get_state()).encode()

            def set_state(self, state):
                base.set_state(json.loads(state.decode()))

            def start_prefetch(self):
                pass

            def close(self):
                outer.closed["train"] += 1
                base.close()

        return Iterator()


def test_nan_loss_stops_with_step_and_term_and_keeps_last_good_checkpoint(tmp_path):
    workdir = tmp_path / "nan"
    data = _NaNAtStep(4)
    with pytest.raises(loop.NonFiniteLossError, match=r"step 4 .*loss_g=nan") as info:
        loop.train_and_evaluate(_config("multitask"), str(workdir), data=data)
    assert "last good checkpoint is step 2" in str(info.value)
    # Even a run stopped by an error closes the iterators it made (grain's hold worker processes
    # and shared memory): the training one and the one validation's (at step 2).
    assert data.made == {"train": 1, "eval": 1}
    assert data.closed == data.made
    assert sorted(int(s) for s in os.listdir(workdir / "checkpoints") if s.isdigit()) == [2]


@pytest.mark.parametrize("experiment", ["colorization", "classification"])
def test_single_task_runs(experiment, tmp_path):
    # Unfrozen from the start: one compile of the train step per experiment (the phase switch is
    # covered by the multi-task run).
    config = _config(experiment, frozen_epochs=0, unfrozen_epochs=1, log_every_steps=3)
    summary = loop.train_and_evaluate(config, str(tmp_path))
    names = COLOR_VAL_NAMES if experiment == "colorization" else CLASS_NAMES | {"loss"}
    assert summary["final"]["val"].keys() == names
    assert summary["best"]["metric"] == ("l1" if experiment == "colorization" else "accuracy")
    assert os.path.isdir(tmp_path / "images") == (experiment == "colorization")
    _, model, variables = checkpointing.load_for_inference(str(tmp_path), "best")
    out = model.apply(variables, np.zeros((1, 32, 32, 1), np.float32), train=False)
    assert list(out) == [experiment]
    assert out[experiment].shape == ((1, 32, 32, 2) if experiment == "colorization" else (1, 5))
    if experiment == "classification":  # no colour to give: refused by name, before any photo
        from mtcolor.colorize import NotAColorizerError, PhotoColorizer

        with pytest.raises(NotAColorizerError, match="'classification' run: it has no colo"):
            PhotoColorizer.from_workdir(tmp_path)


def test_colorizer_trains_on_a_folder_of_photos_without_class_folders(tmp_path):
    # What a colorization user has: photos in one folder, no classes. The run trains, validates
    # on them and its checkpoint colorizes.
    from test_data_files import colorful

    photos = tmp_path / "photos"
    photos.mkdir()
    for i in range(8):
        colorful(i).save(photos / f"photo{i}.jpg")
    config = _config("colorization", frozen_epochs=0, unfrozen_epochs=1)
    config.data.source = "folder"
    config.data.folder.train_root = config.data.folder.val_root = str(photos)
    summary = loop.train_and_evaluate(config, str(tmp_path / "run"))
    assert summary["steps"] == 2  # 8 photos, batch 4
    assert summary["final"]["val"].keys() == COLOR_VAL_NAMES
    _, model, variables = checkpointing.load_for_inference(str(tmp_path / "run"))
    out = model.apply(variables, np.zeros((1, 32, 32, 1), np.float32), train=False)
    assert out["colorization"].shape == (1, 32, 32, 2)


def test_a_resume_with_changed_options_names_them_and_keeps_the_runs_record(
    multitask_run, tmp_path
):
    # Another decoder: the checkpoints cannot restore. The error names the changed option and an
    # array that differs; config.json and the checkpoints stay as they were.
    workdir = tmp_path / "run"
    shutil.copytree(multitask_run[0], workdir)
    saved = (workdir / "config.json").read_bytes()
    config = _config("multitask")
    config.model.decoder = "unet"
    with pytest.raises(validation.ConfigError) as info:
        loop.train_and_evaluate(config, str(workdir))
    problems = info.value.problems
    assert problems[0].startswith(
        f"--workdir={str(workdir)!r}: its checkpoints cannot hold the state of this config"
    )
    assert "arrays differ, e.g. " in problems[0]
    assert problems[1:] == ["--config.model.decoder='unet': the run was trained with 'plain'"]
    assert (workdir / "config.json").read_bytes() == saved
    assert sorted(os.listdir(workdir / "checkpoints")) == sorted(
        os.listdir(multitask_run[0] / "checkpoints")
    )
    # One more epoch: the checkpoints restore, the run goes on, and the config it was trained
    # with until then is kept beside the new one.
    config = _config("multitask", unfrozen_epochs=2)
    summary = loop.train_and_evaluate(config, str(workdir))
    assert summary["steps"] == 9 and summary["steps_this_run"] == 3
    assert (workdir / "config_before_step_6.json").read_bytes() == saved
    assert json.loads((workdir / "config.json").read_text())["train"]["unfrozen_epochs"] == 2


def test_killed_process_resumes_to_identical_parameters(multitask_run, tmp_path):
    """SIGKILL the real entry point right after its first checkpoint is finalized (a save may be in
    flight), re-run: the final parameters are bitwise those of the uninterrupted run."""
    import signal
    import subprocess
    import sys
    import time
    from pathlib import Path

    reference, _ = multitask_run
    workdir = tmp_path / "killed"
    repo = Path(__file__).parents[1]
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "experiments.multitask",
            "--config=experiments/configs/tiny.py",
            f"--workdir={workdir}",
        ],
        cwd=repo,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    checkpoints = workdir / "checkpoints"
    deadline = time.monotonic() + 300
    while not (checkpoints / "2").is_dir():
        assert process.poll() is None, process.stderr.read().decode()[-3000:]
        assert time.monotonic() < deadline, "no checkpoint within 5 minutes"
        time.sleep(0.01)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert process.returncode == -signal.SIGKILL
    finished = sorted(int(p.name) for p in checkpoints.iterdir() if p.name.isdigit())
    assert finished and finished[-1] < 6, f"the run ended before it was killed: {finished}"
    assert not (workdir / "summary.json").exists()

    summary = loop.train_and_evaluate(_config("multitask"), str(workdir))
    assert summary["steps"] == 6 and summary["steps_this_run"] < 6
    a, b = _params(reference), _params(workdir)
    diffs = jax.tree.leaves(jax.tree.map(lambda x, y: np.abs(x - y).max(), a, b))
    assert max(diffs) == 0.0


def test_the_run_goes_on_after_early_stopping_stops_the_adversarial_task(tmp_path, monkeypatch):
    """Colorization (and its discriminator) stop at step 6; steps 7 to 9 train classification
    alone and log without the discriminator's metrics (a study run once failed there with
    KeyError: 'loss_d')."""
    from mtcolor.train import state as state_lib

    update = state_lib.early_stopping_update

    def colorization_worse_at_every_evaluation(state, val, step, patience):
        return update(state, {**val, "l1": float(step), "loss_cls": -float(step)}, step, patience)

    monkeypatch.setattr(state_lib, "early_stopping_update", colorization_worse_at_every_evaluation)
    config = _config(unfrozen_epochs=2, early_stopping_patience=1, log_every_steps=2)
    summary = loop.train_and_evaluate(config, str(tmp_path))
    assert summary["steps"] == 9
    assert summary["early_stopping"]["colorization"]["active"] is False
    assert summary["early_stopping"]["colorization"]["best_step"] == 3
    records = writers.read_scalars(str(tmp_path / "scalars.jsonl"))
    train = {r["step"]: r for r in records if "train/loss_cls" in r}
    assert "train/loss_d" in train[6] and "train/loss_d" not in train[8]
