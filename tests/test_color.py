"""mtcolor.data.color against skimage.color (an independent implementation of the same
definition)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from skimage import color as skcolor

from mtcolor.data import color


@pytest.fixture(scope="module")
def million_colors():
    rng = np.random.default_rng(0)
    rgb = rng.random((1_000_000, 3))
    # Include the cube's corners and edges, where the piecewise branches switch.
    corners = np.array(np.meshgrid([0, 1], [0, 1], [0, 1])).reshape(3, -1).T
    return np.concatenate([rgb, corners, np.linspace(0, 1, 3 * 301).reshape(-1, 3)])


def test_rgb_to_lab_matches_skimage_on_a_million_colors(million_colors):
    reference = skcolor.rgb2lab(million_colors)
    ours32 = color.rgb_to_lab(million_colors.astype(np.float32))
    assert ours32.dtype == np.float32
    # float32 inputs and arithmetic: values up to ~100 carry ~1e-5 relative rounding.
    assert np.abs(ours32 - reference).max() < 1e-3
    ours64 = color.rgb_to_lab(million_colors)
    assert ours64.dtype == np.float64
    assert np.abs(ours64 - reference).max() < 1e-9


def test_uint8_paths_match_skimage():
    rng = np.random.default_rng(1)
    rgb = rng.integers(0, 256, (1_000_000, 3), dtype=np.uint8)
    reference = skcolor.rgb2lab(rgb)  # skimage scales uint8 by 1/255
    assert np.abs(color.rgb_to_lab(rgb) - reference).max() < 1e-3
    normalized = color.rgb_uint8_to_lab_normalized(rgb)
    assert normalized.dtype == np.float32
    np.testing.assert_allclose(normalized[:, 0], reference[:, 0] / 50 - 1, atol=1e-3 / 50)
    np.testing.assert_allclose(normalized[:, 1:], reference[:, 1:] / 110, atol=1e-3 / 110)
    L_norm, ab_norm = color.rgb_uint8_to_normalized_L_ab(rgb.reshape(1000, 1000, 3))
    assert L_norm.shape == (1000, 1000, 1) and ab_norm.shape == (1000, 1000, 2)
    assert L_norm.flags.c_contiguous and ab_norm.flags.c_contiguous
    np.testing.assert_allclose(L_norm.reshape(-1), reference[:, 0] / 50 - 1, atol=1e-3 / 50)
    np.testing.assert_allclose(ab_norm.reshape(-1, 2), reference[:, 1:] / 110, atol=1e-3 / 110)


def test_known_values():
    # Hand-checked anchors: white L=100 a=b=0; black all 0; sRGB red ~ (53.24, 80.09, 67.20).
    lab = color.rgb_to_lab(np.array([[1.0, 1, 1], [0, 0, 0], [1, 0, 0]], np.float32))
    # skimage's matrix rows do not sum exactly to the white point: a, b of white are ~0.005.
    np.testing.assert_allclose(lab[0], [100, 0, 0], atol=0.01)
    np.testing.assert_allclose(lab[1], [0, 0, 0], atol=1e-6)
    np.testing.assert_allclose(lab[2], [53.24, 80.09, 67.20], atol=0.01)


def test_round_trip_within_half_a_level(million_colors):
    rgb = million_colors.astype(np.float32)
    back = color.lab_to_rgb(color.rgb_to_lab(rgb))
    assert np.abs(back - rgb).max() < 0.5 / 255


def test_lab_to_rgb_matches_skimage_including_out_of_gamut():
    rng = np.random.default_rng(2)
    # Whole normalized box the generator's tanh can produce: mostly out of the sRGB gamut.
    lab = np.stack(
        [
            rng.uniform(0, 100, 200_000),
            rng.uniform(-110, 110, 200_000),
            rng.uniform(-110, 110, 200_000),
        ],
        -1,
    )
    with pytest.warns(UserWarning):  # skimage warns about the negative Z values it clips
        reference = skcolor.lab2rgb(lab)
    ours = color.lab_to_rgb(lab.astype(np.float32))
    assert np.isfinite(ours).all() and ours.min() >= 0 and ours.max() <= 1
    assert np.abs(ours - reference).max() < 1e-4


def test_extreme_lab_never_nan():
    lab = np.array([[-50, 500, -500], [200, -500, 500], [0, 0, 0], [100, 127, -128]], np.float32)
    assert np.isfinite(color.lab_to_rgb(lab)).all()
    assert np.isfinite(np.asarray(color.lab_to_rgb_jax(lab))).all()


def test_normalization_bounds_and_inverse(million_colors):
    lab = color.rgb_to_lab(million_colors.astype(np.float32))
    L_norm, ab_norm = color.normalize_lab(lab)
    assert L_norm.shape[-1] == 1 and ab_norm.shape[-1] == 2
    assert L_norm.min() >= -1 - 1e-6 and L_norm.max() <= 1 + 1e-5
    assert np.abs(ab_norm).max() <= 1.0  # every sRGB colour fits ab/110
    np.testing.assert_allclose(color.denormalize_lab(L_norm, ab_norm), lab, atol=1e-4)
    # The paper's definition written out by hand.
    np.testing.assert_allclose(L_norm[..., 0], lab[..., 0] / 50 - 1, atol=1e-6)


def test_jax_versions_match_skimage():
    rng = np.random.default_rng(3)
    rgb = rng.random((100_000, 3))
    lab_ref = skcolor.rgb2lab(rgb)
    lab = np.asarray(jax.jit(color.rgb_to_lab_jax)(rgb.astype(np.float32)))
    assert np.abs(lab - lab_ref).max() < 1e-3
    back = np.asarray(jax.jit(color.lab_to_rgb_jax)(lab_ref.astype(np.float32)))
    assert np.abs(back - rgb).max() < 0.5 / 255


def test_lab_norm_to_rgb_jax_out_of_gamut_values_and_gradients_finite():
    rng = np.random.default_rng(4)
    L_norm = jnp.asarray(rng.uniform(-1.2, 1.2, (4, 8, 8, 1)), jnp.float32)
    ab_norm = jnp.asarray(rng.uniform(-1.5, 1.5, (4, 8, 8, 2)), jnp.float32)
    rgb = color.lab_norm_to_rgb_jax(L_norm, ab_norm)
    assert rgb.shape == (4, 8, 8, 3)
    assert bool(jnp.isfinite(rgb).all()) and float(rgb.min()) >= 0 and float(rgb.max()) <= 1
    grad = jax.grad(lambda ab: color.lab_norm_to_rgb_jax(L_norm, ab).sum())(ab_norm)
    assert bool(jnp.isfinite(grad).all())
    grad_rgb = jax.grad(lambda x: color.rgb_to_lab_jax(x).sum())(
        jnp.asarray(rng.random((64, 3)), jnp.float32)
    )
    assert bool(jnp.isfinite(grad_rgb).all())
    # Black has L=0 where the cube root's derivative is infinite in the unused branch.
    grad_black = jax.grad(lambda x: color.rgb_to_lab_jax(x).sum())(jnp.zeros((2, 3)))
    assert bool(jnp.isfinite(grad_black).all())


@pytest.mark.filterwarnings("ignore:Conversion from CIE-LAB:UserWarning")  # out of gamut, clipped
def test_image_grid_rows_are_skimage_colours_of_the_denormalized_lab():
    # The validation grid's rows (grayscale input, prediction, ground truth), computed on the host;
    # reference: skimage's lab2rgb of L = 50 (L_norm + 1), ab = 110 ab_norm, clipped to [0, 1].
    from mtcolor.tasks.colorization import colorization_rows

    rng = np.random.default_rng(6)
    L_norm = rng.uniform(-1.0, 1.0, (3, 4, 5, 1)).astype(np.float32)
    ab_pred, ab_true = (rng.uniform(-0.6, 0.6, (3, 4, 5, 2)).astype(np.float32) for _ in range(2))

    def reference(ab):
        lab = np.concatenate([50.0 * (L_norm + 1.0), 110.0 * ab], axis=-1).astype(np.float64)
        return np.clip(skcolor.lab2rgb(lab), 0.0, 1.0)

    rows = colorization_rows(jnp.asarray(L_norm), jnp.asarray(ab_pred), ab_true)
    wants = [reference(np.zeros_like(ab_pred)), reference(ab_pred), reference(ab_true)]
    for row, want in zip(rows, wants, strict=True):
        assert isinstance(row, np.ndarray) and row.shape == (3, 4, 5, 3)
        np.testing.assert_allclose(row, want, atol=2e-4)
    # The grayscale row is neutral: R = G = B.
    np.testing.assert_allclose(rows[0][..., 0], rows[0][..., 2], atol=1e-3)
