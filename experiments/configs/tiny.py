"""Tests only: 32 px, batch 4, 3 steps per epoch, one frozen and one unfrozen epoch."""

from mtcolor.train.config import base_config


def get_config():
    config = base_config("multitask")
    config.image_size = 32
    config.batch_size = 4
    config.data.source = "synthetic"
    config.data.synthetic.train_size = 12
    config.data.synthetic.val_size = 6  # 2 batches, the second padded
    config.data.worker_count = 0
    config.data.read_threads = 1
    # The grain path, not "auto" (which picks the device-resident one for this small set): the
    # resume and multi-host tests check grain's iterator positions; tests/test_resident_input.py
    # trains and resumes the resident path.
    config.data.input_path = "grain"
    config.model.pretrained = None
    config.train.frozen_epochs = 1
    config.train.unfrozen_epochs = 1
    config.train.evals_per_epoch = 1
    config.train.log_every_steps = 2
    config.train.checkpoint_every_steps = 2
    config.train.num_image_examples = 4
    return config
