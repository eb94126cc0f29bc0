"""The decoder's upsampling on this backend: each form of the transposed conv, timed.

``mtcolor.models.decoder.conv_transpose_4x4_stride2`` computes PyTorch's ConvTranspose2d(4, 2, 1)
in the form ``decoder.UPSAMPLE_FORMS`` names for the backend: ``adjoint``
(``conv_transpose_adjoint``, the transpose of Conv2d(4, 2, 1), each of its three products that
convolution's own), ``phases`` (``conv_transpose_phases``, four stride-1 2x2 convolutions) or
``dilated`` (``conv_transpose_dilated``, XLA's transposed convolution, what ``nn.ConvTranspose``
runs). This times forward + backward (input and weight gradients) of the paper decoder's five
blocks in every form, at the block shapes of a given image size, after checking that they agree
with the dilated form, and says which form the backend uses (the table's choice should be the
faster one; the blocks alone, outside the model: ``benchmarks/form_ab.py`` times the choice in the
whole iteration). Blocks whose input has at most ``conv.SMALL_MAP_PIXELS`` pixels run
``conv_transpose_tiny_map`` on every backend instead; for those the table times it too (column
``tiny s``).

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
    forms = {
        "adjoint": decoder.conv_transpose_adjoint,
        "phases": decoder.conv_transpose_phases,
        "dilated": decoder.conv_transpose_dilated,
    }
    tolerance = 1e-4 if args.dtype == "float32" else 2e-2
    print(
        f"{'input':>16}{'out ch':>8}"
        + "".join(f"{name + ' s':>11}" for name in forms)
        + f"{'tiny s':>9}"
    )
    for block, (c_in, c_out) in enumerate(zip(widths[:-1], widths[1:])):
        hw = args.size // 2 ** (5 - block)
        x = jnp.asarray(rng.normal(size=(args.batch, hw, hw, c_in)), args.dtype)
        kernel = jnp.asarray(rng.normal(size=(4, 4, c_out, c_in)) * 0.02, args.dtype)
        reference = decoder.conv_transpose_dilated(x, kernel).astype(jnp.float32)
        candidates = dict(forms)
        if hw * hw <= conv.SMALL_MAP_PIXELS:  # what conv_transpose_4x4_stride2 runs here
            candidates["tiny"] = decoder.conv_transpose_tiny_map
        diffs = {}
        for name, fn in candidates.items():
            out = fn(x, kernel).astype(jnp.float32)
            diffs[name] = float(jnp.abs(out - reference).max() / jnp.abs(reference).max())
            if not diffs[name] < tolerance:
                raise AssertionError(
                    f"block {block}: {name} differs, max relative {diffs[name]:.2g}"
                )
        seconds = {name: time_grad(fn, x, kernel, args.repeats) for name, fn in candidates.items()}
        rows.append(
            {
                "block": block,
                "input": [args.batch, hw, hw, c_in],
                "out_channels": c_out,
                **{f"{name}_s": seconds[name] for name in forms},
                "tiny_map_s": seconds.get("tiny"),
                "max_relative_diff": diffs,
            }
        )
        tiny = seconds.get("tiny")
        print(
            f"{str((hw, hw, c_in)):>16}{c_out:>8}"
            + "".join(f"{seconds[name]:>11.4f}" for name in forms)
            + (f"{tiny:>9.4f}" if tiny is not None else f"{'-':>9}")
        )
    totals = {name: sum(r[f"{name}_s"] for r in rows) for name in forms}
    faster = min(totals, key=totals.get)
    print(
        f"{'all blocks':>24}"
        + "".join(f"{totals[name]:>11.4f}" for name in forms)
        + f"   fastest: {faster}, mtcolor uses: {used}"
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
                "total_s": totals,
            },
            indent=2,
        )
    )
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
