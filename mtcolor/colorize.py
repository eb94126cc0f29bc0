r"""Colorizes photographs with a trained run.

  python -m mtcolor.colorize PHOTO_OR_DIR... --checkpoint runs/multitask --out colorized [--compare]

Any size and any format Pillow reads, colour or grayscale (colour input is treated as grayscale:
only its L channel is used). The model sees the image's L resized to its training resolution; its ab
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
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image, ImageOps

from mtcolor.data import color

# Full-resolution post-processing works on at most this many pixels per jitted call.
MAX_CHUNK_PIXELS = 1 << 20
MIN_CHUNK_PIXELS = 1 << 12
GAMUT_BISECTION_STEPS = 10  # chroma factor resolved to 2^-10


# A photo may declare at most this many pixels (--max_pixels): 200 megapixels admits large
# panoramas and scans (e.g. 20000 x 10000), while a file that declares far more (a few hundred KB
# of PNG can declare 40000 x 40000 = 1.6 gigapixels, 19 GB as float RGB) is refused from its
# header, before any pixel is decoded. An accepted image takes about 7 bytes per pixel at its peak
# (its decoded pixels, then either its float L or the 8-bit output; the float work runs in bands).
DEFAULT_MAX_PIXELS = 200_000_000
# Photos are predicted in batches; a batch is predicted early once its images hold this many
# pixels, so large photos are finished (and written) one by one instead of waiting together.
PENDING_PIXEL_BUDGET = 1 << 24


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


def _check_size(path, size: tuple[int, int], max_pixels: int | None) -> None:
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
        _check_size(path, image.size, max_pixels)
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


# --------------------------------------------------------------------------------------------
# Full-resolution L and recombination


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


def _resize_channel(channel: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Bicubic resize of a float32 (H, W) array to (width, height) = size."""
    return np.asarray(
        Image.fromarray(channel.astype(np.float32), mode="F").resize(size, Image.BICUBIC)
    )


def _resize_rows(channel: np.ndarray, width: int, height: int, start: int, stop: int) -> np.ndarray:
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


# --------------------------------------------------------------------------------------------
# The colorizer


class PhotoColorizer:
    """A trained generator applied to photos of any size (see the module docstring)."""

    def __init__(
        self, model, variables, image_size: int, *, batch_size: int = 8, task: str = "colorization"
    ):
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
    def from_workdir(cls, workdir, *, step=None, batch_size: int = 8) -> PhotoColorizer:
        from mtcolor import tasks as tasks_lib
        from mtcolor.train.checkpointing import load_for_inference

        config, model, variables = load_for_inference(str(workdir), step=step)
        colorizing = [t.name for t in model.tasks if isinstance(t, tasks_lib.Colorization)]
        if not colorizing:
            raise ValueError(
                f"{workdir} is a {config.experiment!r} run: it has no colorization head "
                f"(its tasks: {', '.join(t.name for t in model.tasks)})"
            )
        return cls(
            model, variables, config.data.image_size, batch_size=batch_size, task=colorizing[0]
        )

    def model_input(self, L: np.ndarray) -> np.ndarray:
        small = _resize_channel(L, (self.image_size, self.image_size))
        return color.normalize_L(np.clip(small, 0.0, 100.0))[..., None].astype(np.float32)

    def predict_ab(self, L_norm_batch: np.ndarray) -> np.ndarray:
        """(N, S, S, 1) normalized L -> (N, S, S, 2) normalized ab, run at one fixed batch shape."""
        n = L_norm_batch.shape[0]
        outputs = []
        for start in range(0, n, self.batch_size):
            part = L_norm_batch[start : start + self.batch_size]
            valid = part.shape[0]
            if valid < self.batch_size:
                part = np.concatenate(
                    [part, np.zeros((self.batch_size - valid,) + part.shape[1:], part.dtype)]
                )
            outputs.append(np.asarray(self._predict(self._variables, part))[:valid])
        return np.concatenate(outputs)

    def ab_rows(
        self, ab_norm_small: np.ndarray, width: int, height: int, start: int, stop: int
    ) -> np.ndarray:
        """Rows start:stop of the prediction upsampled to (height, width), in Lab units."""
        return np.stack(
            [
                _resize_rows(ab_norm_small[..., c] * color.AB_SCALE, width, height, start, stop)
                for c in range(2)
            ],
            -1,
        )

    def finish(self, L: np.ndarray, ab_norm_small: np.ndarray) -> np.ndarray:
        """Full-resolution RGB from the original L and the model-resolution ab prediction."""
        height, width = L.shape
        rgb = np.empty((height, width, 3), np.float32)
        rows = band_rows(width)
        for start in range(0, height, rows):
            stop = min(start + rows, height)
            ab = self.ab_rows(ab_norm_small, width, height, start, stop)
            rgb[start:stop] = recombine(L[start:stop], ab)
        return rgb

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


def _save(image: np.ndarray, alpha: np.ndarray | None, path: Path):
    """Writes 8-bit RGB (+ the input's 8-bit alpha) as PNG."""
    if alpha is not None:
        image = np.concatenate([image, alpha[..., None]], axis=-1)
    Image.fromarray(image).save(path)


def _write_outputs(
    colorizer: PhotoColorizer,
    pixels: Pixels,
    ab_small: np.ndarray,
    target: Path,
    compare_target: Path | None,
) -> None:
    """The photo's colorization (and its comparison strip), built band by band in 8 bits."""
    height, width = pixels.shape
    output = np.empty((height, width, 3), np.uint8)
    side = np.empty((height, 3 * width, 3), np.uint8) if compare_target is not None else None
    rows = band_rows(width)
    for start in range(0, height, rows):
        stop = min(start + rows, height)
        rgb = pixels.rgb_rows(start, stop)
        L = lightness(rgb)
        ab = colorizer.ab_rows(ab_small, width, height, start, stop)
        output[start:stop] = to_uint8(recombine(L, ab))
        if side is not None:
            # "input" is what the model sees: the photo's L alone, i.e. a gray image.
            gray = to_uint8(recombine(L, np.zeros(L.shape + (2,), np.float32)))
            side[start:stop] = np.concatenate([gray, output[start:stop], to_uint8(rgb)], axis=1)
    alpha = None
    if pixels.alpha is not None:
        alpha = pixels.alpha if pixels.alpha.dtype == np.uint8 else to_uint8(pixels.alpha)
    _save(output, alpha, target)
    if side is not None:
        Image.fromarray(side).save(compare_target)


def colorize_files(
    colorizer: PhotoColorizer,
    inputs: Iterable,
    out_dir,
    *,
    compare: bool = False,
    progress: bool | None = None,
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
) -> tuple[list[Path], list[tuple[Path, str]]]:
    """Colorizes files/directories into out_dir as PNG; returns (written files, skipped
    (path, why)).

    A file that cannot be read, or that declares more than ``max_pixels`` pixels, is skipped with
    one line on stderr and the others go on. Photos are predicted ``colorizer.batch_size`` at a
    time, and a batch is predicted early once it holds PENDING_PIXEL_BUDGET pixels, so a large
    photo is finished and written before the next one is read: memory stays bounded by one large
    photo (about 7 bytes per pixel) and an interrupted run keeps what it wrote.
    """
    from tqdm import tqdm

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = expand_inputs(inputs)
    if progress is None:
        progress = len(paths) > 1
    written, skipped, used = [], [], set()
    pending: list[tuple[Path, Pixels, np.ndarray]] = []  # (path, decoded photo, model input)

    def flush():
        if not pending:
            return
        ab_small = colorizer.predict_ab(np.stack([item[2] for item in pending]))
        for (path, pixels, _), ab in zip(pending, ab_small):
            name = _output_name(path, used)
            target = out_dir / f"{name}.png"
            compare_target = out_dir / f"{name}_compare.png" if compare else None
            _write_outputs(colorizer, pixels, ab, target, compare_target)
            written.append(target)
            if compare_target is not None:
                written.append(compare_target)
        pending.clear()

    def skip(path, message):
        skipped.append((path, message))
        tqdm.write(
            f"skipped {path}: {message}", file=sys.stderr
        )  # a line of its own, above the bar

    for path in tqdm(paths, disable=not progress, desc="colorizing", unit="img"):
        try:
            width, height = declared_pixels(path)
            _check_size(path, (width, height), max_pixels)
        except ImageTooLargeError as error:
            skip(path, str(error))
            continue
        except Exception as error:  # noqa: BLE001 - one bad file must not stop a directory
            skip(path, f"{type(error).__name__}: {error}")
            continue
        if (
            pending
            and sum(p.shape[0] * p.shape[1] for _, p, _ in pending) + width * height
            > PENDING_PIXEL_BUDGET
        ):
            flush()  # write what is done before a large photo is decoded
        try:
            pixels = read_pixels(path, max_pixels)
            if 0 in pixels.shape:
                raise ValueError(f"empty image {pixels.shape}")
            model_input = colorizer.model_input(lightness_of(pixels))
        except Exception as error:  # noqa: BLE001 - one bad file must not stop a directory
            skip(path, f"{type(error).__name__}: {error}")
            continue
        pending.append((path, pixels, model_input))
        if len(pending) == colorizer.batch_size:
            flush()
    flush()
    return written, skipped


def argument_problems(inputs, checkpoint, step, batch_size, max_pixels) -> list[str]:
    """The command line's problems, one line each, before anything is loaded."""
    problems = [
        f"{item!r}: no such file or directory" for item in inputs if not Path(item).exists()
    ]
    from mtcolor.train.validation import run_directory_problems

    problems += run_directory_problems("checkpoint", checkpoint, step=step, step_argument="step")
    if batch_size < 1:
        problems.append(f"--batch_size={batch_size}: must be at least 1")
    if max_pixels < 0:
        problems.append(f"--max_pixels={max_pixels}: must be >= 0 (0: no limit)")
    return problems


def main(argv):
    from absl import flags, logging

    FLAGS = flags.FLAGS
    logging.set_verbosity(logging.WARNING)  # orbax logs every restore at INFO
    inputs = argv[1:]
    if not inputs:
        raise SystemExit(
            "usage: python -m mtcolor.colorize PHOTO_OR_DIR... "
            "--checkpoint RUN --out DIR [--compare]"
        )
    problems = argument_problems(
        inputs, FLAGS.checkpoint, FLAGS.step, FLAGS.batch_size, FLAGS.max_pixels
    )
    from mtcolor.train.cli import exit_on_problems

    exit_on_problems(problems, "the command line")
    step = FLAGS.step if FLAGS.step in (None, "best") else int(FLAGS.step)
    from mtcolor.train.checkpointing import UnreadableCheckpointError

    try:
        colorizer = PhotoColorizer.from_workdir(
            FLAGS.checkpoint, step=step, batch_size=FLAGS.batch_size
        )
    except UnreadableCheckpointError as error:
        exit_on_problems([f"--checkpoint={FLAGS.checkpoint!r}: {error}"], "the command line")
    written, skipped = colorize_files(
        colorizer, inputs, FLAGS.out, compare=FLAGS.compare, max_pixels=FLAGS.max_pixels or None
    )
    print(f"wrote {len(written)} file(s) to {FLAGS.out}; skipped {len(skipped)}")
    if skipped and not written:
        raise SystemExit(1)


def _define_flags():
    from absl import flags

    flags.DEFINE_string(
        "checkpoint", None, "Training run directory (workdir) holding checkpoints/."
    )
    flags.DEFINE_string("out", None, "Output directory for the PNGs.")
    flags.DEFINE_bool("compare", False, "Also write NAME_compare.png: input | output | original.")
    flags.DEFINE_string("step", None, "Checkpoint: latest (default), 'best', or a step number.")
    flags.DEFINE_integer("batch_size", 8, "Images predicted per batch.")
    flags.DEFINE_integer(
        "max_pixels",
        DEFAULT_MAX_PIXELS,
        "Skip files that declare more pixels than this (0: no limit).",
    )
    flags.mark_flags_as_required(["checkpoint", "out"])


if __name__ == "__main__":
    from absl import app

    _define_flags()
    app.run(main)
