"""Command-line entry for experiments/{multitask,colorization,classification}.py."""

import logging
import os
import re
import sys

from absl import app, flags
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

    # orbax logs every file it writes, grain its workers, JAX that it found no TPU on a CPU or GPU
    # machine; their warnings and errors still show.
    absl_logging.get_absl_handler().addFilter(_DropInfoFrom("orbax", "grain", "jax"))


def exit_on_problems(problems: list[str], subject: str) -> None:
    """The one way every entry point refuses its input: ``error: <subject> has N problem(s):``,
    then one line each naming the field or argument, on stderr; exit status 2, no traceback."""
    if problems:
        print(f"error: {subject} has {len(problems)} problem(s):", file=sys.stderr)
        for problem in problems:
            # A problem of several lines (a weights file's missing and unexpected keys) stays
            # indented under its first.
            print("  " + str(problem).replace("\n", "\n    "), file=sys.stderr)
        sys.exit(2)


def exit_on_stopped_run(error: Exception) -> None:
    """A run that stopped for a reason its error spells out (no intact checkpoint, a non-finite
    loss, too many bad input files): ``error: <ErrorName>: <message>`` on stderr, exit status 1.
    The message names the step, the files or the checkpoints; a traceback through the loop would
    only push it off the screen."""
    print(f"error: {type(error).__name__}: {error}", file=sys.stderr)
    sys.exit(1)


def stopped_run_errors() -> tuple[type[Exception], ...]:
    """The errors exit_on_stopped_run reports (imported when a run starts, not with absl)."""
    from mtcolor.data import bad_inputs
    from mtcolor.train import checkpointing, loop

    return (
        checkpointing.NoIntactCheckpointError,
        loop.NonFiniteLossError,
        bad_inputs.TooManyBadInputsError,
    )


def pretrained_weights_errors() -> tuple[type[Exception], ...]:
    """What loading config.model.pretrained can raise that the config check cannot see: a file
    (existing, with a weights suffix) that is no weights file, has code in its pickle, or whose
    keys or shapes do not fit ResNet-18 (each listed); "torchvision" weights neither in the torch
    hub cache nor downloadable, or downloaded with the wrong hash."""
    from mtcolor import hub, weights

    return (
        weights.WeightsFileFormatError,
        weights.UnsafeWeightsFileError,
        weights.WeightsMismatchError,
        hub.WeightsNotAvailableError,
        hub.DownloadHashError,
    )


def exit_on_config_problems(config) -> None:
    """Checks the whole config before any work; on problems prints one line each to stderr and
    exits with status 2 (no traceback, nothing written)."""
    import jax

    from mtcolor import sharding
    from mtcolor.train import validation

    # A multi-host run (config or environment) joins its peers first: jax.distributed must
    # precede every other JAX call, and the checks build the multi-task methods.
    sharding.maybe_initialize_distributed(config)
    problems = validation.config_problems(config)
    if not problems:
        problems = validation.config_problems(config, device_count=jax.device_count())
    exit_on_problems(problems, "the config")


def _config_override_problems(config, argv) -> list[str]:
    """``--config.<path>=<value>`` overrides whose path is not a field of ``config``."""
    import difflib

    problems = []
    for arg in argv[1:]:
        if not arg.startswith("--config."):
            continue
        path = arg[len("--config.") :].split("=", 1)[0]
        node, walked = config, []
        for part in path.split("."):
            fields = list(node.keys()) if hasattr(node, "keys") else []
            if part not in fields:
                where = ".".join(["config", *walked])
                close = difflib.get_close_matches(part, fields, n=1)
                hint = f" (did you mean {'.'.join([where, close[0]])!r}?)" if close else ""
                problems.append(f"{arg}: {where} has no field {part!r}{hint}")
                break
            node, walked = node[part], walked + [part]
    return problems


def _flag_error_problems(error: flags.Error) -> list[str]:
    """absl's flag errors (a required flag left out, an unknown flag, a value of the wrong type) as
    problem lines; a required flag reads ``--workdir: required (...)``."""
    required = re.fullmatch(
        r"flag --(\w+)=None: Flag --\w+ must have a value other than None\.", str(error)
    )
    if required:
        name = required.group(1)
        return [f"--{name}: required ({flags.FLAGS[name].help})"]
    return [line for line in str(error).splitlines() if line.strip()]


DEFAULT_CONFIG = "experiments/configs/demo.py"


def _check_overrides_of_the_default_config(argv) -> None:
    """Without --config, config_flags loads DEFAULT_CONFIG as soon as the flag is defined and
    applies the --config.<path> overrides then and there, a mistyped one raising KeyError (a
    traceback before _parse_flags could name it): they are checked against that file first."""
    if any(a == "--config" or a.startswith("--config=") for a in argv[1:]):
        return
    if not any(a.startswith("--config.") for a in argv[1:]) or not os.path.isfile(DEFAULT_CONFIG):
        return
    from mtcolor.train import config as config_lib

    default = config_lib.load_config_file(DEFAULT_CONFIG)
    exit_on_problems(_config_override_problems(default, argv), "the command line")


def _loaded_config():
    """The parsed --config; a file that does not exist ends with one problem line (config_flags
    loads it lazily, on first use, and would raise OSError there). Errors inside a config file's
    own code keep their traceback: they are the user's code."""
    try:
        flags.FLAGS.config.keys()
    except OSError as error:
        filename = config_flags.get_config_filename(flags.FLAGS["config"])
        reason = [line.strip() for line in str(error).splitlines() if line.strip()][-1]
        exit_on_problems(
            [f"--config={filename}: the config file does not load ({reason})"], "the command line"
        )
    return flags.FLAGS.config


def _parse_flags(argv):
    """absl's parse, after checking every --config.<path> override names a field: ml_collections
    would stop at the first unknown one with a KeyError traceback. Flag errors end with one line
    each and exit status 2, like every other problem of the command line (absl's own parser would
    be bypassed by this one and print a traceback)."""
    overrides = [a for a in argv[1:] if a.startswith("--config.")]
    try:
        if overrides:
            # config_flags reads the overrides from sys.argv too: hide them while the file loads.
            full_argv, sys.argv = sys.argv, [a for a in sys.argv if a not in overrides]
            try:
                flags.FLAGS([a for a in argv if a not in overrides])
            finally:
                sys.argv = full_argv
            exit_on_problems(_config_override_problems(_loaded_config(), argv), "the command line")
            flags.FLAGS.unparse_flags()
        rest = flags.FLAGS(argv)
    except flags.Error as error:
        exit_on_problems(_flag_error_problems(error), "the command line")
    _loaded_config()
    return rest


def run(experiment: str, *, tasks_from_config=None) -> None:
    """``python -m experiments.<experiment> --config=... --workdir=...``; the entry point's
    experiment overrides config.experiment. ``tasks_from_config(config)``, if given, returns the
    task tuple to train instead of the experiment's (an entry point of one's own, e.g.
    experiments/examples/extra_head.py), with the same flags, checks and errors."""
    _check_overrides_of_the_default_config(sys.argv)
    config_flags.DEFINE_config_file(
        "config", DEFAULT_CONFIG, "Training config file.", lock_config=False
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
        from mtcolor.data import DataNotFoundError
        from mtcolor.train import validation

        tasks = tasks_from_config(config) if tasks_from_config is not None else None
        try:
            loop.train_and_evaluate(config, flags.FLAGS.workdir, tasks=tasks)
        except validation.ConfigError as error:  # what only the data shows (the class count)
            exit_on_problems(error.problems, "the config")
        except stopped_run_errors() as error:
            exit_on_stopped_run(error)
        except pretrained_weights_errors() as error:
            pretrained = f"--config.model.pretrained={config.model.pretrained!r}"
            exit_on_problems([f"{pretrained}: {error}"], "the config")
        except DataNotFoundError as error:  # what the config check does not open (tfds, files)
            exit_on_problems([str(error)], "the data")

    app.run(main, flags_parser=_parse_flags)
