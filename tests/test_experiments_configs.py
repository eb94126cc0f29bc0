"""Configs: the paper's hyperparameters (section III) and the override wiring."""

import subprocess
import sys

import pytest

from experiments.configs import demo, paper, tiny
from mtcolor.train import state as state_lib


def test_paper_config_has_the_papers_hyperparameters():
    from mtcolor.data import PAPER_CLASSES

    c = paper.get_config()
    assert (c.image_size, c.batch_size) == (256, 16)
    assert (c.data.image_size, c.data.batch_size) == (256, 16)
    assert c.optim.learning_rate == 2e-4 and (c.optim.b1, c.optim.b2) == (0.5, 0.999)
    assert (c.train.frozen_epochs, c.train.unfrozen_epochs, c.train.evals_per_epoch) == (30, 15, 2)
    assert c.loss.l1_weight == 100.0 and c.model.num_classes == 5
    assert c.model.pretrained == "torchvision" and c.data.source == "folder"
    assert list(c.data.classes) == [pc.wnid for pc in PAPER_CLASSES]
    assert paper.get_config("tfds").data.source == "tfds"
    for experiment, weight in (("multitask", 10.0), ("classification", 1.0)):
        c.experiment = experiment
        objective = state_lib.objective_from_config(c)
        assert dict(zip(objective.task_names, objective.base_weights))["classification"] == weight


def test_batch_size_override_reaches_the_data_config():
    c = demo.get_config()
    c.batch_size = 32
    assert c.data.batch_size == 32
    assert tiny.get_config().model.pretrained is None


@pytest.mark.parametrize("experiment", ["multitask", "colorization", "classification"])
def test_entry_points_parse_config_flags(experiment):
    out = subprocess.run(
        [sys.executable, "-m", f"experiments.{experiment}", "--helpfull"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert "--workdir" in out.stdout + out.stderr and "--config" in out.stdout + out.stderr


@pytest.mark.parametrize("weighting", ["fixed", "uncertainty", "dwa", "gradnorm", "famo"])
def test_multitask_methods_first_built_inside_a_trace_work_in_later_steps(weighting):
    """A resumed run first builds its state's structure under jax.eval_shape; the methods cached
    then must hold no tracer of that trace (a resumed gradnorm run once failed its first step
    with UnexpectedTracerError)."""
    import jax
    import jax.numpy as jnp

    config = tiny.get_config()
    config.loss.weighting = weighting
    config.loss.gradient = "pcgrad"
    config.seed = 1234 + len(weighting)  # an objective no other test has cached yet
    objective = state_lib.objective_from_config(config, steps_per_epoch=3)
    state_lib.mtl_methods.cache_clear()
    jax.eval_shape(lambda: state_lib.initial_mtl_state(objective))  # first built in a trace
    methods, _ = state_lib.mtl_methods(objective)
    mtl_state = methods.init()
    terms = jax.jit(methods.task_terms)(mtl_state, jnp.ones((2,), jnp.float32))
    assert terms.shape == (2,) and bool(jnp.all(jnp.isfinite(terms)))
