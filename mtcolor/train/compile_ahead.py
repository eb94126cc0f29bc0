"""Compiling the programs a run will call before it calls them, on one background thread.

A run compiles its phase-1 step, the evaluation program, then its phase-2 step, each when first
called: in the CPU demo about 7.6 + 2.5 + 9.6 s of XLA compilation in a 70 s run (and 1.6 s for a
prediction program, before evaluation returned the model's outputs), each stalling training. XLA
releases the GIL while it compiles, so the same compilations run on a thread while the main thread
imports TensorFlow for the writers and trains phase 1; ``jax.jit(f).lower(...).compile()`` fills
the cache the later call ``f(...)`` looks up (checked in tests/test_train_steps.py), so the call
then finds its program ready.

The arguments are taken as abstract values (shape, dtype, sharding) when a program is submitted,
in the caller's thread: the steps donate their state, so the thread must not hold live buffers.
A program whose arguments at call time differ from the guess (another eval batch layout from a
user's pipeline) is simply compiled again at the call, as without this module; a failure here is
logged and left to the call to raise in its usual place.
"""

from __future__ import annotations

import concurrent.futures
import logging
from collections.abc import Callable

import jax


def abstract(tree):
    """The jax.Arrays of ``tree`` as ShapeDtypeStructs with their shardings; other leaves kept."""

    def leaf(x):
        if isinstance(x, jax.Array):
            return jax.ShapeDtypeStruct(
                x.shape, x.dtype, sharding=x.sharding, weak_type=x.weak_type
            )
        return x

    return jax.tree.map(leaf, tree)


class CompileAhead:
    """Programs compiled in submission order on one thread (XLA:CPU already spreads one
    compilation over the cores: two at once made the demo slower, 68 vs 65 s); ``wait(name)``
    before the first call of a submitted program, so that the call does not compile it again
    alongside."""

    def __init__(self):
        self._executor = concurrent.futures.ThreadPoolExecutor(1, "compile-ahead")
        self._futures: dict[str, concurrent.futures.Future] = {}

    def submit(self, name: str, jitted: Callable, *args) -> None:
        """Compiles ``jitted`` (a ``jax.jit`` function) for ``args``' abstract values, in turn."""
        self._futures[name] = self._executor.submit(_compile, jitted, abstract(args))

    def wait(self, name: str) -> None:
        """Blocks until ``name`` (if submitted and not yet waited for) is compiled."""
        future = self._futures.pop(name, None)
        if future is None:
            return
        try:
            future.result()
        except Exception as error:  # the call compiles it again and raises there
            logging.warning("compiling %s ahead failed (%s); it compiles when called", name, error)

    def close(self) -> None:
        """Drops what has not started; waits for a compilation under way."""
        self._executor.shutdown(wait=True, cancel_futures=True)
        self._futures.clear()


def _compile(jitted: Callable, abstract_args: tuple):
    return jitted.lower(*abstract_args).compile()
