r"""Colorizes photographs with a trained run.

  python -m mtcolor.colorize PHOTO_OR_DIR... --checkpoint runs/multitask --out colorized [--compare]

Any size and any format Pillow reads, colour or grayscale (colour input is treated as grayscale:
only its L channel is used). The model sees the image's L resized to its training resolution; its ab
prediction is upsampled (bicubic) to the original size and combined with the ORIGINAL-resolution L,
so the output keeps every detail of the input: its size, and its CIELAB L to within 8-bit rounding.

Keeping L exact where the colours leave the sRGB gamut, and the work in bands and chunks, are
mtcolor.full_resolution's; reading the photos (any format, refusing decompression bombs from the
header) is mtcolor.photos'. Batched: images are predicted B at a time at one fixed shape (one
compilation).
"""

from __future__ import annotations

import sys
from collections.abc import Iterable, Sequence
from pathlib import Path

import jax
import numpy as np
from PIL import Image

from mtcolor import full_resolution, photos
from mtcolor.data import color

# Photos are predicted in batches; a batch is predicted early once its images hold this many
# pixels, so large photos are finished (and written) one by one instead of waiting together.
PENDING_PIXEL_BUDGET = 1 << 24


class NotAColorizerError(ValueError):
    """The run has no colorization task (a classifier)."""


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
            raise NotAColorizerError(
                f"{workdir} is a {config.experiment!r} run: it has no colorization head "
                f"(its tasks: {', '.join(t.name for t in model.tasks)})"
            )
        return cls(
            model, variables, config.data.image_size, batch_size=batch_size, task=colorizing[0]
        )

    def model_input(self, L: np.ndarray) -> np.ndarray:
        small = full_resolution.resize_channel(L, (self.image_size, self.image_size))
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
                full_resolution.resize_rows(
                    ab_norm_small[..., c] * color.AB_SCALE, width, height, start, stop
                )
                for c in range(2)
            ],
            -1,
        )

    def finish(self, L: np.ndarray, ab_norm_small: np.ndarray) -> np.ndarray:
        """Full-resolution RGB from the original L and the model-resolution ab prediction."""
        height, width = L.shape
        rgb = np.empty((height, width, 3), np.float32)
        rows = full_resolution.band_rows(width)
        for start in range(0, height, rows):
            stop = min(start + rows, height)
            ab = self.ab_rows(ab_norm_small, width, height, start, stop)
            rgb[start:stop] = full_resolution.recombine(L[start:stop], ab)
        return rgb

    def colorize_arrays(self, rgbs: Sequence[np.ndarray]) -> list[np.ndarray]:
        Ls = [full_resolution.lightness(rgb) for rgb in rgbs]
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
    pixels: photos.Pixels,
    ab_small: np.ndarray,
    target: Path,
    compare_target: Path | None,
) -> None:
    """The photo's colorization (and its comparison strip), built band by band in 8 bits."""
    height, width = pixels.shape
    output = np.empty((height, width, 3), np.uint8)
    side = np.empty((height, 3 * width, 3), np.uint8) if compare_target is not None else None
    rows = full_resolution.band_rows(width)
    for start in range(0, height, rows):
        stop = min(start + rows, height)
        rgb = pixels.rgb_rows(start, stop)
        L = full_resolution.lightness(rgb)
        ab = colorizer.ab_rows(ab_small, width, height, start, stop)
        output[start:stop] = full_resolution.to_uint8(full_resolution.recombine(L, ab))
        if side is not None:
            # "input" is what the model sees: the photo's L alone, i.e. a gray image.
            gray = full_resolution.to_uint8(
                full_resolution.recombine(L, np.zeros(L.shape + (2,), np.float32))
            )
            side[start:stop] = np.concatenate(
                [gray, output[start:stop], full_resolution.to_uint8(rgb)], axis=1
            )
    alpha = None
    if pixels.alpha is not None:
        alpha = (
            pixels.alpha
            if pixels.alpha.dtype == np.uint8
            else full_resolution.to_uint8(pixels.alpha)
        )
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
    max_pixels: int | None = photos.DEFAULT_MAX_PIXELS,
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
    pending: list[tuple[Path, photos.Pixels, np.ndarray]] = []  # (path, decoded photo, model input)

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
            width, height = photos.declared_pixels(path)
            photos.check_size(path, (width, height), max_pixels)
        except photos.ImageTooLargeError as error:
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
            pixels = photos.read_pixels(path, max_pixels)
            if 0 in pixels.shape:
                raise ValueError(f"empty image {pixels.shape}")
            model_input = colorizer.model_input(full_resolution.lightness_of(pixels))
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
    from mtcolor.train.checkpointing import ModelMismatchError, UnreadableCheckpointError

    try:
        colorizer = PhotoColorizer.from_workdir(
            FLAGS.checkpoint, step=step, batch_size=FLAGS.batch_size
        )
    except (UnreadableCheckpointError, ModelMismatchError, NotAColorizerError) as error:
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
        photos.DEFAULT_MAX_PIXELS,
        "Skip files that declare more pixels than this (0: no limit).",
    )
    flags.mark_flags_as_required(["checkpoint", "out"])


if __name__ == "__main__":
    from absl import app

    _define_flags()
    app.run(main)
