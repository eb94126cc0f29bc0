"""An invocation's schedule: the steps at which a run logs, validates, saves and stops.

The paper's schedule (III-D): ``frozen_epochs`` with the ResNet-18 frozen, then
``unfrozen_epochs`` with it trained, validating ``evals_per_epoch`` times per epoch. A resumed run
starts at its checkpoint's step; ``train.max_steps_per_run`` ends an invocation sooner.
"""

from __future__ import annotations

import dataclasses

import jax

from mtcolor.train import state as state_lib


@dataclasses.dataclass(frozen=True)
class Schedule:
    """This invocation's steps (one global batch each), counted from the start of the run."""

    steps_per_epoch: int
    phase1_steps: int  # the backbone is frozen before this step, trained from it on
    total_steps: int
    eval_every: int
    ckpt_every: int
    log_every: int
    start_step: int  # where this invocation starts (the restored checkpoint's step, or 0)
    # The last step it trains: total_steps, or sooner by train.max_steps_per_run (early stopping
    # may end it before).
    stop_at: int

    def epoch(self, step: int) -> float:
        return step / self.steps_per_epoch

    def logs_at(self, step: int) -> bool:
        return step % self.log_every == 0 or step == self.stop_at

    def evaluates_at(self, step: int) -> bool:
        return step % self.eval_every == 0 or step == self.total_steps

    def saves_at(self, step: int) -> bool:
        return step % self.ckpt_every == 0 or step == self.stop_at


def make_schedule(config, steps_per_epoch: int, state) -> Schedule:
    """The schedule of an invocation that starts from ``state`` (fresh or restored)."""
    start_step = int(jax.device_get(state.step))
    total_steps = (
        int(config.train.frozen_epochs) + int(config.train.unfrozen_epochs)
    ) * steps_per_epoch
    eval_every = max(1, steps_per_epoch // max(1, int(config.train.evals_per_epoch)))
    stop_at = total_steps
    if config.train.max_steps_per_run:
        stop_at = min(total_steps, start_step + int(config.train.max_steps_per_run))
    patience = config.train.get("early_stopping_patience")
    if patience is not None and not state_lib.active_tasks(state):
        stop_at = start_step  # resumed after every task had stopped early: nothing left to train
    return Schedule(
        steps_per_epoch=steps_per_epoch,
        phase1_steps=state_lib.phase1_steps(config, steps_per_epoch),
        total_steps=total_steps,
        eval_every=eval_every,
        ckpt_every=config.train.checkpoint_every_steps or eval_every,
        log_every=max(1, int(config.train.log_every_steps)),
        start_step=start_step,
        stop_at=stop_at,
    )
