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
