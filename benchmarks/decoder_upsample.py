"""The decoder's upsampling on this backend: XLA's transposed conv vs the four stride-1 phases.

``mtcolor.models.decoder.conv_transpose_4x4_stride2`` computes PyTorch's ConvTranspose2d(4, 2, 1)
in the form ``decoder.UPSAMPLE_FORMS`` names for the backend: ``dilated``
(``conv_transpose_dilated``, XLA's transposed convolution, what ``nn.ConvTranspose`` runs) or
``phases`` (``conv_transpose_phases``, four stride-1 2x2 convolutions). This times forward +
backward (input and weight gradients) of the paper decoder's five blocks in both forms, at the
block shapes of a given image size, after checking that the two agree, and says which form the
backend uses (the table's choice should be the faster one). Blocks whose input has at most
``conv.SMALL_MAP_PIXELS`` pixels run ``conv_transpose_tiny_map`` on every backend instead; for
those the table times it too (column ``tiny s``).

    python benchmarks/decoder_upsample.py --size 128 --batch 16
    python benchmarks/decoder_upsample.py --size 256 --batch 16 --dtype bfloat16   # on a GPU

Prints a table and writes JSON (default benchmarks/results/decoder_upsample.json).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from mtcolor.models import conv, decoder


def time_grad(fn, x, kernel, repeats):
    grad = jax.jit(jax.grad(lambda x, k: jnp.sum(fn(x, k) ** 2), argnums=(0, 1)))
    jax.block_until_ready(grad(x, kernel))
    start = time.perf_counter()
    for _ in range(repeats):
        jax.block_until_ready(grad(x, kernel))
    return (time.perf_counter() - start) / repeats


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    parser.add_argument(
        "--out", default=str(Path(__file__).parent / "results" / "decoder_upsample.json")
    )
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    widths = (512,) + tuple(decoder.ColorDecoder.features)
    rows = []
    platform = jax.devices()[0].platform
    used = decoder.UPSAMPLE_FORMS.get(platform, decoder.UPSAMPLE_FORMS["default"])
    print(
        f"# {jax.devices()[0].device_kind} ({platform}: mtcolor uses {used!r}), batch "
        f"{args.batch}, image {args.size} px, {args.dtype}"
    )
    print(
        f"{'input':>16}{'out ch':>8}{'dilated s':>11}{'phases s':>10}{'dilated/phases':>16}"
        f"{'tiny s':>9}"
    )
    for block, (c_in, c_out) in enumerate(zip(widths[:-1], widths[1:])):
        hw = args.size // 2 ** (5 - block)
        x = jnp.asarray(rng.normal(size=(args.batch, hw, hw, c_in)), args.dtype)
        kernel = jnp.asarray(rng.normal(size=(4, 4, c_out, c_in)) * 0.02, args.dtype)
        dilated_out = decoder.conv_transpose_dilated(x, kernel).astype(jnp.float32)
        phases_out = decoder.conv_transpose_phases(x, kernel).astype(jnp.float32)
        diff = float(jnp.abs(dilated_out - phases_out).max() / jnp.abs(dilated_out).max())
        if not diff < (1e-4 if args.dtype == "float32" else 2e-2):
            raise AssertionError(f"block {block}: forms differ, max relative {diff:.2g}")
        dilated = time_grad(decoder.conv_transpose_dilated, x, kernel, args.repeats)
        phases = time_grad(decoder.conv_transpose_phases, x, kernel, args.repeats)
        tiny = None
        if hw * hw <= conv.SMALL_MAP_PIXELS:  # what conv_transpose_4x4_stride2 runs here
            tiny_out = decoder.conv_transpose_tiny_map(x, kernel).astype(jnp.float32)
            tiny_diff = float(jnp.abs(dilated_out - tiny_out).max() / jnp.abs(dilated_out).max())
            if not tiny_diff < (1e-4 if args.dtype == "float32" else 2e-2):
                raise AssertionError(f"block {block}: tiny-map form differs, {tiny_diff:.2g}")
            tiny = time_grad(decoder.conv_transpose_tiny_map, x, kernel, args.repeats)
        rows.append(
            {
                "block": block,
                "input": [args.batch, hw, hw, c_in],
                "out_channels": c_out,
                "dilated_s": dilated,
                "phases_s": phases,
                "dilated_over_phases": dilated / phases,
                "tiny_map_s": tiny,
                "max_relative_diff": diff,
            }
        )
        print(
            f"{str((hw, hw, c_in)):>16}{c_out:>8}{dilated:>11.4f}{phases:>10.4f}"
            f"{dilated / phases:>16.2f}" + (f"{tiny:>9.4f}" if tiny is not None else f"{'-':>9}")
        )
    total_dilated = sum(r["dilated_s"] for r in rows)
    total_phases = sum(r["phases_s"] for r in rows)
    faster = "dilated" if total_dilated < total_phases else "phases"
    print(
        f"{'all blocks':>24}{total_dilated:>11.4f}{total_phases:>10.4f}"
        f"{total_dilated / total_phases:>16.2f}   faster: {faster}, mtcolor uses: {used}"
    )
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(
        json.dumps(
            {
                "device": jax.devices()[0].device_kind,
                "platform": platform,
                "form_used": used,
                "faster_form": faster,
                "args": vars(args),
                "results": rows,
                "total_dilated_s": total_dilated,
                "total_phases_s": total_phases,
            },
            indent=2,
        )
    )
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
