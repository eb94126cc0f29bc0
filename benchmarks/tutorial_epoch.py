"""Whole training epochs the way the paper's reference tutorial runs them, in PyTorch, without JAX.

What a user of the tutorial waits for: a torch ``Dataset`` that per image opens the file with PIL,
resizes it bicubically, flips it at random and converts it with skimage's ``rgb2lab``
(``torch_reference.TutorialDataset``), in a ``DataLoader`` with as many workers as cores (shuffled,
whole batches, forked workers started anew each epoch, pinned memory on a GPU), each batch moved
with ``.to(device)`` into ``benchmarks/torch_reference.py``'s eager iteration of the same model.

``benchmarks/epoch.py --reference torch`` runs this script as a child process: the loader's
workers are then forked, as the tutorial's are, from a process that has never started JAX
(forking one that has is unsafe; spawning instead made each of 16 workers import JAX and mtcolor,
35 s of start-up on an H200, session 16). Alone:

    python benchmarks/tutorial_epoch.py --images ../shared/data/imagenet-val-1300/images \
        --labels ../shared/data/imagenet-val-1300/labels.csv --size 128 --epochs 2 \
        --spec '{"image_size": 128, "colorization": true, "classification": true, \
                 "backbone_frozen": true}'

Prints the epochs as they end on stderr and one JSON object (start-up and per-epoch seconds, the
device, the loader's start method and workers) as the last line of stdout. Without ``--spec`` it
times the data path alone (batches fetched, no model).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np
import torch
import torch_reference  # benchmarks/, this script's directory

# A batch that takes this long means a stuck worker: fail with torch's error, not hang.
LOADER_TIMEOUT_S = 120


def read_labels(labels_csv: str, images_dir: str) -> tuple[list[str], list[int]]:
    """The files and class indices of a labels.csv (``file,label`` rows after a header); labels
    are numbered by their sorted values, as mtcolor's folder source numbers them."""
    with open(labels_csv) as f:
        rows = [line.rstrip("\n").split(",") for line in f][1:]
    classes = sorted({int(r[1]) for r in rows})
    files = [os.path.join(images_dir, r[0]) for r in rows]
    return files, [classes.index(int(r[1])) for r in rows]


def spec_from_json(text: str) -> torch_reference.Spec:
    fields = json.loads(text)
    if "betas" in fields:
        fields["betas"] = tuple(fields["betas"])
    return torch_reference.Spec(**fields)


def run_epochs(args) -> dict:
    device = torch.device(
        ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
    )
    files, labels = read_labels(args.labels, args.images)
    loader = torch.utils.data.DataLoader(
        torch_reference.TutorialDataset(files, labels, args.size),
        batch_size=args.batch_size,
        shuffle=True,
        num_workers=args.workers or os.cpu_count(),
        drop_last=True,
        multiprocessing_context=args.loader_start,
        timeout=LOADER_TIMEOUT_S,
        pin_memory=device.type == "cuda",
    )
    steps = args.steps_per_epoch or len(loader)
    experiment = None
    if args.spec:
        experiment = torch_reference.TorchExperiment(spec_from_json(args.spec), device)
        size, batch = args.size, args.batch_size
        dummy = {
            "L": np.zeros((batch, size, size, 1), np.float32),
            "ab": np.zeros((batch, size, size, 2), np.float32),
            "label": np.zeros((batch,), np.int64),
        }
        # Warm-up, not timed (as mtcolor's compilation is not): cuDNN's plans, the allocator.
        experiment.run(experiment.batch(dummy), 2)
    start = time.perf_counter()
    batches = iter(loader)  # the workers start here, as in the tutorial's first loop
    startup_s = time.perf_counter() - start
    epochs = []
    for epoch in range(args.epochs):
        begin = time.perf_counter()
        if epoch:
            batches = iter(loader)  # new workers each epoch, as the tutorial's loader starts them
        last = None
        for _ in range(steps):
            batch = next(batches)
            if experiment is not None:
                batch = {k: v.to(device, non_blocking=True) for k, v in batch.items()}
                last = experiment.train_iteration(batch)
            else:
                last = batch
        if experiment is not None:
            loss = float(last["loss_g" if "loss_g" in last else "loss"])  # waits for the GPU
            if not np.isfinite(loss):
                raise FloatingPointError(f"torch: non-finite loss {loss}")
        epochs.append(time.perf_counter() - begin)
        print(f"#   epoch {len(epochs)}: {epochs[-1]:.1f} s", file=sys.stderr, flush=True)
    return {
        "startup_s": startup_s,
        "epoch_s": epochs,
        "torch_device": str(device),
        "loader_start": args.loader_start,
        "loader_workers": loader.num_workers,
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__,
    )
    parser.add_argument("--images", required=True, help="folder of the images labels.csv names")
    parser.add_argument("--labels", required=True, help="labels.csv: file,label rows")
    parser.add_argument("--size", type=int, required=True)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--steps-per-epoch", type=int, default=None, help="default: whole epochs")
    parser.add_argument("--spec", default=None, help="torch_reference.Spec, JSON; none: data only")
    parser.add_argument("--device", default="auto", choices=["auto", "cuda", "cpu"])
    parser.add_argument("--workers", type=int, default=0, help="default: one per core")
    parser.add_argument(
        "--loader-start",
        default="fork",
        choices=["fork", "spawn", "forkserver"],
        help="how the DataLoader starts its workers (fork: Linux's default, the tutorial's)",
    )
    result = run_epochs(parser.parse_args())
    print(json.dumps(result))


if __name__ == "__main__":
    main()
