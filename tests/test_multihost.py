"""Two CPU processes joined by jax.distributed (explicit coordinator, count and id; gloo for the
cross-process collectives) train the tiny config through the real entry point; the run they write
loads, evaluates and colorizes in one process."""

import os
import socket
import subprocess
import sys

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def two_process_run(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("two_process") / "run"
    port = _free_port()
    procs = []
    for process_id in (0, 1):
        env = dict(os.environ, JAX_PLATFORMS="cpu", JAX_COORDINATOR_ADDRESS=f"localhost:{port}",
                   JAX_NUM_PROCESSES="2", JAX_PROCESS_ID=str(process_id))
        procs.append(subprocess.Popen(
            [sys.executable, "-m", "experiments.multitask",
             "--config=experiments/configs/tiny.py", f"--workdir={workdir}"],
            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    outputs = [p.communicate(timeout=900) for p in procs]
    for p, (out, err) in zip(procs, outputs):
        assert p.returncode == 0, err[-3000:]
    return workdir, outputs


def test_two_processes_train_and_only_process_0_reports(two_process_run):
    workdir, ((out0, err0), (out1, err1)) = two_process_run
    assert "Summary:" in out0 and "Summary:" not in out1
    assert "val/l1" not in out1 + err1  # process 1 writes no metric lines
    assert (workdir / "summary.json").is_file()
    # Each process saved its own data-iterator position with every checkpoint.
    data_iter = workdir / "checkpoints" / "6" / "data_iter"
    assert sorted(p.name for p in data_iter.glob("process_*")) == [
        "process_0-of-2.json", "process_1-of-2.json"]


def test_the_run_loads_evaluates_and_colorizes_in_one_process(two_process_run):
    """orbax would restore a multi-host checkpoint onto its saved topology ("Topology
    mismatch"); load_for_inference builds a one-device target from the checkpoint's metadata."""
    from mtcolor.colorize import PhotoColorizer
    from mtcolor.train import checkpointing

    workdir, _ = two_process_run
    config, model, variables = checkpointing.load_for_inference(str(workdir))
    assert variables["params"]["head"]["fc2"]["kernel"].shape == (1000, 5)
    _, _, best = checkpointing.load_for_inference(str(workdir), step="best")
    assert best["params"]["head"]["fc2"]["kernel"].shape == (1000, 5)
    colorizer = PhotoColorizer.from_workdir(workdir, batch_size=1)
    rgb = np.random.default_rng(0).uniform(0, 1, (40, 50, 3)).astype(np.float32)
    assert colorizer.colorize_arrays([rgb])[0].shape == (40, 50, 3)


def test_resuming_with_another_process_count_says_so(two_process_run, tmp_path):
    import shutil

    from experiments.configs import tiny
    from mtcolor.train import checkpointing, loop

    workdir, _ = two_process_run
    copy = tmp_path / "run"
    shutil.copytree(workdir, copy)
    config = tiny.get_config()
    config.train.unfrozen_epochs += 1
    with pytest.raises(checkpointing.ProcessCountChangedError, match="written by 2 process"):
        loop.train_and_evaluate(config, str(copy))
    assert not (copy / "checkpoints_damaged").exists()  # not mistaken for damage
