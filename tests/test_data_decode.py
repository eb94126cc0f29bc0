"""mtcolor.data.decode: every bad-input reason, every image mode to RGB, EXIF, resize modes."""

import io
import os

import numpy as np
import pytest
from PIL import Image
from test_data_files import bad_files, colorful, encode

from mtcolor.data import decode


@pytest.mark.parametrize("reason", sorted(bad_files()))
def test_each_bad_file_gets_its_reason(reason):
    with pytest.raises(decode.BadImageError) as info:
        decode.decode_image(bad_files()[reason], size=32)
    assert info.value.reason == reason


def test_configurable_pixel_limit_and_min_side():
    png = encode(colorful(0, 48, 40), "PNG")
    with pytest.raises(decode.BadImageError, match="decompression_bomb"):
        decode.decode_image(png, size=32, max_image_pixels=48 * 40 - 1)
    assert decode.decode_image(png, size=32, max_image_pixels=48 * 40).shape == (32, 32, 3)
    with pytest.raises(decode.BadImageError, match="too_small"):
        decode.decode_image(png, size=32, min_image_side=41)


def test_unreadable_files(tmp_path):
    # Running as root defeats chmod 000, so use what any user hits: a vanished file, a directory.
    with pytest.raises(decode.BadImageError) as info:
        decode.read_file(str(tmp_path / "vanished.JPEG"))
    assert info.value.reason == "unreadable"
    os.mkdir(tmp_path / "dir.JPEG")
    with pytest.raises(decode.BadImageError) as info:
        decode.read_file(str(tmp_path / "dir.JPEG"))
    assert info.value.reason == "unreadable"
    if os.geteuid() != 0:
        locked = tmp_path / "locked.JPEG"
        locked.write_bytes(encode(colorful(0), "JPEG"))
        locked.chmod(0)
        with pytest.raises(decode.BadImageError, match="unreadable"):
            decode.read_file(str(locked))


def _decode_one_pixel_image(image: Image.Image, fmt: str = "PNG", **kwargs) -> np.ndarray:
    """Decodes a constant image and returns its (constant) RGB colour."""
    rgb = decode.decode_image(encode(image, fmt, **kwargs), size=16, min_image_side=1)
    assert rgb.dtype == np.uint8 and rgb.shape == (16, 16, 3)
    return rgb[8, 8]


def test_modes_become_rgb_with_hand_computed_colours():
    size = (20, 20)
    assert list(_decode_one_pixel_image(Image.new("L", size, 77))) == [77, 77, 77]
    assert list(_decode_one_pixel_image(Image.new("1", size, 1))) == [255, 255, 255]
    # Alpha composited on white: (255, 0, 0) at alpha 0 -> white; at alpha 128 ->
    # 255 - 128 * 255/255 ...
    assert list(_decode_one_pixel_image(Image.new("RGBA", size, (255, 0, 0, 0)))) == [255, 255, 255]
    half = _decode_one_pixel_image(Image.new("RGBA", size, (255, 0, 0, 128)))
    expected_gb = round(255 * (1 - 128 / 255))  # white * (1 - alpha) + 0 * alpha
    assert (
        half[0] == 255
        and abs(int(half[1]) - expected_gb) <= 1
        and abs(int(half[2]) - expected_gb) <= 1
    )
    assert list(_decode_one_pixel_image(Image.new("LA", size, (10, 0)))) == [255, 255, 255]
    assert list(_decode_one_pixel_image(Image.new("LA", size, (10, 255)))) == [10, 10, 10]
    # Palette with a transparent index: a transparent pixel becomes white, an opaque one keeps its
    # colour.
    palette = Image.new("P", size, 1)
    palette.putpalette([0, 0, 255, 200, 100, 50] + [0] * 762)
    assert list(_decode_one_pixel_image(palette)) == [200, 100, 50]
    assert list(_decode_one_pixel_image(palette, transparency=1)) == [255, 255, 255]
    pa = Image.new("PA", size, (1, 255))
    pa.putpalette([0, 0, 255, 200, 100, 50] + [0] * 762)
    assert list(np.asarray(decode._to_rgb(pa))[0, 0]) == [200, 100, 50]
    # CMYK: no ink is white, full magenta + yellow is red.
    assert list(
        _decode_one_pixel_image(Image.new("CMYK", size, (0, 0, 0, 0)), "JPEG", quality=100)
    ) == [255, 255, 255]
    red = _decode_one_pixel_image(Image.new("CMYK", size, (0, 255, 255, 0)), "TIFF")
    assert list(red) == [255, 0, 0]


def test_sixteen_bit_grayscale_is_scaled_to_eight_bits():
    values = np.array([[0, 257 * 128, 65535, 257 * 10]], np.uint16).repeat(20, 0).repeat(5, 1)
    image = Image.fromarray(values)
    assert image.mode == "I;16"
    data = encode(image, "PNG")
    rgb = decode.decode_image(data, size=20, resize_mode="stretch")
    np.testing.assert_array_equal(rgb[10, [2, 7, 12, 17], 0], [0, 128, 255, 10])
    assert (rgb[..., 0] == rgb[..., 1]).all() and (rgb[..., 1] == rgb[..., 2]).all()
    as_int32 = Image.fromarray(values.astype(np.int32))  # mode "I"
    np.testing.assert_array_equal(
        np.asarray(decode._to_rgb(as_int32))[10, [2, 7, 12, 17], 0], [0, 128, 255, 10]
    )


def test_exif_orientation_is_applied():
    # Stored 40 wide x 20 high, left half red, right half blue; orientation 6 = display rotated
    # 90 degrees clockwise, so the viewer sees 20 x 40 with red on top.
    array = np.zeros((20, 40, 3), np.uint8)
    array[:, :20] = (255, 0, 0)
    array[:, 20:] = (0, 0, 255)
    exif = Image.Exif()
    exif[0x0112] = 6
    data = encode(Image.fromarray(array), "JPEG", exif=exif, quality=95)
    rgb = decode.decode_image(data, size=32, min_image_side=1).astype(int)
    assert rgb[2, 16, 0] > 200 and rgb[2, 16, 2] < 60  # top: red
    assert rgb[29, 16, 2] > 200 and rgb[29, 16, 0] < 60  # bottom: blue


def test_stretch_is_the_tutorials_bicubic_resize():
    image = colorful(5, 60, 30)
    expected = np.asarray(image.resize((32, 32), Image.BICUBIC))
    got = decode.decode_image(encode(image, "PNG"), size=32, resize_mode="stretch")
    np.testing.assert_array_equal(got, expected)


def test_shorter_side_crop_matches_resize_then_center_crop():
    image = colorful(6, 90, 60)
    # torchvision's Resize(32) + CenterCrop(32), written with PIL: 48x32 then crop 8..40.
    resized = np.asarray(image.resize((48, 32), Image.BICUBIC)).astype(int)
    expected = resized[:, 8:40]
    got = decode.decode_image(
        encode(image, "PNG"), size=32, resize_mode="shorter_side_crop"
    ).astype(int)
    assert got.shape == (32, 32, 3)
    assert np.abs(got - expected).mean() < 3.0  # same geometry; rounding of the scaled size aside
    # A distinctly different geometry from stretching.
    stretched = np.asarray(image.resize((32, 32), Image.BICUBIC)).astype(int)
    assert np.abs(got - stretched).mean() > 3 * np.abs(got - expected).mean()


def test_jpeg_draft_is_close_to_full_decode_and_optional():
    array = np.asarray(colorful(7, 16, 16).resize((512, 512), Image.BICUBIC))  # smooth, large
    data = encode(Image.fromarray(array), "JPEG", quality=95)
    full = decode.decode_image(data, size=64, jpeg_draft=False).astype(int)
    expected = np.asarray(
        Image.open(io.BytesIO(data)).convert("RGB").resize((64, 64), Image.BICUBIC)
    ).astype(int)
    np.testing.assert_array_equal(full, expected)
    drafted = decode.decode_image(data, size=64, jpeg_draft=True).astype(int)
    assert np.abs(drafted - full).mean() < 2.0  # measured 0.7 levels


def test_unknown_resize_mode():
    with pytest.raises(ValueError, match="resize_mode"):
        decode.decode_image(encode(colorful(0), "PNG"), size=16, resize_mode="squash")
