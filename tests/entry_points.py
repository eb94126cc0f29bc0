"""The project's commands as a user runs them: ``python -m <module> <args>`` in a fresh interpreter
at the repository root, on the CPU (a subprocess inherits the suite's XLA flags and compilation
cache, tests/conftest.py)."""

import os
import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parent.parent


def run_module(module: str, *args, timeout: int = 600) -> subprocess.CompletedProcess:
    """``python -m module *args``; its stdout and stderr as text, whatever its exit status."""
    return subprocess.run(
        [sys.executable, "-m", module, *(str(a) for a in args)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=dict(os.environ, JAX_PLATFORMS="cpu"),
    )
