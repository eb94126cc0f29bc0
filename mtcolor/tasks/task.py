"""What a task is: a value the model, the trainer, evaluation and the report read.

A multi-task experiment is a shared backbone plus a tuple of tasks. Each task says, in one place:
- its name (the key of its output in the model's output dict, of its metrics and its weight);
- its head: the flax module it puts on the backbone's features (or its stages, for skips);
- its per-example loss terms (``per_example``): built once, averaged over the examples that have
  the task in training, kept per example in evaluation (so padded and unlabelled rows drop out);
- which examples have it (``example_mask``: a batch key such as ``has_label``, or every example);
- its weight in the summed loss, the validation metric early stopping watches and the metric that
  can pick checkpoints;
- optionally an adversary (a discriminator and its GAN loss), as the paper's colorization has.

Nothing outside a task module knows a task's name: the trainer (mtcolor.train), evaluation and
the report iterate over tasks. Subclass :class:`Task` for a new one (see
``tests/test_tasks_third.py`` for a task the library does not ship).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
from flax import linen as nn

# The discriminator's own metrics, logged by the discriminator step (training) and by the
# adversarial task's evaluation terms.
ADVERSARY_METRICS = ("loss_d", "loss_d_real", "loss_d_fake", "d_real", "d_fake")

Critic = Callable[[jax.Array], jax.Array]  # discriminator input -> patch logits


@dataclasses.dataclass(frozen=True, kw_only=True)
class Adversary:
    """A task's adversarial part: the discriminator and its GAN loss (pix2pix, paper III-C).

    ``gan_mode``: see ``mtcolor.tasks.losses.gan_per_example``; ``weight``: of the generator's GAN
    term inside the task's loss."""

    discriminator: nn.Module
    gan_mode: str = "vanilla"
    weight: float = 1.0


@dataclasses.dataclass(frozen=True, kw_only=True)
class Task:
    """One task of a multi-task model. Frozen and hashable: tasks are static in jitted steps.

    Attributes:
      name: key of the task's output, weight and metrics (``weight_<name>`` is logged).
      weight: its weight in the summed loss (the "fixed" weighting; learned weightings start
        from it).
      module_name: the name of its head in the model's parameters (default: ``name``).
      mask_key: the batch key whose per-example 0/1 says which examples have this task's target
        (None: every example does).
      val_loss: the evaluation term early stopping watches (lower is better).
      checkpoint_metric: (evaluation term, "min" or "max") that can pick the best checkpoint.
      selects_checkpoints: whether this task's ``checkpoint_metric`` picks checkpoints when the
        experiment has several tasks (the first such task in the list does; else the first task).
      adversary: its discriminator and GAN loss, or None.
    """

    name: str
    weight: float = 1.0
    module_name: str | None = None
    mask_key: str | None = None
    val_loss: str = "loss"
    checkpoint_metric: tuple[str, str] = ("loss", "min")
    selects_checkpoints: bool = False
    adversary: Adversary | None = None

    @property
    def head_name(self) -> str:
        return self.module_name or self.name

    # ---- the network ----------------------------------------------------------------------
    def head(self, features: jax.Array, stages: tuple, *, train: bool, dtype: Any) -> Any:
        """Builds and applies the task's head inside the model's compact ``__call__`` (name it
        ``self.head_name``). ``features``: the backbone's bottleneck; ``stages``: its stage maps
        (``ResNet18(return_stages=True)``)."""
        raise NotImplementedError

    # ---- losses and metrics ---------------------------------------------------------------
    def per_example(
        self,
        output: Any,
        batch: Mapping[str, jax.Array],
        *,
        train: bool,
        critic: Critic | None = None,
    ) -> dict[str, jax.Array]:
        """Per-example (N,) terms; ``"loss"`` is the task's loss (before its weight), the others are
        logged under their names. ``train`` False adds evaluation-only terms; ``critic`` is the
        adversary's discriminator (train mode in training, eval mode in evaluation) or None when
        no discriminator is at hand (then adversarial terms are left out)."""
        raise NotImplementedError

    def metric_names(self, *, train: bool) -> tuple[str, ...]:
        """The names ``per_example`` returns besides ``"loss"`` (with a critic)."""
        raise NotImplementedError

    def example_mask(self, batch: Mapping[str, jax.Array]) -> jax.Array:
        """f32 (N,): 1 for the examples that have this task's target."""
        n = batch["L"].shape[0]
        if self.mask_key is None or self.mask_key not in batch:
            return jnp.ones((n,), jnp.float32)
        return batch[self.mask_key].astype(jnp.float32)

    # ---- the adversary's view -------------------------------------------------------------
    def critic_input(self, batch: Mapping[str, jax.Array], prediction: jax.Array) -> jax.Array:
        """What the discriminator judges: the condition with a prediction (or the target)."""
        raise NotImplementedError(f"task {self.name!r} has no adversary")

    def target(self, batch: Mapping[str, jax.Array]) -> jax.Array:
        """The real sample the discriminator sees next to the prediction."""
        raise NotImplementedError(f"task {self.name!r} has no adversary")

    def headline(self, val: Mapping[str, float]) -> str | None:
        """One phrase putting the final validation metrics beside their baseline (printed at the
        end of a run), or None."""
        return None

    # ---- pictures -------------------------------------------------------------------------
    def image_rows(self, batch: Mapping[str, Any], prediction: Any) -> list | None:
        """Rows of (N, H, W, 3) RGB images in [0, 1] for the validation grid, or None."""
        return None


def masked_mean(values: jax.Array, mask: jax.Array) -> jax.Array:
    """Mean over the examples that have the task; 0 (not NaN) for a batch without any. A masked-out
    value never counts, not even a NaN (an unlabeled row's placeholder label)."""
    return jnp.where(mask > 0, values, 0.0).sum() / jnp.maximum(mask.sum(), 1.0)


def checkpoint_task(tasks) -> Task:
    """The task whose ``checkpoint_metric`` picks the best checkpoint by default."""
    for task in tasks:
        if task.selects_checkpoints:
            return task
    return tasks[0]


def adversarial_task(tasks) -> Task | None:
    """The task with an adversary (at most one: the trainer runs one discriminator)."""
    found = [t for t in tasks if t.adversary is not None]
    if len(found) > 1:
        raise ValueError(
            f"tasks {[t.name for t in found]} each have an adversary; the trainer runs one"
        )
    return found[0] if found else None


def check_tasks(tasks) -> tuple[Task, ...]:
    """A non-empty tuple of tasks with distinct names and head names."""
    tasks = tuple(tasks)
    if not tasks:
        raise ValueError("an experiment needs at least one task")
    for what, values in (
        ("names", [t.name for t in tasks]),
        ("head names", [t.head_name for t in tasks]),
    ):
        if len(set(values)) != len(values):
            raise ValueError(f"task {what} must be distinct, got {values}")
    if "backbone" in [t.head_name for t in tasks]:
        raise ValueError(
            "'backbone' is the shared encoder's name; give the task another module_name"
        )
    adversarial_task(tasks)
    return tasks
