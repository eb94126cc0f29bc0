"""The paper's classification task: the class of the image from the bottleneck (paper III-B)."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import jax

from mtcolor.models.heads import ClassHead
from mtcolor.tasks import losses
from mtcolor.tasks.task import Critic, Task


@dataclasses.dataclass(frozen=True, kw_only=True)
class Classification(Task):
    """Bottleneck -> FC(hidden) + ReLU -> FC(num_classes) logits; softmax cross-entropy on
    ``label``, over the examples whose ``has_label`` is 1 (every example when the batch has no
    such key; unlabeled colorization data sets it to 0, mtcolor.data.pipeline)."""

    name: str = "classification"
    module_name: str | None = "head"
    num_classes: int = 5
    pooling: str = "flatten"
    hidden: int = 1000
    mask_key: str | None = "has_label"
    val_loss: str = "loss_cls"
    checkpoint_metric: tuple[str, str] = ("accuracy", "max")
    # The paper keeps the epoch with the best validation accuracy (III-D).
    selects_checkpoints: bool = True

    def head(self, features, stages, *, train: bool, dtype: Any):
        del stages
        head = ClassHead(
            self.num_classes,
            pooling=self.pooling,
            hidden=self.hidden,
            dtype=dtype,
            name=self.head_name,
        )
        return head(features, train=train)

    def per_example(
        self, output, batch: Mapping[str, jax.Array], *, train: bool, critic: Critic | None = None
    ) -> dict[str, jax.Array]:
        del train, critic
        loss_cls = losses.cross_entropy_per_example(output, batch["label"])
        return {
            "loss_cls": loss_cls,
            "accuracy": losses.correct_per_example(output, batch["label"]),
            "loss": loss_cls,
        }

    def metric_names(self, *, train: bool) -> tuple[str, ...]:
        return ("loss_cls", "accuracy")

    def headline(self, val: Mapping[str, float]) -> str | None:
        if "accuracy" not in val:
            return None
        return f"accuracy {val['accuracy']:.1%} vs chance {1 / self.num_classes:.1%}"
