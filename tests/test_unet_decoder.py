"""UNetDecoder (mtcolor/models/unet.py): shapes, hand-counted parameters, skips in use, jit,
train mode, and training with stop_gradient'ed stages (the frozen-backbone phase).

Kept fast on a 2-core CPU, where XLA compilation is nearly all of the cost:
  * two compiled programs serve every test (an eval forward at 64 px, one train-mode
    value-and-grad at 32 px) plus a small one for Adam;
  * they are compiled with XLA's backend optimisation off (`FAST_COMPILE`): LLVM's passes were
    most of the compile (train-mode gradient: about 19 CPU-s with them, 5 to 7 without, measured
    here) and are not what these tests are about; the results are the same (same loss to the
    last digit at 64 px), and run time at these sizes barely changes;
  * inputs come from numpy, and variables are traced with `init` under `jax.eval_shape` (so `init`
    itself runs) but filled from numpy with the pix2pix scheme: compiling a real `init`'s
    per-parameter threefry draws costs more than the decoder.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from mtcolor.models import ResNet18, UNetDecoder

# (stem, layer1, layer2, layer3, layer4) of ResNet18(return_stages=True): (downscale, width).
STAGE_LAYOUT = ((2, 64), (4, 64), (8, 128), (16, 256), (32, 512))

FAST_COMPILE = {"xla_backend_optimization_level": 0}

DECODER = UNetDecoder()


def fast_jit(fn):
    """``jax.jit(fn)``, compiled with `FAST_COMPILE`, once per input signature."""
    jitted = jax.jit(fn)
    compiled = {}

    def call(*args):
        leaves, tree = jax.tree_util.tree_flatten(args)
        key = (tree, tuple(jax.typeof(leaf) for leaf in leaves))
        if key not in compiled:
            compiled[key] = jitted.lower(*args).compile(compiler_options=FAST_COMPILE)
        return compiled[key](*args)

    return call


eval_apply = fast_jit(DECODER.apply)


@fast_jit
def train_grads(params, batch_stats, features, stages, target, dropout_key, frozen):
    """Train-mode L1 loss and its gradients w.r.t. (params, stages), with ab and the updated
    batch statistics as aux. ``frozen`` (traced, so one compilation serves both cases) passes
    the stages through ``jax.lax.stop_gradient``, as a frozen backbone would."""

    def loss_fn(params, stages):
        stages = tuple(jnp.where(frozen, jax.lax.stop_gradient(s), s) for s in stages)
        ab, updates = DECODER.apply(
            {"params": params, "batch_stats": batch_stats},
            features,
            stages,
            train=True,
            rngs={"dropout": dropout_key},
            mutable=["batch_stats"],
        )
        return jnp.mean(jnp.abs(ab - target)), (ab, updates["batch_stats"])

    return jax.value_and_grad(loss_fn, argnums=(0, 1), has_aux=True)(params, stages)


def fake_backbone(seed, size, batch=2):
    """Random nonnegative (post-ReLU-like) maps shaped like ResNet18's features and stages."""
    rng = np.random.default_rng(seed)
    stages = tuple(
        jnp.asarray(np.maximum(rng.normal(size=(batch, size // s, size // s, c)), 0), jnp.float32)
        for s, c in STAGE_LAYOUT
    )
    return stages[-1], stages


def decoder_variables(features, stages, seed=0):
    """Variables with the structure `init` returns (traced, not run), filled like pix2pix's
    init: kernels N(0, 0.02), BN scales N(1, 0.02), biases 0, running mean 0 and var 1."""
    rng = np.random.default_rng(seed)

    def fill(path, leaf):
        name = path[-1].key
        if name == "kernel":
            value = rng.normal(0.0, 0.02, leaf.shape)
        elif name == "scale":
            value = 1.0 + rng.normal(0.0, 0.02, leaf.shape)
        elif name == "var":
            value = np.ones(leaf.shape)
        else:  # bias, mean
            value = np.zeros(leaf.shape)
        return jnp.asarray(value, leaf.dtype)

    shapes = jax.eval_shape(lambda: DECODER.init(jax.random.key(0), features, stages))
    return jax.tree_util.tree_map_with_path(fill, shapes)


def count(tree):
    return sum(int(np.prod(x.shape)) for x in jax.tree_util.tree_leaves(tree))


def test_layout_is_resnet18s():
    """STAGE_LAYOUT above is what ResNet18(return_stages=True) really returns."""
    x = jnp.zeros((1, 64, 64, 1))
    model = ResNet18(1)
    features, stages = jax.eval_shape(
        lambda: model.apply(model.init(jax.random.key(0), x), x, return_stages=True)
    )
    assert [s.shape for s in stages] == [(1, 64 // s, 64 // s, c) for s, c in STAGE_LAYOUT]
    assert features.shape == stages[-1].shape


@pytest.mark.parametrize("height, width", [(32, 32), (64, 64), (32, 96)])
def test_output_shape_any_multiple_of_32(height, width):
    """Shapes only (traced, nothing compiled); values are checked at 64 px (eval) and 32 px
    (train) below."""
    stages = tuple(
        jax.ShapeDtypeStruct((2, height // s, width // s, c), jnp.float32) for s, c in STAGE_LAYOUT
    )
    features = stages[-1]
    variables = jax.eval_shape(DECODER.init, jax.random.key(0), features, stages)
    key = jax.random.key(0)
    outputs = (
        jax.eval_shape(DECODER.apply, variables, features, stages),
        jax.eval_shape(DECODER.apply, variables, features, stages[:4]),  # without layer4
        jax.eval_shape(
            lambda v, f, s, k: DECODER.apply(
                v, f, s, train=True, rngs={"dropout": k}, mutable=["batch_stats"]
            )[0],
            variables,
            features,
            stages,
            key,
        ),
    )
    for out in outputs:
        assert out.shape == (2, height, width, 2) and out.dtype == jnp.float32


def test_eval_mode_64px_shape_range_and_skips():
    features, stages = fake_backbone(64, 64)
    variables = decoder_variables(features, stages)
    ab = eval_apply(variables, features, stages)
    assert ab.shape == (2, 64, 64, 2) and ab.dtype == jnp.float32
    assert bool(jnp.all(jnp.abs(ab) <= 1.0)) and bool(jnp.all(jnp.isfinite(ab)))
    scale = float(jnp.max(jnp.abs(ab)))
    assert scale > 0
    rng = np.random.default_rng(1)
    for index in range(4):  # stem, layer1, layer2, layer3: perturbing any one changes ab
        bumped = list(stages)
        bumped[index] = stages[index] + rng.normal(size=stages[index].shape).astype(np.float32)
        changed = eval_apply(variables, features, tuple(bumped))
        assert float(jnp.max(jnp.abs(changed - ab))) > 1e-2 * scale, index
    # layer4 is not a skip: only `features` feeds the first block
    bumped = stages[:4] + (stages[4] + 1.0,)
    np.testing.assert_array_equal(eval_apply(variables, features, bumped), ab)


def test_parameter_count_by_hand():
    features, stages = fake_backbone(0, 32, batch=1)
    params = jax.eval_shape(lambda: DECODER.init(jax.random.key(0), features, stages))["params"]
    expected = (
        4 * 4 * 512 * 256  # up0_convT: layer4 512 -> 256 (no bias)
        + 2 * 256  # up0_bn
        + 4 * 4 * (256 + 256) * 128  # up1_convT: [up0 256, layer3 256] -> 128
        + 2 * 128  # up1_bn
        + 4 * 4 * (128 + 128) * 64  # up2_convT: [up1 128, layer2 128] -> 64
        + 2 * 64  # up2_bn
        + 4 * 4 * (64 + 64) * 64  # up3_convT: [up2 64, layer1 64] -> 64
        + 2 * 64  # up3_bn
        + 4 * 4 * (64 + 64) * 32  # up4_convT: [up3 64, stem 64] -> 32
        + 2 * 32  # up4_bn
        + 3 * 3 * 32 * 2  # to_ab kernel
        + 2  # to_ab bias
    )
    assert expected == 3_606_146
    assert count(params) == expected
    assert params["up1_convT"]["kernel"].shape == (4, 4, 128, 512)  # flax (kh, kw, out, in)
    assert params["up4_convT"]["kernel"].shape == (4, 4, 32, 128)


def test_dtype_conventions():
    features, stages = fake_backbone(0, 32)
    half = UNetDecoder(dtype=jnp.bfloat16)
    variables = jax.eval_shape(lambda: half.init(jax.random.key(0), features, stages))
    assert {x.dtype for x in jax.tree_util.tree_leaves(variables)} == {jnp.dtype(jnp.float32)}
    assert jax.eval_shape(half.apply, variables, features, stages).dtype == jnp.float32
    # the four skip concatenations ([x, skip] at /16, /8, /4, /2) run in bfloat16
    jaxpr = jax.make_jaxpr(half.apply)(variables, features, stages)
    skip_concats = {(2, 2, 512), (4, 4, 256), (8, 8, 128), (16, 16, 128)}
    concats = [e.outvars[0].aval for e in jaxpr.jaxpr.eqns if e.primitive.name == "concatenate"]
    concats = [a for a in concats if a.shape[1:] in skip_concats]
    assert {a.shape[1:] for a in concats} == skip_concats and len(concats) == 4
    assert all(a.dtype == jnp.bfloat16 for a in concats)


def test_train_mode_32px_dropout_batch_stats_and_skip_gradients():
    features, stages = fake_backbone(32, 32)
    variables = decoder_variables(features, stages)
    target = jnp.zeros((2, 32, 32, 2))
    args = (variables["params"], variables["batch_stats"], features, stages, target)
    (_, (ab1, stats)), (param_grads, stage_grads) = train_grads(*args, jax.random.key(5), False)
    (_, (ab2, _)), _ = train_grads(*args, jax.random.key(6), False)
    assert ab1.shape == (2, 32, 32, 2) and ab1.dtype == jnp.float32
    assert bool(jnp.all(jnp.abs(ab1) <= 1.0)) and bool(jnp.all(jnp.isfinite(ab1)))
    assert float(jnp.max(jnp.abs(ab1 - ab2))) > 1e-3  # other dropout masks
    old = jax.tree_util.tree_leaves(variables["batch_stats"])
    new = jax.tree_util.tree_leaves(stats)
    assert len(new) == 2 * 5 and all(not np.array_equal(a, b) for a, b in zip(old, new))
    assert all(np.any(g) for g in jax.tree_util.tree_leaves(param_grads))
    for index in range(4):  # the loss depends on every skip
        assert float(jnp.max(jnp.abs(stage_grads[index]))) > 0, index
    np.testing.assert_array_equal(stage_grads[4], 0)  # layer4 comes in as `features` only
    with pytest.raises(Exception, match="dropout"):  # train=True needs a dropout rng
        jax.eval_shape(
            lambda: DECODER.apply(variables, features, stages, train=True, mutable=["batch_stats"])
        )


def test_mismatched_skip_is_refused():
    features, stages = fake_backbone(0, 32)

    def init(stages):
        return jax.eval_shape(lambda: DECODER.init(jax.random.key(0), features, stages))

    with pytest.raises(ValueError, match="layer3"):
        init((stages[0], stages[1], stages[2], stages[2]))
    with pytest.raises(ValueError, match="stages"):
        init(stages[:3])


def test_decoder_trains_on_stop_gradient_stages():
    """The frozen-backbone phase: no gradient reaches the stages, the decoder still learns."""
    features, stages = fake_backbone(32, 32)  # the shapes of the train-mode test: no recompile
    variables = decoder_variables(features, stages)
    rng = np.random.default_rng(7)
    target = jnp.asarray(0.5 * np.tanh(rng.normal(size=(2, 32, 32, 2))), jnp.float32)
    dropout_key = jax.random.key(9)  # one mask throughout: the loss is a fixed function
    optimizer = optax.adam(1e-3)

    @fast_jit
    def adam_step(params, grads, opt_state):
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state

    params, batch_stats = variables["params"], variables["batch_stats"]
    opt_state = optimizer.init(params)
    losses = []
    for step in range(10):
        (loss, (_, batch_stats)), (grads, stage_grads) = train_grads(
            params, batch_stats, features, stages, target, dropout_key, True
        )
        if step == 0:
            assert all(not np.any(g) for g in stage_grads)
            assert all(np.any(g) for g in jax.tree_util.tree_leaves(grads))
        params, opt_state = adam_step(params, grads, opt_state)
        losses.append(float(loss))
    assert losses[-1] < 0.7 * losses[0], losses
