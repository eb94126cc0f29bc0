"""Data: CIELAB colour conversion, image sources and the grain input pipeline.

Submodules (imported explicitly; none imports TensorFlow or JAX at import time):
- `mtcolor.data.color`: sRGB <-> Lab (numpy and jax), the paper's Lab normalization.
- `mtcolor.data.config`: `default_data_config()`, every data option.
- `mtcolor.data.pipeline`: the grain input path, `make_train_iterator`, `make_eval_iterator`
  (re-exports the names below that users need: `default_data_config`, `BadInputTracker`, ...).
  Its parts: `sources` (which source a config names, the labelled/unlabeled batch split),
  `transforms` (per-element decode + resize, flip, Lab), `batching` (skip, count, batch; the rows
  a process reads), `bad_inputs` (skipped-file accounting, `BadInputTracker`).
- `mtcolor.data.decode`: Pillow decoding/resizing and the bad-input reasons.
- source types: `mtcolor.data.synthetic`, `mtcolor.data.folder`, `mtcolor.data.tfds_source`.
- `mtcolor.data.resident`: the device-resident input path (decoded once into a cache file by
  `mtcolor.data.decoded_cache`, batches made on device). It imports JAX: the device side, never
  run in grain workers.
- `mtcolor.data.input_paths`: `data.input_path`'s choice and `InputPipeline`, the interface the
  training loop reads any input path through.

See docs/data.md.
"""

from collections.abc import Sequence
from typing import NamedTuple


class PaperClass(NamedTuple):
    name: str
    imagenet_index: int  # 0-based ILSVRC-1k index (torchvision order)
    wnid: str


# The five ImageNet classes of the paper, relabelled 0..4 in this order.
PAPER_CLASSES = (
    PaperClass("sea snake", 65, "n01751748"),
    PaperClass("sea anemone", 108, "n01914609"),
    PaperClass("sea cucumber", 329, "n02321529"),
    PaperClass("lionfish", 396, "n02643566"),
    PaperClass("puffer", 397, "n02655020"),
)
PAPER_WNIDS = tuple(c.wnid for c in PAPER_CLASSES)


class DataNotFoundError(FileNotFoundError):
    """The data a config names is not there: a folder, a split file's images, a tfds dataset not
    prepared. The message names what was looked for and the option that names it; the commands
    print it as one line (a run written on one machine and evaluated on another, a typo)."""


def unknown_classes_error(
    missing: Sequence[str],
    where: str,
    available: Sequence[str],
    *,
    detail: str = "",
    available_label: str = "available",
) -> ValueError:
    """The error a source raises for requested classes it does not have: the missing names, where
    they were looked for (`where`, then `detail`) and the first 20 available names."""
    shown = ", ".join(available[:20]) + (
        f", ... ({len(available)} in all)" if len(available) > 20 else ""
    )
    return ValueError(
        f"unknown class(es) {list(missing)} in {where}{detail}; {available_label}: {shown}"
    )
