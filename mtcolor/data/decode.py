"""Image decoding and resizing with Pillow, numpy only (runs inside grain worker processes).

Every failure becomes a `BadImageError` carrying one of `BAD_REASONS`; the pipeline turns it into a
skipped, counted record instead of a crash.

Mode handling (everything ends as 8-bit RGB):
- L, 1, P (no transparency), CMYK, YCbCr, LAB, HSV: `Image.convert("RGB")`.
- Anything with alpha (RGBA, LA, PA, P or L/RGB with a transparency key): composited on WHITE, the
  way a browser shows a transparent PNG, so transparent regions get a defined, neutral colour
  instead of whatever RGB happens to sit under alpha=0.
- 16-bit grayscale (I;16, I;16B, I;16L, I;16N, and I, which Pillow uses for 16-bit PNG/TIFF):
  scaled by 255/65535. F (float) images: values clipped to [0, 255] (scaled by 255 first if their
  maximum is <= 1).
- EXIF orientation is applied (`ImageOps.exif_transpose`), so photos are upright as viewers show
  them.

Resize modes:
- "stretch": bicubic to size x size, aspect ratio not kept (the paper's reference tutorial).
- "shorter_side_crop": the shorter side scaled to `size` (bicubic), then the central size x size
  crop (done in one `Image.resize(box=...)` call).
With `jpeg_draft`, large JPEGs are first decoded at a reduced DCT scale (1/2, 1/4, 1/8) that is
still at least `size` on both sides: several times faster on full-size ImageNet photos, visually
equivalent but not bit-identical to a full decode followed by bicubic resizing.
"""

from __future__ import annotations

import io
import warnings

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

# Reasons a file is skipped, in the order of the `bad_counts` arrays.
ZERO_BYTE = "zero_byte"  # the file is empty
UNREADABLE = (
    "unreadable"  # the file could not be read (permissions, vanished, I/O error, a directory)
)
NOT_AN_IMAGE = "not_an_image"  # Pillow recognizes no image format in the bytes
TRUNCATED = "truncated"  # the image data ends early
CORRUPT = "corrupt"  # a recognized format whose data fails to decode
TOO_SMALL = "too_small"  # a side shorter than `min_image_side` (e.g. 1x1 tracking pixels)
DECOMPRESSION_BOMB = "decompression_bomb"  # more than `max_image_pixels` pixels declared
BAD_REASONS = (
    ZERO_BYTE,
    UNREADABLE,
    NOT_AN_IMAGE,
    TRUNCATED,
    CORRUPT,
    TOO_SMALL,
    DECOMPRESSION_BOMB,
)

RESIZE_MODES = ("stretch", "shorter_side_crop")

# Pillow's own default limit (about 89.5 megapixels, a 1024 MiB RGB bitmap at 4 bytes/pixel).
DEFAULT_MAX_IMAGE_PIXELS = 89_478_485
# A side below this many pixels carries no usable content after upscaling to 256 (and catches the
# 1x1 tracking pixels that web-scraped datasets contain).
DEFAULT_MIN_IMAGE_SIDE = 16

_SIXTEEN_BIT_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I")


class BadImageError(Exception):
    """A file that cannot be used; `reason` is one of `BAD_REASONS`."""

    def __init__(self, reason: str, detail: str = ""):
        if reason not in BAD_REASONS:
            raise ValueError(f"unknown bad-input reason {reason!r}")
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


def read_file(path: str) -> bytes:
    """Reads a whole file; empty or unreadable files raise BadImageError."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:  # PermissionError, FileNotFoundError, IsADirectoryError, EIO, ...
        raise BadImageError(UNREADABLE, f"{type(e).__name__}: {e}") from None
    if not data:
        raise BadImageError(ZERO_BYTE)
    return data


def _to_rgb(image: Image.Image) -> Image.Image:
    mode = image.mode
    if mode == "RGB":
        return image
    has_alpha = mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in image.info
    if has_alpha:
        rgba = image.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    if mode in _SIXTEEN_BIT_MODES:
        values = np.asarray(image, dtype=np.float32) * np.float32(255.0 / 65535.0)
        gray = np.clip(np.rint(values), 0, 255).astype(np.uint8)
        return Image.fromarray(gray, "L").convert("RGB")
    if mode == "F":
        values = np.asarray(image, dtype=np.float32)
        if values.size and np.nanmax(values) <= 1.0:
            values = values * 255.0
        gray = np.clip(np.rint(np.nan_to_num(values)), 0, 255).astype(np.uint8)
        return Image.fromarray(gray, "L").convert("RGB")
    return image.convert("RGB")


def resize_rgb(image: Image.Image, size: int, resize_mode: str) -> Image.Image:
    """Resizes an RGB PIL image to size x size with bicubic interpolation (see module docstring)."""
    width, height = image.size
    if resize_mode == "stretch":
        if (width, height) == (size, size):
            return image
        return image.resize((size, size), Image.Resampling.BICUBIC)
    if resize_mode == "shorter_side_crop":
        side = min(width, height)
        left = (width - side) / 2.0
        top = (height - side) / 2.0
        return image.resize(
            (size, size), Image.Resampling.BICUBIC, box=(left, top, left + side, top + side)
        )
    raise ValueError(f"resize_mode must be one of {RESIZE_MODES}, got {resize_mode!r}")


def decode_image(
    data: bytes,
    *,
    size: int,
    resize_mode: str = "stretch",
    min_image_side: int = DEFAULT_MIN_IMAGE_SIDE,
    max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS,
    jpeg_draft: bool = True,
) -> np.ndarray:
    """Encoded image bytes -> uint8 RGB array (size, size, 3). Raises BadImageError."""
    if resize_mode not in RESIZE_MODES:  # a configuration error, not a bad file
        raise ValueError(f"resize_mode must be one of {RESIZE_MODES}, got {resize_mode!r}")
    if not data:
        raise BadImageError(ZERO_BYTE)
    with warnings.catch_warnings():
        # Pillow warns between MAX_IMAGE_PIXELS and twice that, and raises above: both are bombs.
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            image = Image.open(io.BytesIO(data))
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
            raise BadImageError(DECOMPRESSION_BOMB, str(e)) from None
        except UnidentifiedImageError:
            raise BadImageError(NOT_AN_IMAGE) from None
        except Exception as e:  # noqa: BLE001 (a plugin choking on a broken header)
            raise BadImageError(CORRUPT, f"{type(e).__name__}: {e}") from None

        width, height = image.size
        if width * height > max_image_pixels:
            raise BadImageError(DECOMPRESSION_BOMB, f"{width}x{height} > {max_image_pixels} pixels")
        if min(width, height) < min_image_side:
            raise BadImageError(TOO_SMALL, f"{width}x{height} < {min_image_side} px")
        try:
            if jpeg_draft and image.format == "JPEG" and min(width, height) >= 2 * size:
                image.draft(image.mode, (size, size))
            image = ImageOps.exif_transpose(image)
            image.load()
            image = _to_rgb(image)
            image = resize_rgb(image, size, resize_mode)
            rgb = np.asarray(image, dtype=np.uint8)
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
            raise BadImageError(DECOMPRESSION_BOMB, str(e)) from None
        except Exception as e:  # noqa: BLE001 (Pillow raises OSError, SyntaxError, ValueError, zlib.error...)
            reason = TRUNCATED if "truncated" in str(e).lower() else CORRUPT
            raise BadImageError(reason, f"{type(e).__name__}: {e}") from None
    if rgb.shape != (size, size, 3):  # defensive: an exotic mode slipping through conversion
        raise BadImageError(CORRUPT, f"decoded to shape {rgb.shape}")
    return rgb


def resize_array(rgb: np.ndarray, size: int, resize_mode: str) -> np.ndarray:
    """uint8 RGB array -> (size, size, 3) uint8, the same resizing as for decoded files."""
    if rgb.shape[:2] == (size, size):
        return rgb
    return np.asarray(resize_rgb(Image.fromarray(rgb, "RGB"), size, resize_mode), dtype=np.uint8)
