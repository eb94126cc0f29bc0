"""Reading a user's photographs: any file Pillow reads, at its own size and in its own sample
type (8-bit RGB, 16-bit or float gray, with alpha), upright as a viewer shows it, refusing a file
that declares too many pixels from its header alone (a decompression bomb) before anything is
decoded. mtcolor.colorize reads its inputs through it; the training pipeline has its own decoder
(mtcolor.data.decode) with Pillow's own limit.
"""

from __future__ import annotations

import contextlib

import numpy as np
from PIL import Image, ImageOps

# A photo may declare at most this many pixels (--max_pixels): 200 megapixels admits large
# panoramas and scans (e.g. 20000 x 10000), while a file that declares far more (a few hundred KB
# of PNG can declare 40000 x 40000 = 1.6 gigapixels, 19 GB as float RGB) is refused from its
# header, before any pixel is decoded. An accepted image takes about 7 bytes per pixel at its peak
# (its decoded pixels, then either its float L or the 8-bit output; the float work runs in bands).
DEFAULT_MAX_PIXELS = 200_000_000


class ImageTooLargeError(ValueError):
    """A file declares more pixels than the limit; raised from its header alone."""


@contextlib.contextmanager
def _no_decompression_bomb_limit():
    """Our own limit (``max_pixels``, checked on the header) replaces Pillow's process-wide
    decompression-bomb limit while one of the user's photos is opened; the setting is put back, so
    importing or running this tool never weakens the training pipeline's bad-file checks."""
    previous = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = None
    try:
        yield
    finally:
        Image.MAX_IMAGE_PIXELS = previous


def declared_pixels(path) -> tuple[int, int]:
    """(width, height) as the file's header declares them (nothing decoded)."""
    with _no_decompression_bomb_limit(), Image.open(path) as image:
        return image.size


def check_size(path, size: tuple[int, int], max_pixels: int | None) -> None:
    width, height = size
    if max_pixels is not None and width * height > max_pixels:
        raise ImageTooLargeError(
            f"declares {width} x {height} = {width * height / 1e6:.0f} megapixels, above the "
            f"limit of {max_pixels / 1e6:.0f} (--max_pixels)"
        )


class Pixels:
    """A decoded photo in its own sample type (8-bit RGB, 16-bit or float gray), turned into
    float RGB one band of rows at a time so no full-size float copy is ever made."""

    def __init__(self, data: np.ndarray, alpha: np.ndarray | None, scale: float):
        self.data, self.alpha, self.scale = data, alpha, scale

    @property
    def shape(self) -> tuple[int, int]:
        return self.data.shape[:2]

    def rgb_rows(self, start: int, stop: int) -> np.ndarray:
        band = np.asarray(self.data[start:stop], np.float32) / self.scale
        if band.ndim == 2:
            band = np.repeat(np.clip(band, 0.0, 1.0)[..., None], 3, axis=-1)
        return band


def read_pixels(path, max_pixels: int | None = DEFAULT_MAX_PIXELS) -> Pixels:
    """The photo at ``path`` (any Pillow-readable file) as Pixels, refusing files that declare
    more than ``max_pixels`` (ImageTooLargeError) before decoding them.

    16-bit grayscale keeps its 16-bit precision; CMYK, palette, YCbCr ... go through Pillow's
    conversion to RGB; EXIF orientation is applied so the output is upright like in a viewer.
    """
    with _no_decompression_bomb_limit(), Image.open(path) as image:
        check_size(path, image.size, max_pixels)
        image = ImageOps.exif_transpose(image)
        mode = image.mode
        if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
            gray = np.asarray(image)
            wide = gray.max(initial=0) > 255 or mode.startswith("I;16")
            return Pixels(gray, None, 65535.0 if wide else 255.0)
        if mode == "F":
            return Pixels(np.asarray(image, np.float32), None, 1.0)
        if mode == "P":
            image = image.convert("RGBA" if "transparency" in image.info else "RGB")
        if image.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
            array = np.asarray(image.convert("RGBA"))
            return Pixels(np.ascontiguousarray(array[..., :3]), array[..., 3], 255.0)
        if image.mode != "RGB":
            image = image.convert("RGB")
        return Pixels(np.asarray(image), None, 255.0)


def read_image(path, max_pixels: int | None = DEFAULT_MAX_PIXELS):
    """(rgb float32 (H, W, 3) in [0, 1], alpha float32 (H, W) or None) of any Pillow-readable
    file (see read_pixels)."""
    pixels = read_pixels(path, max_pixels)
    alpha = None if pixels.alpha is None else pixels.alpha.astype(np.float32) / 255.0
    return pixels.rgb_rows(0, pixels.shape[0]), alpha
