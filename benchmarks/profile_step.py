"""Where one training iteration's time goes: the ops of a ``jax.profiler`` trace, largest first.

Builds one experiment's jitted iteration (``benchmarks/train_step.py``'s ``MtcolorRun``: random
init, a fixed random batch, warmed up), traces ``--steps`` iterations and sums the trace's
complete events by name: on a GPU the device's kernels (cuDNN convolutions, XLA fusions, copies),
on the CPU XLA's thunks (with ``XLA_FLAGS=--xla_cpu_enable_xprof_traceme=true``, which this script
sets). Host-side events (dispatch, waits) are listed too, marked by where they ran, so a
launch-bound iteration shows as host time; Python frames and XLA:CPU's thunk executor, which
enclose the ops, are left out.

    python benchmarks/profile_step.py --size 64 --phase 2                     # CPU
    python benchmarks/profile_step.py --size 256 --batch_size 256 --dtype bfloat16   # a GPU

Prints the top ``--top`` events (total ms per iteration, count per iteration, share of the
iteration's wall time) and writes them as JSON (default benchmarks/results/profile_step.json),
with the trace's own directory for a closer look in Perfetto or TensorBoard.
"""

from __future__ import annotations

import argparse
import collections
import glob
import gzip
import json
import os
import sys
import tempfile
import time
from pathlib import Path

if "--xla_cpu_enable_xprof_traceme" not in os.environ.get("XLA_FLAGS", ""):
    # Only read by XLA:CPU: names each thunk in the trace (no effect on other backends).
    os.environ["XLA_FLAGS"] = (
        os.environ.get("XLA_FLAGS", "") + " --xla_cpu_enable_xprof_traceme=true"
    ).strip()

sys.path.insert(0, str(Path(__file__).parent))

import jax  # noqa: E402
from train_step import EXPERIMENTS, MtcolorRun  # noqa: E402

# Events that contain the ops rather than being ops: Python frames (named "$file:line function")
# and XLA:CPU's thunk executor around every thunk.
_ENCLOSING = ("$", "ThunkExecutor::Execute")


def summarize(trace_dir: str, steps: int) -> tuple[list[dict], dict]:
    """Complete ('X') events of the trace summed by (process, name), per iteration, enclosing
    events (``_ENCLOSING``) left out."""
    files = glob.glob(f"{trace_dir}/**/*.trace.json.gz", recursive=True)
    if not files:
        raise FileNotFoundError(f"no *.trace.json.gz under {trace_dir}")
    trace = json.load(gzip.open(files[0]))
    events = trace["traceEvents"] if isinstance(trace, dict) else trace
    process_names = {
        e["pid"]: e["args"]["name"]
        for e in events
        if e.get("ph") == "M" and e.get("name") == "process_name"
    }
    total_us = collections.Counter()
    count = collections.Counter()
    for e in events:
        if e.get("ph") != "X" or e["name"].startswith(_ENCLOSING):
            continue
        key = (process_names.get(e["pid"], str(e["pid"])), e["name"])
        total_us[key] += e.get("dur", 0)
        count[key] += 1
    rows = [
        {
            "where": where,
            "name": name,
            "ms_per_iteration": us / 1000 / steps,
            "count_per_iteration": count[(where, name)] / steps,
        }
        for (where, name), us in total_us.most_common()
    ]
    return rows, {"trace_file": files[0]}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--experiment", default="multitask", choices=EXPERIMENTS)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--batch_size", type=int, default=16)
    parser.add_argument("--phase", type=int, default=2, choices=[1, 2])
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--top", type=int, default=40)
    parser.add_argument("--trace_dir", default=None, help="default: a new temporary directory")
    parser.add_argument(
        "--out", default=str(Path(__file__).parent / "results" / "profile_step.json")
    )
    args = parser.parse_args()

    run = MtcolorRun(args.experiment, args.size, args.batch_size, args.phase, dtype=args.dtype)
    wall_s = run.run(args.steps) / args.steps  # untraced, for the share column
    trace_dir = args.trace_dir or tempfile.mkdtemp(prefix="mtcolor-profile-")
    jax.profiler.start_trace(trace_dir, create_perfetto_trace=True)
    start = time.perf_counter()
    run.run(args.steps)
    traced_s = (time.perf_counter() - start) / args.steps
    jax.profiler.stop_trace()
    rows, files = summarize(trace_dir, args.steps)

    device = jax.devices()[0]
    print(
        f"# {args.experiment}, {args.size} px, batch {args.batch_size}, phase {args.phase}, "
        f"{args.dtype}, {device.device_kind}: {wall_s * 1000:.1f} ms per iteration "
        f"({traced_s * 1000:.1f} ms traced), {run.flops / 1e9:.1f} GFLOP"
    )
    print(f"{'ms/it':>9}{'n/it':>7}{'share':>7}  where: name")
    for row in rows[: args.top]:
        share = row["ms_per_iteration"] / (traced_s * 1000)
        print(
            f"{row['ms_per_iteration']:>9.2f}{row['count_per_iteration']:>7.0f}{share:>7.1%}  "
            f"{row['where'][:24]}: {row['name'][:100]}"
        )
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(
        json.dumps(
            {
                "device": device.device_kind,
                "platform": device.platform,
                "jax": jax.__version__,
                "args": vars(args),
                "iteration_s": wall_s,
                "traced_iteration_s": traced_s,
                "iteration_gflop": run.flops / 1e9,
                **files,
                "events": rows[:500],
            },
            indent=2,
        )
    )
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
