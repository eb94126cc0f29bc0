"""Output and loss precision: at least float32, never less precise than the computation.

Models may compute in bfloat16 (fast) or float64 (numerical checks, e.g. the sharding test that
separates float32 rounding from logic); outputs and loss terms are cast *up* to float32 so that
reductions over large maps keep their digits, but a float64 computation stays float64 instead of
being rounded down to float32 on its way to the loss.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def at_least_float32(x: jax.Array) -> jax.Array:
    """``x`` as float32 if it is a narrower float (bfloat16, float16), unchanged if wider."""
    return x.astype(jnp.promote_types(x.dtype, jnp.float32))


# config.model.dtype: the models' computation dtype. Parameters, optimizer states, BatchNorm
# statistics (flax computes them in float32 and keeps them in param_dtype), losses and the
# multi-task solvers stay float32 whatever is chosen; float64 is for numerical tests (x64 mode).
COMPUTE_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float64": jnp.float64}


def compute_dtype(name: str):
    """The jnp dtype of a ``config.model.dtype`` name. float64 outside JAX's x64 mode is float32,
    what JAX computes then anyway (a float64 run loaded for inference in a float32 process), without
    its warning at every layer; training a float64 config there is a config problem
    (mtcolor.train.validation)."""
    if name not in COMPUTE_DTYPES:
        raise ValueError(f"model.dtype must be one of {tuple(COMPUTE_DTYPES)}, got {name!r}")
    if name == "float64" and not jax.config.jax_enable_x64:
        return jnp.float32
    return COMPUTE_DTYPES[name]
