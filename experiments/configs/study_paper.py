"""The multi-task study at the paper's scale (paper.py: 256 px, the five ImageNet classes,
30 + 15 epochs, ImageNet ResNet-18), for a GPU. The data roots come from the command line:

    python -m experiments.compare --study=experiments/configs/study_paper.py \
        --root=runs/study_paper \
        --override=data.folder.train_root=/data/imagenet5/train \
        --override=data.folder.val_root=/data/imagenet5/val \
        --override=data.unlabeled.folder.root=/data/imagenet/train --run

(`--override` applies to every run, after the variants' own overrides.) The unlabeled variant
needs photos that are not in the validation set, e.g. the whole ImageNet train tree.
"""

from experiments.configs import study_small


def get_study():
    variants = []
    for variant in study_small.MULTITASK_VARIANTS:
        variant = {**variant, "overrides": dict(variant.get("overrides", {}))}
        if "data.unlabeled.folder.root" in variant["overrides"]:
            variant["overrides"]["data.unlabeled.folder.root"] = "/data/imagenet/train"
        variants.append(variant)
    # ImageNet validation selects the checkpoints and is the only labelled held-out set of the
    # paper's setup: the table says so.
    return study_small.study("experiments/configs/paper.py", variants)
