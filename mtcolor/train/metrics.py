"""clu metric collections for the train logging window and for validation.

Train: every step returns scalars; the collection averages them over the logging window.
Validation: ``eval_step`` returns per-example values and a ``mask``; clu's Average then weights by
the mask, so the padded rows of the last batch do not count and the value is the mean over the
exact split.
"""

from __future__ import annotations

import functools
import math

import jax
import numpy as np
from clu import metrics as clu_metrics

# Names written for each experiment (spec: workdir/scalars.jsonl); "loss" is the classifier's total.
COLOR_NAMES = (
    "l1",
    "loss_l1",
    "loss_gan",
    "loss_g",
    "loss_d",
    "loss_d_real",
    "loss_d_fake",
    "d_real",
    "d_fake",
)
CLASS_NAMES = ("loss_cls", "accuracy")


def metric_names(objective, *, train: bool = False) -> tuple[str, ...]:
    """The metric names of an objective; ``train`` adds each task's loss weight
    (``weight_<task>``, logged every step: learned weightings change them)."""
    names = ()
    if objective.has_color:
        names += COLOR_NAMES
    if objective.has_class:
        names += CLASS_NAMES
    if not objective.has_color:
        names += ("loss",)
    if train:
        names += tuple(f"weight_{task}" for task in objective.task_names)
    return names


@functools.lru_cache(maxsize=None)
def collection_type(names: tuple[str, ...]) -> type[clu_metrics.Collection]:
    """A clu Collection class with one masked Average per name (cached: one class per name set)."""
    return clu_metrics.Collection.create(
        **{name: clu_metrics.Average.from_output(name) for name in names}
    )


def empty(names) -> clu_metrics.Collection:
    return collection_type(tuple(names)).empty()


def from_step_outputs(names, outputs: dict) -> clu_metrics.Collection:
    """One step's metrics (scalars for train, per-example arrays + mask for eval) -> collection."""
    outputs = {k: np.asarray(v) for k, v in jax.device_get(outputs).items()}
    outputs = {k: (v.reshape(1) if v.ndim == 0 else v) for k, v in outputs.items()}
    return collection_type(tuple(names)).single_from_model_output(
        **{k: v for k, v in outputs.items() if k in names or k == "mask"}
    )


def compute(collection: clu_metrics.Collection) -> dict[str, float]:
    return {k: float(v) for k, v in collection.compute().items()}


def first_non_finite(outputs: dict) -> list[str]:
    """Names of the loss terms in one step's metrics that are NaN or infinite."""
    bad = []
    for name, value in outputs.items():
        value = np.asarray(value)
        if not np.all(np.isfinite(value)):
            bad.append(name)
    return bad


def finite_or_nan(value: float) -> float:
    return value if math.isfinite(value) else float("nan")
