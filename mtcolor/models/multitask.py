"""One model for any task list: a shared ResNet-18 and one head per task (big_vision style,
named outputs).

``MultiTaskModel(tasks)(L)`` returns ``{task.name: head output}``. The backbone is the submodule
``backbone`` (frozen in the paper's first phase; ``backbone_train`` sets its BatchNorm mode on its
own, so that while frozen it normalises with its running statistics); each task's head is the
submodule ``task.head_name`` and is built by the task itself (mtcolor.tasks), on the bottleneck
and, for heads with skips, on the backbone's stage maps.
"""

from __future__ import annotations

from typing import Any

import jax.numpy as jnp
from flax import linen as nn

from mtcolor.models.resnet import ResNet18


class MultiTaskModel(nn.Module):
    """ResNet-18 (``in_channels``: 1 for L, the paper's grayscale input; 3 for RGB) -> heads."""

    tasks: tuple  # of mtcolor.tasks.Task
    in_channels: int = 1
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(
        self, x: jnp.ndarray, train: bool = False, backbone_train: bool | None = None
    ) -> dict:
        backbone = ResNet18(in_channels=self.in_channels, dtype=self.dtype, name="backbone")
        # The stage maps are intermediate values of the same forward pass: returning them costs
        # nothing, and heads that do not read them (the paper's) leave them unused.
        features, stages = backbone(
            x, train=train if backbone_train is None else backbone_train, return_stages=True
        )
        return {
            task.name: task.head(features, stages, train=train, dtype=self.dtype)
            for task in self.tasks
        }
