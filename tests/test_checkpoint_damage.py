"""A run whose newest checkpoint was damaged after it was written resumes from the newest intact
one; the damaged one is kept aside, nothing is deleted."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from entry_points import run_module
from PIL import Image

from experiments.configs import tiny
from mtcolor.train import checkpointing, loop, run_record


def _config(max_steps_per_run=None):
    config = tiny.get_config()  # 32 px, 3 steps per epoch, 2 epochs; checkpoints at 2 and 4
    config.train.max_steps_per_run = max_steps_per_run
    return config


def _damage(step_dir: Path) -> list[Path]:
    """Truncates every array data file of a checkpoint's state to half its size (what an
    interrupted copy or a full disk leaves)."""
    files = [f for f in (step_dir / "state").rglob("*") if f.is_file() and f.parent.name == "d"]
    assert files, step_dir
    for f in files:
        data = f.read_bytes()
        f.write_bytes(data[: len(data) // 2])
    return files


@pytest.fixture(scope="module")
def stopped_run(tmp_path_factory):
    """A run stopped after 4 of its 6 steps (each test damages its own copy)."""
    workdir = tmp_path_factory.mktemp("stopped") / "run"
    assert loop.train_and_evaluate(_config(max_steps_per_run=4), str(workdir))["steps"] == 4
    return workdir


def _copy(stopped_run, tmp_path) -> Path:
    workdir = tmp_path / "run"
    shutil.copytree(stopped_run, workdir)
    return workdir


def test_damaged_newest_checkpoint_falls_back_to_the_previous_one(stopped_run, tmp_path, caplog):
    workdir = _copy(stopped_run, tmp_path)
    checkpoints = workdir / "checkpoints"
    assert sorted(int(p.name) for p in checkpoints.iterdir() if p.name.isdigit()) == [2, 4]
    _damage(checkpoints / "4")

    with caplog.at_level("WARNING"):
        summary = loop.train_and_evaluate(_config(), str(workdir))
    assert summary["steps"] == 6
    assert summary["steps_this_run"] == 4  # resumed from step 2, not 4 and not 0
    warnings = " ".join(r.getMessage() for r in caplog.records if r.levelname == "WARNING")
    assert f"checkpoint {checkpoints / '4'} does not restore" in warnings
    damaged = Path(checkpointing.damaged_dir(str(workdir)))
    assert (damaged / "4" / "state").is_dir()  # kept aside for inspection
    assert 6 in {int(p.name) for p in checkpoints.iterdir() if p.name.isdigit()}


def test_no_intact_checkpoint_names_every_one_and_changes_nothing(stopped_run, tmp_path):
    workdir = _copy(stopped_run, tmp_path)
    checkpoints = workdir / "checkpoints"
    for step in ("2", "4"):
        _damage(checkpoints / step)
    with pytest.raises(checkpointing.NoIntactCheckpointError) as error:
        loop.train_and_evaluate(_config(), str(workdir))
    message = str(error.value)
    assert "step 4:" in message and "step 2:" in message
    assert sorted(p.name for p in checkpoints.iterdir() if p.name.isdigit()) == ["2", "4"]
    assert not Path(checkpointing.damaged_dir(str(workdir))).exists()


def test_damaged_checkpoints_stop_the_commands_with_one_error_each(stopped_run, tmp_path):
    """As a user meets them on the command line: colorize refuses a damaged checkpoint in one
    line naming it, the truncated file and the run's other checkpoints (exit 2); training with
    no intact checkpoint left ends with one error naming each (exit 1). Neither prints a
    traceback, nor what orbax's abandoned reads print (before: 1,600 'Event loop is closed'
    tracebacks and 340 kB of stderr for this tiny model)."""
    workdir = _copy(stopped_run, tmp_path)
    checkpoints = workdir / "checkpoints"
    _damage(checkpoints / "4")
    photo = tmp_path / "photo.png"
    Image.fromarray(np.full((40, 48, 3), (200, 40, 90), np.uint8)).save(photo)

    colorize = run_module(
        "mtcolor.colorize", str(photo), f"--checkpoint={workdir}", f"--out={tmp_path / 'out'}"
    )
    assert colorize.returncode == 2, colorize.stderr[-3000:]
    problems = [line for line in colorize.stderr.splitlines() if line.startswith("  --")]
    assert len(problems) == 1
    assert f"checkpoint {checkpoints / '4'} does not restore" in problems[0]
    assert "is not valid for value of size" in problems[0]  # tensorstore's innermost reason
    assert problems[0].endswith(f"the other checkpoints in {checkpoints}: [2]")

    _damage(checkpoints / "2")
    train = run_module(
        "experiments.multitask", "--config=experiments/configs/tiny.py", f"--workdir={workdir}"
    )
    assert train.returncode == 1, train.stderr[-3000:]
    assert f"error: NoIntactCheckpointError: no checkpoint in {checkpoints} restores:" in (
        train.stderr
    )
    assert "  step 4: ValueError: OUT_OF_RANGE" in train.stderr
    assert "  step 2: ValueError: OUT_OF_RANGE" in train.stderr
    for output in (colorize.stderr, train.stderr):
        assert "Traceback" not in output and "Event loop is closed" not in output
        assert "never retrieved" not in output
        assert len(output) < 10_000
    assert sorted(p.name for p in checkpoints.iterdir() if p.name.isdigit()) == ["2", "4"]


def test_damaged_run_records_are_named_and_rewritten(stopped_run, tmp_path, caplog):
    """best.json and config.json cut off (a copy interrupted, a full disk): the resume names each
    in a warning, trains on and writes both again (before: a JSONDecodeError traceback)."""
    workdir = _copy(stopped_run, tmp_path)
    for name in ("best.json", "config.json"):
        text = (workdir / name).read_text()
        (workdir / name).write_text(text[: len(text) // 2])
    with caplog.at_level("WARNING"):
        summary = loop.train_and_evaluate(_config(), str(workdir))
    assert summary["steps"] == 6 and summary["steps_this_run"] == 2
    warnings = " ".join(r.getMessage() for r in caplog.records if r.levelname == "WARNING")
    assert f"{workdir / 'best.json'} does not parse" in warnings
    assert f"{workdir / 'config.json'} does not parse" in warnings
    assert json.loads((workdir / "config.json").read_text())["experiment"] == "multitask"
    assert json.loads((workdir / "best.json").read_text())["metric"] == "accuracy"


def test_run_records_are_replaced_whole_or_not_at_all(tmp_path):
    """A write that fails halfway (here: a value JSON cannot hold, after the first key) leaves the
    previous file as it was, and no partial file."""
    path = tmp_path / "best.json"
    run_record.write_json(str(path), {"step": 2})
    with pytest.raises(TypeError):
        run_record.write_json(str(path), {"step": 4, "val": object()})
    assert json.loads(path.read_text()) == {"step": 2}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best.json"]
