"""Stride-2 convolutions per batch chunk on CPU: mtcolor's forward and folded kernel gradient, whole
against in chunks.

For each stride-2 convolution of the multi-task cGAN (``conv_kernel_grad.model_convs``), times
``mtcolor.models.conv.conv_general_dilated`` itself, batch 16, float32, jitted, interleaved over
``--rounds`` and the best time kept, with its chunk settings as they are and switched off (whole):

  * the forward, in ``cpu_forward_chunks`` chunks (``FORWARD_CHUNK_BYTES`` of output at most each);
  * the kernel gradient (``jax.vjp`` in the kernel), where it is the folded stride-2 form
    (``cpu_kernel_gradient_form`` "space_to_depth"), in chunks of at most
    ``SPACE_TO_DEPTH_KERNEL_GRADIENT_CHUNK_BYTES`` of output gradient.

Both settings are checked equal first (relative 1e-5). Prints a table and writes JSON (default
benchmarks/results/conv_batch_chunks.json).

    python benchmarks/conv_batch_chunks.py --sizes 128 256
"""

from __future__ import annotations

import time

import jax
import jax.numpy as jnp
import numpy as np
from conv_kernel_grad import padding_pair, run_over_model_convs
from train_step import whole_batch_convolutions

from mtcolor.models import conv as conv_lib


def compiled(fn, chunked: bool, *args):
    """``fn`` compiled for ``args``, mtcolor's convolutions with their chunks or whole (traced
    afresh: jax.jit would reuse ``fn``'s cached trace, made under the other setting)."""

    def fresh(*args):
        return fn(*args)

    if chunked:
        return jax.jit(fresh).lower(*args).compile()
    with whole_batch_convolutions():
        return jax.jit(fresh).lower(*args).compile()


def bench(name, shape, kernel, stride, pad, c_out, batch_size, rounds) -> dict | None:
    if stride != 2:
        return None
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.standard_normal((batch_size, *shape)), jnp.float32)
    w = jnp.asarray(rng.standard_normal((kernel, kernel, shape[2], c_out)) * 0.05, jnp.float32)
    strides, padding = (stride, stride), (padding_pair(pad),) * 2

    def forward(x, w):
        return conv_lib.conv_general_dilated(
            x, w, strides, padding, dimension_numbers=("NHWC", "HWIO", "NHWC")
        )

    y = forward(x, w)
    dy = jnp.asarray(rng.standard_normal(y.shape), jnp.float32)

    def kernel_gradient(x, w, dy):
        return jax.vjp(lambda w: forward(x, w), w)[1](dy)[0]

    chunks = conv_lib.cpu_forward_chunks(x.shape, w.shape, strides, padding, 4)
    form = conv_lib.cpu_kernel_gradient_form(x.shape, w.shape, strides, padding, 4)
    kernel_chunks = conv_lib.batch_chunks(
        batch_size, dy.size * 4, conv_lib.SPACE_TO_DEPTH_KERNEL_GRADIENT_CHUNK_BYTES
    )
    programs = {}
    if chunks > 1:
        programs["forward"] = [compiled(forward, c, x, w) for c in (False, True)], (x, w)
    if form == "space_to_depth" and kernel_chunks > 1:
        programs["kernel_gradient"] = (
            [compiled(kernel_gradient, c, x, w, dy) for c in (False, True)],
            (x, w, dy),
        )
    if not programs:
        return None
    row = {"conv": name, "input": [batch_size, *shape], "output": list(y.shape)}
    for what, (pair, args) in programs.items():
        whole, in_chunks = (np.asarray(p(*args)) for p in pair)
        error = float(np.abs(in_chunks - whole).max() / np.abs(whole).max())
        if error > 1e-5:
            raise AssertionError(f"{name}: the {what} in chunks differs from whole by {error:.1e}")
        best = [float("inf"), float("inf")]
        for _ in range(rounds):
            for i, program in enumerate(pair):
                start = time.perf_counter()
                jax.block_until_ready(program(*args))
                best[i] = min(best[i], time.perf_counter() - start)
        row[what] = {
            "chunks": chunks if what == "forward" else kernel_chunks,
            "whole_ms": best[0] * 1e3,
            "chunks_ms": best[1] * 1e3,
            "max_relative_difference": error,
        }
    return row


def print_row(size: int, row: dict) -> None:
    for what in ("forward", "kernel_gradient"):
        if what in row:
            r = row[what]
            print(
                f"{size:>4} {row['conv']:<32}{what:<17}{r['chunks']:>7}"
                f"{r['whole_ms']:>10.1f}{r['chunks_ms']:>11.1f}",
                flush=True,
            )


def main():
    header = (
        f"{'px':>4} {'convolution':<32}{'what':<17}{'chunks':>7}{'whole ms':>10}{'chunks ms':>11}"
    )
    run_over_model_convs(
        __doc__.splitlines()[0], "conv_batch_chunks.json", bench, header, print_row
    )


if __name__ == "__main__":
    main()
