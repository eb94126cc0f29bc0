"""Kernel (weight) gradients of the models' convolutions: XLA's own form against mtcolor's.

For each convolution of the multi-task cGAN large enough for the choice at the given image size
(output map of at least ``KERNEL_GRADIENT_MIN_OUTPUT_PIXELS``, at least
``KERNEL_GRADIENT_MIN_OUT_CHANNELS`` output channels: ResNet-18, the decoder's phase convs, the
PatchGAN), times the kernel gradient alone, batch 16, float32, both forms jitted on their own,
interleaved over ``--rounds`` and the best time kept:

  * ``xla``: ``jax.linear_transpose`` of ``jax.lax.conv_general_dilated`` in the kernel, which
    XLA lowers to a convolution whose window is the whole output map (what autodiff gives);
  * ``matmul``: ``mtcolor.models.conv.kernel_gradient``, one (c_out, P) x (P, c_in) product per
    kernel tap (copying the input's pixels, or the output gradient's when the stride is 1 and
    c_out < c_in), what mtcolor's convolutions use on CPU for kernels of at most
    ``KERNEL_GRADIENT_MAX_TAPS`` taps;
  * ``s2d`` (stride-2 convolutions with even kernels: the PatchGAN's 4x4/2):
    ``mtcolor.models.conv.space_to_depth_kernel_gradient_of``, the matmul form of the equal
    stride-1 convolution over the space-to-depth input, folded back, what mtcolor uses on CPU for
    output gradients of at least ``SPACE_TO_DEPTH_KERNEL_GRADIENT_MIN_BYTES``.

The column ``mtcolor`` names the form mtcolor's convolutions choose on CPU
(``mtcolor.models.conv.cpu_kernel_gradient_form``; ``xla_in_chunks``: XLA's own, per batch chunk of
at most ``KERNEL_GRADIENT_CHUNK_BYTES`` of output gradient, not timed here).

Every form is checked equal to XLA's first (relative 1e-4). Prints a table and writes JSON (default
benchmarks/results/conv_kernel_grad.json).

    python benchmarks/conv_kernel_grad.py --sizes 128 256
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from train_step import cpu_model

from mtcolor.models import conv as conv_lib


def model_convs(size: int) -> list[tuple]:
    """(name, input NHWC shape at batch 1, kernel, stride, padding (per side, or (before, after)),
    c_out) of the multi-task cGAN's convolutions at ``size`` px (the U-Net's wider decoder inputs
    are not listed)."""
    s = size
    return [
        ("resnet conv1 7x7/2", (s, s, 1), 7, 2, 3, 64),
        ("resnet layer1 3x3", (s // 4, s // 4, 64), 3, 1, 1, 64),
        ("resnet layer2 3x3/2", (s // 4, s // 4, 64), 3, 2, 1, 128),
        ("resnet layer2 3x3", (s // 8, s // 8, 128), 3, 1, 1, 128),
        ("resnet layer2 downsample 1x1/2", (s // 4, s // 4, 64), 1, 2, 0, 128),
        ("resnet layer3 3x3", (s // 16, s // 16, 256), 3, 1, 1, 256),
        # the even-row, even-column phase; the others pad (0, 1) instead of (1, 0)
        ("decoder block2 phase 2x2", (s // 8, s // 8, 128), 2, 1, (1, 0), 64),
        ("decoder block3 phase 2x2", (s // 4, s // 4, 64), 2, 1, (1, 0), 64),
        ("decoder block4 phase 2x2", (s // 2, s // 2, 64), 2, 1, (1, 0), 32),
        ("patchgan conv1 4x4/2", (s, s, 3), 4, 2, 1, 64),
        ("patchgan conv2 4x4/2", (s // 2, s // 2, 64), 4, 2, 1, 128),
        ("patchgan conv3 4x4/2", (s // 4, s // 4, 128), 4, 2, 1, 256),
        ("patchgan conv4 4x4", (s // 8, s // 8, 256), 4, 1, 1, 512),
    ]


def machine_info() -> dict:
    """The backend, processor and jax version these convolution benchmarks record."""
    return {
        "platform": jax.default_backend(),
        "processor": platform.processor(),
        "cpu": cpu_model(),
        "jax": jax.__version__,
    }


def padding_pair(pad) -> tuple[int, int]:
    return tuple(pad) if isinstance(pad, tuple) else (pad, pad)


def output_pixels(shape, kernel, stride, pad) -> int:
    out = [(shape[i] + sum(padding_pair(pad)) - kernel) // stride + 1 for i in (0, 1)]
    return out[0] * out[1]


def bench(name, shape, kernel, stride, pad, c_out, batch_size, rounds) -> dict | None:
    if (
        output_pixels(shape, kernel, stride, pad) < conv_lib.KERNEL_GRADIENT_MIN_OUTPUT_PIXELS
        or c_out < conv_lib.KERNEL_GRADIENT_MIN_OUT_CHANNELS
    ):
        return None
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.standard_normal((batch_size, *shape)), jnp.float32)
    w = jnp.asarray(rng.standard_normal((kernel, kernel, shape[2], c_out)) * 0.05, jnp.float32)
    strides, padding = (stride, stride), (padding_pair(pad),) * 2
    dn = ("NHWC", "HWIO", "NHWC")
    y = jax.lax.conv_general_dilated(x, w, strides, padding, dimension_numbers=dn)
    dy = jnp.asarray(rng.standard_normal(y.shape), jnp.float32)

    def xla(x, dy):
        conv = lambda w: jax.lax.conv_general_dilated(x, w, strides, padding, dimension_numbers=dn)  # noqa: E731
        return jax.linear_transpose(conv, w)(dy)[0]

    def matmul(x, dy):
        return conv_lib.kernel_gradient(x, dy, w.shape, strides, padding)

    def space_to_depth(x, dy):
        return conv_lib.space_to_depth_kernel_gradient_of(x, dy, w.shape, padding)

    forms = {"xla": jax.jit(xla), "matmul": jax.jit(matmul)}
    if stride == 2 and kernel % 2 == 0:
        forms["s2d"] = jax.jit(space_to_depth)
    want = np.asarray(forms["xla"](x, dy))
    error = 0.0
    for form in forms:
        got = np.asarray(forms[form](x, dy))
        error = max(error, float(np.abs(got - want).max() / np.abs(want).max()))
        if error > 1e-4:
            raise AssertionError(
                f"{name}: the {form} kernel gradient differs from XLA's by {error:.1e}"
            )
    best = dict.fromkeys(forms, float("inf"))
    for _ in range(rounds):
        for form, fn in forms.items():
            start = time.perf_counter()
            jax.block_until_ready(fn(x, dy))
            best[form] = min(best[form], time.perf_counter() - start)
    gflop = 2 * np.prod(dy.shape) * kernel * kernel * shape[2] / 1e9
    return {
        "conv": name,
        "input": [batch_size, *shape],
        "output": list(dy.shape),
        "gflop": float(gflop),
        "xla_ms": best["xla"] * 1e3,
        "matmul_ms": best["matmul"] * 1e3,
        "s2d_ms": best["s2d"] * 1e3 if "s2d" in best else None,
        "speedup": best["xla"] / best["matmul"],
        "mtcolor_form": conv_lib.cpu_kernel_gradient_form(
            x.shape, w.shape, strides, padding, x.dtype.itemsize
        ),
        "max_relative_difference": error,
    }


def run_over_model_convs(description: str, out_name: str, bench, header: str, print_row) -> None:
    """The command line both convolution benchmarks share: ``--sizes``, ``--batch_size``,
    ``--rounds``, ``--out``; ``bench(*model_convs spec, batch_size=, rounds=)`` per convolution
    (None skips it), ``print_row(size, row)`` after each, then the rows and the machine as JSON
    (default benchmarks/results/<out_name>)."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--sizes", nargs="+", type=int, default=[128, 256])
    parser.add_argument("--batch_size", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / out_name))
    args = parser.parse_args()
    machine = machine_info()
    print("#", machine)
    print(header)
    rows = []
    for size in args.sizes:
        for spec in model_convs(size):
            row = bench(*spec, batch_size=args.batch_size, rounds=args.rounds)
            if row is None:
                continue
            row["image_size"] = size
            rows.append(row)
            print_row(size, row)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"machine": machine, "rows": rows}, indent=1))
    print(f"wrote {args.out}")


def print_row(size: int, row: dict) -> None:
    print(
        f"{size:>4} {row['conv']:<32}{row['gflop']:>7.2f}{row['xla_ms']:>9.1f}"
        f"{row['matmul_ms']:>11.1f}{row['speedup']:>8.2f}x"
        f"{'-' if row['s2d_ms'] is None else format(row['s2d_ms'], '.1f'):>8}"
        f"{row['mtcolor_form']:>16}",
        flush=True,
    )


def main():
    header = (
        f"{'px':>4} {'convolution':<32}{'GFLOP':>7}{'xla ms':>9}{'matmul ms':>11}{'speedup':>9}"
        f"{'s2d ms':>8}{'mtcolor':>16}"
    )
    run_over_model_convs(__doc__.splitlines()[0], "conv_kernel_grad.json", bench, header, print_row)


if __name__ == "__main__":
    main()
