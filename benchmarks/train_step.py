"""Throughput of each model's full training iteration, as the trainer runs it.

For the three experiments at each image size: one iteration of ``mtcolor.train.loop``
(``steps.train_step``: one generator forward, the D update on it, then G through the updated D for
the cGAN models; the classifier's update otherwise; jitted with the state donated, the batch
sharded over every local device). ``--iterations one_forward two_forward`` adds, in the same run,
the earlier form: the D step and the G step as two compiled calls, each with its own generator
forward. On the paper's models (flatten class head, float32 unless ``--dtypes``, random init).
Reports the compile time (lowering + compiling the steps), steps/s and images/s over timed
iterations after a warm-up, XLA's FLOP count of one iteration (model FLOPs, see ``step_flops``) and
the FLOP/s achieved (MFU when ``--peak_tflops`` is given), and peak memory: the device allocator's
peak where the backend reports it (GPU/TPU), else the process's peak RSS (CPU; monotone over the
run, so rows go from the cheapest to the most expensive).

``--reference torch`` times, in the same run, the same models and iteration in PyTorch eager
(``benchmarks/torch_reference.py``; needs the ``bench`` extra): for each experiment, phase (both
by default) and size it first asserts that both compute the same thing (float32, dropout 0:
forward outputs and the losses of two iterations, ``torch_reference.check_equivalence``), then
copies mtcolor's initial weights into torch and alternates blocks of ``--steps`` iterations of
each, ``--rounds`` times, after a warm-up. torch runs on CUDA when available (else CPU, default
threads), mtcolor on JAX's default backend; ``--dtypes bfloat16`` runs torch under
``torch.autocast(bfloat16)``. The ratio is mtcolor's images/s over torch's.

``--upsample_forms adjoint phases dilated`` times the iteration with each of the decoder's forms
of the transposed conv on this backend (``mtcolor.models.decoder.UPSAMPLE_FORMS``; ``auto``, the
default, is the form mtcolor picks for the backend), so the per-backend choice is checked on the
whole iteration, not just on the decoder's blocks alone (``benchmarks/decoder_upsample.py``).

    python benchmarks/train_step.py                          # 128 and 256 px, batch 16, phase 2
    python benchmarks/train_step.py --sizes 64 --steps 3 --phase 1 --out /tmp/train_step.json
    python benchmarks/train_step.py --sizes 64 --experiments multitask \
        --iterations one_forward two_forward                  # one vs two generator forwards
    python benchmarks/train_step.py --sizes 64 --experiments multitask \
        --dtypes float32 bfloat16                              # mixed precision side by side
    python benchmarks/train_step.py --sizes 64 --steps 3 --reference torch   # vs PyTorch eager

Prints a table and writes JSON (default benchmarks/results/train_step.json, or
train_step_torch.json with ``--reference torch``).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import resource
import time
from pathlib import Path

import jax
import numpy as np

from mtcolor import sharding
from mtcolor.models import conv as conv_lib
from mtcolor.models import decoder
from mtcolor.train import config as config_lib
from mtcolor.train import loop, steps
from mtcolor.train import state as state_lib

EXPERIMENTS = ("classification", "colorization", "multitask")
REFERENCES = ("torch",)


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
    return process_peak_rss_mb(), "process peak RSS"


def process_peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


@contextlib.contextmanager
def whole_batch_convolutions():
    """mtcolor's convolutions traced without their CPU batch chunks (mtcolor.models.conv's
    FORWARD_CHUNK_BYTES and SPACE_TO_DEPTH_KERNEL_GRADIENT_CHUNK_BYTES off): the same results."""
    names = ("FORWARD_CHUNK_BYTES", "SPACE_TO_DEPTH_KERNEL_GRADIENT_CHUNK_BYTES")
    saved = {name: getattr(conv_lib, name) for name in names}
    try:
        for name in names:
            setattr(conv_lib, name, None)
        yield
    finally:
        for name, value in saved.items():
            setattr(conv_lib, name, value)


def step_flops(lowered, pure_fn=None, *args) -> float:
    """The iteration's model FLOPs: XLA's cost analysis of the lowered (not yet optimized) program.

    Not the compiled program's: on a GPU its convolutions are cuDNN custom calls, which XLA's cost
    analysis does not count (an H200 reported 11.9 GFLOP for a 256 px batch-16 iteration that
    torch's FlopCounterMode counts at 1141). On CPU the two agree (64 px: 60.0 vs 60.6 GFLOP).
    XLA's analysis counts a loop's body once, so with ``pure_fn`` the program counted is
    ``pure_fn`` on ``args`` lowered with mtcolor's convolutions whole (``whole_batch_convolutions``:
    on CPU some run per batch chunk in a loop; 256 px phase 2 counted 953 GFLOP instead of 1115).
    Where the backend's analysis gives nothing (jax 0.11.2 on an H100: NaN), the same function is
    lowered for the CPU and counted there: a model's FLOPs do not depend on the backend.
    """
    if pure_fn is not None:
        with whole_batch_convolutions():
            # A new function, traced afresh (jax.jit would reuse pure_fn's trace, with chunks).
            lowered = jax.jit(lambda *args: pure_fn(*args)).lower(*args)
    cost = lowered.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    flops = float(cost.get("flops", float("nan"))) if cost else float("nan")
    if np.isfinite(flops) or pure_fn is None:
        return flops
    # Placed on the CPU device explicitly: lowered with no placement (and lowering_platforms
    # "cpu") the H100 still analysed it with its own backend and gave NaN again.
    on_cpu = jax.sharding.SingleDeviceSharding(jax.devices("cpu")[0])
    abstract = jax.tree.map(
        lambda x: (
            jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=on_cpu)
            if isinstance(x, jax.Array)
            else x
        ),
        args,
    )
    with whole_batch_convolutions():
        return step_flops(jax.jit(lambda *args: pure_fn(*args)).lower(*abstract))


ITERATIONS = ("one_forward", "two_forward")


def two_forward_iteration(fns, state, batch):
    """The iteration before train_step fused it: D step, then G step, each with its forward."""
    rng = fns.iteration_rng(state)
    metrics = {}
    if state.discriminator is not None:
        state, metrics = fns.discriminator_step(state, batch, rng)
    state, model_metrics = fns.generator_step(state, batch, rng)
    return state, {**metrics, **model_metrics}


def make_config(experiment: str, size: int, batch_size: int, dtype: str = "float32"):
    config = config_lib.base_config(experiment)
    config.image_size, config.batch_size = size, batch_size
    config.model.dtype = dtype
    return config


class MtcolorRun:
    """One experiment's jitted iteration on a fixed batch: built, compiled (timed, with XLA's FLOP
    count) and warmed up at construction; ``run(n)`` times n more iterations."""

    def __init__(
        self,
        experiment: str,
        size: int,
        batch_size: int,
        phase: int,
        iteration: str = "one_forward",
        dtype: str = "float32",
    ):
        self.experiment, self.size, self.batch_size = experiment, size, batch_size
        config = make_config(experiment, size, batch_size, dtype)
        mesh = sharding.make_mesh()
        sharding.check_batch_divisible(batch_size, mesh)
        state = state_lib.create_train_state(config, jax.random.key(0), backbone_frozen=phase == 1)
        self.config = config
        self.host_batch = random_batch(batch_size, size, config.model.num_classes)
        # The initial weights, on the host, before the donated state is consumed (torch copies
        # them).
        # (np.array copies: on CPU device_get can alias the buffers that donation then reuses.)
        self.initial_params = jax.tree.map(np.array, jax.device_get(state.params))
        self.initial_batch_stats = jax.tree.map(np.array, jax.device_get(state.batch_stats))
        self.tasks, self.optimizer = state.objective.tasks, state.optimizer
        self.state = sharding.replicate(state, mesh)
        self.batch = sharding.put_batch(self.host_batch, mesh)
        self.fns = fns = steps.jit_steps(mesh)

        # Compile explicitly so compile time and XLA's FLOP count are measured per step function.
        rng = fns.iteration_rng(self.state)
        start = time.perf_counter()
        # (jitted step, its pure function, its arguments) per program of the iteration
        programs = []
        if iteration == "one_forward":
            programs.append((fns.train_step, steps.train_step, (self.state, self.batch)))
            self.run_iteration = loop.train_iteration
        else:
            programs.append(
                (fns.generator_step, steps.generator_step, (self.state, self.batch, rng))
            )
            if self.state.discriminator is not None:
                programs.append(
                    (
                        fns.discriminator_step,
                        steps.discriminator_step,
                        (self.state, self.batch, rng),
                    )
                )
            self.run_iteration = two_forward_iteration
        lowered = [jitted.lower(*args) for jitted, _, args in programs]
        self.compiled = [program.compile() for program in lowered]
        self.compile_s = time.perf_counter() - start
        self.flops = sum(
            step_flops(program, pure_fn, *args)
            for program, (_, pure_fn, args) in zip(lowered, programs)
        )
        self.run(1)  # warm-up (and jit cache fill)

    def run(self, num_steps: int) -> float:
        """Seconds for ``num_steps`` iterations (until the results are ready)."""
        start = time.perf_counter()
        for _ in range(num_steps):
            self.state, self.metrics = self.run_iteration(self.fns, self.state, self.batch)
        jax.block_until_ready((self.state, self.metrics))
        seconds = time.perf_counter() - start
        loss = float(self.metrics.get("loss_g", self.metrics.get("loss")))
        if not np.isfinite(loss):
            raise FloatingPointError(f"{self.experiment} at {self.size} px: non-finite loss {loss}")
        return seconds


UPSAMPLE_FORMS = ("auto", "adjoint", "dilated", "phases")
# mtcolor's own choice per backend, before any row swaps one.
_MTCOLOR_UPSAMPLE_FORMS = dict(decoder.UPSAMPLE_FORMS)


def _backend_upsample_key() -> str:
    platform = jax.devices()[0].platform
    return platform if platform in decoder.UPSAMPLE_FORMS else "default"


def used_upsample_form(form: str) -> str:
    """The decoder form a row runs: ``form``, or the backend's own for ``auto``."""
    return _MTCOLOR_UPSAMPLE_FORMS[_backend_upsample_key()] if form == "auto" else form


def set_upsample_form(form: str) -> None:
    """Make this backend's decoder use ``form`` in what is traced from now on (dropping what
    was traced with another form; nothing when the form is unchanged)."""
    key = _backend_upsample_key()
    if decoder.UPSAMPLE_FORMS[key] != form:
        decoder.UPSAMPLE_FORMS[key] = form
        jax.clear_caches()


def _setting(experiment, iteration, dtype, size, batch_size, phase, upsample_form) -> dict:
    """The columns that name what a row measured."""
    return {
        "experiment": experiment,
        "iteration": iteration,
        "dtype": dtype,
        "upsample_form": upsample_form,
        "image_size": size,
        "batch_size": batch_size,
        "phase": phase,
    }


# The table columns that name what a row measured (_setting's fields).
SETTING_HEADER = (
    f"{'experiment':<15}{'iteration':>12}{'dtype':>10}{'upsample':>9}{'px':>5}{'batch':>6}"
    f"{'phase':>6}"
)


def setting_columns(row: dict) -> str:
    return (
        f"{row['experiment']:<15}{row['iteration']:>12}{row['dtype']:>10}"
        f"{row['upsample_form']:>9}{row['image_size']:>5}{row['batch_size']:>6}{row['phase']:>6}"
    )


def bench(
    experiment: str,
    size: int,
    batch_size: int,
    num_steps: int,
    phase: int,
    peak_tflops: float | None,
    iteration: str = "one_forward",
    dtype: str = "float32",
    upsample_form: str = "auto",
) -> dict:
    mt = MtcolorRun(experiment, size, batch_size, phase, iteration, dtype)
    seconds = mt.run(num_steps) / num_steps
    memory_mb, memory_kind = peak_memory()
    row = {
        **_setting(experiment, iteration, dtype, size, batch_size, phase, upsample_form),
        "compile_s": mt.compile_s,
        "step_s": seconds,
        "steps_per_s": 1 / seconds,
        "images_per_s": batch_size / seconds,
        "iteration_gflop": mt.flops / 1e9,
        "achieved_tflops": mt.flops / seconds / 1e12,
        "peak_memory_mb": memory_mb,
        "peak_memory_kind": memory_kind,
    }
    if peak_tflops:
        row["mfu"] = row["achieved_tflops"] / (peak_tflops * jax.device_count())
    return row


def torch_device(name: str):
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def torch_peak_memory(device) -> tuple[float, str]:
    import torch

    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20, "torch.cuda.max_memory_allocated"
    return process_peak_rss_mb(), "process peak RSS (shared with mtcolor)"


def check_against_torch(experiment: str, size: int, batch_size: int, phase: int, device) -> dict:
    """torch_reference.check_equivalence for one experiment (float32, dropout 0); raises on a
    difference."""
    import torch_reference

    config = make_config(experiment, size, batch_size, "float32")
    batch = random_batch(batch_size, size, config.model.num_classes)
    return torch_reference.check_equivalence(config, phase, batch, device)


def bench_against_torch(
    experiment: str,
    size: int,
    batch_size: int,
    num_steps: int,
    rounds: int,
    phase: int,
    peak_tflops: float | None,
    iteration: str,
    dtype: str,
    device,
    upsample_form: str = "auto",
) -> dict:
    """mtcolor's jitted iteration and the torch eager one, same weights and batch, timed in
    alternating blocks of ``num_steps`` iterations (``rounds`` blocks each, the one going first
    alternating too) after a warm-up of each."""
    import torch
    import torch_reference

    mt = MtcolorRun(experiment, size, batch_size, phase, iteration, dtype)
    memory_mb, memory_kind = peak_memory()
    spec = torch_reference.spec_from_tasks(mt.tasks, size, phase == 1, mt.optimizer)
    autocast = torch.bfloat16 if dtype == "bfloat16" else None
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    ref = torch_reference.TorchExperiment(spec, device, autocast_dtype=autocast)
    torch_reference.load_flax_variables(ref, mt.initial_params, mt.initial_batch_stats)
    torch_batch = ref.batch(mt.host_batch)
    ref.run(torch_batch, 1)  # warm-up
    torch_flops = ref.iteration_flops(torch_batch)  # a second warm-up iteration, counted

    mt_seconds, torch_seconds = [], []
    for r in range(rounds):
        if r % 2 == 0:
            mt_seconds.append(mt.run(num_steps))
            torch_seconds.append(ref.run(torch_batch, num_steps))
        else:
            torch_seconds.append(ref.run(torch_batch, num_steps))
            mt_seconds.append(mt.run(num_steps))
    if device.type != "cuda":
        memory_mb, memory_kind = peak_memory()  # CPU: one process, one RSS for both
    torch_memory_mb, torch_memory_kind = torch_peak_memory(device)
    images = batch_size * num_steps * rounds
    mt_ips, torch_ips = images / sum(mt_seconds), images / sum(torch_seconds)
    step_s = sum(mt_seconds) / (num_steps * rounds)
    row = {
        **_setting(experiment, iteration, dtype, size, batch_size, phase, upsample_form),
        "steps_per_round": num_steps,
        "rounds": rounds,
        "compile_s": mt.compile_s,
        "step_s": step_s,
        "steps_per_s": 1 / step_s,
        "images_per_s": mt_ips,
        "iteration_gflop": mt.flops / 1e9,
        "achieved_tflops": mt.flops / step_s / 1e12,
        "peak_memory_mb": memory_mb,
        "peak_memory_kind": memory_kind,
        "torch_step_s": sum(torch_seconds) / (num_steps * rounds),
        "torch_images_per_s": torch_ips,
        "torch_gflop_flopcounter": torch_flops / 1e9,
        "torch_peak_memory_mb": torch_memory_mb,
        "torch_peak_memory_kind": torch_memory_kind,
        "ratio_mtcolor_over_torch": mt_ips / torch_ips,
        "ratio_per_round": [t / m for m, t in zip(mt_seconds, torch_seconds)],
        "mtcolor_block_s": mt_seconds,
        "torch_block_s": torch_seconds,
        "torch_device": str(device),
        "torch_autocast": str(autocast) if autocast else None,
    }
    if peak_tflops:
        row["mfu"] = row["achieved_tflops"] / (peak_tflops * jax.device_count())
    del ref, mt
    if device.type == "cuda":
        torch.cuda.empty_cache()  # give the next row's JAX allocations the memory torch cached
    return row


def cpu_model() -> str:
    """The CPU's name, family and model from /proc/cpuinfo (Linux): XLA:CPU's relative speed of
    the two forms changed between this project's VMs, so the JSON records which one ran."""
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return platform.machine()
    fields = dict(line.split(":", 1) for line in lines if ":" in line)
    fields = {k.strip(): v.strip() for k, v in fields.items()}
    name, family, model = (fields.get(k, "?") for k in ("model name", "cpu family", "model"))
    return f"{name}, family {family}, model {model}"


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--experiments", nargs="+", default=list(EXPERIMENTS), choices=EXPERIMENTS)
    parser.add_argument("--sizes", nargs="+", type=int, default=[128, 256])
    parser.add_argument("--batch_size", type=int, default=16)
    parser.add_argument(
        "--steps",
        type=int,
        default=5,
        help="timed iterations (with --reference: per block, each of --rounds)",
    )
    parser.add_argument(
        "--phase",
        nargs="+",
        type=int,
        default=None,
        choices=[1, 2],
        help="1: backbone frozen; 2: everything trained (the slower phase). "
        "Default: 2, or 1 and 2 with --reference",
    )
    parser.add_argument(
        "--peak_tflops",
        type=float,
        default=None,
        help="the accelerator's peak TFLOP/s per device for the dtype used, to "
        "report MFU (e.g. about 67 for an H100 SXM in float32, non-tensor-core)",
    )
    parser.add_argument(
        "--iterations",
        nargs="+",
        default=["one_forward"],
        choices=ITERATIONS,
        help="one_forward: steps.train_step (what the trainer runs); "
        "two_forward: the D and G steps as two calls, two generator forwards",
    )
    parser.add_argument(
        "--dtypes",
        nargs="+",
        default=["float32"],
        choices=["float32", "bfloat16"],
        help="config.model.dtype: each is timed in the same run",
    )
    parser.add_argument(
        "--upsample_forms",
        nargs="+",
        default=["auto"],
        choices=UPSAMPLE_FORMS,
        help="the decoder's transposed-conv form on this backend, each timed in the same run "
        "(auto: the one mtcolor picks; see mtcolor.models.decoder.UPSAMPLE_FORMS)",
    )
    parser.add_argument(
        "--reference",
        choices=REFERENCES,
        default=None,
        help="torch: time benchmarks/torch_reference.py (PyTorch eager) side by "
        "side, after checking that it computes what mtcolor does",
    )
    parser.add_argument(
        "--rounds",
        type=int,
        default=3,
        help="with --reference: alternating blocks of --steps iterations per side",
    )
    parser.add_argument(
        "--torch_device",
        default="auto",
        help="with --reference torch: auto (cuda when available, else cpu), cpu, cuda",
    )
    parser.add_argument(
        "--torch_threads",
        type=int,
        default=None,
        help="with --reference torch: torch.set_num_threads (default: torch's own)",
    )
    parser.add_argument(
        "--skip_check",
        action="store_true",
        help="with --reference: time without the equivalence check (not advised)",
    )
    parser.add_argument(
        "--out",
        default=None,
        help="JSON path (default benchmarks/results/train_step.json, "
        "train_step_torch.json with --reference)",
    )
    args = parser.parse_args()
    if args.phase is None:
        args.phase = [1, 2] if args.reference else [2]
    if args.out is None:
        name = "train_step_torch.json" if args.reference else "train_step.json"
        args.out = str(Path(__file__).parent / "results" / name)
    if args.reference:
        # JAX would otherwise take 75% of the GPU's memory at start-up and starve torch.
        os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")

    device = jax.devices()[0]
    machine = {
        "platform": device.platform,
        "device_kind": device.device_kind,
        "device_count": jax.device_count(),
        "host": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu": cpu_model(),
        "jax": jax.__version__,
    }
    runs = [  # one row each
        dict(
            experiment=experiment,
            size=size,
            phase=phase,
            iteration=iteration,
            dtype=dtype,
            upsample_form=upsample_form,
        )
        for size in sorted(args.sizes)
        for experiment in args.experiments
        for phase in args.phase
        for iteration in args.iterations
        for dtype in args.dtypes
        for upsample_form in args.upsample_forms
    ]
    rows, checks = [], {}
    common = dict(batch_size=args.batch_size, num_steps=args.steps, peak_tflops=args.peak_tflops)
    if args.reference == "torch":
        import torch

        tdevice = torch_device(args.torch_device)
        if args.torch_threads:
            torch.set_num_threads(args.torch_threads)
        machine.update(
            torch=torch.__version__,
            torch_device=str(tdevice),
            torch_threads=torch.get_num_threads(),
            torch_cudnn_allow_tf32=torch.backends.cudnn.allow_tf32,
            torch_matmul_allow_tf32=torch.backends.cuda.matmul.allow_tf32,
            xla_python_client_preallocate=os.environ.get("XLA_PYTHON_CLIENT_PREALLOCATE"),
        )
        if tdevice.type == "cuda":
            machine["torch_device_name"] = torch.cuda.get_device_name(tdevice)
        print(f"# {machine}")
        for size, experiment, phase in dict.fromkeys(
            (r["size"], r["experiment"], r["phase"]) for r in runs
        ):
            key = f"{experiment}/{size}px/phase{phase}"
            if args.skip_check:
                checks[key] = "skipped"
                continue
            start = time.perf_counter()
            diffs = check_against_torch(experiment, size, args.batch_size, phase, tdevice)
            checks[key] = diffs
            worst = {
                part: max((v for k, v in diffs.items() if k.startswith(part)), default=0.0)
                for part in ("forward", "iteration 1", "iteration 2")
            }
            print(
                f"# equal: {key}: max relative difference forward {worst['forward']:.2g}, "
                f"iteration 1 losses {worst['iteration 1']:.2g}, iteration 2 losses "
                f"{worst['iteration 2']:.2g} ({time.perf_counter() - start:.0f} s)",
                flush=True,
            )
        print(
            f"{SETTING_HEADER}{'compile s':>10}{'mt img/s':>9}{'pt img/s':>9}{'mt/pt':>7}"
            f"{' (rounds)':<19}{'XLA GFLOP':>10}{'pt GFLOP':>9}{'mt MB':>8}{'pt MB':>8}"
        )
        for setting in runs:
            set_upsample_form(used_upsample_form(setting["upsample_form"]))
            row = bench_against_torch(**setting, **common, rounds=args.rounds, device=tdevice)
            row["upsample_form_used"] = decoder.UPSAMPLE_FORMS[_backend_upsample_key()]
            rows.append(row)
            spread = " ".join(f"{r:.2f}" for r in row["ratio_per_round"])
            print(
                f"{setting_columns(row)}{row['compile_s']:>10.1f}{row['images_per_s']:>9.1f}"
                f"{row['torch_images_per_s']:>9.1f}{row['ratio_mtcolor_over_torch']:>7.2f}"
                f"{' (' + spread + ')':<19}{row['iteration_gflop']:>10.1f}"
                f"{row['torch_gflop_flopcounter']:>9.1f}{row['peak_memory_mb']:>8.0f}"
                f"{row['torch_peak_memory_mb']:>8.0f}",
                flush=True,
            )
    else:
        print(f"# {machine}")
        print(
            f"{SETTING_HEADER}{'compile s':>10}"
            f"{'step s':>9}{'steps/s':>9}{'img/s':>8}{'GFLOP':>9}{'TFLOP/s':>9}{'peak MB':>9}"
        )
        for setting in runs:
            set_upsample_form(used_upsample_form(setting["upsample_form"]))
            row = bench(**setting, **common)
            row["upsample_form_used"] = decoder.UPSAMPLE_FORMS[_backend_upsample_key()]
            rows.append(row)
            print(
                f"{setting_columns(row)}{row['compile_s']:>10.1f}{row['step_s']:>9.3f}{row['steps_per_s']:>9.2f}"
                f"{row['images_per_s']:>8.1f}{row['iteration_gflop']:>9.1f}"
                f"{row['achieved_tflops']:>9.3f}{row['peak_memory_mb']:>9.0f}",
                flush=True,
            )
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    result = {"machine": machine, "args": vars(args), "results": rows}
    if args.reference:
        result["equivalence_checks"] = checks
    out.write_text(json.dumps(result, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
