"""The paper's three experiments as task lists, and their models.

multitask:      (Colorization, Classification)  the paper's proposed model, cls x10
colorization:   (Colorization,)                 the single-task cGAN colorizer
classification: (Classification,)               the single-task classifier, plain CE
"""

from __future__ import annotations

from typing import Any

import jax.numpy as jnp

from mtcolor.models.multitask import MultiTaskModel
from mtcolor.models.patchgan import PatchDiscriminator
from mtcolor.tasks.classification import Classification
from mtcolor.tasks.colorization import Colorization
from mtcolor.tasks.task import Adversary, Task, check_tasks

EXPERIMENTS = ("multitask", "colorization", "classification")


def classification_weight(experiment: str, cls_weight: float | None = None) -> float:
    """Paper III-C: x10 in the multi-task model to balance it against the colorization loss,
    plain cross-entropy in the single-task classifier."""
    if cls_weight is not None:
        return float(cls_weight)
    return 10.0 if experiment == "multitask" else 1.0


def experiment_tasks(
    experiment: str,
    *,
    num_classes: int = 5,
    pooling: str = "flatten",
    decoder: str = "plain",
    cls_weight: float | None = None,
    l1_weight: float = 100.0,
    gan_mode: str = "vanilla",
    gan_weight: float = 1.0,
    dtype: Any = jnp.float32,
) -> tuple[Task, ...]:
    """The task list of one of the paper's experiments (``dtype``: the discriminator's
    computation dtype; the model's is MultiTaskModel's)."""
    if experiment not in EXPERIMENTS:
        raise ValueError(f"experiment must be one of {EXPERIMENTS}, got {experiment!r}")
    tasks = []
    if experiment in ("multitask", "colorization"):
        adversary = Adversary(
            discriminator=PatchDiscriminator(dtype=dtype),
            gan_mode=gan_mode,
            weight=float(gan_weight),
        )
        tasks.append(Colorization(decoder=decoder, l1_weight=float(l1_weight), adversary=adversary))
    if experiment in ("multitask", "classification"):
        tasks.append(
            Classification(
                num_classes=int(num_classes),
                pooling=pooling,
                weight=classification_weight(experiment, cls_weight),
            )
        )
    return check_tasks(tasks)


def tasks_from_config(config) -> tuple[Task, ...]:
    """The task list ``config.experiment`` names, with the config's model and loss settings."""
    from mtcolor.precision import compute_dtype

    m, loss = config.model, config.loss
    return experiment_tasks(
        config.experiment,
        num_classes=m.num_classes,
        pooling=m.pooling,
        decoder=m.get("decoder", "plain"),
        cls_weight=loss.cls_weight,
        l1_weight=loss.l1_weight,
        gan_mode=loss.gan_mode,
        gan_weight=loss.gan_weight,
        dtype=compute_dtype(m.get("dtype", "float32")),
    )


# The paper's three networks (models of the task lists above; they return {task name: output}).


def multitask_generator(
    num_classes: int = 5,
    pooling: str = "flatten",
    decoder: str = "plain",
    dropout_rate: float = 0.5,
    dtype: Any = jnp.float32,
) -> MultiTaskModel:
    """L -> {"colorization": ab (N, H, W, 2), "classification": logits (N, num_classes)}."""
    tasks = (
        Colorization(decoder=decoder, dropout_rate=dropout_rate),
        Classification(num_classes=num_classes, pooling=pooling, weight=10.0),
    )
    return MultiTaskModel(tasks=tasks, dtype=dtype)


def colorizer(
    decoder: str = "plain", dropout_rate: float = 0.5, dtype: Any = jnp.float32
) -> MultiTaskModel:
    """L -> {"colorization": ab (N, H, W, 2)}."""
    return MultiTaskModel(
        tasks=(Colorization(decoder=decoder, dropout_rate=dropout_rate),), dtype=dtype
    )


def classifier(
    num_classes: int = 5, in_channels: int = 1, pooling: str = "flatten", dtype: Any = jnp.float32
) -> MultiTaskModel:
    """L (or RGB with in_channels=3) -> {"classification": logits (N, num_classes)}."""
    return MultiTaskModel(
        tasks=(Classification(num_classes=num_classes, pooling=pooling),),
        in_channels=in_channels,
        dtype=dtype,
    )
