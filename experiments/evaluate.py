r"""Evaluates a trained run on a split and writes <workdir>/eval_<split>.json and .md.

  python -m experiments.evaluate --workdir runs/multitask [--split val] [--checkpoint best]
      [--fid_weights ~/.cache/torch/hub/checkpoints/pt_inception-2015-12-05-6726825d.pth | download]

--fid_weights adds "fid" (Inception-v3 pool3, pytorch-fid's weights, read without torch) next to
"frechet_resnet18_distance"; "download" finds the file in torch's hub cache or downloads it there.
"""

import json

from absl import app, flags, logging

from mtcolor.eval.evaluate import evaluate_workdir, results_markdown

_WORKDIR = flags.DEFINE_string("workdir", None, "The run directory.")
_SPLIT = flags.DEFINE_string("split", "val", "Data split to evaluate.")
_CHECKPOINT = flags.DEFINE_string("checkpoint", None, "None (latest), 'best' or a step number.")
_FID_WEIGHTS = flags.DEFINE_string(
    "fid_weights", None, "pytorch-fid's pt_inception-2015-12-05-6726825d.pth (a path, or 'download' "
    "to use torch's hub cache / download it there): also report FID, next to the ResNet-18 Frechet "
    "distance.")
_FRECHET = flags.DEFINE_bool("frechet", True, "Compute a Frechet distance (needs feature weights).")
flags.mark_flag_as_required("workdir")


def main(argv):
    logging.set_verbosity(logging.WARNING)  # orbax logs every restore at INFO
    del argv
    step = _CHECKPOINT.value
    if step not in (None, "best"):
        step = int(step)
    result = evaluate_workdir(_WORKDIR.value, _SPLIT.value, step=step, fid_weights=_FID_WEIGHTS.value,
                              frechet_features=_FRECHET.value)
    print(results_markdown(result))
    print(json.dumps({k: v for k, v in result.items() if k in ("model", "grayscale_baseline")}, indent=1))


if __name__ == "__main__":
    app.run(main)
