"""A few-minute CPU demo on the built-in synthetic data (no download), with both phases.

python -m experiments.multitask --config=experiments/configs/demo.py --workdir=/tmp/demo
"""

from mtcolor.train.config import base_config


def get_config():
    config = base_config("multitask")
    config.image_size = 32
    config.batch_size = 16
    config.data.source = "synthetic"
    config.data.synthetic.train_size = 480  # 30 steps per epoch
    config.data.synthetic.val_size = 128
    config.data.synthetic.num_classes = 5
    config.data.worker_count = 0
    config.model.pretrained = None  # no download: the backbone starts from random init
    config.loss.gan_mode = "l1"  # the paper's (III-C), as in paper.py
    # The U-Net decoder (the paper's proposed improvement, V-B): at 32 px ResNet-18's bottleneck is
    # 1x1, so the paper's decoder, which sees only the bottleneck, cannot tell where the shapes are
    # and predicts near-gray (val L1 0.171 vs 0.182 for ab = 0); the skips from the ResNet stages
    # give it the positions (0.109 and recognisably coloured shapes; docs/training.md).
    config.model.decoder = "unet"
    # Phase 1 with the backbone frozen (randomly initialised here, so only the new layers learn),
    # then phase 2 where everything trains; the paper's 30 + 15 shortened.
    config.train.frozen_epochs = 1
    config.train.unfrozen_epochs = 5
    # From scratch in a few hundred steps: a larger step than the paper's 2e-4 (which fine-tunes a
    # pretrained backbone over 45 epochs).
    config.optim.learning_rate = 5e-4
    # Validate (and draw the image grids) at each epoch's end: the six points docs/training.md
    # tables. Each validation costs the demo about 0.6 s (evaluation, grids, best checkpoint).
    config.train.evals_per_epoch = 1
    config.train.log_every_steps = 10
    config.train.num_image_examples = 8
    return config
