"""Throughput of each model's full training step (paper's models, float32, random init).

For the three experiments (classification, colorization, multitask) at each image size, one full
training iteration as the trainer runs it (``mtcolor.train.steps.train_step``: D step then G step
for the cGAN models, the classifier step otherwise), jitted with the state donated and the batch
sharded over every local device. Reports compile time, steps/s, images/s, XLA's FLOP count of the
step (so a GPU run can state its model FLOP utilization when ``--peak_tflops`` is given) and
peak memory (device ``peak_bytes_in_use`` where the backend reports it, else the process's peak
RSS, which on CPU is the memory that matters).

    python benchmarks/train_step.py                       # 128 and 256 px, batch 16
    python benchmarks/train_step.py --sizes 64 --steps 3 --out /tmp/train_step.json

Prints a table and writes JSON (default benchmarks/results/train_step.json).
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from mtcolor.train import sharding, state as state_lib, steps
from mtcolor.train.config import base_config

EXPERIMENTS = ("classification", "colorization", "multitask")


def random_batch(batch_size: int, size: int, num_classes: int, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    return {
        "L": rng.uniform(-1, 1, (batch_size, size, size, 1)).astype(np.float32),
        "ab": rng.uniform(-0.5, 0.5, (batch_size, size, size, 2)).astype(np.float32),
        "label": rng.integers(0, num_classes, batch_size).astype(np.int32),
    }


def peak_memory_bytes() -> tuple[int, str]:
    stats = jax.local_devices()[0].memory_stats() or {}
    if "peak_bytes_in_use" in stats:
        return int(stats["peak_bytes_in_use"]), "device peak_bytes_in_use"
    # ru_maxrss is in KiB on Linux; it is the peak of the whole process so far (monotone), so
    # the order of the runs matters: they go from the cheapest to the most expensive.
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024, "process peak RSS"


def bench_one(experiment: str, size: int, batch_size: int, num_steps: int, warmup: int,
              pooling: str, peak_tflops: float | None) -> dict:
    config = base_config(experiment)
    config.image_size = size
    config.batch_size = batch_size
    config.model.pooling = pooling
    mesh = sharding.make_mesh()
    sharding.check_batch_divisible(batch_size, mesh)
    state = sharding.replicate(state_lib.create_train_state(config, jax.random.key(0)), mesh)
    batch = sharding.put_batch(random_batch(batch_size, size, config.model.num_classes), mesh)
    train_step = jax.jit(steps.train_step, donate_argnums=0,
                         out_shardings=sharding.replicated(mesh))

    t0 = time.perf_counter()
    compiled = train_step.lower(state, batch).compile()
    compile_s = time.perf_counter() - t0
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    flops = float(cost.get("flops", float("nan"))) if cost else float("nan")

    for _ in range(warmup):
        state, metrics = compiled(state, batch)
    jax.block_until_ready(metrics)
    t0 = time.perf_counter()
    for _ in range(num_steps):
        state, metrics = compiled(state, batch)
    jax.block_until_ready(metrics)
    seconds = (time.perf_counter() - t0) / num_steps
    loss = float(metrics.get("loss_g", metrics.get("loss")))
    if not np.isfinite(loss):
        raise FloatingPointError(f"{experiment} at {size}px produced a non-finite loss")
    peak, peak_kind = peak_memory_bytes()
    row = {
        "experiment": experiment, "image_size": size, "batch_size": batch_size,
        "compile_s": compile_s, "step_s": seconds, "steps_per_s": 1.0 / seconds,
        "images_per_s": batch_size / seconds, "step_gflop": flops / 1e9,
        "achieved_tflops": flops / seconds / 1e12, "peak_memory_mb": peak / 2**20,
        "peak_memory_kind": peak_kind,
    }
    if peak_tflops:
        row["mfu"] = row["achieved_tflops"] / (peak_tflops * len(jax.devices()))
    return row


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--experiments", nargs="+", default=list(EXPERIMENTS), choices=EXPERIMENTS)
    parser.add_argument("--sizes", nargs="+", type=int, default=[128, 256])
    parser.add_argument("--batch_size", type=int, default=16)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--pooling", default="flatten", choices=["flatten", "avg"],
                        help="class head pooling: the paper's flatten (default) or avg")
    parser.add_argument("--peak_tflops", type=float, default=None,
                        help="the accelerator's peak dense TFLOP/s per device, to report MFU "
                             "(e.g. 989 for an H100 SXM in bf16, 67 in fp32)")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "train_step.json"))
    args = parser.parse_args()

    device = jax.devices()[0]
    machine = {
        "platform": device.platform, "device_kind": device.device_kind,
        "device_count": jax.device_count(), "cpu": platform.processor() or platform.machine(),
        "jax": jax.__version__,
    }
    print(f"# {machine}")
    rows = []
    header = (f"{'experiment':<15}{'px':>5}{'batch':>6}{'compile s':>11}{'step s':>9}"
              f"{'steps/s':>9}{'img/s':>8}{'GFLOP':>9}{'TFLOP/s':>9}{'peak MB':>9}")
    print(header)
    for size in sorted(args.sizes):
        for experiment in args.experiments:
            row = bench_one(experiment, size, args.batch_size, args.steps, args.warmup,
                            args.pooling, args.peak_tflops)
            rows.append(row)
            print(f"{experiment:<15}{size:>5}{args.batch_size:>6}{row['compile_s']:>11.1f}"
                  f"{row['step_s']:>9.3f}{row['steps_per_s']:>9.2f}{row['images_per_s']:>8.1f}"
                  f"{row['step_gflop']:>9.1f}{row['achieved_tflops']:>9.3f}"
                  f"{row['peak_memory_mb']:>9.0f}", flush=True)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"machine": machine, "args": vars(args), "results": rows}, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
