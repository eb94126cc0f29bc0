"""Throughput of each model's full training iteration, as the trainer runs it.

For the three experiments at each image size: one iteration of ``mtcolor.train.loop``
(``steps.train_step``: one generator forward, the D update on it, then G through the updated D for
the cGAN models; the classifier's update otherwise; jitted with the state donated, the batch
sharded over every local device). ``--iterations one_forward two_forward`` adds, in the same run,
the earlier form: the D step and the G step as two compiled calls, each with its own generator
forward. on the paper's models (flatten class head,
float32, random init). Reports the compile time (lowering + compiling the steps), steps/s and
images/s over timed iterations after a warm-up, XLA's FLOP count of one iteration and the FLOP/s
achieved (MFU when ``--peak_tflops`` is given), and peak memory: the device allocator's peak where
the backend reports it (GPU/TPU), else the process's peak RSS (CPU; monotone over the run, so rows
go from the cheapest to the most expensive).

    python benchmarks/train_step.py                          # 128 and 256 px, batch 16, phase 2
    python benchmarks/train_step.py --sizes 64 --steps 3 --phase 1 --out /tmp/train_step.json
    python benchmarks/train_step.py --sizes 64 --experiments multitask \
        --iterations one_forward two_forward                  # one vs two generator forwards
    python benchmarks/train_step.py --sizes 64 --experiments multitask \
        --dtypes float32 bfloat16                              # mixed precision side by side

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
import numpy as np

from mtcolor.train import config as config_lib
from mtcolor.train import loop, sharding, steps
from mtcolor.train import state as state_lib

EXPERIMENTS = ("classification", "colorization", "multitask")


def random_batch(batch_size: int, size: int, num_classes: int) -> dict:
    rng = np.random.default_rng(0)
    return {
        "L": rng.uniform(-1, 1, (batch_size, size, size, 1)).astype(np.float32),
        "ab": rng.uniform(-0.5, 0.5, (batch_size, size, size, 2)).astype(np.float32),
        "label": (np.arange(batch_size) % num_classes).astype(np.int32),
    }


def peak_memory() -> tuple[float, str]:
    stats = jax.local_devices()[0].memory_stats() or {}
    if "peak_bytes_in_use" in stats:
        return stats["peak_bytes_in_use"] / 2**20, "device peak_bytes_in_use"
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "process peak RSS"


def step_flops(compiled) -> float:
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    return float(cost.get("flops", float("nan"))) if cost else float("nan")


ITERATIONS = ("one_forward", "two_forward")


def two_forward_iteration(fns, state, batch):
    """The iteration before train_step fused it: D step, then G step, each with its forward."""
    rng = fns.iteration_rng(state)
    metrics = {}
    if state.discriminator is not None:
        state, metrics = fns.discriminator_step(state, batch, rng)
    state, model_metrics = fns.generator_step(state, batch, rng)
    return state, {**metrics, **model_metrics}


def bench(experiment: str, size: int, batch_size: int, num_steps: int, phase: int,
          peak_tflops: float | None, iteration: str = "one_forward",
          dtype: str = "float32") -> dict:
    config = config_lib.base_config(experiment)
    config.image_size, config.batch_size = size, batch_size
    config.model.dtype = dtype
    mesh = sharding.make_mesh()
    sharding.check_batch_divisible(batch_size, mesh)
    state = state_lib.create_train_state(config, jax.random.key(0), backbone_frozen=phase == 1)
    state = sharding.replicate(state, mesh)
    batch = sharding.put_batch(random_batch(batch_size, size, config.model.num_classes), mesh)
    fns = steps.jit_steps(mesh)

    # Compile explicitly so compile time and XLA's FLOP count are measured per step function.
    rng = fns.iteration_rng(state)
    start = time.perf_counter()
    if iteration == "one_forward":
        compiled = [fns.train_step.lower(state, batch).compile()]
        run_iteration = loop.train_iteration
    else:
        compiled = [fns.generator_step.lower(state, batch, rng).compile()]
        if state.discriminator is not None:
            compiled.append(fns.discriminator_step.lower(state, batch, rng).compile())
        run_iteration = two_forward_iteration
    compile_s = time.perf_counter() - start
    flops = sum(step_flops(c) for c in compiled)

    state, metrics = run_iteration(fns, state, batch)  # warm-up (and jit cache fill)
    jax.block_until_ready(metrics)
    start = time.perf_counter()
    for _ in range(num_steps):
        state, metrics = run_iteration(fns, state, batch)
    jax.block_until_ready((state, metrics))
    seconds = (time.perf_counter() - start) / num_steps
    loss = float(metrics.get("loss_g", metrics.get("loss")))
    if not np.isfinite(loss):
        raise FloatingPointError(f"{experiment} at {size} px: non-finite loss {loss}")
    memory_mb, memory_kind = peak_memory()
    row = {
        "experiment": experiment, "iteration": iteration, "dtype": dtype, "image_size": size, "batch_size": batch_size, "phase": phase,
        "compile_s": compile_s, "step_s": seconds, "steps_per_s": 1 / seconds,
        "images_per_s": batch_size / seconds, "iteration_gflop": flops / 1e9,
        "achieved_tflops": flops / seconds / 1e12, "peak_memory_mb": memory_mb,
        "peak_memory_kind": memory_kind,
    }
    if peak_tflops:
        row["mfu"] = row["achieved_tflops"] / (peak_tflops * jax.device_count())
    return row


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--experiments", nargs="+", default=list(EXPERIMENTS), choices=EXPERIMENTS)
    parser.add_argument("--sizes", nargs="+", type=int, default=[128, 256])
    parser.add_argument("--batch_size", type=int, default=16)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--phase", type=int, default=2, choices=[1, 2],
                        help="1: backbone frozen; 2: everything trained (the slower phase)")
    parser.add_argument("--peak_tflops", type=float, default=None,
                        help="the accelerator's peak TFLOP/s per device for the dtype used, to "
                             "report MFU (e.g. about 67 for an H100 SXM in float32, non-tensor-core)")
    parser.add_argument("--iterations", nargs="+", default=["one_forward"], choices=ITERATIONS,
                        help="one_forward: steps.train_step (what the trainer runs); "
                             "two_forward: the D and G steps as two calls, two generator forwards")
    parser.add_argument("--dtypes", nargs="+", default=["float32"], choices=["float32", "bfloat16"],
                        help="config.model.dtype: each is timed in the same run")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "train_step.json"))
    args = parser.parse_args()

    device = jax.devices()[0]
    machine = {"platform": device.platform, "device_kind": device.device_kind,
               "device_count": jax.device_count(), "host": platform.platform(),
               "processor": platform.processor() or platform.machine(), "jax": jax.__version__}
    print(f"# {machine}")
    print(f"{'experiment':<15}{'iteration':>12}{'dtype':>10}{'px':>5}{'batch':>6}{'phase':>6}{'compile s':>10}"
          f"{'step s':>9}{'steps/s':>9}{'img/s':>8}{'GFLOP':>9}{'TFLOP/s':>9}{'peak MB':>9}")
    rows = []
    runs = [(size, experiment, iteration, dtype) for size in sorted(args.sizes)
            for experiment in args.experiments for iteration in args.iterations
            for dtype in args.dtypes]
    for size, experiment, iteration, dtype in runs:
        row = bench(experiment, size, args.batch_size, args.steps, args.phase, args.peak_tflops,
                    iteration, dtype)
        rows.append(row)
        print(f"{experiment:<15}{iteration:>12}{dtype:>10}{size:>5}{args.batch_size:>6}{args.phase:>6}"
              f"{row['compile_s']:>10.1f}{row['step_s']:>9.3f}{row['steps_per_s']:>9.2f}"
              f"{row['images_per_s']:>8.1f}{row['iteration_gflop']:>9.1f}"
              f"{row['achieved_tflops']:>9.3f}{row['peak_memory_mb']:>9.0f}", flush=True)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"machine": machine, "args": vars(args), "results": rows}, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
