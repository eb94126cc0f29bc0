"""How a run reads its data: the input paths, the automatic choice between them, and the one
interface the training loop uses for any of them (`InputPipeline`).

- "grain" (`mtcolor.data.pipeline`): decodes on the host every step; any data size, the
  unlabeled stream (data.unlabeled).
- "resident" (`mtcolor.data.resident`): each split decoded once into a cache file, kept on the
  devices, batches made on device; data that fits in memory.
- "auto": resident when the uint8 images fit in data.resident.max_memory_fraction of a device's
  memory and data.unlabeled is off, else grain (`choose_input_path`).

A library user's own data (the ``data=`` argument of `mtcolor.train.loop.train_and_evaluate`) is
wrapped by `from_data_object` into the same interface.
"""

from __future__ import annotations

import contextlib
import dataclasses
import gc
import os
import threading
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np

from mtcolor.data import sources
from mtcolor.data.bad_inputs import BadInputTracker
from mtcolor.data.config import SPLITS

INPUT_PATHS = ("grain", "auto", "resident")
DEFAULT_MAX_MEMORY_FRACTION = 0.25


@dataclasses.dataclass(frozen=True)
class InputPipeline:
    """What the training loop asks of its data, whichever path reads it.

    Attributes:
      name: "grain", "resident" or "custom" (a user's ``data=`` object).
      steps_per_epoch: data_config -> training steps in one epoch (one pass over the labelled
        training examples).
      make_train_iterator: (data_config, *, seed, shard_index, shard_count) -> an endless,
        checkpointable iterator of training batches (`mtcolor.data.pipeline`'s batch format).
      make_eval_iterator: (data_config, split, *, shard_index, shard_count) -> one pass over a
        split, the last batch padded (``mask`` 0 on pads).
      make_bad_input_tracker: data_config -> the `BadInputTracker` the loop keeps to log skipped
        files and enforce data.max_bad_fraction, or None when the data does not report them.
    """

    name: str
    steps_per_epoch: Callable[[Any], int]
    make_train_iterator: Callable[..., Iterator[dict]]
    make_eval_iterator: Callable[..., Iterator[dict]]
    make_bad_input_tracker: Callable[[Any], BadInputTracker | None]


def close_iterator(iterator) -> None:
    """Closes a data iterator that can be closed (grain's, the resident path's; a user's may not
    be). grain's multiprocess iterators hold worker processes and the shared memory of the
    batches they prefetched until closed; left to garbage collection at exit, a run ended with
    grain's errors from ``__del__`` and Python's warning of leaked shared memory objects."""
    close = getattr(iterator, "close", None)
    if callable(close):
        close()


def free_finished_passes() -> None:
    """Frees what finished data passes left in reference cycles; called once, as a program ends.

    A grain pass that ran to its end leaves its last records (with worker processes, shared memory
    arrays) in a cycle: grain re-raises the StopIteration through its traceback_util, and that
    traceback holds the frames that took the records. Left to exit, after grain's thread that
    unlinks shared memory has stopped, they ended every evaluation with workers with "leaked
    shared_memory objects". Not after every pass: a collection costs 0.27 s in a training process
    (590,000 objects, measured)."""
    with _grain_shared_memory_unlinks_held():
        gc.collect()


@contextlib.contextmanager
def _grain_shared_memory_unlinks_held():
    """Holds grain's shared-memory unlink thread while the collector runs, then waits for it.

    grain closes and unlinks a freed record's shared memory on a one-thread pool
    (``SharedMemoryArray.enable_async_del(1)``, set by its process prefetch). A collection that
    frees a record in a cycle finalizes the record's ``SharedMemory`` as well, whose ``__del__``
    closes the same file descriptor in this thread: when both closed at once, grain's close failed
    (``OSError: Bad file descriptor``) before its unlink, and 1 evaluation in 6 with workers
    ended with "leaked shared_memory objects" (measured on this project's 2-core CPU). Held, the
    pool runs its queued unlinks after the collection, when the descriptors are closed (a second
    close does nothing), and this returns when they are done, before the program can exit. grain
    has no public call for this, hence the guarded lookup of its pool: without one (no worker
    processes ran) there is nothing to hold."""
    try:
        from grain._src.python.ipc import shared_memory_array
    except ImportError:
        unlink_pool = None
    else:
        unlink_pool = getattr(shared_memory_array.SharedMemoryArray, "_del_thread_pool", None)
    if unlink_pool is None:
        yield
        return
    collected = threading.Event()
    unlink_pool.apply_async(collected.wait)  # the pool's one thread waits here
    try:
        yield
    finally:
        collected.set()
        unlink_pool.apply(int)  # a no-op queued behind the unlinks: returns when they are done


def grain_pipeline() -> InputPipeline:
    from mtcolor.data import pipeline

    return _from_module("grain", pipeline)


def resident_pipeline() -> InputPipeline:
    from mtcolor.data import resident

    return _from_module("resident", resident)


def _from_module(name: str, module) -> InputPipeline:
    return InputPipeline(
        name=name,
        steps_per_epoch=module.steps_per_epoch,
        make_train_iterator=module.make_train_iterator,
        make_eval_iterator=module.make_eval_iterator,
        make_bad_input_tracker=module.make_bad_input_tracker,
    )


def for_run(data_config, *, resumed: str | None = None) -> tuple[InputPipeline, str]:
    """(the input pipeline data.input_path chooses, why); `resumed` is the path a resumed run's
    checkpoints were written with (what "auto" keeps)."""
    path, why = choose_input_path(data_config, resumed=resumed)
    return (resident_pipeline() if path == "resident" else grain_pipeline()), why


def from_data_object(data) -> InputPipeline:
    """A user's data object as an InputPipeline. It needs ``num_examples(data_config, split)``,
    ``make_train_iterator`` and ``make_eval_iterator`` (as `mtcolor.data.pipeline`'s); optional:
    ``steps_per_epoch(data_config)`` (default: training examples // batch_size) and
    ``make_bad_input_tracker(data_config)`` (default: no skipped-file accounting)."""
    missing = [
        name
        for name in ("num_examples", "make_train_iterator", "make_eval_iterator")
        if not callable(getattr(data, name, None))
    ]
    if missing:
        raise TypeError(f"data= object {type(data).__name__} lacks {', '.join(missing)}")

    def steps_per_epoch(data_config) -> int:
        return max(1, int(data.num_examples(data_config, "train")) // int(data_config.batch_size))

    return InputPipeline(
        name="custom",
        steps_per_epoch=getattr(data, "steps_per_epoch", steps_per_epoch),
        make_train_iterator=data.make_train_iterator,
        make_eval_iterator=data.make_eval_iterator,
        make_bad_input_tracker=getattr(data, "make_bad_input_tracker", lambda data_config: None),
    )


def max_memory_fraction(data_config) -> float:
    """data.resident.max_memory_fraction: "auto"'s ceiling for the replicated uint8 images."""
    options = data_config.get("resident")
    value = options.get("max_memory_fraction") if options is not None else None
    return float(DEFAULT_MAX_MEMORY_FRACTION if value is None else value)


def estimated_bytes(data_config) -> int:
    """Bytes of the uint8 train and val caches (files listed, before bad files are skipped)."""
    size = int(data_config.image_size)
    files = sum(sources.num_examples(data_config, split) for split in SPLITS)
    return files * size * size * 3


def memory_budget() -> tuple[int | None, int, str]:
    """(bytes of one device's memory or None if unknown, copies of the set that memory holds,
    what the memory is). Accelerators: their own memory, one copy each. CPU: host RAM, which
    holds one replica per local CPU device."""
    import jax  # the calling process only: grain workers import this package's other modules

    device = jax.local_devices()[0]
    if device.platform != "cpu":
        stats = device.memory_stats() or {}
        limit = stats.get("bytes_limit")
        return (int(limit) if limit else None), 1, f"{device.platform} device memory"
    ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    return int(ram), jax.local_device_count(), "host RAM"


def choose_input_path(data_config, *, resumed: str | None = None) -> tuple[str, str]:
    """("grain" or "resident", why) for `data.input_path`.

    "grain" / "resident": as asked. "auto": the path a resumed run's checkpoints were written with
    (`resumed`), else grain when data.unlabeled is set or the caches (train + val, uint8, times
    the replicas that share one memory) exceed `data.resident.max_memory_fraction` of a device's
    memory (on CPU: of host RAM), else resident. Every process takes process 0's decision.
    """
    wanted = data_config.get("input_path", "grain")
    if wanted not in INPUT_PATHS:
        raise ValueError(f"data.input_path must be one of {INPUT_PATHS}, got {wanted!r}")
    if wanted != "auto":
        return wanted, "data.input_path"
    if resumed in ("grain", "resident"):
        return resumed, "auto: the path this run's checkpoints were written with"
    from mtcolor.data import resident

    ok, why_not = resident.supports(data_config)
    if not ok:
        choice, why = "grain", f"auto: {why_not}"
    else:
        need = estimated_bytes(data_config)
        memory, copies, what = memory_budget()
        fraction = max_memory_fraction(data_config)
        if memory is None:
            choice, why = "grain", "auto: the device's memory size is unknown"
        else:
            fits = need * copies <= fraction * memory
            choice = "resident" if fits else "grain"
            why = (
                f"auto: {need * copies / 2**30:.2f} GiB of uint8 images "
                f"{'within' if fits else 'above'} {fraction:g} of {memory / 2**30:.1f} GiB {what}"
            )
    import jax

    if jax.process_count() > 1:  # host RAM may differ between hosts: one decision for all
        from jax.experimental import multihost_utils

        code = multihost_utils.broadcast_one_to_all(np.int32(INPUT_PATHS.index(choice)))
        choice = INPUT_PATHS[int(code)]
    return choice, why
