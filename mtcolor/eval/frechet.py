"""Frechet distance between two sets of image features, and the feature extractors behind it.

FD = |mu1 - mu2|^2 + Tr(S1 + S2 - 2 (S1 S2)^(1/2))  (Dowson & Landau; Heusel et al. 2017).

`frechet_distance_of_features` picks between two exact routes: through the D x D covariances
(`frechet_distance`), or, with fewer samples than features, through the small n1 x n2 matrix of
centred features (`frechet_distance_low_rank`; 250 validation images with 2048-d features:
~20 ms instead of ~15-20 s of 2048 x 2048 eigendecompositions on 2 CPU cores).

Two extractors, reported under different names so that they are never confused:
- "fid": Inception-v3 pool3 (2048-d) features from the standard FID weights
  (pt_inception-2015-12-05-6726825d.pth), see `mtcolor.eval.inception`. Only this is an FID.
- "frechet_resnet18_distance": 512-d global-average-pooled features of the ImageNet ResNet-18 the
  run was initialised from (the 3-channel torchvision weights, on RGB images). Useful to compare
  runs with each other; its values are on a different scale from published FIDs.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np


def feature_statistics(features) -> tuple[np.ndarray, np.ndarray]:
    """(mean, covariance) in float64 of (N, D) features; covariance with ddof=1 like pytorch-fid."""
    features = np.asarray(features, np.float64)
    if features.ndim != 2 or features.shape[0] < 2:
        raise ValueError(f"need (N >= 2, D) features, got shape {features.shape}")
    return features.mean(axis=0), np.cov(features, rowvar=False)


def _sqrt_psd(matrix: np.ndarray) -> np.ndarray:
    values, vectors = np.linalg.eigh(matrix)
    return (vectors * np.sqrt(np.clip(values, 0.0, None))) @ vectors.T


def trace_sqrt_product(sigma1: np.ndarray, sigma2: np.ndarray) -> float:
    """Tr((S1 S2)^(1/2)) for symmetric positive semi-definite S1, S2.

    S1 S2 is similar to the symmetric PSD matrix M = S1^(1/2) S2 S1^(1/2), so the eigenvalues of
    S1 S2 are those of M: real and >= 0. Taking them from `eigh(M)` is exact up to rounding and
    stays real even when S1, S2 are singular, which they always are for FID on a small validation
    set (250 images, 2048 features: rank <= 249). `scipy.linalg.sqrtm(S1 @ S2)`, pytorch-fid's
    route, works on a non-symmetric matrix whose square root may not exist for singular input; it
    then returns complex values with spurious imaginary parts that pytorch-fid has to discard or
    regularise with an eps * I offset. Tiny negative eigenvalues from rounding are clipped to 0.
    """
    sqrt_sigma1 = _sqrt_psd(sigma1)
    middle = sqrt_sigma1 @ sigma2 @ sqrt_sigma1
    middle = 0.5 * (middle + middle.T)  # exact symmetry for eigh
    return float(np.sqrt(np.clip(np.linalg.eigvalsh(middle), 0.0, None)).sum())


def frechet_distance(mu1, sigma1, mu2, sigma2) -> float:
    mu1, mu2 = np.asarray(mu1, np.float64), np.asarray(mu2, np.float64)
    sigma1, sigma2 = (
        np.atleast_2d(sigma1).astype(np.float64),
        np.atleast_2d(sigma2).astype(np.float64),
    )
    if mu1.shape != mu2.shape or sigma1.shape != sigma2.shape:
        raise ValueError("the two distributions have different dimensions")
    diff = mu1 - mu2
    return float(
        diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2.0 * trace_sqrt_product(sigma1, sigma2)
    )


def _mean_and_scaled_centred(features) -> tuple[np.ndarray, np.ndarray]:
    """(mean, A) with A = (X - mean) / sqrt(n - 1), so that A^T A is the ddof=1 covariance."""
    features = np.asarray(features, np.float64)
    if features.ndim != 2 or features.shape[0] < 2:
        raise ValueError(f"need (N >= 2, D) features, got shape {features.shape}")
    mean = features.mean(axis=0)
    return mean, (features - mean) / np.sqrt(features.shape[0] - 1)


def frechet_distance_low_rank(features1, features2) -> float:
    """The Frechet distance of (n1, D) and (n2, D) features without forming any D x D matrix.

    With A, B the centred features divided by sqrt(n - 1) (rows = samples), S1 = A^T A and
    S2 = B^T B, so Tr(S1) = ||A||_F^2, Tr(S2) = ||B||_F^2, and

        Tr((S1 S2)^(1/2)) = ||A B^T||_*   (sum of the singular values of the n1 x n2 matrix A B^T).

    Exact, not an approximation: XY and YX have the same nonzero eigenvalues, so with X = A^T and
    Y = A B^T B, the nonzero eigenvalues of S1 S2 = A^T (A B^T B) are those of
    (A B^T B) A^T = M M^T with M = A B^T, i.e. the squared singular values s_i^2 of M. S1 S2 is
    similar to the PSD S1^(1/2) S2 S1^(1/2), so (S1 S2)^(1/2) has eigenvalues sqrt(s_i^2) = s_i
    (and zeros), whose sum is its trace. Costs O(n1 n2 D) for M plus an SVD of n1 x n2, against
    O((n1 + n2) D^2 + D^3) through the covariances.
    """
    mu1, a = _mean_and_scaled_centred(features1)
    mu2, b = _mean_and_scaled_centred(features2)
    if mu1.shape != mu2.shape:
        raise ValueError("the two feature sets have different dimensions")
    diff = mu1 - mu2
    nuclear_norm = np.linalg.svd(a @ b.T, compute_uv=False).sum()
    return float(diff @ diff + np.sum(a * a) + np.sum(b * b) - 2.0 * nuclear_norm)


def frechet_distance_of_features(features1, features2) -> float:
    """The Frechet distance of two (n, D) feature sets (covariances with ddof=1, like pytorch-fid).

    Rule: `frechet_distance_low_rank` when n1 + n2 <= D, otherwise `frechet_distance` on the
    covariances. Both are exact; the rule only picks the cheaper one. With n1 + n2 <= D the low-rank
    route works on matrices no larger than n x D and n x n instead of D x D (250 + 250 images with
    2048-d Inception or 512-d ResNet-18 features both qualify) and, as a bonus, never takes square
    roots of the D - n rounding-noise eigenvalues of the singular covariances. Past that, n x n is
    no longer smaller than D x D, and the covariance route is pytorch-fid's own.
    """
    n1, n2 = np.shape(features1)[0], np.shape(features2)[0]
    if n1 + n2 <= np.shape(features1)[-1]:
        return frechet_distance_low_rank(features1, features2)
    return frechet_distance(*feature_statistics(features1), *feature_statistics(features2))


# --------------------------------------------------------------------------------------------
# Feature extractors: each maps an RGB batch in [0, 1], (N, H, W, 3), to (N, D) features on device.


@dataclasses.dataclass(frozen=True)
class FeatureExtractor:
    """A named, jitted RGB -> features function; `metric_name` is what the distance is called."""

    metric_name: str
    features: Callable[[jax.Array], jax.Array]
    description: str


IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], np.float32)


@functools.partial(jax.jit, static_argnames="image_size")
def resnet18_features(resnet_variables, rgb, image_size: int = 224):
    """(N, 512) global-average-pooled ImageNet ResNet-18 features of RGB in [0, 1], (N, H, W, 3).

    Module-level and jitted with the variables as an argument: one compiled program per input
    shape, shared by every extractor, and no weights folded into it as constants (closed-over
    weights would be baked in, which XLA:CPU spends seconds to minutes constant-folding).
    """
    from mtcolor.models import ResNet18

    rgb = rgb.astype(jnp.float32)
    if rgb.shape[1:3] != (image_size, image_size):
        rgb = jax.image.resize(
            rgb, (rgb.shape[0], image_size, image_size, 3), method="bilinear", antialias=True
        )
    x = (rgb - IMAGENET_MEAN) / IMAGENET_STD
    feature_map = ResNet18(in_channels=3).apply(resnet_variables, x, train=False)
    return feature_map.mean(axis=(1, 2))


def resnet18_feature_extractor(resnet_variables, image_size: int = 224) -> FeatureExtractor:
    """Global-average-pooled ResNet-18 (3-channel ImageNet weights) features of RGB images.

    Images are resized (bilinear, with antialiasing) to `image_size` and normalized with the
    ImageNet mean/std, as the weights were trained. (The FID extractor is
    `mtcolor.eval.inception.fid_feature_extractor`.)
    """
    device_variables = jax.device_put(resnet_variables)
    return FeatureExtractor(
        metric_name="frechet_resnet18_distance",
        features=lambda rgb: resnet18_features(device_variables, rgb, image_size=image_size),
        description="Frechet distance of 512-d pooled ImageNet ResNet-18 features (not an FID)",
    )
