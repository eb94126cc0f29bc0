"""Throughput of each model's full training iteration (D then G, or the classifier step).

    python benchmarks/train_step.py                      # 128 and 256 px, batch 16, JSON to stdout
    python benchmarks/train_step.py --sizes 64 --steps 3 --out bench.json

Per (experiment, size): compile time of the first iteration, steps/s and images/s over --steps
timed iterations (after one warm-up), peak memory (device allocator peak where the backend
reports it, else the process's max RSS), device, phase (2: everything trained, the slower one).
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import time

import jax
import numpy as np


def bench(experiment: str, size: int, batch: int, steps: int) -> dict:
  from mtcolor.train import config as config_lib
  from mtcolor.train import loop
  from mtcolor.train import sharding
  from mtcolor.train import state as state_lib
  from mtcolor.train import steps as steps_lib

  config = config_lib.base_config(experiment)
  config.image_size, config.batch_size = size, batch
  mesh = sharding.make_mesh()
  state = sharding.replicate(
      state_lib.create_train_state(config, jax.random.PRNGKey(0), backbone_frozen=False), mesh)
  rng = np.random.default_rng(0)
  batch_np = {"L": rng.uniform(-1, 1, (batch, size, size, 1)).astype(np.float32),
              "ab": rng.uniform(-0.5, 0.5, (batch, size, size, 2)).astype(np.float32),
              "label": (np.arange(batch) % 5).astype(np.int32)}
  data = sharding.put_batch(batch_np, mesh)
  fns = steps_lib.jit_steps(mesh)
  t0 = time.perf_counter()
  state, metrics = loop._iteration(fns, state, data)  # pylint: disable=protected-access
  jax.block_until_ready(metrics)
  compile_s = time.perf_counter() - t0
  state, metrics = loop._iteration(fns, state, data)  # pylint: disable=protected-access
  jax.block_until_ready(metrics)
  t0 = time.perf_counter()
  for _ in range(steps):
    state, metrics = loop._iteration(fns, state, data)  # pylint: disable=protected-access
  jax.block_until_ready((state, metrics))
  elapsed = time.perf_counter() - t0
  stats = jax.devices()[0].memory_stats() or {}
  peak = stats.get("peak_bytes_in_use")
  return {"experiment": experiment, "image_size": size, "batch": batch, "phase": 2,
          "compile_and_first_step_s": compile_s, "steps_per_s": steps / elapsed,
          "images_per_s": steps * batch / elapsed,
          "peak_memory_bytes": int(peak) if peak is not None else None,
          "max_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
          "devices": [str(d) for d in jax.devices()]}


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--sizes", type=int, nargs="+", default=[128, 256])
  parser.add_argument("--batch", type=int, default=16)
  parser.add_argument("--steps", type=int, default=5)
  parser.add_argument("--experiments", nargs="+",
                      default=["multitask", "colorization", "classification"])
  parser.add_argument("--out", default=None)
  args = parser.parse_args()
  results = [bench(e, s, args.batch, args.steps) for s in args.sizes for e in args.experiments]
  report = {"machine": platform.platform(), "processor": platform.processor(),
            "jax": jax.__version__, "backend": jax.default_backend(), "results": results}
  text = json.dumps(report, indent=2)
  print(text)
  if args.out:
    with open(args.out, "w", encoding="utf-8") as f:
      f.write(text + "\n")


if __name__ == "__main__":
  main()
