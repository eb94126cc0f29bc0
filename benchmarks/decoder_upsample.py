"""The decoder's upsampling: flax ``nn.ConvTranspose`` vs mtcolor's stride-1 form.

``mtcolor.models.decoder.conv_transpose_4x4_stride2`` computes PyTorch's ConvTranspose2d(4, 2, 1)
as four stride-1 2x2 convolutions. This times forward + backward (input and weight gradients) of
the paper decoder's five blocks in both forms, at the block shapes of a given image size, and
checks that the two agree.

    python benchmarks/decoder_upsample.py --size 128 --batch 16

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
from flax import linen as nn

from mtcolor.models import decoder


def flax_conv_transpose(x, kernel):
    layer = nn.ConvTranspose(
        kernel.shape[2],
        (4, 4),
        strides=(2, 2),
        padding=decoder.UPSAMPLE_PADDING,
        transpose_kernel=True,
        use_bias=False,
    )
    return layer.apply({"params": {"kernel": kernel}}, x)


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
    parser.add_argument(
        "--out", default=str(Path(__file__).parent / "results" / "decoder_upsample.json")
    )
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    widths = (512,) + tuple(decoder.ColorDecoder.features)
    rows = []
    print(f"# {jax.devices()[0].device_kind}, batch {args.batch}, image {args.size} px")
    print(f"{'input':>16}{'out ch':>8}{'ConvTranspose s':>17}{'stride-1 s':>12}{'speed-up':>10}")
    for block, (c_in, c_out) in enumerate(zip(widths[:-1], widths[1:])):
        hw = args.size // 2 ** (5 - block)
        x = jnp.asarray(rng.normal(size=(args.batch, hw, hw, c_in)), jnp.float32)
        kernel = jnp.asarray(rng.normal(size=(4, 4, c_out, c_in)) * 0.02, jnp.float32)
        diff = float(
            jnp.abs(
                flax_conv_transpose(x, kernel) - decoder.conv_transpose_4x4_stride2(x, kernel)
            ).max()
        )
        base = time_grad(flax_conv_transpose, x, kernel, args.repeats)
        fast = time_grad(decoder.conv_transpose_4x4_stride2, x, kernel, args.repeats)
        rows.append(
            {
                "block": block,
                "input": [args.batch, hw, hw, c_in],
                "out_channels": c_out,
                "conv_transpose_s": base,
                "stride1_s": fast,
                "speedup": base / fast,
                "max_abs_diff": diff,
            }
        )
        print(f"{str((hw, hw, c_in)):>16}{c_out:>8}{base:>17.3f}{fast:>12.3f}{base / fast:>9.1f}x")
    total_base = sum(r["conv_transpose_s"] for r in rows)
    total_fast = sum(r["stride1_s"] for r in rows)
    print(
        f"{'all blocks':>24}{total_base:>17.3f}{total_fast:>12.3f}{total_base / total_fast:>9.1f}x"
    )
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(
        json.dumps(
            {
                "device": jax.devices()[0].device_kind,
                "args": vars(args),
                "results": rows,
                "total_speedup": total_base / total_fast,
            },
            indent=2,
        )
    )
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
