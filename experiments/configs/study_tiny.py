"""End-to-end check of the study runner (tests only): tiny.py, the two single-task references,
the paper's multi-task setup, the unlabeled-data variant and an early-stopping variant.

    python -m experiments.compare --study=experiments/configs/study_tiny.py --root=/tmp/study --run
"""

from experiments.configs import study_small


def get_study():
    return study_small.study(
        "experiments/configs/tiny.py",
        [
            {"name": "paper"},
            {
                "name": "unlabeled",
                "overrides": {
                    "data.unlabeled.source": "folder",
                    "data.unlabeled.folder.root": "../shared/data/imagenet-val-1300/images",
                },
            },
            {"name": "early_stopping", "overrides": {"train.early_stopping_patience": 2}},
        ],
        seeds=1,
    )
