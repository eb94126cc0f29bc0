r"""Writes the paper's Table I, Figs. 3-7 and Fig. 2 from a set of training runs.

  python -m experiments.report --workdirs runs/classifier runs/colorizer runs/multitask \
      --out runs/report

The order of --workdirs does not matter (each run's config says what it is). Missing or unfinished
runs are reported, not fatal. Fig. 2 colorizes validation images read as the runs' config.json
says; runs trained on another machine: --override=data.folder.val_root=/data/val (repeatable,
data.KEY=VALUE, as experiments.evaluate takes it).
"""

import os

from absl import app, flags, logging

from experiments.data_override_flag import DATA_OVERRIDES
from mtcolor.data.config import parse_data_overrides
from mtcolor.eval.report import make_report
from mtcolor.train.checkpointing import load_config
from mtcolor.train.cli import exit_on_problems
from mtcolor.train.validation import run_directory_problems

_WORKDIRS = flags.DEFINE_list(
    "workdirs", None, "Run directories (classifier, colorizer, multi-task)."
)
_OUT = flags.DEFINE_string("out", None, "Directory for table1.md/.csv and the figure PNGs.")
_FIGURE_TWO = flags.DEFINE_bool(
    "fig2", True, "Draw Fig. 2 (loads the checkpoints and the val split)."
)
_NUM_IMAGES = flags.DEFINE_integer("num_images", 8, "Validation images in Fig. 2.")
flags.mark_flags_as_required(["workdirs", "out"])


def argument_problems(workdirs, out, num_images, figure_two=True) -> list[str]:
    """The command line's problems, one line each, before anything is loaded (the checkpoints
    are read for Fig. 2 only)."""
    problems = [
        line
        for workdir in workdirs
        for line in run_directory_problems("workdirs", workdir, checkpoints=figure_two)
    ]
    if os.path.exists(out) and not os.path.isdir(out):
        problems.append(f"--out={out!r}: exists and is not a directory")
    if num_images < 1:
        problems.append(f"--num_images={num_images}: must be at least 1")
    return problems


def main(argv):
    logging.set_verbosity(logging.WARNING)  # orbax logs every restore at INFO
    workdirs = list(_WORKDIRS.value) + list(argv[1:])  # also accept space-separated workdirs
    exit_on_problems(
        argument_problems(workdirs, _OUT.value, _NUM_IMAGES.value, _FIGURE_TWO.value),
        "the command line",
    )
    data_overrides = {}
    if DATA_OVERRIDES.value:  # (the report reads the runs' configs for Fig. 2 only)
        # Typed and checked against the first run's data config: every run's has the same fields.
        data_overrides, problems = parse_data_overrides(
            load_config(workdirs[0]).data, DATA_OVERRIDES.value
        )
        exit_on_problems(problems, "the command line")
    report = make_report(
        workdirs,
        _OUT.value,
        figure_two=_FIGURE_TWO.value,
        num_images=_NUM_IMAGES.value,
        data_overrides=data_overrides,
    )
    for problem in report.problems:
        logging.warning("%s", problem)
        print(f"WARNING: {problem}")
    for path in report.files:
        print(f"wrote {path}")
    print(open(f"{_OUT.value}/table1.md").read())


if __name__ == "__main__":
    app.run(main)
