"""colorize keeps the input's size and CIELAB L (checked with skimage) for every kind of input."""

import flax.linen as nn
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image
from skimage.color import rgb2lab

from mtcolor import colorize, full_resolution

# 8-bit output: half a code value in R, G, B moves L by up to ~0.2 in mid-dark tones (measured
# max 0.21 on random colours), so "equal to within rounding" means max |dL| < 0.3, mean < 0.1.
MAX_DL, MEAN_DL = 0.3, 0.1


class WildColors(nn.Module):
    """Large, varied ab that is often out of the sRGB gamut: stresses the L-preserving
    recombination."""

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
        Image.fromarray(rng.integers(0, 256, (24 + i, 40, 3), dtype=np.uint8)).save(
            tmp_path / f"p{i}.png"
        )
    written, skipped = colorize.colorize_files(
        colorizer, sorted(tmp_path.glob("*.png")), tmp_path / "out", compare=True, progress=True
    )
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


def _png_declaring(path, width, height):
    """A valid 1-bit grayscale PNG of width x height zeros: a few hundred KB on disk (deflate packs
    the zero rows about 1000:1) for an image that needs gigabytes once decoded."""
    import struct
    import zlib

    def chunk(kind, data):
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    row = bytes(1 + (width + 7) // 8)  # filter byte + packed bits
    compressor = zlib.compressobj(9)
    idat = b"".join(compressor.compress(row) for _ in range(height)) + compressor.flush()
    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")
    )


def test_a_decompression_bomb_is_refused_and_the_photos_come_out(tmp_path, tiny_multitask_run):
    """The real command on a trained run: a 40000 x 40000 PNG (1.6 gigapixels: 19 GB as float RGB,
    4.8 GB even as 8-bit) among ordinary photos and one large accepted photo. The bomb is refused
    from its header with one line naming it and its size; every photo is written; the process's
    peak resident memory stays under 1.5 GB (measured 0.75-0.85 GB, most of it JAX and the
    model; 0.72 GB with the small photos alone)."""
    import os
    import subprocess
    import sys

    workdir, _ = tiny_multitask_run
    photos = tmp_path / "photos"
    photos.mkdir()
    rng = np.random.default_rng(3)
    for i in range(3):
        Image.fromarray(rng.integers(0, 256, (48 + i, 64, 3), dtype=np.uint8)).save(
            photos / f"a{i}.jpg"
        )
    _png_declaring(photos / "bomb.png", 40000, 40000)
    assert (photos / "bomb.png").stat().st_size < 400_000
    large = np.broadcast_to(
        (np.arange(3000) % 256).astype(np.uint8)[None, :, None], (2000, 3000, 3)
    )
    Image.fromarray(np.ascontiguousarray(large)).save(photos / "z_large.png")
    out = tmp_path / "out"
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    # The peak is VmHWM of this process's own memory: getrusage's ru_maxrss would also count the
    # forked pytest process's size from before the exec.
    script = (
        "import atexit, re, runpy, sys\n"
        "peak = lambda: re.search(r'VmHWM:\\s+(\\d+)', open('/proc/self/status').read()).group(1)\n"
        "atexit.register(lambda: print('PEAK_KB', peak()))\n"
        f"sys.argv = ['colorize', {str(photos)!r}, '--checkpoint', {str(workdir)!r}, "
        f"'--out', {str(out)!r}]\n"
        "runpy.run_module('mtcolor.colorize', run_name='__main__')\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", script],
        cwd=root,
        capture_output=True,
        text=True,
        timeout=600,
        env=dict(os.environ, JAX_PLATFORMS="cpu"),
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert sorted(p.name for p in out.iterdir()) == ["a0.png", "a1.png", "a2.png", "z_large.png"]
    skipped = [line for line in proc.stderr.splitlines() if line.startswith("skipped")]
    assert skipped == [
        f"skipped {photos / 'bomb.png'}: declares 40000 x 40000 = 1600 megapixels, "
        "above the limit of 200 (--max_pixels)"
    ]
    with Image.open(out / "z_large.png") as image:
        assert image.size == (3000, 2000)
    peak_gb = int(proc.stdout.split("PEAK_KB")[1].split()[0]) / 2**20
    assert peak_gb < 1.5, peak_gb


def test_bands_equal_the_whole_resize():
    """Row bands of the upsampled ab (Pillow's resize with a box) equal the rows of one resize."""
    small = np.random.default_rng(4).uniform(-1, 1, (32, 32)).astype(np.float32)
    whole = full_resolution.resize_channel(small, (300, 200))
    bands = np.concatenate(
        [
            full_resolution.resize_rows(small, 300, 200, start, min(start + 37, 200))
            for start in range(0, 200, 37)
        ]
    )
    np.testing.assert_allclose(bands, whole, atol=1e-5)


def test_bad_arguments_are_reported_before_loading(tmp_path):
    problems = colorize.argument_problems(
        [str(tmp_path / "nope.jpg")], str(tmp_path / "run"), "last", 0, -1
    )
    assert [p.split(":")[0] for p in problems] == [
        repr(str(tmp_path / "nope.jpg")),
        f"--checkpoint={str(tmp_path / 'run')!r}",
        "--step='last'",
        "--batch_size=0",
        "--max_pixels=-1",
    ]
