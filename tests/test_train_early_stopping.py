"""Task-specific early stopping (config.train.early_stopping_patience), on small hand-made trees:
the bookkeeping and the head restore are host-side and the freeze is a pure function, so no model
needs compiling here (tests/test_experiments.py-style runs cover the loop)."""

import jax
import jax.numpy as jnp
import numpy as np

from mtcolor import tasks
from mtcolor.train import optim, steps
from mtcolor.train import state as state_lib


def _state(decoder_value=0.0, head_value=0.0, patience=2):
    params = {
        "backbone": {"w": jnp.zeros((3,))},
        "decoder": {"w": jnp.full((2, 2), decoder_value)},
        "head": {"w": jnp.full((4,), head_value)},
    }
    stats = {"decoder": {"mean": jnp.zeros((2,))}}
    objective = state_lib.Objective(tasks.experiment_tasks("multitask"), "multitask")
    return state_lib.TrainState(
        step=jnp.zeros((), jnp.int32),
        params={"model": params},
        batch_stats={"model": stats},
        opt_state={},
        rng=jax.random.PRNGKey(0),
        mtl={"early_stopping": state_lib.early_stopping_init(objective, params, stats)},
        model=None,
        discriminator=None,
        objective=objective,
        optimizer=optim.OptimizerSpec(),
    )


def _set_heads(state, decoder_value, head_value):
    model = dict(state.params["model"])
    model["decoder"] = {"w": jnp.full((2, 2), decoder_value)}
    model["head"] = {"w": jnp.full((4,), head_value)}
    return state.replace(params={"model": model})


def test_a_task_stops_after_patience_evaluations_and_gets_its_best_head_back():
    state = _state()
    # (step, decoder value, head value, val l1, val loss_cls): classification is best at step 20
    # and then gets worse twice; colorization keeps improving.
    evaluations = [(10, 1.0, 1.0, 0.30, 1.5), (20, 2.0, 2.0, 0.25, 1.0), (30, 3.0, 3.0, 0.20, 1.2)]
    for step, dec, head, l1, cls in evaluations:
        state = _set_heads(state, dec, head)
        state, stopped = state_lib.early_stopping_update(
            state, {"l1": l1, "loss_cls": cls}, step, patience=2
        )
        assert stopped == []
        assert state_lib.active_tasks(state) == ("colorization", "classification")
    state = _set_heads(state, 4.0, 4.0)
    state, stopped = state_lib.early_stopping_update(state, {"l1": 0.15, "loss_cls": 1.3}, 40, 2)
    assert stopped == ["classification"]
    assert state_lib.active_tasks(state) == ("colorization",)
    # The class head is back at its step-20 weights; the decoder keeps its current ones.
    np.testing.assert_array_equal(state.params["model"]["head"]["w"], np.full((4,), 2.0))
    np.testing.assert_array_equal(state.params["model"]["decoder"]["w"], np.full((2, 2), 4.0))
    es = jax.device_get(state.mtl["early_stopping"])
    assert list(es["best_step"]) == [40, 20]
    assert es["best_loss"][1] == np.float32(1.0)
    # A stopped task is never evaluated again, even if its loss would now improve.
    state, stopped = state_lib.early_stopping_update(state, {"l1": 0.1, "loss_cls": 0.1}, 50, 2)
    assert stopped == [] and state_lib.active_tasks(state) == ("colorization",)
    np.testing.assert_array_equal(state.params["model"]["head"]["w"], np.full((4,), 2.0))


def test_a_stopped_head_gets_no_update_and_keeps_its_statistics():
    state = _state()
    es = dict(state.mtl["early_stopping"])
    es["active"] = jnp.asarray([0.0, 1.0])  # colorization stopped
    state = state.replace(mtl={"early_stopping": es})
    updates = {
        name: jax.tree.map(jnp.ones_like, tree) for name, tree in state.params["model"].items()
    }
    new_stats = {"decoder": {"mean": jnp.full((2,), 7.0)}}
    updates, new_stats = steps._freeze_stopped_heads(state, updates, new_stats)
    assert float(jnp.abs(updates["decoder"]["w"]).max()) == 0.0
    assert float(updates["head"]["w"].min()) == 1.0 and float(updates["backbone"]["w"].min()) == 1.0
    np.testing.assert_array_equal(new_stats["decoder"]["mean"], np.zeros((2,)))
    # The stopped task's loss share is 0.
    np.testing.assert_array_equal(steps._active(state), [0.0, 1.0])


def test_report_names_the_stopped_task_and_its_best_step(tmp_path):
    from mtcolor.eval import report

    summary = {
        "early_stopping": {
            "colorization": {"active": True, "best_val_loss": 0.18, "best_step": 6},
            "classification": {"active": False, "best_val_loss": 1.61, "best_step": 3},
        }
    }
    run = report.Run(tmp_path, "multitask", {}, [], summary, [])
    lines = report._early_stopping_lines(run)
    assert lines == [
        "  - colorization: training to the end, best validation loss 0.18 at step 6",
        "  - classification: stopped early, best validation loss 1.61 at step 3 "
        "(its head kept from that step)",
    ]


def test_fresh_states_share_no_buffers_with_the_cached_methods():
    # The steps donate the state: a method state shared between two train states (the methods are
    # cached per objective) would be deleted under the second one (seen as "Array has been
    # deleted" when a run resumed in the same process).
    objective = state_lib.Objective(
        tasks.experiment_tasks("multitask"),
        "multitask",
        weighting="uncertainty",
        gradient="nash_mtl",
    )
    first = state_lib.initial_mtl_state(objective)
    for leaf in jax.tree.leaves(first):
        leaf.delete()  # what donating the first state does
    second = state_lib.initial_mtl_state(objective)
    assert jax.tree.leaves(second) and not any(x.is_deleted() for x in jax.tree.leaves(second))
    fixed = state_lib.Objective(tasks.experiment_tasks("multitask"), "multitask")
    for leaf in jax.tree.leaves(state_lib.initial_mtl_state(fixed)):
        leaf.delete()
    assert not any(x.is_deleted() for x in jax.tree.leaves(state_lib.initial_mtl_state(fixed)))
