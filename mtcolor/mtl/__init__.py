"""Multi-task loss weightings and gradient combinations, pure and jittable.

Two independent pieces; a trainer may use either or both.

Loss weightings (`mtcolor.mtl.weighting`), per-task scalar weights of the unweighted losses:

    lw = weighting_from_config("uncertainty", num_tasks=2, base_weights=(100.0, 10.0))
    state = lw.init()
    loss = lw.task_terms(state, losses).sum()          # differentiate this w.r.t. the model
    state = lw.update(state, StepStats(losses, shared_grad_norms, losses_after, epoch_end))
    log(lw.weights(state))                             # f32[T]

  methods: fixed, uncertainty (Kendall et al. 2018), dwa (Liu et al. 2019), gradnorm (Chen et
  al. 2018), famo (Liu et al. 2023). StepStats fields a method does not use may be None.

Gradient combinations (`mtcolor.mtl.gradient`), per-task gradients of the shared parameters ->
one update, optax-like:

    gc = gradient_from_config("nash_mtl", max_norm=1.0)
    state = gc.init(num_tasks)
    combined, state, weights = gc.update(task_grads, state, key)       # f32[T, P] -> f32[P]
    tree, state, weights = combine_trees(gc, task_grad_trees, state, key)  # leaves [T, ...]

  methods: sum (default), mean, pcgrad (Yu et al. 2020), cagrad (Liu et al. 2021), mgda (Sener &
  Koltun 2018), imtl_g (Liu et al. 2021), nash_mtl (Navon et al. 2022). Every method's
  combined gradient is weights @ task_grads; the weights come from the T x T Gram matrix only.

States are NamedTuples of arrays (and optax states): jit, vmap, checkpoint with orbax. All
solvers run fixed iteration counts in float32. See docs/multitask-methods.md for papers, options
and the references each method is checked against.
"""

from mtcolor.mtl.gradient import (
    GRADIENT_METHODS,
    CombinationState,
    GradientCombination,
    combine_trees,
    gradient_from_config,
)
from mtcolor.mtl.weighting import (
    WEIGHTING_METHODS,
    LossWeighting,
    StepStats,
    weighting_from_config,
)

__all__ = [
    "GRADIENT_METHODS",
    "WEIGHTING_METHODS",
    "CombinationState",
    "GradientCombination",
    "LossWeighting",
    "StepStats",
    "combine_trees",
    "gradient_from_config",
    "weighting_from_config",
]
