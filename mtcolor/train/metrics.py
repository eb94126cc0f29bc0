"""clu metric collections for the train logging window and for validation.

Train: every step returns scalars; the collection averages them over the logging window.
Validation: ``eval_step`` returns per-example values and a ``mask``; clu's Average then weights by
the mask, so the padded rows of the last batch do not count and the value is the mean over the
exact split.
"""

from __future__ import annotations

import functools
import math
from typing import TYPE_CHECKING

import jax
import numpy as np

# The discriminator step's metrics (mtcolor.tasks.ADVERSARY_METRICS), logged in training.
from mtcolor.tasks.task import ADVERSARY_METRICS

if TYPE_CHECKING:
    # Annotations only: clu imports TensorFlow, so it is imported lazily where it is used.
    from clu import metrics as clu_metrics


def mask_name(name: str) -> str:
    """The eval-step key of the per-example mask a task's (or the total's) metrics average over."""
    return f"mask_{name}"


def metric_names(
    objective, *, train: bool = False, discriminator: bool | None = None
) -> tuple[str, ...]:
    """The metric names of an objective, task by task, then the weighted total; ``train`` adds
    the discriminator step's metrics (unless ``discriminator`` is False: it stopped training with
    its task) and each task's loss weight (``weight_<task>``, logged every step: learned
    weightings change them)."""
    names = ()
    for task in objective.tasks:
        names += task.metric_names(train=train)
    if discriminator is None:
        discriminator = objective.has_discriminator
    if train and discriminator:
        names += ADVERSARY_METRICS
    names += (objective.total_loss_name,)
    if train:
        names += tuple(f"weight_{task}" for task in objective.task_names)
    return names


def eval_masks(objective) -> dict[str, str]:
    """{metric name: the eval-step mask it averages over}: a task's metrics over the examples
    that have the task (mtcolor.tasks.Task.example_mask), the total over those with every task."""
    masks = {}
    for task in objective.tasks:
        for name in task.metric_names(train=False):
            masks[name] = mask_name(task.name)
    masks[objective.total_loss_name] = mask_name(objective.total_loss_name)
    return masks


@functools.cache
def collection_type(names: tuple[str, ...], masks: tuple[tuple[str, str], ...] = ()):
    """A clu Collection class with one masked Average per name (cached per name set). ``masks``:
    (name, mask key) pairs of the metrics averaged over their own mask rather than ``mask``."""
    from clu import metrics as clu_metrics

    own_mask = dict(masks)
    host_average = _host_average_type()

    def average(name):
        # from_fun rather than clu's from_output, which converts its input with jnp.array.
        if name not in own_mask:
            return host_average.from_fun(lambda **out: out[name])
        key = own_mask[name]
        return host_average.from_fun(lambda **out: {"values": out[name], "mask": out[key]})

    return clu_metrics.Collection.create(**{name: average(name) for name in names})


@functools.cache
def _host_average_type():
    """clu's ``Average`` with its total and count computed by numpy on the host.

    clu computes them with jax.numpy: on host values each call dispatches a few XLA programs, and
    each new shape (a logging window of another length, an evaluation of another size) compiles
    them anew, about 0.1 s each on this project's CPU: 90 compilations and 6 s of the CPU demo's
    70 s. The values are on the host already (fetched to check them for NaN), so numpy does the
    same sums; merge and compute are clu's own, on these numpy totals.
    """
    import flax
    from clu import metrics as clu_metrics

    @flax.struct.dataclass
    class HostAverage(clu_metrics.Average):
        @classmethod
        def from_model_output(cls, values, mask=None, **_):
            values = np.asarray(values)
            if values.ndim == 0:
                values = values[None]
            if mask is None:
                mask = np.ones(values.shape[:1], bool)
            mask = np.asarray(mask).astype(bool)
            if mask.shape[0] != values.shape[0]:
                raise ValueError(
                    f"mask of shape {mask.shape} for values of shape {values.shape}: the leading "
                    "dimensions must match"
                )
            mask = np.broadcast_to(
                mask.reshape(mask.shape + (1,) * (values.ndim - 1)), values.shape
            )
            return cls(
                total=np.where(mask, values, np.zeros((), values.dtype)).sum(),
                count=np.int32(mask.sum()),
            )

    return HostAverage


def empty(names, masks: dict | None = None):
    return collection_type(tuple(names), tuple(sorted((masks or {}).items()))).empty()


def from_step_outputs(names, outputs: dict | list[dict], masks: dict | None = None):
    """Step metrics (scalars for train, per-example arrays + masks for eval) -> collection.

    ``outputs`` is one step's dict or a list of them (a logging window's steps, an evaluation's
    batches), fetched once and concatenated: one collection and one merge per window or
    evaluation instead of one per step or batch (each collection also makes a small JAX array,
    clu's reduction counter, and each merge adds one).
    """
    steps = jax.device_get(outputs if isinstance(outputs, list) else [outputs])
    keys = steps[0].keys()
    outputs = {k: np.concatenate([np.atleast_1d(step[k]) for step in steps]) for k in keys}
    keep = set(names) | {"mask"} | set((masks or {}).values())
    return collection_type(
        tuple(names), tuple(sorted((masks or {}).items()))
    ).single_from_model_output(**{k: v for k, v in outputs.items() if k in keep})


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
