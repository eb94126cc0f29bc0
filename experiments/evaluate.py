r"""Evaluates a trained run on a split and writes <workdir>/eval_<split>.json and .md.

  python -m experiments.evaluate --workdir runs/multitask [--split val] [--checkpoint best]
      [--fid_weights ~/.cache/torch/hub/checkpoints/pt_inception-2015-12-05-6726825d.pth | download]
      [--override=data.folder.val_root=/data/val ...]

It reads the split from the run's own data config (config.json); --override=data.KEY=VALUE
changes a field of it for this evaluation, e.g. where the data is on this machine.

--fid_weights adds "fid" (Inception-v3 pool3, pytorch-fid's weights, read without torch) next to
"frechet_resnet18_distance"; "download" finds the file in torch's hub cache or downloads it there.
"""

import json
import os

from absl import app, flags, logging

from experiments.data_override_flag import DATA_OVERRIDES
from mtcolor.data import DataNotFoundError
from mtcolor.data.config import parse_data_overrides
from mtcolor.eval.evaluate import evaluate_workdir, results_markdown
from mtcolor.train.checkpointing import ModelMismatchError, UnreadableCheckpointError, load_config
from mtcolor.train.cli import exit_on_problems
from mtcolor.train.validation import data_problems

_WORKDIR = flags.DEFINE_string("workdir", None, "The run directory.")
_SPLIT = flags.DEFINE_string("split", "val", "Data split to evaluate.")
_CHECKPOINT = flags.DEFINE_string("checkpoint", None, "None (latest), 'best' or a step number.")
_FID_WEIGHTS = flags.DEFINE_string(
    "fid_weights",
    None,
    "pytorch-fid's pt_inception-2015-12-05-6726825d.pth (a path, or 'download' "
    "to use torch's hub cache / download it there): also report FID, next to the ResNet-18 Frechet "
    "distance.",
)
_FRECHET = flags.DEFINE_bool("frechet", True, "Compute a Frechet distance (needs feature weights).")
flags.mark_flag_as_required("workdir")


def argument_problems(workdir, split, checkpoint, fid_weights) -> list[str]:
    """The command line's problems, one line each, before anything is loaded."""
    from mtcolor.data.pipeline import SPLITS
    from mtcolor.train.validation import run_directory_problems

    problems = run_directory_problems("workdir", workdir, step=checkpoint)
    if split not in SPLITS:
        problems.append(f"--split={split!r}: must be one of {list(SPLITS)}")
    if fid_weights not in (None, "download") and not os.path.isfile(
        os.path.expanduser(fid_weights)
    ):
        problems.append(f"--fid_weights={fid_weights!r}: no such file (a path, or 'download')")
    return problems


_RUNS_DATA = "the data of the run's config.json (--override=data.KEY=VALUE sets a field here)"


def main(argv):
    logging.set_verbosity(logging.WARNING)  # orbax logs every restore at INFO
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    exit_on_problems(
        argument_problems(_WORKDIR.value, _SPLIT.value, _CHECKPOINT.value, _FID_WEIGHTS.value),
        "the command line",
    )
    config = load_config(_WORKDIR.value)
    data_overrides, problems = parse_data_overrides(config.data, DATA_OVERRIDES.value)
    exit_on_problems(problems, "the command line")
    # The run's data config as this evaluation reads it, checked before anything is loaded: a run
    # trained on another machine names folders that are not here.
    config.data.update_from_flattened_dict(data_overrides)
    exit_on_problems(data_problems(config, flag_prefix="--override="), _RUNS_DATA)
    step = _CHECKPOINT.value
    if step not in (None, "best"):
        step = int(step)
    try:
        result = evaluate_workdir(
            _WORKDIR.value,
            _SPLIT.value,
            step=step,
            fid_weights=_FID_WEIGHTS.value,
            frechet_features=_FRECHET.value,
            data_overrides=data_overrides,
        )
    except (UnreadableCheckpointError, ModelMismatchError) as error:
        exit_on_problems([f"--workdir={_WORKDIR.value!r}: {error}"], "the command line")
    except DataNotFoundError as error:  # what the check above does not open (tfds, files)
        exit_on_problems([str(error)], _RUNS_DATA)
    print(results_markdown(result))
    # The metrics as JSON without the per-class tables, which the markdown above summarises (a
    # 1000-class confusion matrix is a million numbers); the file has everything.
    per_class = ("per_class_accuracy", "confusion_matrix")
    rows = {
        row: {k: v for k, v in result[row].items() if k not in per_class}
        for row in ("model", "grayscale_baseline")
        if row in result
    }
    print(json.dumps(rows, indent=1))
    print(f"written: {os.path.join(_WORKDIR.value, f'eval_{_SPLIT.value}')}.{{json,md}}")


if __name__ == "__main__":
    app.run(main)
