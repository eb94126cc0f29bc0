r"""Colorizes photographs with a trained run.

  python -m mtcolor.colorize PHOTO_OR_DIR... --checkpoint runs/multitask --out colorized [--compare]

Any size and any format Pillow reads, colour or grayscale (colour input is treated as grayscale: only
its L channel is used). The model sees the image's L resized to its training resolution; its ab
prediction is upsampled (bicubic) to the original size and combined with the ORIGINAL-resolution L,
so the output keeps every detail of the input: its size, and its CIELAB L to within 8-bit rounding.

Keeping L exact needs one more step: an (L, a, b) triple can lie outside the sRGB gamut, and
clipping R, G, B then changes L. Each such pixel's chroma is scaled down (hue kept) by bisection to
the largest factor that stays in gamut, so only chroma, never lightness, is given up.

Batched: images are predicted B at a time at one fixed shape (one compilation); the full-resolution
work runs in pixel chunks of power-of-two sizes (a handful of compilations however many images).
"""

from __future__ import annotations

import contextlib
import functools
import sys
from pathlib import Path
from typing import Iterable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image, ImageOps

L_SCALE, AB_SCALE = 50.0, 110.0
# Full-resolution post-processing works on at most this many pixels per jitted call.
MAX_CHUNK_PIXELS = 1 << 20
MIN_CHUNK_PIXELS = 1 << 12
GAMUT_BISECTION_STEPS = 10  # chroma factor resolved to 2^-10



@contextlib.contextmanager
def _no_decompression_bomb_limit():
    """The user's own photos may be huge (panoramas, scans): lift Pillow's decompression-bomb limit
    while opening one, and put the process-wide setting back, so importing or running this tool
    never weakens the training pipeline's bad-file checks."""
    previous = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = None
    try:
        yield
    finally:
        Image.MAX_IMAGE_PIXELS = previous


# --------------------------------------------------------------------------------------------
# Reading


def read_image(path) -> tuple[np.ndarray, np.ndarray | None]:
    """(rgb float32 (H, W, 3) in [0, 1], alpha float32 (H, W) or None) of any Pillow-readable file.

    16-bit grayscale keeps its 16-bit precision; CMYK, palette, YCbCr ... go through Pillow's
    conversion to RGB; EXIF orientation is applied so the output is upright like in a viewer.
    """
    with _no_decompression_bomb_limit(), Image.open(path) as image:
        image = ImageOps.exif_transpose(image)
        mode = image.mode
        alpha = None
        if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
            gray = np.asarray(image, dtype=np.float64)
            scale = 65535.0 if gray.max(initial=0) > 255 or mode.startswith("I;16") else 255.0
            gray = np.clip(gray / scale, 0.0, 1.0).astype(np.float32)
            return np.repeat(gray[..., None], 3, axis=-1), None
        if mode == "F":
            gray = np.clip(np.asarray(image, np.float32), 0.0, 1.0)
            return np.repeat(gray[..., None], 3, axis=-1), None
        if mode == "P":
            image = image.convert("RGBA" if "transparency" in image.info else "RGB")
        if image.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
            image = image.convert("RGBA")
            array = np.asarray(image, np.float32) / 255.0
            alpha = array[..., 3]
            return np.ascontiguousarray(array[..., :3]), alpha
        if image.mode != "RGB":
            image = image.convert("RGB")
        return np.asarray(image, np.float32) / 255.0, None


# --------------------------------------------------------------------------------------------
# Full-resolution L and recombination


def _lab_conversions():
    from mtcolor.data.color import lab_to_rgb_jax, rgb_to_lab_jax

    return rgb_to_lab_jax, lab_to_rgb_jax


@jax.jit
def _lightness_chunk(rgb):
    rgb_to_lab_jax, _ = _lab_conversions()
    return rgb_to_lab_jax(rgb)[..., 0]


# sRGB (D65) from CIE XYZ, and the D65 white point: the standard constants (as in skimage), used
# only for the cheap in-gamut test below; the output colours come from mtcolor.data.color.
_RGB_FROM_XYZ = np.array([
    [3.24048134, -1.53715152, -0.49853633],
    [-0.96925495, 1.87599, 0.04155593],
    [0.05564664, -0.20404134, 1.05731107],
], np.float32)
_WHITE_D65 = np.array([0.95047, 1.0, 1.08883], np.float32)
_GAMUT_SLACK = 1e-4  # linear RGB may overshoot [0, 1] by this much (rounding), clipped afterwards


def _linear_rgb_in_gamut(L, a, b):
    """Whether Lab (P,) x3 is inside the sRGB gamut: its linear RGB is within [0, 1].

    Written out per component (no (P, 3) @ (3, 3) product, which XLA:CPU runs slowly) because the
    bisection evaluates it ten times per pixel.
    """
    fy = (L + 16.0) / 116.0
    fx = a / 500.0 + fy
    fz = jnp.maximum(fy - b / 200.0, 0.0)
    edge, slope, offset = 6.0 / 29.0, 3.0 * (6.0 / 29.0) ** 2, 4.0 / 29.0

    def f_inverse(f):
        return jnp.where(f > edge, f * f * f, slope * (f - offset))

    x, y, z = f_inverse(fx) * _WHITE_D65[0], f_inverse(fy), f_inverse(fz) * _WHITE_D65[2]
    ok = None
    for row in _RGB_FROM_XYZ:
        channel = float(row[0]) * x + float(row[1]) * y + float(row[2]) * z
        inside = (channel >= -_GAMUT_SLACK) & (channel <= 1.0 + _GAMUT_SLACK)
        ok = inside if ok is None else ok & inside
    return ok


def _to_rgb(L, a, b):
    _, lab_to_rgb_jax = _lab_conversions()
    return lab_to_rgb_jax(jnp.stack([L, a, b], axis=-1))


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

    low, _ = jax.lax.fori_loop(0, GAMUT_BISECTION_STEPS, step, (jnp.zeros_like(L), jnp.ones_like(L)))
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
        parts = [a[start:start + size] for a in arrays]
        valid = parts[0].shape[0]
        if valid < size:
            parts = [np.concatenate([p, np.zeros((size - valid,) + p.shape[1:], p.dtype)]) for p in parts]
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


def _resize_channel(channel: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Bicubic resize of a float32 (H, W) array to (width, height) = size."""
    return np.asarray(Image.fromarray(channel.astype(np.float32), mode="F").resize(size, Image.BICUBIC))


def to_uint8(rgb: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(rgb * 255.0), 0, 255).astype(np.uint8)


# --------------------------------------------------------------------------------------------
# The colorizer


class PhotoColorizer:
    """A trained generator applied to photos of any size (see the module docstring)."""

    def __init__(self, model, variables, image_size: int, *, batch_size: int = 8,
                 task: str = "colorization"):
        """``model.apply(variables, L, train=False)`` returns {task name: output}; ``task`` names
        the output that holds the normalized ab."""
        self.image_size = int(image_size)
        self.batch_size = int(batch_size)
        self._variables = variables

        @jax.jit
        def predict(variables, L_norm):
            return model.apply(variables, L_norm, train=False)[task]

        self._predict = predict

    @classmethod
    def from_workdir(cls, workdir, *, step=None, batch_size: int = 8) -> "PhotoColorizer":
        from mtcolor.train.checkpointing import load_for_inference

        from mtcolor import tasks as tasks_lib

        config, model, variables = load_for_inference(str(workdir), step=step)
        colorizing = [t.name for t in model.tasks if isinstance(t, tasks_lib.Colorization)]
        if not colorizing:
            raise ValueError(
                f"{workdir} is a {config.experiment!r} run: it has no colorization head "
                f"(its tasks: {', '.join(t.name for t in model.tasks)})")
        return cls(model, variables, config.data.image_size, batch_size=batch_size,
                   task=colorizing[0])

    def model_input(self, L: np.ndarray) -> np.ndarray:
        small = _resize_channel(L, (self.image_size, self.image_size))
        return (np.clip(small, 0.0, 100.0) / L_SCALE - 1.0)[..., None].astype(np.float32)

    def predict_ab(self, L_norm_batch: np.ndarray) -> np.ndarray:
        """(N, S, S, 1) normalized L -> (N, S, S, 2) normalized ab, run at one fixed batch shape."""
        n = L_norm_batch.shape[0]
        outputs = []
        for start in range(0, n, self.batch_size):
            part = L_norm_batch[start:start + self.batch_size]
            valid = part.shape[0]
            if valid < self.batch_size:
                part = np.concatenate([part, np.zeros((self.batch_size - valid,) + part.shape[1:], part.dtype)])
            outputs.append(np.asarray(self._predict(self._variables, part))[:valid])
        return np.concatenate(outputs)

    def finish(self, L: np.ndarray, ab_norm_small: np.ndarray) -> np.ndarray:
        """Full-resolution RGB from the original L and the model-resolution ab prediction."""
        height, width = L.shape
        ab = np.stack([_resize_channel(ab_norm_small[..., c] * AB_SCALE, (width, height)) for c in range(2)], -1)
        return recombine(L, ab)

    def colorize_arrays(self, rgbs: Sequence[np.ndarray]) -> list[np.ndarray]:
        Ls = [lightness(rgb) for rgb in rgbs]
        ab_small = self.predict_ab(np.stack([self.model_input(L) for L in Ls]))
        return [self.finish(L, ab) for L, ab in zip(Ls, ab_small)]


# --------------------------------------------------------------------------------------------
# Files


def expand_inputs(inputs: Iterable) -> list[Path]:
    """Files as given, and every non-hidden file directly inside each given directory (sorted)."""
    paths = []
    for item in inputs:
        item = Path(item)
        if item.is_dir():
            paths += sorted(p for p in item.iterdir() if p.is_file() and not p.name.startswith("."))
        else:
            paths.append(item)
    return paths


def _output_name(path: Path, used: set[str]) -> str:
    stem, k = path.stem, 1
    name = stem
    while name in used:
        k += 1
        name = f"{stem}_{k}"
    used.add(name)
    return name


def _save(rgb: np.ndarray, alpha: np.ndarray | None, path: Path):
    image = to_uint8(rgb)
    if alpha is not None:
        image = np.concatenate([image, to_uint8(alpha)[..., None]], axis=-1)
    Image.fromarray(image).save(path)


def colorize_files(colorizer: PhotoColorizer, inputs: Iterable, out_dir, *, compare: bool = False,
                   progress: bool | None = None) -> tuple[list[Path], list[tuple[Path, str]]]:
    """Colorizes files/directories into out_dir as PNG; returns (written files, skipped (path, why))."""
    from tqdm import tqdm

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = expand_inputs(inputs)
    if progress is None:
        progress = len(paths) > 1
    written, skipped, used = [], [], set()
    pending: list[tuple[Path, np.ndarray, np.ndarray | None, np.ndarray]] = []

    def flush():
        if not pending:
            return
        ab_small = colorizer.predict_ab(np.stack([colorizer.model_input(item[3]) for item in pending]))
        for (path, rgb, alpha, L), ab in zip(pending, ab_small):
            output = colorizer.finish(L, ab)
            name = _output_name(path, used)
            target = out_dir / f"{name}.png"
            _save(output, alpha, target)
            written.append(target)
            if compare:
                # "input" is what the model sees: the photo's L alone, i.e. a gray image.
                gray = recombine(L, np.zeros(L.shape + (2,), np.float32))
                side = np.concatenate([to_uint8(gray), to_uint8(output), to_uint8(rgb)], axis=1)
                target = out_dir / f"{name}_compare.png"
                Image.fromarray(side).save(target)
                written.append(target)
        pending.clear()

    for path in tqdm(paths, disable=not progress, desc="colorizing", unit="img"):
        try:
            rgb, alpha = read_image(path)
            if rgb.ndim != 3 or rgb.shape[0] == 0 or rgb.shape[1] == 0:
                raise ValueError(f"empty image {rgb.shape}")
        except Exception as error:  # noqa: BLE001 - one bad file must not stop a directory
            message = f"{type(error).__name__}: {error}"
            skipped.append((path, message))
            print(f"skipped {path}: {message}", file=sys.stderr)
            continue
        pending.append((path, rgb, alpha, lightness(rgb)))
        if len(pending) == colorizer.batch_size:
            flush()
    flush()
    return written, skipped


def main(argv):
    from absl import flags, logging

    FLAGS = flags.FLAGS
    logging.set_verbosity(logging.WARNING)  # orbax logs every restore at INFO
    inputs = argv[1:]
    if not inputs:
        raise SystemExit("usage: python -m mtcolor.colorize PHOTO_OR_DIR... --checkpoint RUN --out DIR [--compare]")
    step = FLAGS.step if FLAGS.step in (None, "best") else int(FLAGS.step)
    colorizer = PhotoColorizer.from_workdir(FLAGS.checkpoint, step=step, batch_size=FLAGS.batch_size)
    written, skipped = colorize_files(colorizer, inputs, FLAGS.out, compare=FLAGS.compare)
    print(f"wrote {len(written)} file(s) to {FLAGS.out}; skipped {len(skipped)}")
    if skipped and not written:
        raise SystemExit(1)


def _define_flags():
    from absl import flags

    flags.DEFINE_string("checkpoint", None, "Training run directory (workdir) holding checkpoints/.")
    flags.DEFINE_string("out", None, "Output directory for the PNGs.")
    flags.DEFINE_bool("compare", False, "Also write NAME_compare.png: input | output | original.")
    flags.DEFINE_string("step", None, "Checkpoint: latest (default), 'best', or a step number.")
    flags.DEFINE_integer("batch_size", 8, "Images predicted per batch.")
    flags.mark_flags_as_required(["checkpoint", "out"])


if __name__ == "__main__":
    from absl import app

    _define_flags()
    app.run(main)
