"""The multi-task methods wired into the training step, on the real models at 32 px.

Checked against hand computations, not the code's own output: PCGrad's combined backbone gradient
against the formula applied to each task's separately computed gradient, the masked
classification loss against a numpy cross-entropy over the labelled rows only.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from experiments.configs import tiny
from mtcolor.train import state as state_lib
from mtcolor.train import steps
from mtcolor.train.optim import BACKBONE

SIZE, BATCH = 32, 4


def _batch(has_label=None):
    rng = np.random.default_rng(0)
    batch = {
        "L": jnp.asarray(rng.uniform(-1, 1, (BATCH, SIZE, SIZE, 1)), jnp.float32),
        "ab": jnp.asarray(rng.uniform(-0.4, 0.4, (BATCH, SIZE, SIZE, 2)), jnp.float32),
        "label": jnp.asarray([0, 1, 2, 3], jnp.int32),
    }
    if has_label is not None:
        batch["has_label"] = jnp.asarray(has_label, jnp.float32)
    return batch


def _state(**loss):
    config = tiny.get_config()
    for key, value in loss.items():
        config.loss[key] = value
    return state_lib.create_train_state(config, jax.random.PRNGKey(0), backbone_frozen=False)


def _flat(tree):
    return np.concatenate([np.ravel(x) for x in jax.tree.leaves(tree)]).astype(np.float64)


@pytest.fixture(scope="module")
def pcgrad_state():
    return _state(gradient="pcgrad")


def test_pcgrad_step_combines_the_backbone_gradients_of_each_task(pcgrad_state):
    state, batch, rng = pcgrad_state, _batch(), jax.random.PRNGKey(3)
    grads = jax.jit(
        lambda s: steps._model_gradients(s, steps._model_forward(s, batch, rng), batch, rng)[0]
    )(state)

    # Each task's gradient on its own (one jax.grad per task), weighted by the paper's weights.
    task_grad = jax.jit(
        jax.grad(lambda p, index: steps.task_losses_at(state, p, batch, rng)[0][index])
    )
    color, cls = task_grad(state.params["model"], 0), task_grad(state.params["model"], 1)
    cls = jax.tree.map(lambda g: 10.0 * g, cls)  # classification x10 (paper III-C)
    g1, g2 = _flat(color[BACKBONE]), _flat(cls[BACKBONE])
    # PCGrad (Yu et al. 2020, Alg. 1) for two tasks: each gradient loses its component along the
    # other's when they conflict (negative dot product); the update is the sum.
    dot = g1 @ g2
    assert dot < 0, "the test batch should make the two tasks conflict on the backbone"
    expected = (g1 - dot / (g2 @ g2) * g2) + (g2 - dot / (g1 @ g1) * g1)
    got = _flat(grads[BACKBONE])
    assert np.max(np.abs(got - expected)) < 1e-4 * np.max(np.abs(expected))
    assert np.max(np.abs(got - (g1 + g2))) > 1e-2 * np.max(np.abs(expected))  # it did project
    # Parameters only one task reaches get that task's (weighted) gradient unchanged.
    for name, task in (("decoder", color), ("head", cls)):
        np.testing.assert_allclose(
            _flat(grads[name]),
            _flat(task[name]),
            rtol=1e-5,
            atol=1e-6 * np.abs(_flat(task[name])).max(),
        )


def test_classification_loss_averages_over_labelled_examples_only(pcgrad_state):
    state, rng = pcgrad_state, jax.random.PRNGKey(3)
    batch = _batch(has_label=[1, 1, 0, 0])

    @jax.jit
    def losses_and_logits(s, b):
        outputs, _ = s.model.apply(
            s.model_variables, b["L"], train=True, rngs={"dropout": rng}, mutable=["batch_stats"]
        )
        logits = outputs["classification"]
        return steps.task_losses_at(s, s.params["model"], b, rng)[0], logits

    task_losses, logits = losses_and_logits(state, batch)
    logits = np.asarray(logits, np.float64)
    log_probs = logits - np.log(np.exp(logits).sum(1, keepdims=True))
    expected = -np.mean([log_probs[i, int(batch["label"][i])] for i in (0, 1)])
    assert abs(float(task_losses[1]) - expected) < 1e-5 * abs(expected)
    # Labels of the unlabeled rows are ignored.
    relabelled = dict(batch, label=jnp.asarray([0, 1, 4, 4], jnp.int32))
    assert float(losses_and_logits(state, relabelled)[0][1]) == float(task_losses[1])


def test_unknown_method_names_the_option():
    with pytest.raises(ValueError, match="gradient combination 'pcgard'"):
        _state(gradient="pcgard")
    with pytest.raises(ValueError, match="loss weighting 'kendall'"):
        _state(weighting="kendall")
