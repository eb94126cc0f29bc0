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
iteration's wall time), the device kernels' time by category (convolutions and matmuls, XLA's
element-wise and reduction fusions, layout copies), the iteration's MFU against ``--peak_tflops``
and its two floors (model FLOPs at the peak rate, XLA's bytes accessed at ``--peak_tb_s``), and
writes them as JSON (default benchmarks/results/profile_step.json), with the trace's own
directory (and, with ``--trace_copy``, a copy of the trace) for a closer look in Perfetto or
TensorBoard.
"""

from __future__ import annotations

import argparse
import collections
import glob
import gzip
import json
import os
import re
import shutil
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
    """Complete ('X') events of the trace summed by (process, thread, name), per iteration,
    enclosing events (``_ENCLOSING``) left out."""
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
    thread_names = {
        (e["pid"], e.get("tid")): e["args"]["name"]
        for e in events
        if e.get("ph") == "M" and e.get("name") == "thread_name"
    }
    total_us = collections.Counter()
    count = collections.Counter()
    for e in events:
        if e.get("ph") != "X" or e["name"].startswith(_ENCLOSING):
            continue
        where = process_names.get(e["pid"], str(e["pid"]))
        # Device events by stream (kernels) or XLA's aggregate lines; host threads summed.
        thread = thread_names.get((e["pid"], e.get("tid")), "") if _on_device(where) else ""
        key = (where, thread, e["name"])
        total_us[key] += e.get("dur", 0)
        count[key] += 1
    rows = [
        {
            "where": where,
            "thread": thread,
            "name": name,
            "category": category(where, thread, name),
            "ms_per_iteration": us / 1000 / steps,
            "count_per_iteration": count[(where, thread, name)] / steps,
        }
        for (where, thread, name), us in total_us.most_common()
    ]
    return rows, {"trace_file": files[0]}


# GPU kernel names, by what they do: cuDNN/cuBLAS/CUTLASS convolution and matmul kernels
# (sm90_xmma_fprop_implicit_gemm..., cutlass3x_sm90_..., ...dgrad/wgrad...), layout changes
# (XLA's transposes and copies, cuDNN's own nchwToNhwc), XLA's reduction fusions (BatchNorm
# statistics, losses) and the rest (elementwise fusions: BatchNorm's normalize, activations, Adam).
_CATEGORIES = (
    ("layout copy", re.compile(r"transpose|copy|memcpy|memset|nchwTo|nhwcTo|ToNhwc|ToNchw", re.I)),
    (
        "convolution/matmul",
        re.compile(
            r"xmma|gemm|gmma|cudnn|cutlass|conv(?!ert)|fprop|dgrad|wgrad|implicit|winograd", re.I
        ),
    ),
    ("reduction fusion", re.compile(r"reduc", re.I)),
)


def _on_device(where: str) -> bool:
    return where.startswith("/device:")


def category(where: str, thread: str, name: str) -> str:
    """What a trace event is: 'host' off the device; an aggregate line of XLA's (modules, ops),
    which repeats the kernels' time; else one of ``_CATEGORIES`` or 'elementwise fusion'."""
    if not _on_device(where):
        return "host"
    if "stream" not in thread.lower():
        return f"aggregate ({thread})"
    for label, pattern in _CATEGORIES:
        if pattern.search(name):
            return label
    return "elementwise fusion"


def memory_bytes(compiled) -> float:
    """XLA's 'bytes accessed' of the compiled (fused) program: each fusion's operands and outputs,
    the memory traffic the program moves at the least."""
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    return float(cost.get("bytes accessed", float("nan"))) if cost else float("nan")


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
    parser.add_argument("--trace_copy", default=None, help="also copy the trace file here")
    parser.add_argument(
        "--peak_tflops", type=float, default=989.0, help="the chip's peak, for the FLOP floor"
    )
    parser.add_argument(
        "--peak_tb_s", type=float, default=3.35, help="memory bandwidth, for the byte floor"
    )
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
    if args.trace_copy:  # the device tool brings back files under $OUT only
        shutil.copy(files["trace_file"], args.trace_copy)

    device = jax.devices()[0]
    traced_ms = traced_s * 1000
    tflop_s = run.flops / wall_s / 1e12
    print(
        f"# {args.experiment}, {args.size} px, batch {args.batch_size}, phase {args.phase}, "
        f"{args.dtype}, {device.device_kind}: {wall_s * 1000:.1f} ms per iteration "
        f"({traced_ms:.1f} ms traced), {run.flops / 1e9:.1f} GFLOP: "
        f"{tflop_s:.1f} TFLOP/s = {tflop_s / args.peak_tflops:.1%} of {args.peak_tflops:g}, "
        f"{args.batch_size / wall_s:.1f} img/s"
    )
    print(f"{'ms/it':>9}{'n/it':>7}{'share':>7}  where: name")
    for row in rows[: args.top]:
        print(
            f"{row['ms_per_iteration']:>9.2f}{row['count_per_iteration']:>7.0f}"
            f"{row['ms_per_iteration'] / traced_ms:>7.1%}  "
            f"{row['where'][:16]} {row['thread'][:16]} [{row['category'][:12]}]: {row['name'][:90]}"
        )
    by_category = collections.Counter()
    for row in rows:
        by_category[row["category"]] += row["ms_per_iteration"]
    print("\n# time per iteration by category (device categories: kernels on the streams)")
    for label, ms in by_category.most_common():
        print(f"{ms:>9.2f} ms {ms / traced_ms:>7.1%}  {label}")

    # The two floors (docs: the device README's METHOD): model FLOPs at the peak rate, and XLA's
    # bytes accessed at the memory bandwidth; the larger bounds the iteration from below.
    bytes_accessed = sum(memory_bytes(program) for program in run.compiled)
    floors = {
        "flop_floor_ms": run.flops / (args.peak_tflops * 1e12) * 1000,
        "byte_floor_ms": bytes_accessed / (args.peak_tb_s * 1e12) * 1000,
        "bytes_accessed_gb": bytes_accessed / 1e9,
        "conv_ms": by_category.get("convolution/matmul", 0.0),
    }
    floors["conv_tflop_s"] = (
        run.flops / (floors["conv_ms"] / 1000) / 1e12 if floors["conv_ms"] else 0
    )
    print(
        f"\n# floors: {run.flops / 1e12:.2f} TFLOP at {args.peak_tflops} TFLOP/s = "
        f"{floors['flop_floor_ms']:.1f} ms; {floors['bytes_accessed_gb']:.1f} GB (XLA's bytes "
        f"accessed, compiled) at {args.peak_tb_s} TB/s = {floors['byte_floor_ms']:.1f} ms; "
        f"measured {wall_s * 1000:.1f} ms; the model FLOPs over the convolution/matmul kernels' "
        f"time alone: {floors['conv_tflop_s']:.0f} TFLOP/s"
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
                **floors,
                "ms_by_category": dict(by_category),
                **files,
                "events": rows[:500],
            },
            indent=2,
        )
    )
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
