"""The paper's colorization task: predict a*b* from L, with L1 and a PatchGAN (paper III-B/C)."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from mtcolor.data.color import lab_norm_to_rgb, lab_norm_to_rgb_jax
from mtcolor.models.decoder import ColorDecoder
from mtcolor.models.patchgan import PatchDiscriminator
from mtcolor.models.unet import UNetDecoder
from mtcolor.precision import at_least_float32
from mtcolor.tasks import losses
from mtcolor.tasks.task import ADVERSARY_METRICS, Adversary, Critic, Task

DECODERS = ("plain", "unet")
# Evaluation-only terms that put the model's numbers beside their baselines: the L1 of predicting
# ab = 0 (a gray image) and the colorfulness of the colorized and of the real images.
BASELINE_METRICS = ("l1_gray", "colorfulness", "colorfulness_true")


def _patch_mean_sigmoid(logits: jax.Array) -> jax.Array:
    """Per example: the discriminator's mean probability of "real" over its patches."""
    return jax.nn.sigmoid(at_least_float32(logits)).reshape(logits.shape[0], -1).mean(1)


@dataclasses.dataclass(frozen=True, kw_only=True)
class Colorization(Task):
    """L -> ab at input resolution. Loss: L1 x ``l1_weight`` (paper: 100) plus the adversary's
    GAN term x its weight (1), the pix2pix generator objective; batch keys ``L`` and ``ab``.

    decoder: "plain" (the paper's, from the bottleneck) or "unet" (skips from the ResNet-18
    stages, the paper's proposed improvement, V-B)."""

    name: str = "colorization"
    module_name: str | None = "decoder"
    decoder: str = "plain"
    dropout_rate: float = 0.5
    l1_weight: float = 100.0
    val_loss: str = "l1"
    checkpoint_metric: tuple[str, str] = ("l1", "min")
    adversary: Adversary | None = dataclasses.field(
        default_factory=lambda: Adversary(discriminator=PatchDiscriminator())
    )

    def __post_init__(self):
        if self.decoder not in DECODERS:
            raise ValueError(f"model.decoder must be one of {DECODERS}, got {self.decoder!r}")

    def head(self, features, stages, *, train: bool, dtype: Any):
        if self.decoder == "unet":
            decoder = UNetDecoder(dropout_rate=self.dropout_rate, dtype=dtype, name=self.head_name)
            return decoder(features, stages, train=train)
        decoder = ColorDecoder(dropout_rate=self.dropout_rate, dtype=dtype, name=self.head_name)
        return decoder(features, train=train)

    def per_example(
        self, output, batch: Mapping[str, jax.Array], *, train: bool, critic: Critic | None = None
    ) -> dict[str, jax.Array]:
        l1 = losses.l1_per_example(output, batch["ab"])
        terms = {"l1": l1, "loss_l1": self.l1_weight * l1}
        loss = self.l1_weight * l1
        if critic is not None and self.adversary is not None:
            mode = self.adversary.gan_mode
            fake_logits = critic(self.critic_input(batch, output))
            terms["loss_gan"] = losses.gan_per_example(fake_logits, True, mode)
            loss = loss + self.adversary.weight * terms["loss_gan"]
            if not train:
                real_logits = critic(self.critic_input(batch, self.target(batch)))
                real = losses.gan_per_example(real_logits, True, mode)
                fake = losses.gan_per_example(fake_logits, False, mode)
                terms.update(
                    loss_d=0.5 * (real + fake),
                    loss_d_real=real,
                    loss_d_fake=fake,
                    d_real=_patch_mean_sigmoid(real_logits),
                    d_fake=_patch_mean_sigmoid(fake_logits),
                )
        if not train:
            terms.update(_baseline_terms(batch["L"], output, batch["ab"]))
        terms["loss"] = loss
        return terms

    def metric_names(self, *, train: bool) -> tuple[str, ...]:
        names = ("l1", "loss_l1")
        if self.adversary is not None:
            names += ("loss_gan",) + (() if train else ADVERSARY_METRICS)
        if not train:
            names += BASELINE_METRICS
        return names

    def headline(self, val: Mapping[str, float]) -> str | None:
        if "l1_gray" not in val:
            return None
        below = 1.0 - val["l1"] / val["l1_gray"] if val["l1_gray"] > 0 else 0.0
        return (
            f"L1 x100 {100 * val['l1']:.1f} vs {100 * val['l1_gray']:.1f} predicting ab = 0 "
            f"({below:.0%} below), colorfulness {val['colorfulness']:.1f} vs ground truth "
            f"{val['colorfulness_true']:.1f}"
        )

    def critic_input(self, batch, prediction):
        L = batch["L"]
        return jnp.concatenate([L, prediction.astype(L.dtype)], axis=-1)

    def target(self, batch):
        return batch["ab"]

    def image_rows(self, batch, prediction):
        return colorization_rows(batch["L"], prediction, batch["ab"])


def colorization_rows(L, ab_pred, ab_true) -> list[np.ndarray]:
    """Three (N, H, W, 3) RGB float arrays in [0, 1]. The grayscale row is the Lab image with
    a = b = 0, i.e. the neutral gray of the input's luminance. Computed with numpy: op by op, jnp
    compiled a program per operation (about 1.5 s at the CPU demo's first validation)."""
    L = np.asarray(L, np.float32)
    gray = np.zeros(L.shape[:-1] + (2,), np.float32)
    return [lab_norm_to_rgb(L, ab) for ab in (gray, ab_pred, ab_true)]


def _baseline_terms(L: jax.Array, prediction: jax.Array, target: jax.Array) -> dict:  # noqa: N803
    from mtcolor.eval.metrics import colorfulness

    L, prediction, target = (at_least_float32(x) for x in (L, prediction, target))
    return {
        "l1_gray": jnp.abs(target).mean(axis=(1, 2, 3)),
        "colorfulness": colorfulness(lab_norm_to_rgb_jax(L, prediction)),
        "colorfulness_true": colorfulness(lab_norm_to_rgb_jax(L, target)),
    }
