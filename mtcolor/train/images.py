"""Image grids of the paper's Fig. 2 kind: one column per validation example, one row per picture
a task draws (`Task.image_rows`; colorization: grayscale input, prediction, ground truth)."""

from __future__ import annotations

import os

import numpy as np


def make_grid(rows: list[np.ndarray], pad: int = 2, min_cell: int = 96) -> np.ndarray:
    """Rows of (N, H, W, 3) images -> one uint8 grid with white gutters.

    Images smaller than ``min_cell`` pixels are enlarged by an integer factor with nearest-neighbour
    sampling (pixels stay sharp squares), so a 32 px run's grid is legible in TensorBoard and as a
    PNG; 256 px images are left as they are.
    """
    scale = max(1, -(-min_cell // max(rows[0].shape[1:3])))
    if scale > 1:
        rows = [np.repeat(np.repeat(np.asarray(row), scale, axis=1), scale, axis=2) for row in rows]
    n, h, w, _ = rows[0].shape
    grid = np.full((len(rows) * (h + pad) + pad, n * (w + pad) + pad, 3), 255, np.uint8)
    for r, row in enumerate(rows):
        row = np.clip(np.nan_to_num(np.asarray(row, np.float32)), 0.0, 1.0)
        for c in range(n):
            y, x = pad + r * (h + pad), pad + c * (w + pad)
            grid[y : y + h, x : x + w] = np.round(row[c] * 255).astype(np.uint8)
    return grid


def save_png(grid: np.ndarray, path: str) -> str:
    from PIL import Image

    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = path + ".tmp"
    Image.fromarray(grid).save(tmp, format="PNG")
    os.replace(tmp, path)  # a reader never sees a half-written PNG
    return path
