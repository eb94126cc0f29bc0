"""Test-wide settings: CPU only, quiet logs, and absl flags parsed for grain workers."""

import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

from absl import flags  # noqa: E402

# grain's multiprocessing reads absl flags; under pytest nobody calls app.run.
if not flags.FLAGS.is_parsed():
    flags.FLAGS.mark_as_parsed()
