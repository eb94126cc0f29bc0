"""mtcolor: multi-task image colorization and classification in JAX/Flax.

Importing the package is cheap and TensorFlow-free; the submodules are imported explicitly:
`mtcolor.models`, `mtcolor.weights`, `mtcolor.data`, `mtcolor.train`, `mtcolor.eval`.
"""

__version__ = "0.1.0"
