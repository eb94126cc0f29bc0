"""The train state pytree and how to build it from a config.

One ``TrainState`` serves the three experiments: ``params["model"]`` is the generator (multi-task
or colorization) or the classifier, ``params["discriminator"]`` exists only for the cGAN models.
The modules, the loss weights and the optimizer spec are static (non-pytree) fields: they select
the computation, equal ones reuse compiled steps, and changing the phase (a new OptimizerSpec)
changes the tree structure on purpose so the step recompiles once for phase 2.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from mtcolor.train import optim

MODEL = "model"
DISCRIMINATOR = "discriminator"


@dataclasses.dataclass(frozen=True)
class Objective:
    """What is trained: the tasks (mtcolor.tasks: heads, losses, weights, adversary) and how
    their losses are weighted and their backbone gradients combined (mtcolor.mtl)."""

    tasks: tuple  # of mtcolor.tasks.Task
    experiment: str = "custom"  # a label for summaries and reports (the paper's three names)
    weighting: str = "fixed"
    weighting_options: tuple = ()  # sorted (name, value) pairs: hashable, jit-static
    gradient: str = "sum"
    gradient_options: tuple = ()
    steps_per_epoch: int = 0  # for epoch-based weightings (dwa); 0: no epoch ends are signalled

    def __post_init__(self):
        from mtcolor import tasks as tasks_lib

        object.__setattr__(self, "tasks", tasks_lib.check_tasks(self.tasks))

    @property
    def task_names(self) -> tuple[str, ...]:
        """The tasks whose losses are weighted and whose backbone gradients are combined."""
        return tuple(task.name for task in self.tasks)

    @property
    def base_weights(self) -> tuple[float, ...]:
        """Each task's weight in the summed loss (the paper's: colorization 1, its loss already
        being L1 x100 + GAN; classification x10 in the multi-task model, III-C)."""
        return tuple(float(task.weight) for task in self.tasks)

    @property
    def needs_task_gradients(self) -> bool:
        """Whether a step needs each task's gradient separately (one backward pass per task)
        rather than the gradient of the weighted sum."""
        return self.gradient != "sum" or self.weighting == "gradnorm"

    @property
    def adversarial_task(self):
        """The task trained against the discriminator, or None."""
        from mtcolor import tasks as tasks_lib

        return tasks_lib.adversarial_task(self.tasks)

    @property
    def has_discriminator(self) -> bool:
        return self.adversarial_task is not None

    @property
    def total_loss_name(self) -> str:
        """The logged name of the weighted sum: the generator's loss in a cGAN, else "loss"."""
        return "loss_g" if self.has_discriminator else "loss"


@flax.struct.dataclass
class TrainState:
    step: jax.Array  # number of completed training iterations (generator/classifier updates)
    params: dict
    batch_stats: dict
    opt_state: dict
    rng: jax.Array  # base key; the key of iteration s is fold_in(rng, s)
    # Multi-task method states: {"weighting": ..., "gradient": ...} (mtcolor.mtl), checkpointed.
    mtl: dict
    model: nn.Module = flax.struct.field(pytree_node=False)
    discriminator: Any = flax.struct.field(pytree_node=False)  # nn.Module or None
    objective: Objective = flax.struct.field(pytree_node=False)
    optimizer: optim.OptimizerSpec = flax.struct.field(pytree_node=False)

    @property
    def model_variables(self) -> dict:
        return {"params": self.params[MODEL], "batch_stats": self.batch_stats[MODEL]}


def _options(options) -> tuple:
    return tuple(sorted(dict(options or {}).items()))


def objective_from_config(config, steps_per_epoch: int = 0, tasks=None) -> Objective:
    """The objective of ``config``: ``tasks`` (default: the task list of config.experiment,
    mtcolor.tasks.paper) with the config's multi-task methods."""
    from mtcolor import tasks as tasks_lib

    loss = config.loss
    return Objective(
        tasks=tuple(tasks) if tasks is not None else tasks_lib.tasks_from_config(config),
        experiment=config.experiment,
        weighting=loss.get("weighting", "fixed"),
        weighting_options=_options(loss.get("weighting_options")),
        gradient=loss.get("gradient", "sum"),
        gradient_options=_options(loss.get("gradient_options")),
        steps_per_epoch=int(steps_per_epoch),
    )


@functools.cache
def mtl_methods(objective: Objective):
    """(LossWeighting, GradientCombination) the objective names (cached per objective).

    Built eagerly even when first asked for inside a trace (a resumed run builds its state's
    structure under jax.eval_shape): the methods close over constants such as base weights, and a
    cached closure holding a tracer of that finished trace would fail every later step with
    UnexpectedTracerError."""
    from mtcolor import mtl

    with jax.ensure_compile_time_eval():
        weighting = mtl.weighting_from_config(
            objective.weighting,
            num_tasks=len(objective.task_names),
            base_weights=objective.base_weights,
            **dict(objective.weighting_options),
        )
        gradient = mtl.gradient_from_config(objective.gradient, **dict(objective.gradient_options))
    return weighting, gradient


def initial_mtl_state(objective: Objective) -> dict:
    """The weighting's and the gradient combination's initial states, in fresh buffers: the
    methods are cached per objective and an init may return arrays it holds (e.g. the fixed
    weights), while the steps donate the state, which would delete such shared arrays."""
    weighting, gradient = mtl_methods(objective)
    return jax.tree.map(
        lambda x: jnp.array(x, copy=True),
        {"weighting": weighting.init(), "gradient": gradient.init(len(objective.task_names))},
    )


def early_stopping_init(objective: Objective, model_params, model_batch_stats) -> dict:
    """Per-task early-stopping bookkeeping, checkpointed with the state: which tasks still
    train, each task's best validation loss, evaluations since it improved, the step of the best,
    and a copy of each task's head at its best (restored when the task stops)."""
    tasks = objective.task_names
    best = {}
    for task in objective.tasks:
        name = task.head_name
        best[task.name] = {
            "params": jax.tree.map(jnp.copy, model_params[name]),
            "batch_stats": jax.tree.map(jnp.copy, model_batch_stats.get(name, {})),
        }
    return {
        "active": jnp.ones((len(tasks),), jnp.float32),
        "best_loss": jnp.full((len(tasks),), jnp.inf, jnp.float32),
        "since_best": jnp.zeros((len(tasks),), jnp.int32),
        "best_step": jnp.full((len(tasks),), -1, jnp.int32),
        "best": best,
    }


def early_stopping_update(state: TrainState, val_metrics: dict, step: int, patience: int):
    """After an evaluation (host side): record improvements, stop the tasks whose validation
    loss has not improved for ``patience`` evaluations (their head back to its best weights).
    Returns (new state, names of the tasks stopped now)."""
    es = jax.device_get(state.mtl["early_stopping"])
    active, best_loss = np.array(es["active"]), np.array(es["best_loss"])
    since, best_step = np.array(es["since_best"]), np.array(es["best_step"])
    best = dict(state.mtl["early_stopping"]["best"])
    params, stats = dict(state.params[MODEL]), dict(state.batch_stats[MODEL])
    stopped_now = []
    for i, task_value in enumerate(state.objective.tasks):
        task = task_value.name
        value = val_metrics.get(task_value.val_loss)
        if not active[i] or value is None or not np.isfinite(value):
            continue
        name = task_value.head_name
        if value < best_loss[i]:
            best_loss[i], since[i], best_step[i] = value, 0, step
            best[task] = {
                "params": jax.tree.map(jnp.copy, params[name]),
                "batch_stats": jax.tree.map(jnp.copy, stats.get(name, {})),
            }
            continue
        since[i] += 1
        if since[i] >= patience:
            active[i] = 0.0
            params[name] = jax.tree.map(jnp.copy, best[task]["params"])
            if name in stats:
                stats[name] = jax.tree.map(jnp.copy, best[task]["batch_stats"])
            stopped_now.append(task)
    mtl_state = dict(state.mtl)
    mtl_state["early_stopping"] = {
        "active": jnp.asarray(active),
        "best_loss": jnp.asarray(best_loss),
        "since_best": jnp.asarray(since),
        "best_step": jnp.asarray(best_step),
        "best": best,
    }
    new = state.replace(
        params={**state.params, MODEL: params},
        batch_stats={**state.batch_stats, MODEL: stats},
        mtl=mtl_state,
    )
    return new, stopped_now


def active_tasks(state: TrainState) -> tuple[str, ...]:
    """The tasks still training (all of them without early stopping)."""
    es = state.mtl.get("early_stopping")
    if es is None:
        return state.objective.task_names
    active = np.asarray(jax.device_get(es["active"]))
    return tuple(t for t, a in zip(state.objective.task_names, active) if a > 0)


def optimizer_spec_from_config(config, backbone_frozen: bool) -> optim.OptimizerSpec:
    return optim.OptimizerSpec(
        learning_rate=float(config.optim.learning_rate),
        b1=float(config.optim.b1),
        b2=float(config.optim.b2),
        backbone_frozen=backbone_frozen,
        update_frozen_bn_stats=bool(config.train.update_frozen_bn_stats),
    )


def build_model(config, tasks=None) -> nn.Module:
    """The shared backbone with one head per task (default: config.experiment's task list),
    computing in ``config.model.dtype``."""
    from mtcolor import models
    from mtcolor.precision import compute_dtype

    objective_tasks = tasks if tasks is not None else objective_from_config(config).tasks
    dtype = compute_dtype(config.model.get("dtype", "float32"))
    return models.MultiTaskModel(tasks=tuple(objective_tasks), dtype=dtype)


def phase1_steps(config, steps_per_epoch: int) -> int:
    return int(config.train.frozen_epochs) * int(steps_per_epoch)


def backbone_frozen_at(step: int, phase1: int) -> bool:
    """The phase of a state follows from its step: the switch to phase 2 is applied as soon as
    the step count reaches ``phase1`` (before that state is evaluated or saved)."""
    return int(step) < int(phase1)


def create_train_state(
    config,
    rng: jax.Array,
    *,
    backbone_frozen: bool = True,
    model: nn.Module | None = None,
    tasks=None,
    steps_per_epoch: int = 0,
) -> TrainState:
    """A fresh state. ``tasks`` replaces config.experiment's task list (library use: other
    tasks); ``model`` replaces ``MultiTaskModel(tasks)`` (it must return {task name: output});
    ``steps_per_epoch`` tells epoch-based loss weightings (dwa) where epochs end."""

    objective = objective_from_config(config, steps_per_epoch, tasks)
    mtl_methods(objective)  # an unknown method or option fails here, before the models are built
    model = model if model is not None else build_model(config, objective.tasks)
    adversarial = objective.adversarial_task
    discriminator = adversarial.adversary.discriminator if adversarial is not None else None
    size = int(config.data.image_size)
    init_rng, d_rng, state_rng = jax.random.split(rng, 3)
    model_vars = _init(model, init_rng, size, 1, config.model.pretrained)
    params = {MODEL: model_vars["params"]}
    batch_stats = {MODEL: model_vars.get("batch_stats", {})}
    spec = optimizer_spec_from_config(config, backbone_frozen)
    # Jitted: op by op, Adam's zero moments compile one small program per parameter shape.
    opt_state = {MODEL: jax.jit(optim.model_tx(spec).init)(params[MODEL])}
    if discriminator is not None:
        d_vars = _init(discriminator, d_rng, size, 3, None)
        params[DISCRIMINATOR] = d_vars["params"]
        batch_stats[DISCRIMINATOR] = d_vars.get("batch_stats", {})
        opt_state[DISCRIMINATOR] = jax.jit(optim.discriminator_tx(spec).init)(params[DISCRIMINATOR])
    mtl_state = initial_mtl_state(objective)
    if config.train.get("early_stopping_patience") is not None:
        mtl_state["early_stopping"] = early_stopping_init(
            objective, params[MODEL], batch_stats[MODEL]
        )
    return TrainState(
        step=jnp.zeros((), jnp.int32),
        params=params,
        batch_stats=batch_stats,
        opt_state=opt_state,
        rng=state_rng,
        mtl=mtl_state,
        model=model,
        discriminator=discriminator,
        objective=objective,
        optimizer=spec,
    )


def _init(module, rng, size, in_channels, pretrained):
    """init_variables, compiled when no weights file is read (init op by op takes ~10 s on CPU)."""
    from mtcolor import models

    if pretrained is None:
        init = jax.jit(lambda r: models.init_variables(module, r, size, in_channels, None))
        if jax.default_backend() != "cpu" or isinstance(rng, jax.core.Tracer):
            return init(rng)  # (traced under jax.eval_shape when a checkpoint is restored)
        # It runs once, so compile for compile time: XLA:CPU at LLVM -O0 compiles the multi-task
        # model's init in 5 s instead of 15 s and runs it in 1.4 s instead of 0.2 s (demo config).
        options = {"xla_backend_optimization_level": 0}
        return init.lower(rng).compile(compiler_options=options)(rng)
    return models.init_variables(module, rng, size, in_channels, pretrained=pretrained)


def unfreeze_backbone(state: TrainState) -> TrainState:
    """Phase switch: Adam for the backbone from a fresh state, everything else carried over."""
    if not state.optimizer.backbone_frozen:
        return state
    new_opt, spec = optim.unfreeze_opt_state(
        state.opt_state[MODEL], state.params[MODEL], state.optimizer
    )
    opt_state = dict(state.opt_state)
    opt_state[MODEL] = new_opt
    return state.replace(opt_state=opt_state, optimizer=spec)
