"""Input pipeline throughput: decode + resize + Lab at 256 px, ours vs the reference tutorial's way.

Runs, in one process and one session so the numbers are comparable:
- baseline: the tutorial's per-image path (PIL open, convert RGB, bicubic resize to 256x256,
  skimage.color.rgb2lab, L/50 - 1 and ab/110), one thread;
- mtcolor, one thread: the pipeline's per-element transforms (DecodeAndResize + ToNormalizedLab)
  called in a plain loop;
- the full grain pipeline (`make_eval_iterator`, batches of 16) with worker_count 0 (1 and 2 read
  threads), 1 and 2, timed from iterator creation (worker start-up included) and after the first
  batch.

Images: ../shared/data/imagenet-val-1300/images (real ImageNet JPEGs) when present, else a folder of
generated 500x375 JPEGs. Prints a table and writes JSON (default
benchmarks/results/input_pipeline.json).

    python benchmarks/input_pipeline.py [--images DIR] [--num-images N] [--out PATH]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time

import numpy as np
from absl import flags
from PIL import Image

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)  # run from a checkout without installing the package
DEFAULT_IMAGES = os.path.join(REPO, "..", "shared", "data", "imagenet-val-1300", "images")


def generated_images(directory: str, count: int) -> list[str]:
    rng = np.random.default_rng(0)
    paths = []
    for i in range(count):
        small = rng.integers(0, 256, (24, 32, 3), dtype=np.uint8)
        path = os.path.join(directory, f"gen_{i:05d}.JPEG")
        Image.fromarray(small).resize((500, 375), Image.BICUBIC).save(path, quality=90)
        paths.append(path)
    return paths


def baseline(paths: list[str], size: int) -> float:
    from skimage.color import rgb2lab

    start = time.perf_counter()
    for path in paths:
        image = Image.open(path).convert("RGB").resize((size, size), Image.BICUBIC)
        lab = rgb2lab(np.asarray(image)).astype("float32")
        L = lab[..., :1] / 50.0 - 1.0  # noqa: N806, F841
        ab = lab[..., 1:] / 110.0  # noqa: F841
    return time.perf_counter() - start


def ours_single_thread(paths: list[str], size: int) -> float:
    from mtcolor.data import decode, transforms

    to_rgb = transforms.DecodeAndResize(
        size=size,
        resize_mode="stretch",
        min_image_side=decode.DEFAULT_MIN_IMAGE_SIDE,
        max_image_pixels=decode.DEFAULT_MAX_IMAGE_PIXELS,
        jpeg_draft=True,
    )
    to_lab = transforms.ToNormalizedLab()
    start = time.perf_counter()
    for path in paths:
        record = to_lab.map(to_rgb.map({"path": path, "label": 0, "key": path}))
        assert "ab" in record, record
    return time.perf_counter() - start


def pipeline_run(
    split_file: str, root: str, size: int, workers: int, threads: int, batch: int
) -> tuple[float, float, int]:
    from mtcolor.data import pipeline

    config = pipeline.default_data_config()
    config.source = "folder"
    config.image_size = size
    config.batch_size = batch
    config.worker_count = workers
    config.read_threads = threads
    config.folder.train_root = root
    config.folder.val_root = root
    config.folder.train_split_file = split_file
    config.folder.val_split_file = split_file
    start = time.perf_counter()
    it = pipeline.make_eval_iterator(config, "val", shard_index=0, shard_count=1)
    first = None
    images = 0
    for batch_ in it:
        images += int(batch_["mask"].sum())
        if first is None:
            first = time.perf_counter()
            first_images = images
    end = time.perf_counter()
    it.close()
    total = end - start
    steady = (images - first_images) / (end - first) if end > first else float("nan")
    return total, steady, images


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--images", default=DEFAULT_IMAGES, help="folder of JPEGs (flat)")
    parser.add_argument("--num-images", type=int, default=1300)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument(
        "--out", default=os.path.join(REPO, "benchmarks", "results", "input_pipeline.json")
    )
    args = parser.parse_args()
    flags.FLAGS.mark_as_parsed()  # grain workers read absl flags

    tmp = tempfile.mkdtemp(prefix="mtcolor_bench_")
    if os.path.isdir(args.images):
        names = sorted(n for n in os.listdir(args.images) if n.lower().endswith((".jpeg", ".jpg")))[
            : args.num_images
        ]
        root = os.path.abspath(args.images)
        paths = [os.path.join(root, n) for n in names]
        kind = f"real JPEGs from {os.path.relpath(root, REPO)}"
    else:
        root = tmp
        paths = generated_images(tmp, args.num_images)
        kind = "generated 500x375 JPEGs"
    sizes = [Image.open(p).size for p in paths[:50]]
    split_file = os.path.join(tmp, "split.txt")
    with open(split_file, "w") as f:
        f.writelines(f"{os.path.basename(p)} all\n" for p in paths)
    for p in paths:  # warm the page cache so every run reads from memory
        with open(p, "rb") as fh:
            fh.read()

    n = len(paths)
    rows = []
    t = baseline(paths, args.size)
    rows.append(
        {
            "name": "baseline: PIL + skimage.rgb2lab per image (tutorial)",
            "workers": 0,
            "threads": 1,
            "seconds": t,
            "images_per_s": n / t,
        }
    )
    t = ours_single_thread(paths, args.size)
    rows.append(
        {
            "name": "mtcolor transforms, plain loop",
            "workers": 0,
            "threads": 1,
            "seconds": t,
            "images_per_s": n / t,
        }
    )
    for workers, threads in ((0, 1), (0, 2), (1, 1), (2, 1)):
        total, steady, count = pipeline_run(
            split_file, root, args.size, workers, threads, args.batch_size
        )
        assert count == n, (count, n)
        rows.append(
            {
                "name": f"grain pipeline, worker_count={workers}, read_threads={threads}",
                "workers": workers,
                "threads": threads,
                "seconds": total,
                "images_per_s": n / total,
                "steady_images_per_s": steady,
            }
        )
    base = rows[0]["images_per_s"]
    for row in rows:
        row["speedup_vs_baseline"] = row["images_per_s"] / base

    machine = {
        "cpu_count": os.cpu_count(),
        "processor": platform.processor() or platform.machine(),
        "python": platform.python_version(),
        "platform": platform.platform(),
    }
    print(
        f"{n} {kind} (first sizes {sizes[:3]}), output {args.size}x{args.size}, "
        f"{machine['cpu_count']} CPUs"
    )
    print(f"{'run':62s} {'s':>7s} {'img/s':>8s} {'steady':>8s} {'x base':>7s}")
    for row in rows:
        steady = row.get("steady_images_per_s")
        steady_text = f"{steady:8.1f}" if steady is not None else f"{'':8s}"
        print(
            f"{row['name']:62s} {row['seconds']:7.2f} {row['images_per_s']:8.1f} {steady_text} "
            f"{row['speedup_vs_baseline']:7.2f}"
        )
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(
            {"images": n, "source": kind, "size": args.size, "machine": machine, "rows": rows},
            f,
            indent=2,
        )
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
