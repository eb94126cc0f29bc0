"""Max pooling whose gradient XLA:CPU runs as fast as its forward.

flax's ``nn.max_pool`` is ``lax.reduce_window``, whose gradient is XLA's select-and-scatter. XLA:CPU
rewrites that into a reduce-window over the input and four int32 index maps the size of the padded
input, then a scatter: the ResNet stem's 3x3/2 pool of a 128 px batch of 16 (a 16x64x64x64 map)
took 63.8 ms forward + backward, 28 times its forward, where torch's ``max_pool2d`` backward took
1.3 ms (2026-11-26, 2-core AMD EPYC; about 5 % of the multi-task iteration at 128 px).

:func:`max_pool` computes the same pool on CPU as an element-wise maximum over the window's strided
slices, remembering which tap won (int8), and its gradient as one sum of the output gradient
placed back at each tap's positions, masked to the pixels that tap won: element-wise work XLA fuses,
5.5 ms forward + backward for that map. Ties go to the first tap in row-major window order, as
select-and-scatter (``ge``) and torch's ``max_pool2d`` do, so the gradient is the same, not just
equal almost everywhere. Other backends keep ``nn.max_pool`` (chosen at lowering time).
"""

from __future__ import annotations

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp

from mtcolor.models.conv import window_taps


def max_pool(x, window_shape, strides, padding):
    """flax's ``nn.max_pool`` for NHWC ``x`` with explicit ``padding`` ((top, bottom), (left,
    right)), padded with -inf; on CPU in the form above."""
    window_shape, strides = tuple(window_shape), tuple(strides)
    padding = tuple(map(tuple, padding))
    return jax.lax.platform_dependent(
        x,
        cpu=lambda x: _max_pool_taps(x, window_shape, strides, padding),
        default=lambda x: nn.max_pool(x, window_shape, strides, padding),
    )


@functools.partial(jax.custom_vjp, nondiff_argnums=(1, 2, 3))
def _max_pool_taps(x, window_shape, strides, padding):
    return _forward(x, window_shape, strides, padding)[0]


def _taps(x, window_shape, strides, padding):
    """The window's taps as strided slices of the -inf padded input, in row-major window order."""
    padded = jnp.pad(x, ((0, 0), *padding, (0, 0)), constant_values=-jnp.inf)
    return window_taps(padded, window_shape, strides)


def _forward(x, window_shape, strides, padding):
    taps = _taps(x, window_shape, strides, padding)
    pooled, winner = taps[0], jnp.zeros(taps[0].shape, jnp.int8)
    for tap_index, tap in enumerate(taps[1:], start=1):
        larger = tap > pooled  # strict: an equal later tap does not take a tie
        winner = jnp.where(larger, jnp.int8(tap_index), winner)
        pooled = jnp.where(larger, tap, pooled)
    # The input itself is a residual only for its shape (static; XLA drops the buffer).
    return pooled, (winner, x)


def _backward(window_shape, strides, padding, residuals, out_grad):
    winner, x = residuals
    (kh, kw), (sy, sx) = window_shape, strides
    (top, bottom), (left, right) = padding
    n, h, w, c = x.shape
    padded_h, padded_w = top + h + bottom, left + w + right
    _, out_h, out_w, _ = out_grad.shape
    zero = jnp.zeros((), out_grad.dtype)
    padded_grad = jnp.zeros((n, padded_h, padded_w, c), out_grad.dtype)
    for tap_index in range(kh * kw):
        i, j = divmod(tap_index, kw)
        won = jnp.where(winner == tap_index, out_grad, zero)
        # Output pixel (y, x) read padded pixel (i + sy * y, j + sx * x): put it back there.
        padded_grad = padded_grad + jax.lax.pad(
            won,
            zero,
            (
                (0, 0, 0),
                (i, padded_h - i - sy * (out_h - 1) - 1, sy - 1),
                (j, padded_w - j - sx * (out_w - 1) - 1, sx - 1),
                (0, 0, 0),
            ),
        )
    return (padded_grad[:, top : top + h, left : left + w, :],)


_max_pool_taps.defvjp(_forward, _backward)
