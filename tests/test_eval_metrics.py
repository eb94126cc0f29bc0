"""Metrics against independent references: skimage, scipy, closed forms and hand-computed values."""

import subprocess
import sys

import jax.numpy as jnp
import numpy as np
import pytest
import scipy.linalg
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from mtcolor.eval import frechet, metrics


def _random_pairs(seed, n=3, size=32):
    rng = np.random.default_rng(seed)
    truth = rng.uniform(0, 1, (n, size, size, 3)).astype(np.float32)
    # Correlated prediction so SSIM is far from 0 and not trivially 1.
    pred = np.clip(truth + rng.normal(0, 0.1, truth.shape), 0, 1).astype(np.float32)
    return pred, truth


def test_psnr_matches_skimage():
    pred, truth = _random_pairs(0)
    ours = np.asarray(metrics.psnr(jnp.asarray(pred), jnp.asarray(truth)))
    reference = [peak_signal_noise_ratio(t, p, data_range=1) for p, t in zip(pred, truth)]
    # float32 MSE on device vs float64 in skimage: agreement to ~1e-4 dB.
    np.testing.assert_allclose(ours, reference, atol=1e-3)


def test_ssim_matches_skimage_gaussian_convention():
    pred, truth = _random_pairs(1, size=48)
    ours = np.asarray(metrics.ssim(jnp.asarray(pred), jnp.asarray(truth)))
    reference = [
        structural_similarity(
            t,
            p,
            gaussian_weights=True,
            sigma=1.5,
            use_sample_covariance=False,
            data_range=1,
            channel_axis=-1,
        )
        for p, t in zip(pred, truth)
    ]
    assert 0.2 < min(reference) < max(reference) < 0.95  # a non-trivial regime
    # Same window (11 taps, sigma 1.5), same valid-region mean; only float32 rounding differs.
    np.testing.assert_allclose(ours, reference, atol=2e-4)


def test_colorfulness_gray_is_zero():
    gray = np.tile(np.linspace(0, 1, 32, dtype=np.float32)[None, :, None, None], (2, 32, 1, 3))
    np.testing.assert_allclose(np.asarray(metrics.colorfulness(jnp.asarray(gray))), 0.0, atol=1e-4)


def test_colorfulness_red_blue_halves_hand_computed():
    # Half pure red (255,0,0), half pure blue (0,0,255):
    # rg = R-G: red 255, blue 0       -> mean 127.5,  std 127.5
    # yb = (R+G)/2-B: red 127.5, blue -255 -> mean -63.75, std 191.25
    # C = sqrt(127.5^2 + 191.25^2) + 0.3 * sqrt(127.5^2 + 63.75^2)
    #   = sqrt(52832.8125) + 0.3 * sqrt(20320.3125) = 229.85389 + 0.3 * 142.54933 = 272.61869
    image = np.zeros((1, 8, 8, 3), np.float32)
    image[:, :, :4, 0] = 1.0
    image[:, :, 4:, 2] = 1.0
    value = float(metrics.colorfulness(jnp.asarray(image))[0])
    assert value == pytest.approx(272.61869, abs=1e-3)


def test_l1_x100():
    truth = np.zeros((2, 4, 4, 2), np.float32)
    pred = np.full((2, 4, 4, 2), 0.25, np.float32)
    pred[1] = -0.5
    np.testing.assert_allclose(np.asarray(metrics.l1_x100(pred, truth)), [25.0, 50.0], rtol=1e-6)


def test_confusion_accuracy_per_class_with_mask():
    labels = np.array([0, 0, 1, 1, 2, 2, 0])
    preds = np.array([0, 1, 1, 1, 0, 2, 2])
    mask = np.array([1, 1, 1, 1, 1, 1, 0])  # the last example is padding
    counts = metrics.confusion_matrix(labels, preds, num_classes=4, mask=mask)
    expected = np.array([[1, 1, 0, 0], [0, 2, 0, 0], [1, 0, 1, 0], [0, 0, 0, 0]])
    np.testing.assert_array_equal(counts, expected)
    assert metrics.accuracy_from_confusion(counts) == pytest.approx(4 / 6)
    per_class = metrics.per_class_accuracy(counts)
    np.testing.assert_allclose(per_class[:3], [0.5, 1.0, 0.5])
    assert np.isnan(per_class[3])  # class without examples is not reported as 0 %
    logits = np.eye(3)[preds]
    assert metrics.accuracy(logits, labels, mask) == pytest.approx(4 / 6)


def test_mean_accumulator_masks_and_skips_inf():
    acc = metrics.MeanAccumulator()
    acc.update({"psnr": [10.0, np.inf, 30.0]}, mask=[1, 1, 1])
    acc.update({"psnr": [20.0, 99.0]}, mask=[1, 0])
    assert acc.result()["psnr"] == pytest.approx(20.0)
    assert acc.nonfinite_counts() == {"psnr": 1}


# --------------------------------------------------------------------------------------------
# Frechet distance


def test_frechet_distance_diagonal_closed_form():
    # For diagonal covariances, Tr(S1 + S2 - 2 sqrt(S1 S2)) = sum((sqrt(a) - sqrt(b))^2).
    rng = np.random.default_rng(0)
    a, b = rng.uniform(0.1, 3.0, 16), rng.uniform(0.1, 3.0, 16)
    mu1, mu2 = rng.normal(size=16), rng.normal(size=16)
    expected = np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(a) - np.sqrt(b)) ** 2)
    assert frechet.frechet_distance(mu1, np.diag(a), mu2, np.diag(b)) == pytest.approx(
        expected, rel=1e-10
    )


def test_frechet_distance_rotated_gaussians_closed_form():
    # Same diagonal case in a random orthonormal basis: the distance is basis-independent.
    rng = np.random.default_rng(1)
    q, _ = np.linalg.qr(rng.normal(size=(12, 12)))
    a, b = rng.uniform(0.1, 3.0, 12), rng.uniform(0.1, 3.0, 12)
    expected = np.sum((np.sqrt(a) - np.sqrt(b)) ** 2)
    got = frechet.frechet_distance(
        np.zeros(12), q @ np.diag(a) @ q.T, np.zeros(12), q @ np.diag(b) @ q.T
    )
    assert got == pytest.approx(expected, rel=1e-8)


def test_frechet_distance_matches_scipy_sqrtm_general_case():
    rng = np.random.default_rng(2)
    x, y = rng.normal(size=(200, 10)), rng.normal(size=(200, 10)) @ rng.normal(size=(10, 10))
    (m1, s1), (m2, s2) = frechet.feature_statistics(x), frechet.feature_statistics(y)
    covmean = scipy.linalg.sqrtm(s1 @ s2).real
    reference = np.sum((m1 - m2) ** 2) + np.trace(s1 + s2 - 2 * covmean)
    assert frechet.frechet_distance(m1, s1, m2, s2) == pytest.approx(reference, rel=1e-8)


def test_frechet_distance_singular_covariances_identical_sets_is_zero():
    # Fewer samples than dimensions (as FID on 250 images): rank-deficient covariances.
    # The ~44 zero eigenvalues come out as +-1e-15 and their square roots as ~3e-8 each, so the
    # result is 0 only to ~1e-6 relative to Tr(S) (~63 here); scipy's sqrtm route does the same.
    features = np.random.default_rng(3).normal(size=(20, 64))
    assert abs(frechet.frechet_distance_of_features(features, features)) < 1e-5
    shifted = frechet.frechet_distance_of_features(features, features + 0.5)
    assert shifted == pytest.approx(64 * 0.25, abs=1e-5)  # only the mean term remains


def _features_with_covariance(rng, n, dims, variances, mean):
    """(n, D) samples whose ddof=1 covariance is exactly diag(variances) on the first
    len(variances) coordinates and 0 elsewhere, and whose mean is `mean`: columns orthonormal
    and orthogonal to the all-ones vector (so already centred), scaled by sqrt((n - 1) v)."""
    k = len(variances)
    q, _ = np.linalg.qr(np.concatenate([np.ones((n, 1)), rng.normal(size=(n, k))], axis=1))
    features = np.zeros((n, dims))
    features[:, :k] = q[:, 1:] * np.sqrt((n - 1) * np.asarray(variances))
    return features + mean


def test_low_rank_frechet_closed_form_diagonal_rotated_and_disjoint():
    # n < D: singular covariances with known spectra, as FID on 250 images of 2048-d features.
    rng = np.random.default_rng(4)
    n, dims, k = 30, 96, 12
    a, b = rng.uniform(0.1, 3.0, k), rng.uniform(0.1, 3.0, k)
    mu1, mu2 = rng.normal(size=dims), rng.normal(size=dims)
    x, y = (
        _features_with_covariance(rng, n, dims, a, mu1),
        _features_with_covariance(rng, n + 7, dims, b, mu2),
    )
    np.testing.assert_allclose(np.cov(x, rowvar=False)[:k, :k], np.diag(a), atol=1e-12)  # control
    expected = np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(a) - np.sqrt(b)) ** 2)
    assert frechet.frechet_distance_low_rank(x, y) == pytest.approx(expected, rel=1e-12)
    # The same in a random orthonormal basis (rotate the samples: S -> Q S Q^T, mu -> Q mu).
    q, _ = np.linalg.qr(rng.normal(size=(dims, dims)))
    assert frechet.frechet_distance_low_rank(x @ q.T, y @ q.T) == pytest.approx(expected, rel=1e-12)
    # Disjoint supports: S1 S2 = 0, so FD = |mu1 - mu2|^2 + Tr(S1) + Tr(S2).
    y_disjoint = np.roll(y - mu2, k, axis=1) + mu2
    expected_disjoint = np.sum((mu1 - mu2) ** 2) + a.sum() + b.sum()
    assert frechet.frechet_distance_low_rank(x, y_disjoint) == pytest.approx(
        expected_disjoint, rel=1e-12
    )


@pytest.mark.parametrize("n1,n2,dims", [(40, 25, 128), (20, 20, 64), (300, 250, 16), (60, 90, 100)])
def test_low_rank_and_covariance_routes_agree(n1, n2, dims):
    # n < D (the low-rank case) and n > D (where the covariances are full rank).
    rng = np.random.default_rng(n1 + n2 + dims)
    x = rng.normal(size=(n1, dims)) @ rng.normal(size=(dims, dims)) + 1.0
    y = rng.normal(size=(n2, dims)) * rng.uniform(0.5, 2.0, dims)
    covariance_route = frechet.frechet_distance(
        *frechet.feature_statistics(x), *frechet.feature_statistics(y)
    )
    low_rank = frechet.frechet_distance_low_rank(x, y)
    # The covariance route takes square roots of the D - n rounding-noise eigenvalues (~1e-7 each
    # for |S| ~ 1e2 when n < D); the low-rank route has no such term.
    assert low_rank == pytest.approx(covariance_route, rel=1e-6)
    assert frechet.frechet_distance_of_features(x, y) == pytest.approx(covariance_route, rel=1e-6)
    if n1 > dims and n2 > dims:  # full-rank covariances: the two agree to rounding and with scipy
        s1, s2 = np.cov(x, rowvar=False), np.cov(y, rowvar=False)
        reference = np.sum((x.mean(0) - y.mean(0)) ** 2) + np.trace(
            s1 + s2 - 2 * scipy.linalg.sqrtm(s1 @ s2).real
        )
        assert low_rank == pytest.approx(reference, rel=1e-9)
        assert low_rank == pytest.approx(covariance_route, rel=1e-10)


def test_features_route_rule_picks_low_rank_below_dimension(monkeypatch):
    calls = []
    monkeypatch.setattr(
        frechet, "frechet_distance_low_rank", lambda *a: calls.append("low_rank") or 0.0
    )
    monkeypatch.setattr(frechet, "frechet_distance", lambda *a: calls.append("covariance") or 0.0)
    rng = np.random.default_rng(5)
    frechet.frechet_distance_of_features(rng.normal(size=(250, 2048)), rng.normal(size=(250, 2048)))
    frechet.frechet_distance_of_features(rng.normal(size=(8, 16)), rng.normal(size=(8, 16)))
    frechet.frechet_distance_of_features(rng.normal(size=(9, 16)), rng.normal(size=(8, 16)))
    assert calls == ["low_rank", "low_rank", "covariance"]


def test_low_rank_identical_sets_is_zero_to_rounding():
    features = np.random.default_rng(3).normal(size=(20, 64))
    assert abs(frechet.frechet_distance_low_rank(features, features)) < 1e-12 * 64
    with pytest.raises(ValueError, match="dimensions"):
        frechet.frechet_distance_low_rank(features, features[:, :32])


def test_resnet18_extractor_takes_weights_as_arguments():
    # Two extractors with different weights share one compiled program: weights closed over as
    # constants would give each its own compile (and a constant-folding bill on CPU).
    import jax
    from jax import monitoring

    from mtcolor.models import ResNet18

    model = ResNet18(in_channels=3)
    # A batch size of 3 that no other test uses, so the first call surely compiles (control).
    rgb = np.random.default_rng(6).uniform(0, 1, (3, 32, 32, 3)).astype(np.float32)
    variables = [model.init(jax.random.key(seed), jnp.zeros((1, 32, 32, 3))) for seed in (0, 1)]
    compiles = []

    def listener(event, duration, **kwargs):
        if event == "/jax/core/compile/backend_compile_duration":
            compiles.append(event)

    monitoring.register_event_duration_secs_listener(listener)
    try:
        first = np.asarray(
            frechet.resnet18_feature_extractor(variables[0], image_size=32).features(rgb)
        )
        count_after_first = len(compiles)
        second = np.asarray(
            frechet.resnet18_feature_extractor(variables[1], image_size=32).features(rgb)
        )
        count_after_second = len(compiles)
    finally:
        monitoring.unregister_event_duration_listener(listener)
    assert count_after_first > 0 and count_after_second == count_after_first
    # And the features are the model's (independent path: apply eagerly, normalize by hand).
    x = (rgb - np.array([0.485, 0.456, 0.406], np.float32)) / np.array(
        [0.229, 0.224, 0.225], np.float32
    )
    reference = np.asarray(model.apply(variables[1], x, train=False)).mean(axis=(1, 2))
    np.testing.assert_allclose(second, reference, rtol=1e-4, atol=1e-5)
    assert not np.allclose(first, second)


def test_metrics_import_pulls_no_tensorflow():
    code = (
        "import sys, mtcolor.eval.metrics, mtcolor.eval.frechet; print('tensorflow' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
