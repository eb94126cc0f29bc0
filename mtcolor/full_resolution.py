"""A photo's CIELAB at its own resolution: its L, and sRGB from that L with a predicted ab that
keeps the L exactly.

An (L, a, b) triple can lie outside the sRGB gamut, and clipping R, G, B then changes L. Each such
pixel's chroma is scaled down (hue kept) by bisection to the largest factor that stays in gamut, so
only chroma, never lightness, is given up. The work runs jitted in pixel chunks of power-of-two
sizes (a handful of compilations however large the photos) and, for a whole photo, in bands of rows
(``band_rows``), so no full-size float copy is made; a model-resolution prediction is upsampled
band by band (``resize_rows``) to the same values as a whole bicubic resize.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image

from mtcolor.data import color
from mtcolor.photos import Pixels

# Full-resolution post-processing works on at most this many pixels per jitted call.
MAX_CHUNK_PIXELS = 1 << 20
MIN_CHUNK_PIXELS = 1 << 12
GAMUT_BISECTION_STEPS = 10  # chroma factor resolved to 2^-10


@jax.jit
def _lightness_chunk(rgb):
    return color.rgb_to_lab_jax(rgb)[..., 0]


_GAMUT_SLACK = 1e-4  # linear RGB may overshoot [0, 1] by this much (rounding), clipped afterwards


def _linear_rgb_in_gamut(L, a, b):
    """Whether Lab (P,) x3 is inside the sRGB gamut; the bisection evaluates it ten times per
    pixel."""
    return color.lab_in_srgb_gamut_jax(L, a, b, slack=_GAMUT_SLACK)


def _to_rgb(L, a, b):
    return color.lab_to_rgb_jax(jnp.stack([L, a, b], axis=-1))


@jax.jit
def _recombine_chunk(L, ab):
    """First pass: (sRGB (P, 3), in-gamut mask (P,)) of L (P,) with the full predicted ab (P, 2)."""
    feasible = _linear_rgb_in_gamut(L, ab[:, 0], ab[:, 1])
    return _to_rgb(L, ab[:, 0], ab[:, 1]), feasible


@jax.jit
def _reduce_chroma_chunk(L, ab):
    """Out-of-gamut pixels: sRGB with ab scaled by the largest factor (bisection) that is in gamut.

    Factor 0 (gray) is always in gamut for 0 <= L <= 100, so the bisection's low end is valid.
    """

    def step(_, bounds):
        low, high = bounds
        middle = 0.5 * (low + high)
        ok = _linear_rgb_in_gamut(L, ab[:, 0] * middle, ab[:, 1] * middle)
        return jnp.where(ok, middle, low), jnp.where(ok, high, middle)

    low, _ = jax.lax.fori_loop(
        0, GAMUT_BISECTION_STEPS, step, (jnp.zeros_like(L), jnp.ones_like(L))
    )
    return _to_rgb(L, ab[:, 0] * low, ab[:, 1] * low)


def _chunk_size(num_pixels: int) -> int:
    size = MIN_CHUNK_PIXELS
    while size < num_pixels and size < MAX_CHUNK_PIXELS:
        size *= 2
    return size


def _map_chunks(fn, *arrays: np.ndarray):
    """Applies a jitted per-pixel `fn` over flattened arrays in padded, fixed-size chunks.

    Returns one array, or a tuple when `fn` returns a tuple.
    """
    num_pixels = arrays[0].shape[0]
    size = _chunk_size(num_pixels)
    outputs = []
    for start in range(0, num_pixels, size):
        parts = [a[start : start + size] for a in arrays]
        valid = parts[0].shape[0]
        if valid < size:
            parts = [
                np.concatenate([p, np.zeros((size - valid,) + p.shape[1:], p.dtype)]) for p in parts
            ]
        result = fn(*parts)
        result = result if isinstance(result, tuple) else (result,)
        outputs.append([np.asarray(r)[:valid] for r in result])
    joined = tuple(np.concatenate(parts) for parts in zip(*outputs))
    return joined if len(joined) > 1 else joined[0]


def lightness(rgb: np.ndarray) -> np.ndarray:
    """CIELAB L (H, W) float32 of an sRGB image in [0, 1]."""
    height, width, _ = rgb.shape
    return _map_chunks(_lightness_chunk, rgb.reshape(-1, 3)).reshape(height, width)


def recombine(L: np.ndarray, ab: np.ndarray) -> np.ndarray:
    """sRGB (H, W, 3) in [0, 1] from L (H, W) and ab (H, W, 2) in Lab units, L preserved.

    Out-of-gamut pixels (usually few) are gathered and only they go through the bisection.
    """
    height, width = L.shape
    L = L.reshape(-1).astype(np.float32)
    ab = ab.reshape(-1, 2).astype(np.float32)
    rgb, feasible = _map_chunks(_recombine_chunk, L, ab)
    outside = np.flatnonzero(~feasible)
    if outside.size:
        rgb[outside] = _map_chunks(_reduce_chroma_chunk, L[outside], ab[outside])
    return rgb.reshape(height, width, 3)


def resize_channel(channel: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Bicubic resize of a float32 (H, W) array to (width, height) = size."""
    return np.asarray(
        Image.fromarray(channel.astype(np.float32), mode="F").resize(size, Image.BICUBIC)
    )


def resize_rows(channel: np.ndarray, width: int, height: int, start: int, stop: int) -> np.ndarray:
    """Rows start:stop of the bicubic resize of ``channel`` to (width, height), computed alone:
    Pillow's ``box`` maps exactly those output rows and its filter still reads the source rows
    around the box, so the band equals the same rows of the whole resize."""
    rows, cols = channel.shape
    box = (0.0, start * rows / height, float(cols), stop * rows / height)
    image = Image.fromarray(channel.astype(np.float32), mode="F")
    return np.asarray(image.resize((width, stop - start), Image.BICUBIC, box=box))


def band_rows(width: int) -> int:
    """Rows per band of full-resolution work (about MAX_CHUNK_PIXELS pixels)."""
    return max(1, MAX_CHUNK_PIXELS // max(1, width))


def lightness_of(pixels: Pixels) -> np.ndarray:
    """CIELAB L (H, W) float32 of a decoded photo, converted band by band."""
    height, width = pixels.shape
    L = np.empty((height, width), np.float32)
    rows = band_rows(width)
    for start in range(0, height, rows):
        L[start : start + rows] = lightness(pixels.rgb_rows(start, start + rows))
    return L


def to_uint8(rgb: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(rgb * 255.0), 0, 255).astype(np.uint8)
