"""The roofline of one training iteration: the highest MFU any implementation could reach on a chip.

Why: the issue's target of 40 % bf16 MFU on one GPU was missed at 20-23 % (docs/benchmarks.md),
and the profile blamed cuDNN's convolution kernels (35 % of peak on this model's layers). Before
anyone writes convolution kernels by hand, this bounds what they could win, from the iteration's
own program and the chip's two peaks, with no GPU needed:

- It traces one jitted iteration (``mtcolor.train.steps.train_step``, the one-forward cGAN
  iteration, at the given size, batch, dtype and phase; random init) to a jaxpr, inlines every
  call, keeps the ``--platform`` branch of each per-backend choice (``jax.lax.platform_dependent``:
  the GPU's forms, not the CPU's) and walks the flat program.
- Each convolution and matmul is a kernel that reads its operands from memory and writes its
  result once: its time is at least max(FLOPs / peak, bytes / bandwidth) (the roofline), the
  peak by operand dtype (bf16; float32 as TF32, or FP32 at ``Precision.HIGHEST``). FLOPs are
  counted exactly, padding and dilation taps skipped, as XLA's cost analysis counts them
  (``--check_xla`` prints both).
- Everything else (BatchNorm, activations, dropout, losses, Adam: memory-bound) costs its bytes
  at the bandwidth (``memory_traffic``): in memory are only the iteration's inputs and outputs,
  the convolutions' operands and results and the reductions' results; element-wise work is
  recomputed from those wherever it is used, and what runs between the same two convolutions is
  one pass reading each of them once. **fused**: a reduction's input is read in that same pass
  (BatchNorm's statistics come free, as in a convolution's epilogue: hand-written kernels).
  **two-pass**: read once more where the reduction's result is used in its own pass
  (statistics, then normalization, as XLA's fusions do it).

The bounds: MFU <= model FLOPs / (time of the convolutions at their roofline + the rest's bytes
at the bandwidth), for each model; and the efficiency the convolution kernels would need (their
roofline time over their time) for ``--target_mfu`` with the rest at its bound. With
``--measured_conv_ms`` (a profile's convolution kernels, e.g. 51.6 ms on an H100 in session 10),
the efficiency measured.

    python benchmarks/roofline.py              # 256 px, batch 256, bfloat16, phase 2, an H200
    python benchmarks/roofline.py --chip h100 --measured_conv_ms 51.6
    python benchmarks/roofline.py --size 64 --batch_size 16 --dtype float32 --platform cpu \
        --check_xla

Prints the convolutions with the largest roofline times, the summary per fusion model, and
writes JSON (default benchmarks/results/roofline.json).
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import json
import re
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

import jax  # noqa: E402
import numpy as np  # noqa: E402
from jax.extend import core  # noqa: E402
from train_step import (  # noqa: E402
    EXPERIMENTS,
    make_config,
    random_batch,
    step_flops,
    whole_batch_convolutions,
)

from mtcolor.train import state as state_lib  # noqa: E402
from mtcolor.train import steps  # noqa: E402


@dataclasses.dataclass(frozen=True)
class Chip:
    """Dense peaks from the vendor's data sheet (TFLOP/s) and HBM bandwidth (TB/s)."""

    bf16_tflops: float
    tf32_tflops: float
    fp32_tflops: float
    tb_s: float


# NVIDIA H100 SXM5 and H200 SXM data sheets (dense, no sparsity).
CHIPS = {
    "h100": Chip(bf16_tflops=989.4, tf32_tflops=494.7, fp32_tflops=66.9, tb_s=3.35),
    "h200": Chip(bf16_tflops=989.4, tf32_tflops=494.7, fp32_tflops=66.9, tb_s=4.8),
}

HEAVY = ("conv_general_dilated", "dot_general")
REDUCTIONS = ("reduce_sum", "reduce_max", "reduce_min", "argmax", "argmin", "reduce_prod")


@dataclasses.dataclass
class Op:
    primitive: str
    where: str  # the name stack: module path and transforms (jvp, transpose)
    inputs: list[int]  # value ids; literals left out
    outputs: list[int]
    flops: float = 0.0
    peak: str = ""  # which of the chip's peaks its FLOPs run at
    heavy: bool = False
    eqn: object = None  # a convolution's or matmul's jaxpr equation, to time it alone


@dataclasses.dataclass
class Program:
    """A jaxpr inlined into one flat list of ops over numbered values."""

    ops: list[Op] = dataclasses.field(default_factory=list)
    nbytes: dict[int, int] = dataclasses.field(default_factory=dict)
    returned: set[int] = dataclasses.field(default_factory=set)
    notes: collections.Counter = dataclasses.field(default_factory=collections.Counter)
    loop_repeats_flops: float = 0.0

    def new_value(self, aval) -> int:
        value = len(self.nbytes)
        shape, dtype = getattr(aval, "shape", ()), getattr(aval, "dtype", None)
        itemsize = getattr(dtype, "itemsize", 4) if dtype is not None else 0
        self.nbytes[value] = int(np.prod(shape, dtype=np.int64)) * itemsize
        return value


def conv_flops(eqn) -> float:
    """2 x (output batch x output features x input features per group) x the (output position,
    kernel tap) pairs of each spatial dimension that land on an input element, not on padding
    or on a hole of the input's dilation."""
    params = eqn.params
    lhs, rhs = (v.aval.shape for v in eqn.invars[:2])
    out = eqn.outvars[0].aval.shape
    lhs_spec, rhs_spec, out_spec = params["dimension_numbers"]
    pairs = 1
    for d in range(len(lhs_spec) - 2):
        size = lhs[lhs_spec[d + 2]]
        kernel = rhs[rhs_spec[d + 2]]
        out_size = out[out_spec[d + 2]]
        stride = params["window_strides"][d]
        pad_low = params["padding"][d][0]
        lhs_dil = (params["lhs_dilation"] or (1,) * len(params["window_strides"]))[d]
        rhs_dil = (params["rhs_dilation"] or (1,) * len(params["window_strides"]))[d]
        o = np.arange(out_size)[:, None]
        k = np.arange(kernel)[None, :]
        position = o * stride - pad_low + k * rhs_dil
        dilated_size = (size - 1) * lhs_dil + 1
        pairs *= int(
            np.sum((position >= 0) & (position < dilated_size) & (position % lhs_dil == 0))
        )
    in_features = lhs[lhs_spec[1]] // params["feature_group_count"]
    return 2.0 * out[out_spec[0]] * out[out_spec[1]] * in_features * pairs


def dot_flops(eqn) -> float:
    (lhs_contract, _), _ = eqn.params["dimension_numbers"]
    lhs = eqn.invars[0].aval.shape
    return 2.0 * np.prod(eqn.outvars[0].aval.shape) * np.prod([lhs[d] for d in lhs_contract])


def peak_of(eqn) -> str:
    dtype = np.dtype(eqn.invars[0].aval.dtype)
    if dtype.itemsize <= 2:
        return "bf16"
    precision = eqn.params.get("precision")
    precisions = precision if isinstance(precision, tuple) else (precision,)
    if any(p == jax.lax.Precision.HIGHEST for p in precisions):
        return "fp32"
    return "tf32"  # XLA:GPU's default precision for float32 convolutions and matmuls


def _platform_branch(eqn, platform: str) -> int | None:
    """The branch of a ``platform_dependent`` cond that ``platform`` lowers (None for any other
    cond)."""
    platforms = eqn.params.get("branches_platforms")
    if not platforms:
        return None
    for index, names in enumerate(platforms):
        if names is not None and platform in names:
            return index
    return next(i for i, names in enumerate(platforms) if names is None)


def _sub_jaxpr(eqn):
    """The one jaxpr a call-like op runs (jit, custom_jvp/vjp, remat); its constants, if any, are
    its constvars, which ``inline`` binds to values of their own."""
    for key in ("jaxpr", "call_jaxpr", "fun_jaxpr"):
        sub = eqn.params.get(key)
        if isinstance(sub, core.ClosedJaxpr):
            return sub.jaxpr
        if isinstance(sub, core.Jaxpr):
            return sub
    return None


def inline(program: Program, jaxpr, in_values: list, platform: str, where: str = "") -> list:
    """Appends ``jaxpr``'s ops to ``program`` with its inputs bound to ``in_values``; returns its
    output values (None for literals)."""
    if len(in_values) != len(jaxpr.invars):
        raise ValueError(f"{len(in_values)} values for {len(jaxpr.invars)} inputs")
    env = dict(zip(jaxpr.invars, in_values))
    for var in jaxpr.constvars:
        env[var] = program.new_value(var.aval)

    def read(var):
        return None if isinstance(var, core.Literal) else env.get(var)

    for eqn in jaxpr.eqns:
        name = eqn.primitive.name
        # A called jaxpr's name stacks are relative to the call's.
        own = str(eqn.source_info.name_stack)
        eqn_where = f"{where}/{own}" if where and own else own or where
        inputs = [read(v) for v in eqn.invars]
        if name == "cond":
            branch = _platform_branch(eqn, platform)
            if branch is None:  # a data-dependent cond: the branch with the most FLOPs
                branch = max(
                    range(len(eqn.params["branches"])),
                    key=lambda i: _flops_of(eqn.params["branches"][i].jaxpr, platform),
                )
                program.notes[f"data-dependent cond at {eqn_where}: its largest branch"] += 1
            sub = eqn.params["branches"][branch]
            outs = inline(program, sub.jaxpr, inputs[1:], platform, eqn_where)
            _bind(program, env, eqn.outvars, outs)
            continue
        sub = _sub_jaxpr(eqn) if name not in ("scan", "while") else None
        if sub is not None:
            outs = inline(program, sub, inputs, platform, eqn_where)
            _bind(program, env, eqn.outvars, outs)
            continue
        outputs = [program.new_value(v.aval) for v in eqn.outvars]
        for var, value in zip(eqn.outvars, outputs):
            env[var] = value
        op = Op(name, eqn_where, [i for i in inputs if i is not None], outputs)
        if name in HEAVY:
            flops = conv_flops(eqn) if name == "conv_general_dilated" else dot_flops(eqn)
            op.flops, op.peak, op.heavy, op.eqn = flops, peak_of(eqn), True, eqn
        elif name in ("scan", "while"):
            # A loop's body as one kernel (CPU forms only; none on a GPU's branches).
            body = eqn.params.get("jaxpr") or eqn.params.get("body_jaxpr")
            length = eqn.params.get("length", 1)
            body_flops = _flops_of(body.jaxpr, platform)
            op.flops, op.peak, op.heavy = length * body_flops, "tf32", True
            program.loop_repeats_flops += (length - 1) * body_flops  # what XLA's count leaves out
            program.notes[f"{name} at {eqn_where}: one kernel, body x {length}"] += 1
        program.ops.append(op)
    return [read(v) for v in jaxpr.outvars]


def _bind(program: Program, env: dict, outvars, outs: list) -> None:
    for var, value in zip(outvars, outs):
        env[var] = program.new_value(var.aval) if value is None else value


def _flops_of(jaxpr, platform: str) -> float:
    program = Program()
    inline(program, jaxpr, [program.new_value(v.aval) for v in jaxpr.invars], platform)
    return sum(op.flops for op in program.ops)


def trace(closed, platform: str) -> Program:
    program = Program()
    inputs = [program.new_value(v.aval) for v in closed.jaxpr.invars]
    outs = inline(program, closed.jaxpr, inputs, platform)
    program.returned = {v for v in outs if v is not None}
    # Dead code out, as jit's lowering drops it (e.g. a forward whose value no gradient needs).
    live, kept = set(program.returned), []
    for op in reversed(program.ops):
        if live.intersection(op.outputs):
            kept.append(op)
            live.update(op.inputs)
    program.ops = kept[::-1]
    return program


def memory_traffic(program: Program, large_bytes: int) -> dict:
    """Bytes the ops other than convolutions and matmuls must move, at the least.

    What must be in memory (anchors): the iteration's inputs, each convolution's result and each
    reduction's (BatchNorm's statistics, sums of losses). Every other value is element-wise (or
    windowed) work on anchors, which a fused kernel recomputes wherever it is needed rather than
    storing it, as XLA duplicates cheap producers into their consumers; it is written only where
    a convolution reads it or the iteration returns it. The kernels that write those values, and
    the reductions, read the anchors they depend on; what runs between the same two
    convolutions (the same number of convolutions upstream) is one pass, each anchor read once.
    ``two_pass`` adds a second read of a large reduction's anchors where its result is used in
    the same pass (BatchNorm's statistics, then its normalization).
    """
    producer = {v: op for op in program.ops for v in op.outputs}
    level: dict[int, int] = {}
    for op in program.ops:
        upstream = max((level.get(v, 0) for v in op.inputs), default=0)
        for value in op.outputs:
            level[value] = upstream + 1 if op.heavy else upstream

    def is_anchor(value):
        op = producer.get(value)
        return op is None or op.heavy or op.primitive in REDUCTIONS

    anchors: dict[int, frozenset] = {}

    def anchors_of(value) -> frozenset:
        # Iterative (the chains are thousands of ops long): inputs before their users.
        stack = [value]
        while stack:
            top = stack[-1]
            if top in anchors:
                stack.pop()
                continue
            if is_anchor(top):
                anchors[top] = frozenset([top])
                stack.pop()
                continue
            missing = [v for v in producer[top].inputs if v not in anchors]
            if missing:
                stack.extend(missing)
                continue
            anchors[top] = frozenset().union(*(anchors[v] for v in producer[top].inputs))
            stack.pop()
        return anchors[value]

    written = {
        v for op in program.ops if op.heavy for v in op.inputs if v in producer and not is_anchor(v)
    } | {v for v in program.returned if not is_anchor(v)}
    reads = collections.defaultdict(set)  # level -> anchors read in that pass
    for value in written:
        reads[level[value]] |= anchors_of(value)
    reductions = [op for op in program.ops if op.primitive in REDUCTIONS]
    for op in reductions:
        for value in op.inputs:
            reads[level[op.outputs[0]]] |= anchors_of(value)
    write_bytes = sum(program.nbytes[v] for v in written) + sum(
        program.nbytes[v] for op in reductions for v in op.outputs
    )
    fused = write_bytes + sum(program.nbytes[v] for pass_ in reads.values() for v in pass_)
    # A statistic used in its own pass: its input read before, then again.
    used_in_pass = set()
    for value in written | {v for op in reductions for v in op.inputs}:
        used_in_pass |= {a for a in anchors_of(value) if level.get(a, 0) == level.get(value, 0)}
    reread = collections.defaultdict(set)  # level -> anchors of its statistics, read again
    for op in reductions:
        if op.outputs[0] in used_in_pass and (
            sum(program.nbytes[v] for v in op.inputs) >= large_bytes
        ):
            for value in op.inputs:
                reread[level[op.outputs[0]]] |= anchors_of(value)
    second = sum(program.nbytes[v] for pass_ in reread.values() for v in pass_)
    return {"passes": len(reads), "fused": fused, "two_pass": fused + second}


_TRANSFORMS = re.compile(r"(transpose|jvp|vmap|remat|checkpoint|jit)\(|\)")


def layer_name(op: Op) -> str:
    """Module path and which product: forward, backward (input gradient) or kernel gradient."""
    # Module names once each, in order (a custom_vjp's backward repeats its module's path);
    # einsum specs of mtcolor's small-map forms left out.
    parts = [p for p in _TRANSFORMS.sub("", op.where).split("/") if p and "->" not in p]
    path = "/".join(dict.fromkeys(parts)) or "(top level)"
    if op.primitive == "conv_general_dilated" and op.eqn.params["dimension_numbers"].lhs_spec[0]:
        # Batch and features swapped (lhs_spec[0] is not the leading axis): the kernel gradient,
        # the images summed over as features are.
        return f"{path} kgrad"
    return f"{path} {'bwd' if 'transpose(' in op.where else 'fwd'}"


def roofline_seconds(program: Program, op: Op, chip: Chip) -> tuple[float, int]:
    """(max(FLOPs / peak, bytes / bandwidth), bytes) of one convolution or matmul."""
    peaks = {"bf16": chip.bf16_tflops, "tf32": chip.tf32_tflops, "fp32": chip.fp32_tflops}
    nbytes = sum(program.nbytes[v] for v in op.inputs + op.outputs)
    return max(op.flops / (peaks[op.peak] * 1e12), nbytes / (chip.tb_s * 1e12)), nbytes


def mfu_peak_tflops(chip: Chip, dtype: str) -> float:
    """The peak MFU is quoted against: bf16's for a bfloat16 iteration, TF32's for float32 (what
    XLA:GPU runs float32 convolutions in by default)."""
    return chip.bf16_tflops if dtype == "bfloat16" else chip.tf32_tflops


def roofline(
    program: Program, chip: Chip, large_bytes: int, peak_tflops: float, alone: dict | None = None
) -> dict:
    bandwidth = chip.tb_s * 1e12
    alone = alone or {}
    alone_roofline_s = 0.0
    layers = collections.defaultdict(lambda: collections.Counter())
    heavy_s = heavy_flops = heavy_bytes = 0.0
    for index, op in enumerate(program.ops):
        if not op.heavy:
            continue
        seconds, nbytes = roofline_seconds(program, op, chip)
        heavy_s += seconds
        heavy_flops += op.flops
        heavy_bytes += nbytes
        row = layers[(layer_name(op), op.primitive, op.peak)]
        row.update(calls=1, flops=op.flops, bytes=nbytes, seconds=seconds)
        if index in alone:
            row.update(alone_seconds=alone[index], alone_roofline_seconds=seconds)
            alone_roofline_s += seconds
    traffic = memory_traffic(program, large_bytes)
    summary = {
        **(
            {
                "backend": jax.default_backend(),
                "timed_alone": len(alone),
                "timed_alone_ms": sum(alone.values()) * 1e3,
                "timed_alone_roofline_ms": alone_roofline_s * 1e3,
            }
            if alone
            else {}
        ),
        "model_gflop": heavy_flops / 1e9,
        "convolution_gb": heavy_bytes / 1e9,
        "convolution_roofline_ms": heavy_s * 1e3,
        "mfu_peak_tflops": peak_tflops,
        "convolution_compute_ms": heavy_flops / (peak_tflops * 1e12) * 1e3,
        "passes": traffic["passes"],
        "fused_rest_gb": traffic["fused"] / 1e9,
        "two_pass_rest_gb": traffic["two_pass"] / 1e9,
    }
    for model in ("fused", "two_pass"):
        rest = traffic[model]
        rest_s = rest / bandwidth
        bound_s = heavy_s + rest_s
        summary[f"{model}_rest_ms"] = rest_s * 1e3
        summary[f"{model}_bound_ms"] = bound_s * 1e3
        summary[f"{model}_mfu_bound"] = heavy_flops / bound_s / (peak_tflops * 1e12)
    rows = sorted(
        ({"layer": k[0], "primitive": k[1], "peak": k[2], **v} for k, v in layers.items()),
        key=lambda r: -r["seconds"],
    )
    return {"summary": summary, "layers": rows}


def time_alone(program: Program, repeats: int, budget_s: float, order: list[int]) -> dict:
    """Seconds of each convolution and matmul of the program run alone on this backend (jitted,
    random operands, after a compile and warm-up; the best of three rounds of ``repeats``), per
    op index, in ``order`` until ``budget_s`` is spent; ops with the same signature timed once."""
    timed: dict[str, float] = {}
    seconds = {}
    start_all = time.perf_counter()
    for index in order:
        eqn = program.ops[index].eqn
        if eqn is None:
            continue
        if time.perf_counter() - start_all > budget_s:
            print(f"# time budget spent: {len(seconds)} of {len(order)} ops timed")
            break
        key = repr((eqn.primitive.name, [v.aval for v in eqn.invars], sorted(eqn.params.items())))
        if key not in timed:
            operands = [
                jax.random.normal(jax.random.key(i), v.aval.shape, v.aval.dtype)
                for i, v in enumerate(eqn.invars)
            ]
            run = jax.jit(lambda *xs, eqn=eqn: eqn.primitive.bind(*xs, **eqn.params))
            jax.block_until_ready(run(*operands))
            rounds = []
            for _ in range(3):
                start = time.perf_counter()
                for _ in range(repeats):
                    out = run(*operands)
                jax.block_until_ready(out)
                rounds.append((time.perf_counter() - start) / repeats)
            timed[key] = min(rounds)
            del operands, out
        seconds[index] = timed[key]
    return seconds


def convolution_efficiency_needed(summary: dict, target_mfu: float, model: str):
    """The convolutions' roofline time over the time they may take for ``target_mfu`` with the
    rest at ``model``'s bound (above 1: out of reach even at the roofline)."""
    budget_s = summary["model_gflop"] * 1e9 / (target_mfu * summary["mfu_peak_tflops"] * 1e12)
    left_s = budget_s - summary[f"{model}_rest_ms"] / 1e3
    return summary["convolution_roofline_ms"] / 1e3 / left_s if left_s > 0 else float("inf")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--experiment", default="multitask", choices=EXPERIMENTS)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--batch_size", type=int, default=256)
    parser.add_argument("--phase", type=int, default=2, choices=[1, 2])
    parser.add_argument("--dtype", default="bfloat16", choices=["float32", "bfloat16"])
    parser.add_argument(
        "--platform", default="cuda", help="whose per-backend forms to count (cuda, rocm, tpu, cpu)"
    )
    parser.add_argument("--chip", default="h200", choices=sorted(CHIPS))
    parser.add_argument("--target_mfu", type=float, default=0.40)
    parser.add_argument("--measured_conv_ms", type=float, default=None)
    parser.add_argument("--large_mib", type=float, default=1.0)
    parser.add_argument("--top", type=int, default=20)
    parser.add_argument(
        "--time_alone",
        type=int,
        default=0,
        metavar="REPEATS",
        help="also time each convolution and matmul alone on this backend, REPEATS per round",
    )
    parser.add_argument(
        "--time_budget_s", type=float, default=150, help="then stop timing (largest ops first)"
    )
    parser.add_argument("--check_xla", action="store_true", help="also XLA's FLOP count (CPU)")
    parser.add_argument("--out", default="benchmarks/results/roofline.json")
    args = parser.parse_args()
    chip = CHIPS[args.chip]

    config = make_config(args.experiment, args.size, args.batch_size, args.dtype)
    state = state_lib.create_train_state(config, jax.random.key(0), backbone_frozen=args.phase == 1)
    batch = {  # shapes only: nothing runs
        key: jax.ShapeDtypeStruct((args.batch_size, *value.shape[1:]), value.dtype)
        for key, value in random_batch(1, args.size, config.model.num_classes).items()
    }
    with whole_batch_convolutions():
        closed = jax.make_jaxpr(steps.train_step)(state, batch)
    program = trace(closed, args.platform)
    alone = None
    if args.time_alone:
        heavy = [i for i, op in enumerate(program.ops) if op.heavy]
        order = sorted(heavy, key=lambda i: -roofline_seconds(program, program.ops[i], chip)[0])
        alone = time_alone(program, args.time_alone, args.time_budget_s, order)
    peak = mfu_peak_tflops(chip, args.dtype)
    result = roofline(program, chip, int(args.large_mib * 2**20), peak, alone)
    summary = result["summary"]

    print(
        f"# {args.experiment}, {args.size} px, batch {args.batch_size}, {args.dtype}, phase "
        f"{args.phase}, the {args.platform} forms; {args.chip}: {chip.bf16_tflops} TFLOP/s bf16, "
        f"{chip.tf32_tflops} TF32, {chip.tb_s} TB/s"
    )
    for note, count in program.notes.items():
        print(f"# note: {note} ({count}x)")
    alone_header = f"{'alone ms':>9}{'of roof':>8}" if alone else ""
    print(
        f"\n{'convolution / matmul':<72}{'calls':>6}{'GFLOP':>9}{'MB':>9}{'FLOP/B':>8}"
        f"{'roof ms':>8}{alone_header}"
    )
    for row in result["layers"][: args.top]:
        alone_columns = (
            f"{row['alone_seconds'] * 1e3:>9.2f}"
            f"{row['alone_roofline_seconds'] / row['alone_seconds']:>8.0%}"
            if "alone_seconds" in row
            else ""
        )
        print(
            f"{(row['layer'][-64:] + ' ' + row['peak']):<72}{row['calls']:>6}"
            f"{row['flops'] / 1e9:>9.1f}{row['bytes'] / 1e6:>9.1f}"
            f"{row['flops'] / max(row['bytes'], 1):>8.0f}{row['seconds'] * 1e3:>8.2f}"
            + alone_columns
        )
    ridge = peak / chip.tb_s
    print(
        f"\nmodel FLOPs (convolutions and matmuls): {summary['model_gflop']:.1f} GFLOP; at the "
        f"peak ({peak:g} TFLOP/s) alone {summary['convolution_compute_ms']:.1f} ms (the ridge: "
        f"{ridge:.0f} "
        f"FLOP/byte); at their rooflines {summary['convolution_roofline_ms']:.1f} ms "
        f"({summary['convolution_gb']:.1f} GB)"
    )
    for model in ("fused", "two_pass"):
        needed = convolution_efficiency_needed(summary, args.target_mfu, model)
        summary[f"{model}_conv_efficiency_needed"] = needed
        print(
            f"{model:>8}: the rest {summary[f'{model}_rest_ms']:.1f} ms "
            f"({summary[f'{model}_rest_gb']:.1f} GB in {summary['passes']} passes); bound "
            f"{summary[f'{model}_bound_ms']:.1f} ms = MFU <= {summary[f'{model}_mfu_bound']:.1%}; "
            f"for {args.target_mfu:.0%} the convolutions must run at "
            + (f"{needed:.0%} of their roofline" if needed <= 1 else "more than their roofline")
        )
    if alone:
        summary["timed_alone_efficiency"] = (
            summary["timed_alone_roofline_ms"] / summary["timed_alone_ms"]
        )
        print(
            f"{summary['timed_alone']} convolutions and matmuls timed alone on "
            f"{summary['backend']} ({summary['timed_alone_roofline_ms']:.1f} of the "
            f"{summary['convolution_roofline_ms']:.1f} roofline ms): "
            f"{summary['timed_alone_ms']:.1f} ms, {summary['timed_alone_efficiency']:.0%} of "
            "their roofline"
        )
    if args.measured_conv_ms:
        summary["measured_conv_efficiency"] = (
            summary["convolution_roofline_ms"] / args.measured_conv_ms
        )
        print(
            f"measured convolution kernels {args.measured_conv_ms} ms: "
            f"{summary['measured_conv_efficiency']:.0%} of their roofline"
        )
    if args.check_xla:
        with whole_batch_convolutions():
            lowered = jax.jit(steps.train_step).lower(state, batch)
        summary["xla_gflop"] = step_flops(lowered) / 1e9
        loops_once = summary["model_gflop"] - program.loop_repeats_flops / 1e9
        print(
            f"XLA's cost analysis of the lowered program ({jax.default_backend()}): "
            f"{summary['xla_gflop']:.1f} GFLOP (every op; a loop's body once) vs "
            f"{loops_once:.1f} here (convolutions and matmuls, a loop's body once)"
        )

    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(
        json.dumps({"args": vars(args), "chip": dataclasses.asdict(chip), **result}, indent=1)
    )
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
