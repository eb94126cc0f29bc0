r"""Runs and compares a study: variants x seeds, each run's best-on-validation checkpoint evaluated.

  python -m experiments.compare --study=experiments/configs/study_small.py --root=runs/study \
      [--run] [--seeds=3] [--only=paper,unet] [--override=KEY=VALUE ...]

Without --run it only reads what exists (unfinished runs are marked). With --run it first trains
the missing runs one after the other (resuming interrupted ones, skipping finished ones; each run's
output in <root>/<variant>/seed<k>/log.txt). Writes <root>/compare.md, .csv, .json,
val_curves.png and task_weights.png. See docs/compare.md.
"""

from absl import app, flags, logging

from mtcolor.eval.study import argument_problems, run_study
from mtcolor.train.cli import exit_on_problems

_STUDY = flags.DEFINE_string("study", None, "Study file (a Python module with get_study()).")
_ROOT = flags.DEFINE_string("root", None, "Directory of the study's runs and outputs.")
_RUN = flags.DEFINE_bool("run", False, "Train missing / unfinished runs first.")
_SEEDS = flags.DEFINE_integer("seeds", None, "Seeds 0..n-1 (default: the study's).")
_ONLY = flags.DEFINE_list("only", None, "Only these variants (comma-separated names).")
_FRECHET = flags.DEFINE_bool("frechet", False, "Also compute the ResNet-18 Frechet distance.")
_OVERRIDE = flags.DEFINE_multi_string(
    "override",
    [],
    "KEY=VALUE config override for every run, after the study's and the variant's "
    "(e.g. data.folder.train_root=/data/imagenet5/train).",
)
_CACHE = flags.DEFINE_string(
    "compilation_cache",
    "",
    "JAX persistent compilation cache for the runs "
    "('' = <root>/jax_cache, 'none' = off): a variant's later seeds reuse the first seed's "
    "compiled programs.",
)
_EVALUATE = flags.DEFINE_bool("evaluate", True, "Evaluate the runs (--noevaluate: states only).")
flags.mark_flags_as_required(["study", "root"])


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    logging.set_verbosity(logging.WARNING)  # orbax logs every restore at INFO
    exit_on_problems(
        argument_problems(_STUDY.value, _SEEDS.value, _ONLY.value, _OVERRIDE.value),
        "the command line",
    )
    extra = {}
    for item in _OVERRIDE.value:
        key, _, value = item.partition("=")
        extra[key.removeprefix("config.")] = value
    files = run_study(
        _STUDY.value,
        _ROOT.value,
        run=_RUN.value,
        seeds=_SEEDS.value,
        only=_ONLY.value,
        frechet=_FRECHET.value,
        evaluate_runs=_EVALUATE.value,
        extra_overrides=extra,
        compilation_cache=None if _CACHE.value == "none" else _CACHE.value,
        log=lambda message: print(message, flush=True),
    )
    for path in files:
        print(f"wrote {path}")
    print(files[0].read_text())


if __name__ == "__main__":
    app.run(main)
