"""A procedurally generated, labelled colour image set: no download, deterministic, random access.

Each image is generated from (seed, split, index) alone, so the set costs no disk, any element is
cheap to produce in any worker, and the same config always yields the same pixels.

What makes both tasks learnable but not trivial:
- The class is told by SHAPE/TEXTURE, visible in the L channel the models see: disc, stripes,
  checkerboard, ring, scattered squares (5 classes by default, the paper's count). Position, scale,
  orientation and frequency are random per image.
- Foreground colour depends on the class AND the content: each class has its own hue range
  (centred on a class hue, +-`_HUE_SPREAD` per image), and the hue additionally drifts across the
  image along a random direction, so a colorizer must recognise the class and use position; it
  cannot paint one constant colour per class.
- The background has a random hue, low saturation and a darker value, so foreground and background
  differ in lightness (the L input shows the shape) and the background colour itself is
  unpredictable.
- Mild per-pixel noise avoids perfectly flat regions.
With more classes than names, shapes repeat with other hue centres (class = shape + hue range).
"""

from __future__ import annotations

import numpy as np

SHAPE_NAMES = ("disc", "stripes", "checker", "ring", "squares")
_HUE_SPREAD = 0.06  # per-image random hue offset around the class centre (fraction of the circle)
_HUE_DRIFT = 0.08  # hue change from one side of the image to the other
# "unlabeled": the images of data.unlabeled.source = "synthetic", distinct from train/val.
_SPLIT_IDS = {"train": 0, "val": 1, "test": 2, "unlabeled": 3}


def _hsv_to_rgb(h: np.ndarray, s: np.ndarray, v: np.ndarray) -> np.ndarray:
    h = np.mod(h, 1.0) * 6.0
    i = np.floor(h)
    f = h - i
    p = v * (1.0 - s)
    q = v * (1.0 - s * f)
    t = v * (1.0 - s * (1.0 - f))
    i = i.astype(np.int32) % 6
    r = np.choose(i, [v, q, p, p, t, v])
    g = np.choose(i, [t, v, v, q, p, p])
    b = np.choose(i, [p, p, t, v, v, q])
    return np.stack([r, g, b], axis=-1)


def _shape_mask(shape: int, rng: np.random.Generator, yy: np.ndarray, xx: np.ndarray) -> np.ndarray:
    if shape == 0:  # one large disc
        cy, cx = rng.uniform(0.35, 0.65, 2)
        radius = rng.uniform(0.2, 0.32)
        return (yy - cy) ** 2 + (xx - cx) ** 2 < radius**2
    if shape == 1:  # oriented stripes
        theta = rng.uniform(0, np.pi)
        cycles = rng.uniform(3.0, 6.0)
        phase = rng.uniform(0, 2 * np.pi)
        return np.sin(2 * np.pi * cycles * (xx * np.cos(theta) + yy * np.sin(theta)) + phase) > 0
    if shape == 2:  # rotated checkerboard
        theta = rng.uniform(0, np.pi / 2)
        cells = rng.uniform(3.0, 5.0)
        u = xx * np.cos(theta) + yy * np.sin(theta)
        v = -xx * np.sin(theta) + yy * np.cos(theta)
        return (np.floor(u * cells) + np.floor(v * cells)) % 2 == 0
    if shape == 3:  # ring
        cy, cx = rng.uniform(0.4, 0.6, 2)
        outer = rng.uniform(0.28, 0.38)
        inner = outer * rng.uniform(0.45, 0.65)
        d2 = (yy - cy) ** 2 + (xx - cx) ** 2
        return (d2 < outer**2) & (d2 > inner**2)
    # scattered squares
    mask = np.zeros(yy.shape, bool)
    for _ in range(rng.integers(4, 8)):
        cy, cx = rng.uniform(0.12, 0.88, 2)
        half = rng.uniform(0.05, 0.1)
        mask |= (np.abs(yy - cy) < half) & (np.abs(xx - cx) < half)
    return mask


def class_hue(label: int, num_classes: int) -> float:
    """Centre of a class's foreground hue range, spread around the colour circle."""
    return label / num_classes


def generate_image(
    seed: int, split: str, index: int, size: int, num_classes: int
) -> tuple[np.ndarray, int]:
    """The (uint8 RGB (size, size, 3), label) of one element. Pure function of its arguments."""
    rng = np.random.default_rng([seed, _SPLIT_IDS[split], index])
    label = int(rng.integers(num_classes))
    coords = (np.arange(size, dtype=np.float32) + 0.5) / size
    yy, xx = np.meshgrid(coords, coords, indexing="ij")
    mask = _shape_mask(label % len(SHAPE_NAMES), rng, yy, xx)

    direction = rng.uniform(0, 2 * np.pi)
    ramp = (xx - 0.5) * np.cos(direction) + (yy - 0.5) * np.sin(direction)  # in about [-0.7, 0.7]
    fg_hue = (
        class_hue(label, num_classes) + rng.uniform(-_HUE_SPREAD, _HUE_SPREAD) + _HUE_DRIFT * ramp
    )
    fg_sat = np.full_like(yy, rng.uniform(0.55, 0.9))
    fg_val = rng.uniform(0.75, 0.95) - 0.1 * ramp  # a little shading
    bg_hue = np.full_like(yy, rng.uniform(0, 1))
    bg_sat = np.full_like(yy, rng.uniform(0.1, 0.35))
    bg_val = np.full_like(yy, rng.uniform(0.2, 0.42)) + 0.05 * ramp

    hue = np.where(mask, fg_hue, bg_hue)
    sat = np.where(mask, fg_sat, bg_sat)
    val = np.where(mask, fg_val, bg_val)
    rgb = _hsv_to_rgb(hue, sat, val)
    rgb += rng.normal(0.0, 0.02, rgb.shape).astype(np.float32)
    return np.clip(np.rint(rgb * 255.0), 0, 255).astype(np.uint8), label


class SyntheticSource:
    """grain random-access source of {"rgb", "label", "key"} records (see the module docstring)."""

    def __init__(
        self, *, split: str, size: int, num_examples: int, num_classes: int = 5, seed: int = 0
    ):
        if split not in _SPLIT_IDS:
            raise ValueError(f"synthetic split must be one of {sorted(_SPLIT_IDS)}, got {split!r}")
        if num_classes < 2:
            raise ValueError("synthetic data needs at least 2 classes")
        self.split = split
        self.size = int(size)
        self.num_examples = int(num_examples)
        self.num_classes = int(num_classes)
        self.seed = int(seed)
        self.class_names = tuple(
            SHAPE_NAMES[c % len(SHAPE_NAMES)]
            + ("" if c < len(SHAPE_NAMES) else f"_{c // len(SHAPE_NAMES)}")
            for c in range(num_classes)
        )

    def __len__(self) -> int:
        return self.num_examples

    def __getitem__(self, index: int) -> dict:
        index = int(index)
        if not 0 <= index < self.num_examples:
            raise IndexError(index)
        rgb, label = generate_image(self.seed, self.split, index, self.size, self.num_classes)
        return {"rgb": rgb, "label": label, "key": f"synthetic:{self.split}[{index}]"}

    def __repr__(self) -> str:
        return (
            f"SyntheticSource(split={self.split!r}, size={self.size}, "
            f"num_examples={self.num_examples}, "
            f"num_classes={self.num_classes}, seed={self.seed})"
        )
