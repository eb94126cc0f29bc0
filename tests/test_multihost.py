"""Two CPU processes joined by jax.distributed (explicit coordinator, count and id; gloo for the
cross-process collectives) train the tiny config through the real entry point. They end where one
process ends with the same global batch, each reads its own half of every batch, only process 0
writes, and their checkpoint resumes, evaluates, colorizes and reports in one process (and a
one-process checkpoint resumes on two).

The runs compute in float64 (JAX_ENABLE_X64, model.dtype float64; parameters stay float32), for
the reason tests/test_train_sharding.py gives: in float32, splitting a reduction over processes
changes its rounding (~1e-6), which flips PatchGAN LeakyReLU kinks and, through Adam's first
steps (update = lr * sign of a near-zero gradient), moves some backbone BatchNorm biases by 2 lr;
after 6 steps two float32 runs differ by that much whatever the data order. In float64 those
rounding differences are ~1e-14 and the runs agree to float32 resolution.
"""

import json
import os
import shutil
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


def _run_processes(workdir, count, *flags):
    """The tiny config in float64 through the real entry point, as ``count`` processes."""
    port = _free_port()
    procs = []
    for process_id in range(count):
        env = dict(os.environ, JAX_PLATFORMS="cpu", JAX_ENABLE_X64="1")
        # One CPU device per process (the suite's other XLA flags stay).
        env["XLA_FLAGS"] = " ".join(
            flag
            for flag in env.get("XLA_FLAGS", "").split()
            if not flag.startswith("--xla_force_host_platform_device_count")
        )
        if count > 1:
            env.update(
                JAX_COORDINATOR_ADDRESS=f"localhost:{port}",
                JAX_NUM_PROCESSES=str(count),
                JAX_PROCESS_ID=str(process_id),
            )
        procs.append(
            subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "experiments.multitask",
                    "--config=experiments/configs/tiny.py",
                    "--config.model.dtype=float64",
                    f"--workdir={workdir}",
                    *flags,
                ],
                cwd=ROOT,
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
        )
    outputs = [p.communicate(timeout=900) for p in procs]
    for p, (_out, err) in zip(procs, outputs):
        assert p.returncode == 0, err[-3000:]
    return outputs


@pytest.fixture(scope="module")
def two_process_run(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("two_process") / "run"
    return workdir, _run_processes(workdir, 2)


@pytest.fixture(scope="module")
def one_process_run(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("one_process") / "run"
    return workdir, _run_processes(workdir, 1)


def _model_variables(workdir):
    from mtcolor.train import checkpointing

    return checkpointing.load_for_inference(str(workdir))[2]


def test_two_processes_end_where_one_process_ends(two_process_run, one_process_run):
    """Same config, same global batch of 4: one process and two processes of 2 rows each give the
    same float32 parameters, BatchNorm statistics and metrics after 6 steps over both phases."""
    import jax

    two, _ = two_process_run
    one, [(out_one, _)] = one_process_run
    a, b = _model_variables(one), _model_variables(two)
    leaves_a = jax.tree_util.tree_leaves_with_path(a)
    leaves_b = jax.tree.leaves(b)
    assert len(leaves_a) == len(leaves_b)
    for (path, x), y in zip(leaves_a, leaves_b):
        # Relative to the leaf's largest entry. Measured 1.3e-5 at most (backbone BatchNorm biases
        # after three Adam steps, whose update divides by the gradient's own size); with the data
        # in another row order (strided shards) or in float32 some differ by 80%.
        scale = max(float(np.abs(x).max()), 1e-12)
        assert np.abs(y - x).max() <= 1e-4 * scale, jax.tree_util.keystr(path)
    val_one = json.loads((one / "summary.json").read_text())["final"]["val"]
    val_two = json.loads((two / "summary.json").read_text())["final"]["val"]
    assert val_two.keys() == val_one.keys()
    for name, value in val_one.items():
        assert val_two[name] == pytest.approx(value, rel=1e-5, abs=1e-7), name
    # The run's last line puts the result beside its baselines (accuracy vs chance, ...).
    headline = [line for line in out_one.splitlines() if line.startswith("Result (validation")]
    assert headline and "vs chance 20.0%" in headline[0] and "predicting ab = 0" in headline[0]


def test_only_process_0_writes(two_process_run):
    workdir, ((out0, _), (out1, err1)) = two_process_run
    assert "Summary:" in out0 and "Summary:" not in out1
    assert "val/l1" not in out1 + err1  # process 1 writes no metric lines
    assert (workdir / "summary.json").is_file()
    # Every record written once (two writers would write each (step, names) record twice), one
    # event file.
    records = [json.loads(line) for line in (workdir / "scalars.jsonl").read_text().splitlines()]
    kinds = [(r["step"], tuple(sorted(r))) for r in records]
    assert len(kinds) == len(set(kinds))
    assert len(list((workdir / "tensorboard").rglob("events.out.tfevents*"))) == 1
    assert sorted(p.name for p in (workdir / "images").iterdir()) == ["step_3.png", "step_6.png"]
    # Each process saved its own data position: 6 batches of 2 of its rows.
    data_iter = workdir / "checkpoints" / "6" / "data_iter"
    for p in (0, 1):
        position = json.loads((data_iter / f"process_{p}-of-2.json").read_text())
        assert position["taken"] == [12] and position["process_count"] == 2


def test_the_run_loads_evaluates_colorizes_and_reports_in_one_process(two_process_run, tmp_path):
    """orbax would restore a multi-host checkpoint onto its saved topology ("Topology
    mismatch"); load_for_inference builds a one-device target from the checkpoint's metadata."""
    from mtcolor.colorize import PhotoColorizer
    from mtcolor.eval import evaluate, report
    from mtcolor.train import checkpointing

    workdir, _ = two_process_run
    _, _, variables = checkpointing.load_for_inference(str(workdir))
    assert variables["params"]["head"]["fc2"]["kernel"].shape == (1000, 5)
    _, _, best = checkpointing.load_for_inference(str(workdir), step="best")
    assert best["params"]["head"]["fc2"]["kernel"].shape == (1000, 5)
    colorizer = PhotoColorizer.from_workdir(workdir, batch_size=1)
    rgb = np.random.default_rng(0).uniform(0, 1, (40, 50, 3)).astype(np.float32)
    assert colorizer.colorize_arrays([rgb])[0].shape == (40, 50, 3)
    copy = tmp_path / "run"
    shutil.copytree(workdir, copy)  # evaluate writes eval_val.json into the run
    result = evaluate.evaluate_workdir(copy, "val", frechet_features=False)
    val = json.loads((workdir / "summary.json").read_text())["final"]["val"]
    assert result["num_examples"] == 6
    assert result["model"]["accuracy"] == pytest.approx(val["accuracy"])
    assert result["model"]["l1_x100"] == pytest.approx(val["loss_l1"], rel=1e-3)
    report.make_report([copy], tmp_path / "report", num_images=4)
    assert (tmp_path / "report" / "table1.csv").exists()


@pytest.mark.parametrize("saved_by, resumed_on", [(2, 1), (1, 2)])
def test_a_checkpoint_resumes_on_another_process_count(saved_by, resumed_on, request, tmp_path):
    workdir, _ = request.getfixturevalue({1: "one_process_run", 2: "two_process_run"}[saved_by])
    copy = tmp_path / "run"
    shutil.copytree(workdir, copy)
    _run_processes(copy, resumed_on, "--config.train.unfrozen_epochs=2")
    summary = json.loads((copy / "summary.json").read_text())
    assert summary["steps"] == 9 and summary["steps_this_run"] == 3 and summary["finished"]
    assert not (copy / "checkpoints_damaged").exists()  # not mistaken for damage
    # The last process's position: its rows of the 9 global batches of 4.
    name = f"process_{resumed_on - 1}-of-{resumed_on}.json"
    position = json.loads((copy / "checkpoints" / "9" / "data_iter" / name).read_text())
    assert position["taken"] == [9 * 4 // resumed_on] and position["batches_emitted"] == 9
    assert position["process_count"] == resumed_on
