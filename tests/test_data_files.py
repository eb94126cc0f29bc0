"""Hand-made image files for the data tests (good ones and one of every bad-input case), imported by
the other test_data_* modules, and a check of those files with Pillow alone."""

import io
import os
import struct
import zlib

import numpy as np
from PIL import Image


def encode(image: Image.Image, fmt: str, **kwargs) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **kwargs)
    return buffer.getvalue()


def colorful(seed: int, width: int = 48, height: int = 40) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return (
        struct.pack(">I", len(data))
        + kind
        + data
        + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
    )


def png_bomb_header(side: int = 100_000) -> bytes:
    """A tiny PNG that declares side x side pixels (10 gigapixels by default)."""
    ihdr = struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", ihdr)
        + _png_chunk(b"IDAT", zlib.compress(b"\0" * 1000))
        + _png_chunk(b"IEND", b"")
    )


def bad_files() -> dict[str, bytes]:
    """{expected reason: file bytes} for every reason that is a property of the bytes."""
    png = encode(colorful(1), "PNG")
    jpeg = encode(colorful(2), "JPEG")
    corrupt = bytearray(png)
    corrupt[len(png) // 3 : len(png) // 3 + 64] = bytes(64)  # zeroes in IDAT: zlib/CRC failure
    return {
        "zero_byte": b"",
        "truncated": jpeg[: len(jpeg) // 2],
        "corrupt": bytes(corrupt),
        "not_an_image": b"<html>404 not found</html>\n",
        "too_small": encode(Image.new("RGB", (1, 1), (200, 30, 30)), "PNG"),
        "decompression_bomb": png_bomb_header(),
    }


def write_tree(root, classes: dict[str, int], *, seed: int = 0, ext: str = "JPEG") -> list[str]:
    """root/<class>/img<i>.<ext> colourful images; returns the paths in sorted order."""
    paths = []
    for c, (name, count) in enumerate(sorted(classes.items())):
        os.makedirs(os.path.join(root, name), exist_ok=True)
        for i in range(count):
            path = os.path.join(root, name, f"img{i:03d}.{ext}")
            colorful(seed * 1000 + c * 100 + i).save(
                path, "JPEG" if ext.upper() in ("JPEG", "JPG") else ext.upper()
            )
            paths.append(path)
    return sorted(paths)


# The fixtures themselves, checked with Pillow directly (so the pipeline tests test the pipeline).


def test_bad_files_fail_in_pillow_and_good_ones_load():
    import pytest
    from PIL import UnidentifiedImageError

    files = bad_files()
    for reason in ("truncated", "corrupt"):
        with pytest.raises(OSError):
            Image.open(io.BytesIO(files[reason])).load()
    with pytest.raises(UnidentifiedImageError):
        Image.open(io.BytesIO(files["not_an_image"]))
    with pytest.raises(Image.DecompressionBombError):
        Image.open(io.BytesIO(files["decompression_bomb"]))
    assert Image.open(io.BytesIO(files["too_small"])).size == (1, 1)
    Image.open(io.BytesIO(encode(colorful(0), "JPEG"))).load()
