"""Optimizers (paper III-D): Adam 2e-4, betas (0.5, 0.999), with the ResNet-18 backbone frozen in
phase 1 and trained in phase 2.

Freezing uses ``optax.partition``: the generator's top-level ``backbone`` subtree gets
``optax.set_to_zero()`` (no optimizer state at all, zero updates) while everything else gets Adam.
``optax.masked`` is not used because it passes the raw gradients of the masked-out leaves through
(measured: ``apply_updates`` then moves "frozen" parameters).
"""

from __future__ import annotations

import dataclasses

import optax

BACKBONE = "backbone"
REST = "rest"


@dataclasses.dataclass(frozen=True)
class OptimizerSpec:
    """Everything that defines the optimizers, hashable so it can live in the jit-static part of
    the train state (equal specs reuse compiled steps)."""

    learning_rate: float = 2e-4
    b1: float = 0.5
    b2: float = 0.999
    backbone_frozen: bool = True
    # PyTorch's model.train() on a requires_grad=False backbone keeps updating its BN running
    # statistics; the default here freezes them with the weights (backbone BN on running stats).
    update_frozen_bn_stats: bool = False

    @property
    def backbone_bn_train(self) -> bool:
        """Whether the backbone's BatchNorm uses batch statistics (and updates running ones) in a
        training step."""
        return (not self.backbone_frozen) or self.update_frozen_bn_stats


def adam(spec: OptimizerSpec) -> optax.GradientTransformation:
    return optax.adam(spec.learning_rate, b1=spec.b1, b2=spec.b2)


def backbone_labels(params) -> dict:
    """Label tree (a prefix of ``params``): the ``backbone`` subtree vs everything else."""
    return {name: (BACKBONE if name == BACKBONE else REST) for name in params}


def model_tx(spec: OptimizerSpec) -> optax.GradientTransformation:
    """The generator's (or classifier's) optimizer for the phase ``spec.backbone_frozen`` says."""
    backbone = optax.set_to_zero() if spec.backbone_frozen else adam(spec)
    return optax.partition({BACKBONE: backbone, REST: adam(spec)}, backbone_labels)


def discriminator_tx(spec: OptimizerSpec) -> optax.GradientTransformation:
    return adam(spec)


def unfreeze_opt_state(opt_state: optax.PartitionState, params, spec: OptimizerSpec):
    """Phase 1 -> phase 2: a fresh Adam state for the backbone, the ``rest`` state (moments and
    step count of the decoder / head) carried over unchanged."""
    phase2 = dataclasses.replace(spec, backbone_frozen=False)
    fresh = model_tx(phase2).init(params)
    inner = dict(fresh.inner_states)
    inner[REST] = opt_state.inner_states[REST]
    return fresh._replace(inner_states=inner), phase2
