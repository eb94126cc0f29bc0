"""Test-wide settings: CPU only, quiet logs, and absl flags parsed for grain workers."""

import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
# Compiling, not running, dominates this suite (tiny images, few steps), so it compiles for compile
# time: LLVM at -O0 compiles the tiny runs' programs about 1.6x faster (measured: a single-task run
# plus a train-step equality test, 132 s -> 84 s on the 2-core CI machine), and XLA:CPU's older
# elemental emitters instead of its fusion emitters halve what is left (the tiny multi-task train
# step 7.2 -> 3.5 s, its init 6.1 -> 4.2 s; the suite's CPU time 25.5 -> 20.7 min, 2026-12-08).
# Both run the programs a little slower, which tiny inputs do not notice. Each is a correct
# compiler of the same HLO, but they fuse, and so round, differently: a test that compares two
# programs allows for float32 rounding (or computes in float64) rather than relying on both
# compiling to the same arithmetic. Subprocesses the tests start inherit the flags.
TEST_XLA_FLAGS = ("--xla_backend_optimization_level=0", "--xla_cpu_use_fusion_emitters=false")
for _flag in TEST_XLA_FLAGS:
    if _flag not in os.environ.get("XLA_FLAGS", ""):
        os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {_flag}".strip()

from absl import flags  # noqa: E402

# grain's multiprocessing reads absl flags; under pytest nobody calls app.run.
if not flags.FLAGS.is_parsed():
    flags.FLAGS.mark_as_parsed()


import atexit  # noqa: E402
import shutil  # noqa: E402
import tempfile  # noqa: E402

import pytest  # noqa: E402

# Caches the code under test writes by default (the resident input path's decoded images,
# mtcolor.data.decoded_cache) go to a directory of this session, not the user's ~/.cache.
if "MTCOLOR_TEST_KEEP_XDG_CACHE" not in os.environ:
    _xdg = tempfile.mkdtemp(prefix="mtcolor-test-xdg-cache-")
    atexit.register(shutil.rmtree, _xdg, ignore_errors=True)
    os.environ["XDG_CACHE_HOME"] = _xdg

# One persistent compilation cache for the session and the subprocesses it starts (the killed-run
# test runs the real entry point, the sharding test its own interpreter): a program compiled once
# (same HLO, e.g. the tiny multi-task steps built by several tests) is not compiled again. Compiling
# dominates this suite on CPU. A fresh directory per session, so no stale entry outlives a change.
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
    _cache = tempfile.mkdtemp(prefix="mtcolor-test-jax-cache-")
    atexit.register(shutil.rmtree, _cache, ignore_errors=True)
    os.environ["JAX_COMPILATION_CACHE_DIR"] = _cache
    os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"
    os.environ["JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES"] = "0"


@pytest.fixture(scope="session")
def tiny_multitask_run(tmp_path_factory, worker_id):
    """One tiny multi-task run (experiments/configs/tiny.py: 32 px, 2 epochs of 3 steps) shared by
    every test that only reads a finished run: training it compiles the real models, the largest
    fixed cost of the suite. Under xdist the workers share it too (pytest-xdist's recipe for a
    session fixture built once: the first worker trains under a file lock in the run's common
    temporary directory, the others wait and read it). Returns (workdir, summary). Tests must not
    write into it."""
    import fcntl
    import json

    from experiments.configs import tiny
    from mtcolor.train import loop

    if worker_id == "master":  # not under xdist
        workdir = tmp_path_factory.mktemp("tiny_multitask_run")
        return workdir, loop.train_and_evaluate(tiny.get_config(), str(workdir))
    shared = tmp_path_factory.getbasetemp().parent  # this run's directory, common to the workers
    workdir = shared / "tiny_multitask_run"
    with open(shared / "tiny_multitask_run.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if (workdir / "summary.json").exists():
            return workdir, json.loads((workdir / "summary.json").read_text())
        return workdir, loop.train_and_evaluate(tiny.get_config(), str(workdir))


@pytest.fixture()
def tree_with_bad_files(tmp_path):
    """A class tree of 12 good images, one file per bad-input reason, a directory named like an
    image (unreadable) and a text file (not an image extension: not listed)."""
    from test_data_files import bad_files, write_tree

    root = tmp_path / "train"
    write_tree(root, {"n01": 6, "n02": 6})
    for reason, data in bad_files().items():
        (root / "n02" / f"bad_{reason}.JPEG").write_bytes(data)
    os.mkdir(root / "n01" / "unreadable.JPEG")  # a directory where a file is expected
    (root / "n01" / "notes.txt").write_text("not listed: not an image extension")
    return root


@pytest.fixture()
def tree_with_gray_photos(tmp_path):
    """A class tree with 6 colourful images and 2 grayscale photos stored as RGB (gray0, gray1)."""
    import numpy as np
    from PIL import Image
    from test_data_files import colorful, write_tree

    root = tmp_path / "tree"
    write_tree(root, {"a": 6})
    for i in range(2):
        gray = np.asarray(colorful(50 + i).convert("L").convert("RGB"))
        Image.fromarray(gray).save(root / "a" / f"gray{i}.JPEG")
    return root
