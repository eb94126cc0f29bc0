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
    # The paper's decoder for every variant but "unet" (demo.py itself trains the U-Net decoder).
    "model.decoder": "plain",
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
    *(
        {"name": w, "overrides": {"loss.weighting": w}}
        for w in ("uncertainty", "dwa", "gradnorm", "famo")
    ),
    *(
        {"name": g, "overrides": {"loss.gradient": g}}
        for g in ("pcgrad", "cagrad", "mgda", "imtl_g", "nash_mtl")
    ),
    # Per-task early stopping (patience in evaluations); fails, and is reported as failed, on a
    # trainer without the option.
    {"name": "early_stopping", "overrides": {"train.early_stopping_patience": 2}},
    # Half of every training batch from 1,300 unlabeled ImageNet photos, colorization loss only.
    # Epochs count labelled images, so this variant takes twice the steps of the others.
    {
        "name": "unlabeled",
        "overrides": {
            "data.unlabeled.source": "folder",
            "data.unlabeled.folder.root": IMAGENET_VAL_1300,
            "data.unlabeled.fraction": 0.5,
        },
    },
]


def study(config: str, multitask_variants, *, overrides=None, seeds: int = 3) -> dict:
    """A study on ``config``: the paper's two single-task references (the Delta_m baselines),
    then the multi-task variants, with checkpoints picked and reported on the validation split
    (the synthetic source and the paper's ImageNet setup have no separate test split, so the
    table says its numbers also selected the checkpoints). study_paper and study_tiny use it too."""
    return {
        "config": config,
        "overrides": dict(overrides or {}),
        "seeds": seeds,
        "references": {"classification": "classifier", "colorization": "colorizer"},
        "variants": [
            {"name": "classifier", "experiment": "classification"},
            {"name": "colorizer", "experiment": "colorization"},
            *multitask_variants,
        ],
        "eval_split": "val",
        "test_split": None,
    }


def get_study():
    return study("experiments/configs/demo.py", MULTITASK_VARIANTS, overrides=OVERRIDES)
