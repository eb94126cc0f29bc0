"""Frechet distance between two sets of image features, and the feature extractors behind it.

FD = |mu1 - mu2|^2 + Tr(S1 + S2 - 2 (S1 S2)^(1/2))  (Dowson & Landau; Heusel et al. 2017).

Two extractors, reported under different names so that they are never confused:
- "fid": Inception-v3 pool3 (2048-d) features from the standard FID weights
  (pt_inception-2015-12-05-6726825d.pth), see `mtcolor.eval.inception`. Only this is an FID.
- "frechet_resnet18_distance": 512-d global-average-pooled features of the ImageNet ResNet-18 the
  run was initialised from (the 3-channel torchvision weights, on RGB images). Useful to compare
  runs with each other; its values are on a different scale from published FIDs.
"""

from __future__ import annotations

import dataclasses
from typing import Callable

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
    sigma1, sigma2 = np.atleast_2d(sigma1).astype(np.float64), np.atleast_2d(sigma2).astype(np.float64)
    if mu1.shape != mu2.shape or sigma1.shape != sigma2.shape:
        raise ValueError("the two distributions have different dimensions")
    diff = mu1 - mu2
    return float(
        diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2.0 * trace_sqrt_product(sigma1, sigma2)
    )


def frechet_distance_of_features(features1, features2) -> float:
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


def resnet18_feature_extractor(resnet_variables, image_size: int = 224) -> FeatureExtractor:
    """Global-average-pooled ResNet-18 (3-channel ImageNet weights) features of RGB images.

    Images are resized (bilinear, with antialiasing) to `image_size` and normalized with the
    ImageNet mean/std, as the weights were trained.
    """
    from mtcolor.models import ResNet18

    model = ResNet18(in_channels=3)

    @jax.jit
    def features(rgb):
        rgb = rgb.astype(jnp.float32)
        if rgb.shape[1:3] != (image_size, image_size):
            rgb = jax.image.resize(
                rgb, (rgb.shape[0], image_size, image_size, 3), method="bilinear", antialias=True
            )
        x = (rgb - IMAGENET_MEAN) / IMAGENET_STD
        feature_map = model.apply(resnet_variables, x, train=False)
        return feature_map.mean(axis=(1, 2))

    return FeatureExtractor(
        metric_name="frechet_resnet18_distance",
        features=features,
        description="Frechet distance of 512-d pooled ImageNet ResNet-18 features (not an FID)",
    )


def inception_feature_extractor(inception_variables) -> FeatureExtractor:
    """Standard FID features: Inception-v3 pool3 (2048-d), inputs resized to 299 and in [-1, 1]."""
    from mtcolor.eval.inception import FIDInceptionV3

    model = FIDInceptionV3()

    @jax.jit
    def features(rgb):
        return model.apply(inception_variables, rgb.astype(jnp.float32))

    return FeatureExtractor(
        metric_name="fid",
        features=features,
        description="FID: Inception-v3 pool3 features, pytorch-fid weights",
    )
