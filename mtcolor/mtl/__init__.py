"""Multi-task loss weightings and gradient combinations (docstring filled in below)."""
