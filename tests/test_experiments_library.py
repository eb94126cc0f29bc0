"""The library example of docs/library-example.md runs as its docs run it (its command line) and
trains its own head and weight."""

import json

import numpy as np
import pytest
from entry_points import run_module

from experiments.configs import tiny
from experiments.examples import extra_head
from mtcolor.train import checkpointing


def test_extra_head_example_trains_through_the_shared_loop(tmp_path):
    overrides = [
        "--config.train.frozen_epochs=0",
        "--config.train.unfrozen_epochs=1",
        "--config.train.log_every_steps=3",
    ]
    proc = run_module(
        "experiments.examples.extra_head",
        "--config=experiments/configs/tiny.py",
        f"--workdir={tmp_path}",
        *overrides,
    )
    # Exit status 0 (before: 1, absl's app.run passed the returned summary to sys.exit).
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Result (validation, step 3)" in proc.stdout
    # Nor TensorFlow (clu's event writer) with its oneDNN notice, nor JAX's INFO that this
    # machine has no TPU: a run's first lines are its own.
    assert "oneDNN custom operations" not in proc.stderr
    assert "Unable to initialize backend 'tpu'" not in proc.stderr
    config = tiny.get_config()
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["steps"] == 3
    assert {"accuracy", "l1", "loss_cls"} <= summary["final"]["val"].keys()
    # The task's weight, as the trainer logged it (the config's cls_weight is the paper's).
    rows = [json.loads(line) for line in open(tmp_path / "scalars.jsonl")]
    weights = {r["train/weight_classification"] for r in rows if "train/weight_classification" in r}
    assert weights == {3.0}
    # Without its tasks the run's config.json builds the paper's head: refused, naming the arrays
    # (before: flax's shape error inside the first prediction).
    with pytest.raises(checkpointing.ModelMismatchError) as error:
        checkpointing.load_for_inference(str(tmp_path))
    assert (
        "params/head/fc1/kernel: the checkpoint has (512, 256), the config's model (512, 1000)"
        in (str(error.value))
    )
    _, model, variables = checkpointing.load_for_inference(
        str(tmp_path), tasks=extra_head.pooled_head_tasks(config)
    )
    # The pooled head: 512 pooled features -> 256 hidden units (the paper's head: 512*h*w -> 1000).
    kernels = [np.shape(v["kernel"]) for v in variables["params"]["head"].values()]
    assert (512, 256) in kernels
    outputs = model.apply(variables, np.zeros((1, 32, 32, 1), np.float32), train=False)
    assert outputs["colorization"].shape == (1, 32, 32, 2)
    assert outputs["classification"].shape == (1, 5)
