"""Metric writers: clu's default writer (console lines + TensorBoard event files) plus a JSONL
scalar log that the report tools read.

clu.metric_writers imports TensorFlow, so it is imported inside ``create_writer`` only; importing
this module stays TensorFlow-free.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping
from typing import Any


class JsonlScalarWriter:
    """A clu ``MetricWriter`` (registered as a virtual subclass on first use) appending one JSON
    object per ``write_scalars`` call to ``path``: {"step": int, "epoch": float, "<split>/<name>":
    float, ...}. Non-finite values are written as null (JSON has no NaN). Everything else a
    MetricWriter can write is ignored here (the TensorBoard writer has it)."""

    def __init__(self, path: str):
        self._path = path
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        self._file = open(path, "a", encoding="utf-8")

    def write_scalars(self, step: int, scalars: Mapping[str, Any]):
        record = {"step": int(step)}
        if "epoch" in scalars:
            record["epoch"] = float(scalars["epoch"])
        for name, value in scalars.items():
            if name == "epoch":
                continue
            value = float(value)
            record[name] = value if math.isfinite(value) else None
        self._file.write(json.dumps(record) + "\n")

    def write_summaries(self, step, values, metadata=None):
        pass

    def write_images(self, step, images):
        pass

    def write_videos(self, step, videos):
        pass

    def write_audios(self, step, audios, *, sample_rate):
        pass

    def write_texts(self, step, texts):
        pass

    def write_histograms(self, step, arrays, num_buckets=None):
        pass

    def write_pointcloud(self, step, point_clouds, *, point_colors=None, configs=None):
        pass

    def write_hparams(self, hparams):
        pass

    def flush(self):
        self._file.flush()
        os.fsync(self._file.fileno())

    def close(self):
        if not self._file.closed:
            self.flush()
            self._file.close()


def read_scalars(path: str) -> list[dict]:
    """The records of a scalars.jsonl file (for tests and reports)."""
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def create_writer(workdir: str, *, is_main_process: bool = True):
    """clu MultiWriter: clu's default writer at workdir/tensorboard (console + event files) and
    the JSONL writer at workdir/scalars.jsonl. Other processes of a multi-host run write nothing
    (every process computes the same replicated metrics; one copy is enough)."""
    # TensorFlow only writes event files here: its oneDNN kernels never run, and with them off it
    # does not print "oneDNN custom operations are on. You may see slightly different numerical
    # results ..." (twice, at import) at the start of every run. A user's own setting wins.
    os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")
    from clu import metric_writers  # imports TensorFlow

    metric_writers.MetricWriter.register(JsonlScalarWriter)
    if not is_main_process:
        return metric_writers.MultiWriter([])
    default = metric_writers.create_default_writer(
        os.path.join(workdir, "tensorboard"), asynchronous=False
    )
    jsonl = JsonlScalarWriter(os.path.join(workdir, "scalars.jsonl"))
    return metric_writers.MultiWriter([default, jsonl])
