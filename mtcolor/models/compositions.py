"""The paper's three models, assembled from the backbone and the heads.

Each has a `backbone` (ResNet18) and `decoder` and/or `head`. `backbone_train` (default: `train`)
sets the backbone's BatchNorm mode on its own, so during the paper's frozen-backbone phase the
backbone normalises with its running statistics and does not update them, while the new layers train.
"""

from __future__ import annotations

from typing import Any

import jax.numpy as jnp
from flax import linen as nn

from mtcolor.models.decoder import ColorDecoder
from mtcolor.models.heads import ClassHead
from mtcolor.models.resnet import ResNet18
from mtcolor.models.unet import UNetDecoder

DECODERS = ("plain", "unet")


def _backbone_mode(train: bool, backbone_train: bool | None) -> bool:
    return train if backbone_train is None else backbone_train


def _colorize(module, L, train, backbone_train):
    """Backbone + the module's decoder ("plain": from the bottleneck; "unet": with skips from
    the ResNet-18 stages). Returns (ab, bottleneck features)."""
    backbone = ResNet18(in_channels=1, dtype=module.dtype, name="backbone")
    if module.decoder == "plain":
        features = backbone(L, train=_backbone_mode(train, backbone_train))
        decoder = ColorDecoder(dropout_rate=module.dropout_rate, dtype=module.dtype, name="decoder")
        return decoder(features, train=train), features
    if module.decoder == "unet":
        features, stages = backbone(L, train=_backbone_mode(train, backbone_train), return_stages=True)
        decoder = UNetDecoder(dropout_rate=module.dropout_rate, dtype=module.dtype, name="decoder")
        return decoder(features, stages, train=train), features
    raise ValueError(f"model.decoder must be one of {DECODERS}, got {module.decoder!r}")


class Classifier(nn.Module):
    """Single-task classifier: ResNet18 -> ClassHead. Input: L (in_channels=1, the paper's grayscale
    setting) or RGB (in_channels=3). Returns float32 logits (N, num_classes)."""

    num_classes: int = 5
    in_channels: int = 1
    pooling: str = "flatten"
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jnp.ndarray, train: bool = False, backbone_train: bool | None = None) -> jnp.ndarray:
        features = ResNet18(in_channels=self.in_channels, dtype=self.dtype, name="backbone")(
            x, train=_backbone_mode(train, backbone_train)
        )
        return ClassHead(self.num_classes, pooling=self.pooling, dtype=self.dtype, name="head")(features, train=train)


class Colorizer(nn.Module):
    """Single-task colorization generator: L (N, H, W, 1) -> ResNet18 -> ColorDecoder -> ab (N, H, W, 2)."""

    dropout_rate: float = 0.5
    dtype: Any = jnp.float32
    decoder: str = "plain"

    @nn.compact
    def __call__(self, L: jnp.ndarray, train: bool = False, backbone_train: bool | None = None) -> jnp.ndarray:
        ab, _ = _colorize(self, L, train, backbone_train)
        return ab


class MultiTaskGenerator(nn.Module):
    """Multi-task generator: the Colorizer plus a ClassHead forking from the same bottleneck.
    L (N, H, W, 1) -> (ab (N, H, W, 2), logits (N, num_classes))."""

    num_classes: int = 5
    pooling: str = "flatten"
    dropout_rate: float = 0.5
    dtype: Any = jnp.float32
    decoder: str = "plain"

    @nn.compact
    def __call__(self, L: jnp.ndarray, train: bool = False, backbone_train: bool | None = None):
        ab, features = _colorize(self, L, train, backbone_train)
        logits = ClassHead(self.num_classes, pooling=self.pooling, dtype=self.dtype, name="head")(features, train=train)
        return ab, logits
