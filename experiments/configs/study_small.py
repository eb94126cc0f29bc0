"""The multi-task study at CPU scale: 32 px synthetic data, a demo-like schedule of 100 steps per
run, 3 seeds: 45 runs that fit a 2-core CPU in about two hours (measured: docs/compare.md). At
64 px a cGAN step costs about 3 s on that CPU and the study would take 4 hours.

    python -m experiments.compare --study=experiments/configs/study_small.py --root=runs/study --run

Every run is experiments/configs/demo.py with OVERRIDES, plus its variant's overrides and
--config.seed=k. The single-task references (classifier, colorizer) run on the same setup.
"""

# Relative to the repository root (the runner starts every run there); see ../shared/data/README.md.
IMAGENET_VAL_1300 = "../shared/data/imagenet-val-1300/images"

OVERRIDES = {
    "image_size": 32,
    "batch_size": 16,
    "data.synthetic.train_size": 320,  # 20 steps per epoch
    "data.synthetic.val_size": 128,
    "train.frozen_epochs": 1,
    "train.unfrozen_epochs": 4,  # 100 steps in all (the demo: 180)
    "train.evals_per_epoch": 2,
    "train.log_every_steps": 5,
}

MULTITASK_VARIANTS = [
    {"name": "paper"},  # the paper's setup: plain decoder, fixed weights (L1 x100, cls x10), sum
    {"name": "unet", "overrides": {"model.decoder": "unet"}},
    *({"name": w, "overrides": {"loss.weighting": w}}
      for w in ("uncertainty", "dwa", "gradnorm", "famo")),
    *({"name": g, "overrides": {"loss.gradient": g}}
      for g in ("pcgrad", "cagrad", "mgda", "imtl_g", "nash_mtl")),
    # Per-task early stopping (patience in evaluations); fails, and is reported as failed, on a
    # trainer without the option.
    {"name": "early_stopping", "overrides": {"train.early_stopping_patience": 2}},
    # Half of every training batch from 1,300 unlabeled ImageNet photos, colorization loss only.
    # Epochs count labelled images, so this variant takes twice the steps of the others.
    {"name": "unlabeled", "overrides": {
        "data.unlabeled.source": "folder",
        "data.unlabeled.folder.root": IMAGENET_VAL_1300,
        "data.unlabeled.fraction": 0.5,
    }},
]


def get_study():
    return {
        "config": "experiments/configs/demo.py",
        "overrides": dict(OVERRIDES),
        "seeds": 3,
        "references": {"classification": "classifier", "colorization": "colorizer"},
        "variants": [
            {"name": "classifier", "experiment": "classification"},
            {"name": "colorizer", "experiment": "colorization"},
            *MULTITASK_VARIANTS,
        ],
        # The synthetic source has train and val only: the table says its numbers are validation
        # numbers that also selected the checkpoints.
        "eval_split": "val",
        "test_split": None,
    }
