"""Wall time of whole training epochs, data included: mtcolor's input paths vs the tutorial's.

On the 1,300 real photos of ../shared/data/imagenet-val-1300 (227 px JPEGs, labels.csv), for each
image size and each input path, an epoch is ``steps_per_epoch`` (1300 // batch) iterations of
``mtcolor.train.loop`` as the trainer runs them: next batch from the data module (host batches
go through ``sharding.put_batch``; resident ones are already on the devices), then
``loop.train_iteration`` (the paper's multi-task model, random init, float32). The model's steps
are compiled once before any timing (the same compilation for both paths), so every epoch's time is
data plus training; the first epoch also counts the data module's start-up:

- ``resident (cache built)``: decoding the 1,300 files into the cache (a fresh cache directory),
  putting it on the devices, then the epoch; ``resident`` rows after it reuse that cache;
- ``resident (cache reused)``: a second start-up with the cache on disk (load + device put), epoch
  not repeated (its epochs are the ones above);
- ``grain``: the pipeline's start-up (worker_count 0, read_threads 2 unless given) and its epochs.

- ``torch (tutorial data path)`` (``--reference torch``, needs the ``bench`` extra): what a user of
  the paper's reference tutorial waits for: PIL open, bicubic resize, random flip and skimage
  ``rgb2lab`` per image in a ``DataLoader`` with as many workers as cores, feeding
  ``benchmarks/torch_reference.py``'s eager iteration of the same model (warmed up first), on the
  GPU when torch sees one; run by ``benchmarks/tutorial_epoch.py`` in a child process without JAX,
  so that its workers fork as the tutorial's do.

``--modes data`` times the same epochs without training (the input path's own cost; no model is
built); ``--modes train data`` does both.

    python benchmarks/epoch.py                        # 128 px, 3 epochs per path, with training
    python benchmarks/epoch.py --sizes 128 256 --epochs 2 --modes train data
    python benchmarks/epoch.py --modes data --epochs 3   # input paths alone, whole epochs
    python benchmarks/epoch.py --steps-per-epoch 5    # a smoke run (partial epochs, marked)
    python benchmarks/epoch.py --sizes 128 256 --reference torch   # side by side with torch

Prints a table and writes JSON (default benchmarks/results/epoch.json). No TensorFlow.

Extending: each input path is a ``Runner`` in ``RUNNERS`` (a name and a function that runs
``epochs`` epochs and returns per-epoch seconds); a reference implementation is a runner in
``REFERENCES``, timed with the same images, sizes, batch and epochs and printed in the same table.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)  # run from a checkout without installing the package
DEFAULT_DATA = os.path.join(REPO, "..", "shared", "data", "imagenet-val-1300")

import jax  # noqa: E402
import numpy as np  # noqa: E402

from mtcolor import sharding  # noqa: E402
from mtcolor.data import pipeline, resident  # noqa: E402
from mtcolor.train import config as config_lib  # noqa: E402
from mtcolor.train import loop, steps  # noqa: E402
from mtcolor.train import state as state_lib  # noqa: E402


@dataclasses.dataclass
class Setting:
    """What every runner is timed on (a reference implementation reads the same fields)."""

    images_dir: str
    labels_csv: str
    image_size: int
    batch_size: int
    epochs: int
    steps_per_epoch: int
    partial: bool  # steps_per_epoch below a whole epoch (a smoke run)
    phase: int
    seed: int
    read_threads: int
    worker_count: int
    cache_dir: str
    loader_start: str = "fork"  # the torch reference's DataLoader workers: fork (the tutorial's)
    torch_device: str = "auto"  # the torch reference's device: auto (cuda if any), cuda or cpu


def data_config(setting: Setting, input_path: str):
    config = config_lib.base_config("multitask")
    config.image_size = setting.image_size
    config.batch_size = setting.batch_size
    config.seed = setting.seed
    d = config.data
    d.source = "folder"
    d.input_path = input_path
    d.folder.train_root = setting.images_dir
    d.folder.val_root = setting.images_dir
    d.folder.train_split_file = setting.labels_csv
    d.folder.val_split_file = setting.labels_csv
    d.read_threads = setting.read_threads
    d.worker_count = setting.worker_count
    d.resident.cache_dir = setting.cache_dir
    config.model.pretrained = None
    return config


class Trainer:
    """The trainer's iteration on a replicated state, compiled once for every runner."""

    def __init__(self, setting: Setting, num_classes: int):
        config = data_config(setting, "grain")
        config.model.num_classes = num_classes
        self.mesh = sharding.make_mesh()
        self.fns = steps.jit_steps(self.mesh)
        self.initial = sharding.replicate(
            state_lib.create_train_state(
                config,
                jax.random.key(setting.seed),
                backbone_frozen=setting.phase == 1,
                steps_per_epoch=setting.steps_per_epoch,
            ),
            self.mesh,
        )
        size, batch = setting.image_size, setting.batch_size
        dummy = {
            "L": np.zeros((batch, size, size, 1), np.float32),
            "ab": np.zeros((batch, size, size, 2), np.float32),
            "label": np.zeros((batch,), np.int32),
            "has_label": np.ones((batch,), np.float32),
        }
        self.dummy = dummy
        start = time.perf_counter()
        # Train steps donate the state: compile on a copy.
        state, metrics = loop.train_iteration(
            self.fns,
            jax.tree.map(lambda x: x.copy(), self.initial),
            sharding.put_batch(dummy, self.mesh),
        )
        jax.block_until_ready((state, metrics))
        self.compile_s = time.perf_counter() - start

    def fresh_state(self):
        return jax.tree.map(lambda x: x.copy(), self.initial)

    def step(self, state, batch):
        arrays = sharding.put_batch(
            {k: v for k, v in batch.items() if k in loop.BATCH_KEYS}, self.mesh
        )
        return loop.train_iteration(self.fns, state, arrays)


def run_epochs(setting: Setting, make_iterator: Callable, trainer: Trainer | None) -> dict:
    """Start-up + ``epochs`` timed epochs. trainer None: data only (batches fetched and, for device
    arrays, waited for)."""
    start = time.perf_counter()
    iterator = make_iterator()
    startup_s = time.perf_counter() - start
    state = trainer.fresh_state() if trainer is not None else None
    epochs = []
    for _ in range(setting.epochs):
        begin = time.perf_counter()
        last = None
        for _ in range(setting.steps_per_epoch):
            batch = next(iterator)
            if trainer is None:
                last = {k: v for k, v in batch.items() if k not in pipeline.INFO_KEYS}
            else:
                state, last = trainer.step(state, batch)
        jax.block_until_ready((state, last))  # async dispatch: the epoch ends when its work has
        epochs.append(time.perf_counter() - begin)
        print(f"#   epoch {len(epochs)}: {epochs[-1]:.1f} s", flush=True)
    if trainer is not None:
        loss = float(np.asarray(last.get("loss_g", last.get("loss"))))
        if not np.isfinite(loss):
            raise FloatingPointError(f"non-finite loss {loss}")
    close = getattr(iterator, "close", None)
    if close is not None:
        close()
    return {"startup_s": startup_s, "epoch_s": epochs}


@dataclasses.dataclass
class Runner:
    name: str
    run: Callable[[Setting, Trainer | None], dict]


def _grain(setting, trainer):
    config = data_config(setting, "grain")
    return run_epochs(
        setting,
        lambda: pipeline.make_train_iterator(
            config.data, seed=setting.seed, shard_index=0, shard_count=1
        ),
        trainer,
    )


def _resident_built(setting, trainer):
    shutil.rmtree(setting.cache_dir, ignore_errors=True)
    resident.clear()
    config = data_config(setting, "resident")
    return run_epochs(
        setting, lambda: resident.make_train_iterator(config.data, seed=setting.seed), trainer
    )


def _resident_reused(setting, trainer):
    resident.clear()  # forget the device copy: load the cache file again and put it on the devices
    config = data_config(setting, "resident")
    start = time.perf_counter()
    resident.make_train_iterator(config.data, seed=setting.seed)
    return {"startup_s": time.perf_counter() - start, "epoch_s": []}


RUNNERS = {
    "resident": [
        Runner("resident (cache built)", _resident_built),
        Runner("resident (cache reused)", _resident_reused),
    ],
    "grain": [Runner("grain", _grain)],
}


# ---- the reference: the tutorial's data path feeding the PyTorch iteration ------------------


def _torch_tutorial(setting, trainer):
    """The paper's reference tutorial's input side feeding ``benchmarks/torch_reference.py``'s
    eager iteration of the same model (``benchmarks/tutorial_epoch.py``, which says how), run as a
    child process that never imports JAX: its ``DataLoader`` forks its workers, as the tutorial's
    does, which a process that has started JAX must not do. The model is the trainer's (its task
    list read into a ``torch_reference.Spec``); without a trainer the data path alone."""
    command = [
        sys.executable,
        os.path.join(REPO, "benchmarks", "tutorial_epoch.py"),
        f"--images={setting.images_dir}",
        f"--labels={setting.labels_csv}",
        f"--size={setting.image_size}",
        f"--batch-size={setting.batch_size}",
        f"--epochs={setting.epochs}",
        f"--steps-per-epoch={setting.steps_per_epoch}",
        f"--device={setting.torch_device}",
        f"--loader-start={setting.loader_start}",
    ]
    if trainer is not None:
        import torch_reference  # benchmarks/, the script's directory; the Spec only

        state = trainer.initial
        spec = torch_reference.spec_from_tasks(
            state.objective.tasks, setting.image_size, setting.phase == 1, state.optimizer
        )
        command.append(f"--spec={json.dumps(dataclasses.asdict(spec))}")
    # The child's epochs print to stderr (passed through); its result is its last stdout line.
    child = subprocess.run(command, stdout=subprocess.PIPE, text=True, check=False)
    if child.returncode != 0:
        raise RuntimeError(
            f"benchmarks/tutorial_epoch.py exited with {child.returncode}; its stderr is above"
        )
    return json.loads(child.stdout.strip().splitlines()[-1])


# Reference implementations timed side by side (--reference NAME, needs torch: the `bench` extra).
REFERENCES: dict[str, list[Runner]] = {
    "torch": [Runner("torch (tutorial data path)", _torch_tutorial)],
}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__,
    )
    parser.add_argument("--data", default=DEFAULT_DATA, help="folder with images/ and labels.csv")
    parser.add_argument("--sizes", nargs="+", type=int, default=[128])
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument(
        "--steps-per-epoch",
        type=int,
        default=None,
        help="default: a whole epoch (images // batch); fewer for a smoke run",
    )
    parser.add_argument(
        "--paths",
        nargs="*",
        default=["resident", "grain"],
        choices=list(RUNNERS),
        help="mtcolor's input paths to time (none: only --reference)",
    )
    parser.add_argument(
        "--reference",
        nargs="*",
        default=[],
        choices=sorted(REFERENCES),
        help="reference implementations to time alongside (torch: the tutorial's data path + "
        "benchmarks/torch_reference.py's iteration; needs the bench extra)",
    )
    parser.add_argument(
        "--modes",
        nargs="+",
        default=["train"],
        choices=["train", "data"],
        help="train: data + training iterations; data: the input path alone",
    )
    parser.add_argument(
        "--phase",
        type=int,
        default=1,
        choices=[1, 2],
        help="1: backbone frozen (the paper's first 30 of 45 epochs); 2: all trained",
    )
    parser.add_argument("--read-threads", type=int, default=2)
    parser.add_argument("--worker-count", type=int, default=0)
    parser.add_argument(
        "--loader-start",
        default="fork",
        choices=["fork", "spawn", "forkserver"],
        help="with --reference torch: how its DataLoader starts its workers (fork: Linux's "
        "default, the tutorial's; the torch reference runs in a child process without JAX)",
    )
    parser.add_argument(
        "--torch-device",
        default="auto",
        choices=["auto", "cuda", "cpu"],
        help="with --reference torch: where its iteration runs (auto: cuda when torch sees one)",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=os.path.join(REPO, "benchmarks", "results", "epoch.json"))
    args = parser.parse_args()

    from absl import flags

    flags.FLAGS.mark_as_parsed()  # grain workers read absl flags
    images_dir = os.path.abspath(os.path.join(args.data, "images"))
    labels_csv = os.path.abspath(os.path.join(args.data, "labels.csv"))
    with open(labels_csv) as f:
        num_images = sum(1 for _ in f) - 1
    cache_root = tempfile.mkdtemp(prefix="mtcolor_epoch_bench_")
    device = jax.devices()[0]
    machine = {
        "platform": device.platform,
        "device_kind": device.device_kind,
        "device_count": jax.device_count(),
        "cpu_count": os.cpu_count(),
        "host": platform.platform(),
        "jax": jax.__version__,
    }
    print(
        f"# {num_images} photos from {args.data}, batch {args.batch_size}, "
        f"phase {args.phase}; {machine}"
    )
    rows = []

    def write():  # after every row, so an interrupted run keeps what it measured
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        with open(args.out, "w") as f:
            json.dump(
                {"machine": machine, "images": num_images, "args": vars(args), "rows": rows},
                f,
                indent=2,
            )

    header = (
        f"{'size':>5} {'run':<26}{'train':>6}{'start s':>9}"
        f"{'epoch 1 s':>11}{'later s':>10}{'img/s later':>12}"
    )
    try:
        for size in args.sizes:
            steps_per_epoch = args.steps_per_epoch or num_images // args.batch_size
            setting = Setting(
                images_dir=images_dir,
                labels_csv=labels_csv,
                image_size=size,
                batch_size=args.batch_size,
                epochs=args.epochs,
                steps_per_epoch=steps_per_epoch,
                partial=steps_per_epoch < num_images // args.batch_size,
                phase=args.phase,
                seed=args.seed,
                read_threads=args.read_threads,
                worker_count=args.worker_count,
                cache_dir=os.path.join(cache_root, str(size)),
                loader_start=args.loader_start,
                torch_device=args.torch_device,
            )
            trainer = None
            if "train" in args.modes:
                num_classes = len(
                    pipeline.make_source(data_config(setting, "grain").data, "train").class_names
                )
                trainer = Trainer(setting, num_classes)
            compiled = (
                f"; model compiled in {trainer.compile_s:.1f} s (not counted)" if trainer else ""
            )
            print(
                f"# {size} px: {steps_per_epoch} steps per epoch"
                f"{' (PARTIAL epochs)' if setting.partial else ''}{compiled}",
                flush=True,
            )
            print(header, flush=True)
            runners = [r for path in args.paths for r in RUNNERS[path]]
            runners += [r for name in args.reference for r in REFERENCES[name]]
            for train in [mode == "train" for mode in args.modes]:
                for runner in runners:
                    result = runner.run(setting, trainer if train else None)
                    epochs = result["epoch_s"]
                    first = result["startup_s"] + epochs[0] if epochs else None
                    later = float(np.mean(epochs[1:])) if len(epochs) > 1 else None
                    row = {
                        "image_size": size,
                        "run": runner.name,
                        "train": train,
                        "steps_per_epoch": steps_per_epoch,
                        "partial_epochs": setting.partial,
                        "batch_size": args.batch_size,
                        "phase": args.phase,
                        **result,
                        "first_epoch_with_startup_s": first,
                        "later_epoch_mean_s": later,
                        "later_images_per_s": steps_per_epoch * args.batch_size / later
                        if later
                        else None,
                    }
                    rows.append(row)
                    write()

                    def fmt(value, width, digits=1):
                        return (
                            f"{value:>{width}.{digits}f}"
                            if value is not None
                            else f"{'-':>{width}}"
                        )

                    print(
                        f"{size:>5} {runner.name:<26}{'yes' if train else 'no':>6}"
                        f"{fmt(result['startup_s'], 9, 2)}{fmt(first, 11)}{fmt(later, 10)}"
                        f"{fmt(row['later_images_per_s'], 12)}",
                        flush=True,
                    )
            if trainer is not None:
                rows.append({"image_size": size, "model_compile_s": trainer.compile_s})
    finally:
        shutil.rmtree(cache_root, ignore_errors=True)
    write()
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
