"""Classification and colorization metrics.

Per-image metrics are jnp functions that run on device inside the evaluation step and return one
value per image, so padded examples of the last eval batch can be dropped with the batch `mask`
before averaging (`MeanAccumulator`). Classification metrics are accumulated as a confusion matrix
on the host, from which accuracy and per-class accuracy follow exactly.

Conventions (see docs/metrics.md):
- `l1_x100`: mean |ab_pred - ab_true| over pixels and both channels on *normalized* ab (ab/110),
  times 100: the same quantity as the paper's "L1 loss" in Table I and the training loop's
  `loss_l1`.
- `psnr` and `ssim`: on sRGB in [0, 1] (data range 1), per image, computed by dm-pix. SSIM uses the
  standard Wang et al. settings (11x11 Gaussian window, sigma 1.5, K1 0.01, K2 0.03, valid
  filtering, mean over pixels and channels), i.e. skimage's
  `structural_similarity(gaussian_weights=True, sigma=1.5, use_sample_covariance=False)`.
- `colorfulness`: Hasler & Suesstrunk (2003) on 0..255 RGB.
"""

from __future__ import annotations

import dm_pix
import jax.numpy as jnp
import numpy as np

# --------------------------------------------------------------------------------------------
# Classification


def confusion_matrix(labels, predictions, num_classes: int, mask=None) -> np.ndarray:
    """Counts (num_classes, num_classes) int64: rows are true classes, columns predictions."""
    labels = np.asarray(labels).reshape(-1).astype(np.int64)
    predictions = np.asarray(predictions).reshape(-1).astype(np.int64)
    if mask is not None:
        keep = np.asarray(mask).reshape(-1) > 0
        labels, predictions = labels[keep], predictions[keep]
    counts = np.zeros((num_classes, num_classes), np.int64)
    np.add.at(counts, (labels, predictions), 1)
    return counts


def accuracy_from_confusion(counts: np.ndarray) -> float:
    total = counts.sum()
    return float(np.trace(counts) / total) if total else float("nan")


def per_class_accuracy(counts: np.ndarray) -> np.ndarray:
    """Recall of each true class; NaN for a class with no examples (not 0, which would lie)."""
    support = counts.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(support > 0, np.diag(counts) / np.maximum(support, 1), np.nan)


def accuracy(logits, labels, mask=None) -> float:
    predictions = np.asarray(logits).argmax(-1)
    labels = np.asarray(labels)
    correct = (predictions == labels).astype(np.float64)
    if mask is None:
        return float(correct.mean())
    mask = np.asarray(mask, np.float64)
    return float((correct * mask).sum() / mask.sum())


# --------------------------------------------------------------------------------------------
# Colorization (per image, on device)


def l1_x100(ab_pred, ab_true):
    """(N,) mean absolute error on normalized ab, times 100 (the paper's "L1 loss")."""
    return 100.0 * jnp.mean(jnp.abs(ab_pred - ab_true), axis=(1, 2, 3))


def psnr(rgb_pred, rgb_true):
    """(N,) PSNR in dB of sRGB images in [0, 1]; +inf for identical images."""
    return dm_pix.psnr(rgb_pred.astype(jnp.float32), rgb_true.astype(jnp.float32))


def ssim(rgb_pred, rgb_true):
    """(N,) SSIM of sRGB images in [0, 1] (Gaussian window 11, sigma 1.5, data range 1)."""
    return dm_pix.ssim(
        rgb_pred.astype(jnp.float32),
        rgb_true.astype(jnp.float32),
        max_val=1.0,
        filter_size=11,
        filter_sigma=1.5,
        k1=0.01,
        k2=0.03,
    )


def colorfulness(rgb):
    """(N,) Hasler & Suesstrunk colorfulness of sRGB images in [0, 1] (computed on 0..255).

    C = sqrt(std_rg^2 + std_yb^2) + 0.3 sqrt(mean_rg^2 + mean_yb^2), rg = R - G,
    yb = (R + G)/2 - B, population standard deviations over the image's pixels.
    """
    rgb = 255.0 * rgb.astype(jnp.float32)
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    rg = r - g
    yb = 0.5 * (r + g) - b
    axes = (1, 2)
    std = jnp.sqrt(jnp.var(rg, axis=axes) + jnp.var(yb, axis=axes))
    mean = jnp.sqrt(jnp.mean(rg, axis=axes) ** 2 + jnp.mean(yb, axis=axes) ** 2)
    return std + 0.3 * mean


# --------------------------------------------------------------------------------------------
# Host-side accumulation


class MeanAccumulator:
    """Masked running means of per-image metrics, accumulated in float64 on the host.

    Non-finite values (PSNR of an exact reconstruction is +inf) are counted separately and left out
    of the mean, so one perfect image cannot turn a dataset mean into inf.
    """

    def __init__(self):
        self._sums: dict[str, float] = {}
        self._counts: dict[str, int] = {}
        self._nonfinite: dict[str, int] = {}

    def update(self, values: dict, mask=None):
        for name, value in values.items():
            value = np.asarray(value, np.float64).reshape(-1)
            keep = np.ones(value.shape, bool) if mask is None else np.asarray(mask).reshape(-1) > 0
            finite = np.isfinite(value)
            self._sums[name] = self._sums.get(name, 0.0) + float(value[keep & finite].sum())
            self._counts[name] = self._counts.get(name, 0) + int((keep & finite).sum())
            self._nonfinite[name] = self._nonfinite.get(name, 0) + int((keep & ~finite).sum())

    def result(self) -> dict[str, float]:
        return {
            name: (self._sums[name] / self._counts[name]) if self._counts[name] else float("nan")
            for name in self._sums
        }

    def nonfinite_counts(self) -> dict[str, int]:
        return {name: count for name, count in self._nonfinite.items() if count}
