"""Test-wide settings: CPU only, quiet logs, and absl flags parsed for grain workers."""

import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

from absl import flags  # noqa: E402

# grain's multiprocessing reads absl flags; under pytest nobody calls app.run.
if not flags.FLAGS.is_parsed():
    flags.FLAGS.mark_as_parsed()


import pytest  # noqa: E402


@pytest.fixture(scope="session")
def tiny_multitask_run(tmp_path_factory):
    """One tiny multi-task run (experiments/configs/tiny.py: 32 px, 2 epochs of 3 steps) shared by
    every test that only reads a finished run: training it compiles the real models, the largest
    fixed cost of the suite. Returns (workdir, summary). Tests must not write into it."""
    from experiments.configs import tiny
    from mtcolor.train import loop

    workdir = tmp_path_factory.mktemp("tiny_multitask_run")
    summary = loop.train_and_evaluate(tiny.get_config(), str(workdir))
    return workdir, summary
