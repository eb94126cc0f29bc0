"""colorize keeps the input's size and CIELAB L (checked with skimage) for every kind of input."""

import flax.linen as nn
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image
from skimage.color import rgb2lab

from mtcolor import colorize

# 8-bit output: half a code value in R, G, B moves L by up to ~0.2 in mid-dark tones (measured
# max 0.21 on random colours), so "equal to within rounding" means max |dL| < 0.3, mean < 0.1.
MAX_DL, MEAN_DL = 0.3, 0.1


class WildColors(nn.Module):
    """Large, varied ab that is often out of the sRGB gamut: stresses the L-preserving recombination."""

    @nn.compact
    def __call__(self, L, train=False):
        return {"colorization": jnp.concatenate([jnp.sin(7 * L), jnp.cos(5 * L)], -1) * 0.9}


class GentleColors(nn.Module):
    @nn.compact
    def __call__(self, L, train=False):
        ab = jnp.concatenate([0.1 * L + 0.05, -0.1 * L], -1)
        # A multi-task model's named outputs.
        return {"colorization": ab, "classification": jnp.zeros((L.shape[0], 5))}


@pytest.fixture(scope="module")
def wild():
    return colorize.PhotoColorizer(WildColors(), {}, 32, batch_size=2)


def _L(rgb_float):
    return rgb2lab(np.asarray(rgb_float, np.float64))[..., 0]


def _check_output(path, reference_rgb, size):
    with Image.open(path) as image:
        assert image.size == size
        output = np.asarray(image.convert("RGB"), np.float64) / 255.0
    dl = np.abs(_L(output) - _L(reference_rgb))
    assert dl.max() < MAX_DL and dl.mean() < MEAN_DL, (dl.max(), dl.mean())
    return output


def _chroma(rgb):
    lab = rgb2lab(rgb)
    return np.hypot(lab[..., 1], lab[..., 2]).mean()


def test_recombine_keeps_L_without_quantization(wild):
    rgb = np.random.default_rng(0).uniform(0, 1, (20, 30, 3)).astype(np.float32)
    output = wild.colorize_arrays([rgb])[0]
    assert output.shape == rgb.shape
    # Float output: only the in-gamut slack remains (plain clipping would move L by several units).
    assert np.abs(_L(output) - _L(rgb)).max() < 0.1
    assert _chroma(output) > 20  # and it really is coloured


def test_rgb_grayscale_rgba_cmyk_16bit(tmp_path, wild):
    rng = np.random.default_rng(1)
    rgb8 = rng.integers(0, 256, (37, 53, 3), dtype=np.uint8)
    Image.fromarray(rgb8).save(tmp_path / "color.png")
    gray8 = rng.integers(0, 256, (41, 29), dtype=np.uint8)
    Image.fromarray(gray8, "L").save(tmp_path / "gray.jpg", quality=95)
    rgba = np.concatenate([rgb8, rng.integers(0, 256, (37, 53, 1), dtype=np.uint8)], -1)
    Image.fromarray(rgba, "RGBA").save(tmp_path / "alpha.png")
    Image.fromarray(rgb8).convert("CMYK").save(tmp_path / "cmyk.tif")
    gray16 = rng.integers(0, 65536, (33, 47), dtype=np.uint16)
    Image.fromarray(gray16).save(tmp_path / "deep.png")
    (tmp_path / "notes.txt").write_text("not an image")

    written, skipped = colorize.colorize_files(wild, [tmp_path], tmp_path / "out", progress=False)
    out = tmp_path / "out"
    assert [p.name for p, _ in skipped] == ["notes.txt"]
    assert len(written) == 5
    colored = _check_output(out / "color.png", rgb8 / 255.0, (53, 37))
    assert _chroma(colored) > 10
    with Image.open(tmp_path / "gray.jpg") as image:  # JPEG: compare to what was decoded
        gray_decoded = np.asarray(image, np.float64) / 255.0
    _check_output(out / "gray.png", np.repeat(gray_decoded[..., None], 3, -1), (29, 41))
    _check_output(out / "alpha.png", rgb8 / 255.0, (53, 37))
    with Image.open(out / "alpha.png") as image:
        assert image.mode == "RGBA"
        np.testing.assert_array_equal(np.asarray(image)[..., 3], rgba[..., 3])
    with Image.open(tmp_path / "cmyk.tif") as image:
        cmyk_as_rgb = np.asarray(image.convert("RGB"), np.float64) / 255.0
    _check_output(out / "cmyk.png", cmyk_as_rgb, (53, 37))
    # 16-bit input: L of the 16-bit values themselves, not of an 8-bit copy.
    _check_output(out / "deep.png", np.repeat((gray16 / 65535.0)[..., None], 3, -1), (47, 33))


def test_compare_and_batches_compile_once(tmp_path):
    colorizer = colorize.PhotoColorizer(GentleColors(), {}, 32, batch_size=2)
    rng = np.random.default_rng(2)
    for i in range(3):  # 3 images with batch 2: one full and one padded batch, same shape
        Image.fromarray(rng.integers(0, 256, (24 + i, 40, 3), dtype=np.uint8)).save(tmp_path / f"p{i}.png")
    written, skipped = colorize.colorize_files(colorizer, sorted(tmp_path.glob("*.png")), tmp_path / "out",
                                               compare=True, progress=True)
    assert not skipped and len(written) == 6
    with Image.open(tmp_path / "out" / "p1_compare.png") as image:
        assert image.size == (3 * 40, 25)
        side = np.asarray(image, np.float64) / 255.0
    original = np.asarray(Image.open(tmp_path / "p1.png"), np.float64) / 255.0
    np.testing.assert_allclose(side[:, 80:], original)  # right: the original
    assert _chroma(side[:, :40]) < 1.0  # left: the grayscale input
    assert colorizer._predict._cache_size() == 1


def test_huge_input_keeps_size_and_L(tmp_path):
    # 5000 x 4000 made cheaply: a gradient stored as uncompressed BMP.
    width, height = 5000, 4000
    row = (np.arange(width) * 255 // (width - 1)).astype(np.uint8)
    gray = np.broadcast_to(row, (height, width))
    Image.fromarray(np.ascontiguousarray(gray), "L").save(tmp_path / "huge.bmp")
    colorizer = colorize.PhotoColorizer(GentleColors(), {}, 32, batch_size=1)
    written, _ = colorize.colorize_files(colorizer, [tmp_path / "huge.bmp"], tmp_path / "out")
    with Image.open(written[0]) as image:
        assert image.size == (width, height)
        sample = np.asarray(image.convert("RGB"))[::397] / 255.0
    reference = np.repeat((gray[::397] / 255.0)[..., None], 3, -1)
    dl = np.abs(_L(sample) - _L(reference))
    assert dl.max() < MAX_DL and dl.mean() < MEAN_DL
    assert _chroma(sample) > 3  # the gentle model's colour is there
