"""Which leaves each step changes, on the real models at 32 px (one compile per step kind)."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mtcolor.train import config as config_lib
from mtcolor.train import state as state_lib
from mtcolor.train import steps

SIZE, BATCH = 32, 4


def _batch(seed=0):
  rng = np.random.default_rng(seed)
  return {"L": jnp.asarray(rng.uniform(-1, 1, (BATCH, SIZE, SIZE, 1)), jnp.float32),
          "ab": jnp.asarray(rng.uniform(-0.4, 0.4, (BATCH, SIZE, SIZE, 2)), jnp.float32),
          "label": jnp.asarray([0, 1, 2, 3], jnp.int32)}


def _host(tree):
  return jax.tree.map(np.array, jax.device_get(tree))


def _leaves(tree):
  return dict(jax.tree_util.tree_flatten_with_path(tree)[0])


def _changed(before, after):
  """{path: changed?} over the leaves of two trees of the same structure."""
  b, a = _leaves(before), _leaves(after)
  assert b.keys() == a.keys()
  return {k: not np.array_equal(b[k], a[k]) for k in b}


def _all_equal(before, after):
  return not any(_changed(before, after).values())


def _all_changed(before, after):
  flags = _changed(before, after)
  return all(flags.values()), [jax.tree_util.keystr(k) for k, v in flags.items() if not v]


@pytest.fixture(scope="module")
def multitask_state():
  config = config_lib.base_config("multitask")
  config.image_size, config.batch_size = SIZE, BATCH
  return state_lib.create_train_state(config, jax.random.PRNGKey(0), backbone_frozen=True)


@pytest.fixture(scope="module")
def phase1_update(multitask_state):
  before = _host(multitask_state)
  after, metrics = steps.jit_steps().generator_step(
      jax.tree.map(jnp.copy, multitask_state), _batch(), jax.random.PRNGKey(1))
  return before, after, metrics


def test_phase1_generator_step_changes_exactly_the_trainable_leaves(phase1_update):
  before, after, metrics = phase1_update
  after_h = _host(after)
  model_b, model_a = before.params["model"], after_h.params["model"]
  # Frozen backbone: weights and BN running statistics bitwise unchanged.
  assert _all_equal(model_b["backbone"], model_a["backbone"])
  assert _all_equal(before.batch_stats["model"]["backbone"], after_h.batch_stats["model"]["backbone"])
  # Decoder and head: every parameter moved; the decoder's BN statistics moved.
  for name in ("decoder", "head"):
    ok, unchanged = _all_changed(model_b[name], model_a[name])
    assert ok, f"{name} leaves not updated: {unchanged}"
  ok, unchanged = _all_changed(before.batch_stats["model"]["decoder"],
                               after_h.batch_stats["model"]["decoder"])
  assert ok, unchanged
  # The G step leaves the discriminator alone (params and BN statistics).
  assert _all_equal(before.params["discriminator"], after_h.params["discriminator"])
  assert _all_equal(before.batch_stats["discriminator"], after_h.batch_stats["discriminator"])
  assert _all_equal(before.opt_state["discriminator"], after_h.opt_state["discriminator"])
  assert int(after_h.step) == 1
  assert set(metrics) >= {"l1", "loss_l1", "loss_gan", "loss_g", "loss_cls", "accuracy"}
  assert float(metrics["loss_l1"]) == pytest.approx(100 * float(metrics["l1"]), rel=1e-6)


def test_frozen_backbone_carries_no_adam_state(multitask_state):
  inner = multitask_state.opt_state["model"].inner_states
  assert jax.tree_util.tree_leaves(inner["backbone"]) == []
  rest_leaves = _leaves(inner["rest"])
  assert not any("'backbone'" in jax.tree_util.keystr(k) for k in rest_leaves)
  assert any("'decoder'" in jax.tree_util.keystr(k) for k in rest_leaves)


def test_phase2_trains_backbone_and_keeps_rest_adam_state(phase1_update):
  _, after1, _ = phase1_update
  state = state_lib.unfreeze_backbone(jax.tree.map(jnp.copy, after1))
  assert not state.optimizer.backbone_frozen
  rest_before = _host(state.opt_state["model"].inner_states["rest"])
  assert int(rest_before.inner_state[0].count) == 1  # carried over from phase 1
  backbone_opt = state.opt_state["model"].inner_states["backbone"].inner_state[0]
  assert int(backbone_opt.count) == 0  # fresh Adam for the backbone
  before = _host(state)
  after, _ = steps.jit_steps().generator_step(state, _batch(1), jax.random.PRNGKey(2))
  after = _host(after)
  ok, unchanged = _all_changed(before.params["model"]["backbone"], after.params["model"]["backbone"])
  assert ok, f"backbone leaves not updated in phase 2: {unchanged}"
  ok, unchanged = _all_changed(before.batch_stats["model"]["backbone"],
                               after.batch_stats["model"]["backbone"])
  assert ok, unchanged
  assert int(after.opt_state["model"].inner_states["rest"].inner_state[0].count) == 2


def test_discriminator_step_changes_only_the_discriminator(multitask_state):
  before = _host(multitask_state)
  after, metrics = steps.jit_steps().discriminator_step(
      jax.tree.map(jnp.copy, multitask_state), _batch(), jax.random.PRNGKey(1))
  after = _host(after)
  for part in ("params", "batch_stats", "opt_state"):
    assert _all_equal(getattr(before, part)["model"], getattr(after, part)["model"]), part
  ok, unchanged = _all_changed(before.params["discriminator"], after.params["discriminator"])
  assert ok, unchanged
  ok, unchanged = _all_changed(before.batch_stats["discriminator"], after.batch_stats["discriminator"])
  assert ok, unchanged
  assert int(after.step) == 0  # an iteration counts once, at its G update
  assert float(metrics["loss_d"]) == pytest.approx(
      0.5 * (float(metrics["loss_d_real"]) + float(metrics["loss_d_fake"])), rel=1e-6)
  assert 0.0 < float(metrics["d_real"]) < 1.0 and 0.0 < float(metrics["d_fake"]) < 1.0


def test_update_frozen_bn_stats_option_moves_only_the_statistics(multitask_state):
  state = multitask_state.replace(
      optimizer=dataclasses.replace(multitask_state.optimizer, update_frozen_bn_stats=True))
  before = _host(state)
  after, _ = steps.jit_steps().generator_step(jax.tree.map(jnp.copy, state), _batch(),
                                              jax.random.PRNGKey(1))
  after = _host(after)
  assert _all_equal(before.params["model"]["backbone"], after.params["model"]["backbone"])
  ok, unchanged = _all_changed(before.batch_stats["model"]["backbone"],
                               after.batch_stats["model"]["backbone"])
  assert ok, unchanged


def test_eval_step_masks_padded_rows(phase1_update):
  _, state, _ = phase1_update
  batch = _batch(3)
  full = jax.device_get(steps.jit_steps().eval_step(state, batch))
  np.testing.assert_array_equal(full["mask"], np.ones(BATCH))
  padded = dict(batch, mask=jnp.asarray([1.0, 1.0, 0.0, 0.0]))
  out = jax.device_get(steps.jit_steps().eval_step(state, padded))
  np.testing.assert_array_equal(out["mask"], [1, 1, 0, 0])
  from mtcolor.train import metrics as metrics_lib
  names = metrics_lib.metric_names(state.objective)
  value = metrics_lib.compute(metrics_lib.from_step_outputs(names, out))["l1"]
  assert value == pytest.approx(float(np.mean(full["l1"][:2])), rel=1e-6)
