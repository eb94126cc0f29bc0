"""The training config shared by experiments/configs/*.py (ml_collections).

Top-level ``batch_size`` and ``image_size`` are references that ``data.batch_size`` /
``data.image_size`` follow, so ``--config.batch_size=32`` changes the global batch everywhere.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import ml_collections


def load_config_file(path, arg: str = "") -> ml_collections.ConfigDict:
    """``get_config()`` (``get_config(arg)`` for "file.py:arg") of the Python file ``path``,
    loaded as ml_collections' config_flags loads a --config file."""
    spec = importlib.util.spec_from_file_location(f"_config_{Path(path).stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config(arg) if arg else module.get_config()


def data_defaults() -> ml_collections.ConfigDict:
    # Imported here, not at the top: the pipeline imports grain (seconds).
    from mtcolor.data import pipeline

    return pipeline.default_data_config()


def base_config(experiment: str = "multitask") -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict()
    config.experiment = experiment
    config.seed = 0
    config.batch_size = 16
    config.image_size = 256

    config.data = data_defaults()
    config.data.batch_size = config.get_ref("batch_size")
    config.data.image_size = config.get_ref("image_size")

    config.model = ml_collections.ConfigDict()
    config.model.num_classes = 5
    config.model.pooling = "flatten"
    config.model.pretrained = ml_collections.FieldReference(None, field_type=str)
    # "plain": the paper's decoder from the bottleneck alone; "unet": skips from the ResNet-18
    # stages (stem, layer1..layer3) at matching resolutions (paper V-B, mtcolor.models.UNetDecoder).
    config.model.decoder = "plain"
    # Computation dtype: "float32" or "bfloat16" (mixed precision: bf16 activations and matmuls;
    # float32 parameters, optimizer states, BatchNorm statistics, losses and multi-task solvers).
    config.model.dtype = "float32"

    config.loss = ml_collections.ConfigDict()
    config.loss.gan_mode = "vanilla"  # "l1" | "vanilla" | "lsgan" (see mtcolor.tasks.losses)
    config.loss.l1_weight = 100.0
    config.loss.gan_weight = 1.0
    # None: 10 for the multi-task model, 1 for the single-task classifier (paper III-C).
    config.loss.cls_weight = ml_collections.FieldReference(None, field_type=float)
    # How the tasks' losses are weighted (mtcolor.mtl.weighting): "fixed" (the weights above, the
    # paper's), "uncertainty" (Kendall et al. 2018), "dwa" (Liu et al. 2019), "gradnorm" (Chen et
    # al. 2018, on the backbone's last block), "famo" (Liu et al. 2023). Options (e.g. alpha for
    # gradnorm) go in weighting_options; see docs/multitask-methods.md.
    config.loss.weighting = "fixed"
    config.loss.weighting_options = ml_collections.ConfigDict()
    # How the tasks' gradients of the shared backbone are combined (mtcolor.mtl.gradient): "sum"
    # (plain backprop of the weighted sum), "pcgrad", "cagrad", "mgda", "imtl_g", "nash_mtl".
    # Task-specific parameters (decoder, class head) always get their task's gradient. The
    # backbone is frozen in phase 1, so a combination acts from phase 2 on.
    config.loss.gradient = "sum"
    config.loss.gradient_options = ml_collections.ConfigDict()

    config.optim = ml_collections.ConfigDict()
    config.optim.learning_rate = 2e-4
    config.optim.b1 = 0.5
    config.optim.b2 = 0.999

    config.train = ml_collections.ConfigDict()
    config.train.frozen_epochs = 30
    config.train.unfrozen_epochs = 15
    config.train.update_frozen_bn_stats = False
    config.train.evals_per_epoch = 2
    config.train.log_every_steps = 50
    # None: checkpoint at every evaluation (twice per epoch).
    config.train.checkpoint_every_steps = ml_collections.FieldReference(None, field_type=int)
    config.train.max_to_keep = 3
    # None: val/accuracy (max) when the model classifies, else val/l1 (min).
    config.train.best_metric = ml_collections.FieldReference(None, field_type=str)
    config.train.num_image_examples = 8
    # Stop (after checkpointing) when this invocation has trained this many steps; re-run the same
    # command to continue. For time-limited jobs; None runs to the end.
    config.train.max_steps_per_run = ml_collections.FieldReference(None, field_type=int)
    config.train.distributed = False
    # Task-specific early stopping (paper V-A: the class head overfits before colorization
    # converges). None: off. N: when a task's validation loss (val/l1 for colorization,
    # val/loss_cls for classification) has not improved for N evaluations, that task's head
    # goes back to its best weights and stops training (its loss share becomes 0, and the
    # discriminator stops with colorization) while the other tasks go on; the run ends when
    # every task has stopped. Costs one copy of each head in the train state.
    config.train.early_stopping_patience = ml_collections.FieldReference(None, field_type=int)
    return config
