"""Mixed precision (config.model.dtype = "bfloat16"): the models compute in bfloat16 while
parameters, optimizer states, BatchNorm statistics and losses stay float32."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from experiments.configs import tiny
from mtcolor.train import state as state_lib
from mtcolor.train import steps


def _config(dtype, size=32, batch=4):
    config = tiny.get_config()
    config.image_size, config.batch_size = size, batch
    config.model.dtype = dtype
    return config


def _matmul_input_dtypes(fn, *args):
    """The operand dtypes of every convolution and matrix product in ``fn``'s jaxpr (nested
    jaxprs included): models/conv.py runs some convolutions as matrix products."""
    found = []

    def walk(jaxpr):
        for eqn in jaxpr.eqns:
            if eqn.primitive.name in ("conv_general_dilated", "dot_general"):
                found.append(tuple(str(v.aval.dtype) for v in eqn.invars))
            for param in eqn.params.values():
                # A cond's branches come as a tuple (the decoder's per-backend forms when they
                # differ, lax.platform_dependent); each branch must compute in the configured dtype.
                for inner in param if isinstance(param, tuple) else (param,):
                    if hasattr(inner, "jaxpr"):
                        walk(inner.jaxpr if hasattr(inner.jaxpr, "eqns") else inner.jaxpr.jaxpr)

    walk(jax.make_jaxpr(fn)(*args).jaxpr)
    return found


def test_unknown_dtype_names_the_option():
    with pytest.raises(ValueError, match="model.dtype"):
        state_lib.build_model(_config("float16"))


def test_float64_needs_x64_mode_to_train_and_loads_as_float32_without_it():
    """A float64 config trains only in JAX's x64 mode (JAX_ENABLE_X64=1); without it JAX would
    compute in float32 and warn at every layer. A float64 run loaded in a float32 process (for
    inference) builds float32 models, which is what JAX computes there."""
    import warnings

    from mtcolor.train import validation

    config = _config("float64")
    [problem] = validation.config_problems(config, device_count=1)
    assert problem.startswith("--config.model.dtype='float64'") and "JAX_ENABLE_X64=1" in problem
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # "Explicitly requested dtype float64 ... not available"
        model = state_lib.build_model(config)
        L = jnp.zeros((1, 32, 32, 1))  # noqa: N806
        jax.eval_shape(lambda key: model.init(key, L, train=False), jax.random.PRNGKey(0))
    assert model.dtype == jnp.float32
    with jax.enable_x64(True):
        assert validation.config_problems(config, device_count=1) == []
        assert state_lib.build_model(config).dtype == jnp.float64


@pytest.mark.parametrize("dtype, expected", [("float32", "float32"), ("bfloat16", "bfloat16")])
def test_every_convolution_runs_in_the_configured_dtype(dtype, expected):
    config = _config(dtype)
    state = state_lib.create_train_state(config, jax.random.PRNGKey(0), backbone_frozen=False)
    L = jnp.zeros((4, 32, 32, 1), jnp.float32)
    model_vars = {"params": state.params["model"], "batch_stats": state.batch_stats["model"]}
    convs = _matmul_input_dtypes(lambda v, x: state.model.apply(v, x, train=False), model_vars, L)
    # ResNet-18: 20 convolutions (conv1, 16 in the blocks, 3 downsamples); decoder: 5 transposed
    # + to_ab; class head: 2 dense layers.
    assert len(convs) >= 28, len(convs)
    assert set(convs) == {(expected, expected)}
    d_vars = {
        "params": state.params["discriminator"],
        "batch_stats": state.batch_stats["discriminator"],
    }
    x = jnp.zeros((4, 32, 32, 3), jnp.float32)
    d_convs = _matmul_input_dtypes(
        lambda v, x: state.discriminator.apply(v, x, train=False), d_vars, x
    )
    # Five convolutions; the last two, on the 4x4 and 3x3 maps of a 32 px input, are im2col
    # matmuls whose columns come from a tap-selection matmul of their own (models/conv.py).
    assert len(d_convs) == 5 + 2 and set(d_convs) == {(expected, expected)}


def test_bfloat16_outputs_within_tolerance_of_float32():
    """Same float32 weights, train-mode forward (batch statistics, the same dropout masks) at
    64 px, batch 16. Measured: mean |difference| is about 4 % of the mean |output| for ab and 3 %
    for the logits (bfloat16 keeps 8 significant bits, and the error grows over the ~25 layers);
    the bound is 10 %, and the outputs come back as float32."""
    config32, config16 = _config("float32", 64, 16), _config("bfloat16", 64, 16)
    model32, model16 = state_lib.build_model(config32), state_lib.build_model(config16)
    state = state_lib.create_train_state(config32, jax.random.PRNGKey(0), backbone_frozen=False)
    variables = {"params": state.params["model"], "batch_stats": state.batch_stats["model"]}
    L = np.random.default_rng(0).uniform(-1, 1, (16, 64, 64, 1)).astype(np.float32)

    def forward(model):
        out, _ = model.apply(
            variables,
            L,
            train=True,
            rngs={"dropout": jax.random.PRNGKey(3)},
            mutable=["batch_stats"],
        )
        return out

    out32, out16 = forward(model32), forward(model16)
    for name in ("colorization", "classification"):
        assert out16[name].dtype == jnp.float32, name
        a, b = np.asarray(out32[name]), np.asarray(out16[name])
        relative = np.abs(a - b).mean() / np.abs(a).mean()
        assert 1e-4 < relative < 0.1, (name, relative)  # > 1e-4: it did compute in bfloat16


def test_bfloat16_train_step_keeps_state_and_losses_float32():
    config = _config("bfloat16")
    state = state_lib.create_train_state(config, jax.random.PRNGKey(0), backbone_frozen=False)
    rng = np.random.default_rng(0)
    batch = {
        "L": rng.uniform(-1, 1, (4, 32, 32, 1)).astype(np.float32),
        "ab": rng.uniform(-0.4, 0.4, (4, 32, 32, 2)).astype(np.float32),
        "label": np.asarray([0, 1, 2, 3], np.int32),
    }
    new_state, metrics = jax.jit(steps.train_step)(state, batch)
    for part in ("params", "batch_stats", "opt_state"):
        dtypes = {
            leaf.dtype
            for leaf in jax.tree.leaves(getattr(new_state, part))
            if jnp.issubdtype(leaf.dtype, jnp.floating)
        }
        assert dtypes == {jnp.dtype(jnp.float32)}, part
    for name, value in metrics.items():
        assert value.dtype == jnp.float32 and np.isfinite(float(value)), name
    moved = jax.tree.map(lambda a, b: bool(jnp.any(a != b)), state.params, new_state.params)
    assert all(jax.tree.leaves(moved["model"]["backbone"]))


def test_a_float64_step_returns_the_types_it_takes():
    """The float64 tests (tests/test_multihost.py, tests/test_train_sharding.py) compute in
    float64 over float32 parameters. flax's BatchNorm update returned float64 statistics, so the
    second step saw other input types and compiled the whole step again (and evaluation once per
    phase). A step returns the shapes and dtypes it takes, so every step of a phase reuses one
    compilation. The classifier: the cheapest model whose BatchNorm statistics train."""
    config = _config("float64")
    config.experiment = "classification"
    with jax.enable_x64(True):
        state = state_lib.create_train_state(config, jax.random.PRNGKey(0), backbone_frozen=False)
        rng = np.random.default_rng(0)
        batch = {
            "L": rng.uniform(-1, 1, (4, 32, 32, 1)).astype(np.float32),
            "label": np.asarray([0, 1, 2, 3], np.int32),
        }
        new_state, _ = jax.jit(steps.train_step)(state, batch)

    def types(tree):
        return jax.tree.map(lambda leaf: (leaf.shape, jnp.dtype(leaf.dtype)), tree)

    assert types(new_state.batch_stats) == types(state.batch_stats)
    assert types(new_state.params) == types(state.params)
    assert {
        dtype
        for _, dtype in jax.tree.leaves(
            types(state.batch_stats), is_leaf=lambda x: isinstance(x, tuple)
        )
    } == {jnp.dtype(jnp.float32)}
