"""A new multi-task experiment built from the parts, without copying the training loop.

The paper's multi-task generator flattens the 512 x h x w bottleneck into a 1000-unit head; this
variant average-pools it into a smaller 256-unit head and weights the classification loss 3
instead of 10. Everything else (cGAN training, freezing, checkpoints, logging, resume) is
``mtcolor.train.loop.train_and_evaluate``.

    python -m experiments.examples.extra_head --config=experiments/configs/demo.py --workdir=/tmp/x
"""

from __future__ import annotations

import flax.linen as nn

from mtcolor.models import ClassHead, ColorDecoder, ResNet18
from mtcolor.train import loop


class PooledHeadMultiTask(nn.Module):
    """ResNet-18 -> (ColorDecoder, average-pooled ClassHead). Keeps the contract the trainer
    relies on: a submodule named ``backbone`` (frozen in phase 1), ``(L, train, backbone_train)``
    arguments, and (ab, logits) outputs for the "multitask" experiment."""

    num_classes: int = 5
    hidden: int = 256

    @nn.compact
    def __call__(self, L, train: bool = False, backbone_train: bool | None = None):
        backbone_train = train if backbone_train is None else backbone_train
        features = ResNet18(in_channels=1, name="backbone")(L, train=backbone_train)
        ab = ColorDecoder(name="decoder")(features, train=train)
        logits = ClassHead(self.num_classes, pooling="avg", hidden=self.hidden, name="head")(
            features, train=train
        )
        return ab, logits


def configure(config):
    """The experiment's changes to any base config: multi-task, classification loss x3."""
    config.experiment = "multitask"
    config.loss.cls_weight = 3.0
    return config


def train(config, workdir: str) -> dict:
    model = PooledHeadMultiTask(num_classes=config.model.num_classes)
    return loop.train_and_evaluate(configure(config), workdir, model=model)


if __name__ == "__main__":
    from absl import app, flags
    from ml_collections import config_flags

    config_flags.DEFINE_config_file("config", "experiments/configs/demo.py", lock_config=False)
    flags.DEFINE_string("workdir", None, "Output directory.", required=True)
    app.run(lambda argv: train(flags.FLAGS.config, flags.FLAGS.workdir))
