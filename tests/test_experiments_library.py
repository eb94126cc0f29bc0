"""The library example of docs/library-example.md runs and trains its own head and weight."""

import json

import numpy as np

from experiments.configs import tiny
from experiments.examples import extra_head
from mtcolor.train import checkpointing


def test_extra_head_example_trains_through_the_shared_loop(tmp_path):
    config = tiny.get_config()
    config.train.frozen_epochs = 0
    config.train.unfrozen_epochs = 1
    config.train.log_every_steps = 3
    summary = extra_head.train(config, str(tmp_path))
    assert summary["steps"] == 3
    assert {"accuracy", "l1", "loss_cls"} <= summary["final"]["val"].keys()
    assert json.load(open(tmp_path / "config.json"))["loss"]["cls_weight"] == 3.0
    _, model, variables = checkpointing.load_for_inference(
        str(tmp_path), model=extra_head.PooledHeadMultiTask()
    )
    # The pooled head: 512 pooled features -> 256 hidden units (the paper's head: 512*h*w -> 1000).
    kernels = [np.shape(v["kernel"]) for v in variables["params"]["head"].values()]
    assert (512, 256) in kernels
    ab, logits = model.apply(variables, np.zeros((1, 32, 32, 1), np.float32), train=False)
    assert ab.shape == (1, 32, 32, 2) and logits.shape == (1, 5)
