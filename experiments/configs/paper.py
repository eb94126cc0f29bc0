"""The paper's setup ("Multi-Task Image Colorization and Classification", section III).

    python -m experiments.multitask --config=experiments/configs/paper.py --workdir=runs/paper_mt
    python -m experiments.multitask --config=experiments/configs/paper.py:tfds --workdir=...

The config argument after ":" picks the data source: "folder" (default; set
--config.data.folder.train_root / val_root to an ImageNet-style tree) or "tfds" (imagenet2012
prepared as array_record). Only the five paper classes are used.
"""

from mtcolor.train.config import base_config


def get_config(source: str = "folder"):
    from mtcolor.data import PAPER_CLASSES

    config = base_config("multitask")  # the entry point (experiments/<name>.py) sets the experiment
    config.image_size = 256  # III-A: images scaled to 256x256
    config.batch_size = 16  # III-D: "all hyper-parameters are the same as in [3]": batch 16
    config.data.source = source
    config.data.resize_mode = "stretch"  # III-A / [3]: bicubic resize, aspect not kept
    config.data.random_flip = True  # III-A: random horizontal flip, p = 0.5
    config.data.classes = [c.wnid for c in PAPER_CLASSES]  # IV: the five sea-life classes
    config.model.num_classes = 5  # III-B: final layer of five neurons
    config.model.pooling = "flatten"  # III-B: ResNet-18 "without its final two layers" + 2 FC
    config.model.pretrained = "torchvision"  # III-B: pre-trained ResNet-18 (ImageNet weights)
    config.loss.l1_weight = 100.0  # III-C: L1 scaled by 100
    config.loss.gan_weight = 1.0  # III-C: weighted sum of L1 and adversarial loss
    config.loss.cls_weight = None  # III-C: x10 in the multi-task model, x1 single-task
    # III-C: "The discriminator used L1 loss, comparing each patch's prediction with the true
    # label" (|sigmoid(logit) - label|). The reference tutorial [3] uses "vanilla" (BCE).
    config.loss.gan_mode = "l1"
    config.optim.learning_rate = 2e-4  # III-D: 2e-4 in both phases
    config.optim.b1, config.optim.b2 = 0.5, 0.999  # III-D via [3]: Adam betas (0.5, 0.999)
    config.train.frozen_epochs = 30  # III-D: 30 epochs with the ResNet-18 frozen
    config.train.unfrozen_epochs = 15  # III-D: then 15 more epochs unfrozen
    config.train.evals_per_epoch = 2  # III-D: validation twice per epoch
    config.train.log_every_steps = 50
    config.data.worker_count = 4
    return config
