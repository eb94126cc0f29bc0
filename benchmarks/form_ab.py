"""mtcolor's training iteration against itself with one convolution form switched: A/B, alternating
in one process, so that this noisy VM's drift hits both arms alike.

Each arm names a setting of ``mtcolor.models.conv`` or ``mtcolor.models.decoder``, or another
BatchNorm (``ARMS``; "mtcolor" is the forms as shipped). Every arm is built, compiled ahead of
time and warmed up with its setting applied, then all settings are restored and the arms' blocks
of ``--steps`` iterations alternate (the one going first alternating too). Each arm runs its own
compiled executable: a jitted function would retrace after ``jax.clear_caches()`` with whatever
setting is current, so every arm would run the last one's program (how session 14's one-process
comparisons went wrong; docs/benchmarks.md).

    python benchmarks/form_ab.py --size 128 --phase 2 --arms mtcolor upsample_phases
    python benchmarks/form_ab.py --size 256 --phase 2 --rounds 4 --arms mtcolor no_forward_taps
    python benchmarks/form_ab.py --size 256 --batch_size 256 --dtype bfloat16 \
        --arms mtcolor batch_norm_vjp                         # a GPU: the hand-written BN backward
    python benchmarks/form_ab.py --size 256 --batch_size 256 --dtype bfloat16 \
        --arms mtcolor gpu_space_to_depth_input_gradient gpu_few_output_channels   # a GPU

Prints each arm's compile time and median ms per iteration (with every block's), and the ratio of
each arm's median to the first arm's; writes them as JSON (default
benchmarks/results/form_ab.json).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

import batch_norm_vjp  # noqa: E402
import jax  # noqa: E402
import numpy as np  # noqa: E402
from train_step import EXPERIMENTS, MtcolorRun, cpu_model  # noqa: E402

from mtcolor.models import conv, decoder, patchgan, resnet  # noqa: E402


def _setting(module, name: str, value, key=None) -> Callable[[], contextlib.AbstractContextManager]:
    """An arm that sets ``module.name`` (its entry ``key`` if given) while the arm is built."""

    @contextlib.contextmanager
    def applied() -> Iterator[None]:
        owner, field = (module.__dict__, name) if key is None else (getattr(module, name), key)
        saved = owner[field]
        owner[field] = value
        try:
            yield
        finally:
            owner[field] = saved

    return applied


# The modules that build BatchNorms through mtcolor.models.resnet.batch_norm (imported by name).
_BN_USERS = (resnet, decoder, patchgan)


@contextlib.contextmanager
def _settings(*settings: contextlib.AbstractContextManager) -> Iterator[None]:
    with contextlib.ExitStack() as stack:
        for setting in settings:
            stack.enter_context(setting)
        yield


ARMS: dict[str, Callable[[], contextlib.AbstractContextManager]] = {
    "mtcolor": contextlib.nullcontext,
    # The decoder's ConvTranspose2d(4, 2, 1) on CPU as the phase convolutions or XLA's own.
    "upsample_phases": _setting(decoder, "UPSAMPLE_FORMS", "phases", key="cpu"),
    "upsample_adjoint": _setting(decoder, "UPSAMPLE_FORMS", "adjoint", key="cpu"),
    # Stride-1 convs with 1-2 output channels: XLA's forward instead of few_output_channels_forward.
    "no_forward_taps": _setting(conv, "FORWARD_TAPS_MAX_OUT_CHANNELS", None),
    # ... and XLA's kernel gradient instead of few_output_channels_kernel_gradient.
    "no_kernel_gradient_taps": _setting(conv, "KERNEL_GRADIENT_TAPS_MAX_OUT_CHANNELS", None),
    # The folded space-to-depth kernel gradient for every stride-2 even-kernel conv / for none.
    "space_to_depth_kernel_gradient_everywhere": _setting(
        conv, "SPACE_TO_DEPTH_KERNEL_GRADIENT_MIN_BYTES", 0
    ),
    "no_space_to_depth_kernel_gradient": _setting(
        conv, "SPACE_TO_DEPTH_KERNEL_GRADIENT_MIN_BYTES", None
    ),
    # XLA's own kernel gradients in batch chunks of at most 4 MiB / always whole.
    "kernel_gradient_chunks_4mib": _setting(conv, "KERNEL_GRADIENT_CHUNK_BYTES", 4 * 2**20),
    "no_kernel_gradient_chunks": _setting(conv, "KERNEL_GRADIENT_CHUNK_BYTES", None),
    # Stride-2 forwards always whole.
    "no_forward_chunks": _setting(conv, "FORWARD_CHUNK_MIN_BYTES", None),
    # On a GPU: the CPU forms conv.GPU_FORMS may give GPUs too, instead of cuDNN's (no effect on
    # a CPU, which takes them already): the PatchGAN's stride-2 input gradients as stride-1
    # convolutions; to_ab's and the PatchGAN's last conv's forward and kernel gradient as matmuls.
    "gpu_space_to_depth_input_gradient": _setting(
        conv, "GPU_FORMS", frozenset({"space_to_depth_input_gradient"})
    ),
    "gpu_few_output_channels": _setting(
        conv, "GPU_FORMS", frozenset({"forward_taps", "few_output_channels_kernel_gradient"})
    ),
    "gpu_all_cpu_forms": _setting(conv, "GPU_FORMS", frozenset(conv.GPU_FORM_NAMES)),
    # Every BatchNorm with a hand-written backward pass (benchmarks/batch_norm_vjp.py).
    "batch_norm_vjp": lambda: _settings(
        *(_setting(module, "batch_norm", batch_norm_vjp.batch_norm)() for module in _BN_USERS)
    ),
}


class CompiledRun:
    """One arm: an MtcolorRun built under its setting, iterated through its own compiled
    executable (``MtcolorRun.run`` calls the jitted step, which would retrace)."""

    def __init__(
        self, arm: str, experiment: str, size: int, batch_size: int, phase: int, dtype: str
    ):
        with ARMS[arm]():
            jax.clear_caches()  # nothing traced under another arm's setting is reused
            self.mtcolor_run = MtcolorRun(experiment, size, batch_size, phase, dtype=dtype)
        if len(self.mtcolor_run.compiled) != 1:
            raise ValueError("form_ab times the one-forward iteration (one program)")
        self.step = self.mtcolor_run.compiled[0]
        self.compile_s = self.mtcolor_run.compile_s
        self.seconds_per_step: list[float] = []

    def run(self, num_steps: int) -> float:
        run = self.mtcolor_run
        start = time.perf_counter()
        for _ in range(num_steps):
            run.state, run.metrics = self.step(run.state, run.batch)
        jax.block_until_ready(run.state)
        return (time.perf_counter() - start) / num_steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--arms", nargs="+", default=["mtcolor", "upsample_phases"], choices=ARMS)
    parser.add_argument("--experiment", default="multitask", choices=EXPERIMENTS)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--batch_size", type=int, default=16)
    parser.add_argument("--phase", type=int, default=2, choices=[1, 2])
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    parser.add_argument("--steps", type=int, default=3, help="iterations per block")
    parser.add_argument("--rounds", type=int, default=6, help="blocks per arm")
    parser.add_argument("--out", default="benchmarks/results/form_ab.json")
    args = parser.parse_args()

    runs = {}
    for arm in args.arms:
        runs[arm] = CompiledRun(
            arm, args.experiment, args.size, args.batch_size, args.phase, args.dtype
        )
        runs[arm].run(1)  # warm-up through the compiled executable
        print(f"# {arm}: compiled in {runs[arm].compile_s:.1f} s", flush=True)
    for round_index in range(args.rounds):
        order = args.arms if round_index % 2 == 0 else args.arms[::-1]
        for arm in order:
            runs[arm].seconds_per_step.append(runs[arm].run(args.steps))

    machine = cpu_model() if jax.devices()[0].platform == "cpu" else str(jax.devices()[0])
    print(
        f"# {machine}; {args.experiment}, {args.size} px, batch {args.batch_size}, "
        f"{args.dtype}, phase {args.phase}, {args.rounds} blocks of {args.steps} iterations per arm"
    )
    first = float(np.median(runs[args.arms[0]].seconds_per_step))
    rows = []
    print(f"{'arm':<44}{'compile s':>10}{'median ms':>11}{'/ first':>9}  blocks (ms per iteration)")
    for arm, run in runs.items():
        median = float(np.median(run.seconds_per_step))
        rows.append(
            {
                "arm": arm,
                "compile_s": run.compile_s,
                "median_step_s": median,
                "ratio_to_first_arm": median / first,
                "block_step_s": run.seconds_per_step,
            }
        )
        blocks = " ".join(f"{1000 * s:.0f}" for s in run.seconds_per_step)
        print(
            f"{arm:<44}{run.compile_s:>10.1f}{1000 * median:>11.1f}{median / first:>9.3f}  {blocks}"
        )
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(
        json.dumps(
            {
                "machine": machine,
                "experiment": args.experiment,
                "size": args.size,
                "batch_size": args.batch_size,
                "phase": args.phase,
                "dtype": args.dtype,
                "steps_per_block": args.steps,
                "rows": rows,
            },
            indent=1,
        )
    )
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
