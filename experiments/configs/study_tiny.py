"""End-to-end check of the study runner (tests only): tiny.py, the two single-task references,
the paper's multi-task setup, the unlabeled-data variant and an early-stopping variant (which
fails on a trainer without `train.early_stopping_patience` and must be reported, not dropped).

    python -m experiments.compare --study=experiments/configs/study_tiny.py --root=/tmp/study --run
"""


def get_study():
    return {
        "config": "experiments/configs/tiny.py",
        "overrides": {},
        "seeds": 1,
        "references": {"classification": "classifier", "colorization": "colorizer"},
        "variants": [
            {"name": "classifier", "experiment": "classification"},
            {"name": "colorizer", "experiment": "colorization"},
            {"name": "paper"},
            {"name": "unlabeled", "overrides": {
                "data.unlabeled.source": "folder",
                "data.unlabeled.folder.root": "../shared/data/imagenet-val-1300/images",
            }},
            {"name": "early_stopping", "overrides": {"train.early_stopping_patience": 2}},
        ],
    }
