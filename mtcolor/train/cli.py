"""Command-line entry for experiments/{multitask,colorization,classification}.py."""

import logging
import sys

from absl import app
from absl import flags
from ml_collections import config_flags


class _DropInfoFrom(logging.Filter):
    """Drops INFO records logged from files under the given package directories (orbax logs
    every file it writes)."""

    def __init__(self, *packages):
        super().__init__()
        self._parts = tuple(f"/{p}/" for p in packages)

    def filter(self, record):
        return record.levelno > logging.INFO or not any(p in record.pathname for p in self._parts)


def quiet_library_logs():
    from absl import logging as absl_logging

    absl_logging.get_absl_handler().addFilter(_DropInfoFrom("orbax", "grain"))


def exit_on_config_problems(config) -> None:
    """Checks the whole config before any work; on problems prints one line each to stderr and
    exits with status 2 (no traceback, nothing written)."""
    from mtcolor.train import validation

    import jax

    from mtcolor.train import sharding

    # A multi-host run (config or environment) joins its peers first: jax.distributed must
    # precede every other JAX call, and the checks build the multi-task methods.
    sharding.maybe_initialize_distributed(config)
    problems = validation.config_problems(config)
    if not problems:
        problems = validation.config_problems(config, device_count=jax.device_count())
    if problems:
        print(f"error: the config has {len(problems)} problem(s):", file=sys.stderr)
        for line in problems:
            print(f"  {line}", file=sys.stderr)
        sys.exit(2)


def run(experiment: str) -> None:
    """``python -m experiments.<experiment> --config=... --workdir=...``; the entry point's
    experiment overrides config.experiment."""
    config_flags.DEFINE_config_file(
        "config", "experiments/configs/demo.py", "Training config file.", lock_config=False
    )
    flags.DEFINE_string("workdir", None, "Output directory (re-use it to resume).")
    flags.mark_flags_as_required(["workdir"])

    def main(argv):
        if len(argv) > 1:
            raise app.UsageError(f"unexpected arguments: {argv[1:]}")
        quiet_library_logs()
        from mtcolor.train import loop

        config = flags.FLAGS.config
        config.experiment = experiment
        exit_on_config_problems(config)
        loop.train_and_evaluate(config, flags.FLAGS.workdir)

    app.run(main)
