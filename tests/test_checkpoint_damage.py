"""A run whose newest checkpoint was damaged after it was written resumes from the newest intact
one; the damaged one is kept aside, nothing is deleted."""

import shutil
from pathlib import Path

import pytest

from experiments.configs import tiny
from mtcolor.train import checkpointing, loop


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
