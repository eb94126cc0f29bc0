"""The grain pipeline's per-element transforms: decode + resize, random flip, RGB -> normalized Lab.

They run in grain worker processes, so they are picklable and use numpy and Pillow only (no JAX).
A file that cannot be used becomes a small record carrying its reason (``{"reason", "detail",
"key"}``) instead of an exception, so a worker never dies on one bad file; the batcher
(`mtcolor.data.batching`) counts and skips those records.
"""

from __future__ import annotations

import grain
import numpy as np

from mtcolor.data import color
from mtcolor.data import decode as decode_lib
from mtcolor.data.bad_inputs import NEAR_GRAYSCALE
from mtcolor.data.decode import BadImageError


class DecodeAndResize(grain.transforms.Map):
    """Source record -> {"rgb" uint8 (S, S, 3), "label", "key"} or {"reason", "detail", "key"}."""

    def __init__(
        self,
        *,
        size: int,
        resize_mode: str,
        min_image_side: int,
        max_image_pixels: int,
        jpeg_draft: bool,
    ):
        if resize_mode not in decode_lib.RESIZE_MODES:
            raise ValueError(
                f"resize_mode must be one of {decode_lib.RESIZE_MODES}, got {resize_mode!r}"
            )
        self.size = size
        self.resize_mode = resize_mode
        self.min_image_side = min_image_side
        self.max_image_pixels = max_image_pixels
        self.jpeg_draft = jpeg_draft

    def map(self, record: dict) -> dict:
        try:
            if "rgb" in record:
                rgb = decode_lib.resize_array(record["rgb"], self.size, self.resize_mode)
            else:
                data = (
                    record["encoded"]
                    if "encoded" in record
                    else decode_lib.read_file(record["path"])
                )
                rgb = decode_lib.decode_image(
                    data,
                    size=self.size,
                    resize_mode=self.resize_mode,
                    min_image_side=self.min_image_side,
                    max_image_pixels=self.max_image_pixels,
                    jpeg_draft=self.jpeg_draft,
                )
        except BadImageError as e:
            return {"reason": e.reason, "detail": e.detail, "key": record["key"]}
        return {"rgb": rgb, "label": record["label"], "key": record["key"]}


class RandomHorizontalFlip(grain.transforms.RandomMap):
    """Flips with p=0.5 using the per-element generator grain seeds from (seed, index)."""

    def random_map(self, record: dict, rng: np.random.Generator) -> dict:
        flip = rng.random() < 0.5  # drawn for every element, so bad ones do not shift others
        if flip and "rgb" in record:
            record = dict(record, rgb=record["rgb"][:, ::-1])
        return record


class ToNormalizedLab(grain.transforms.Map):
    """{"rgb"} -> {"L": (S, S, 1) L/50-1, "ab": (S, S, 2) ab/110} float32; optional grayscale
    filter."""

    def __init__(self, grayscale_filter_threshold: float | None = None):
        self.grayscale_filter_threshold = grayscale_filter_threshold

    def map(self, record: dict) -> dict:
        if "rgb" not in record:
            return record
        L_norm, ab_norm = color.rgb_uint8_to_normalized_L_ab(np.ascontiguousarray(record["rgb"]))  # noqa: N806
        if self.grayscale_filter_threshold is not None:
            chroma = mean_chroma(ab_norm)
            if chroma < self.grayscale_filter_threshold:
                return {
                    "reason": NEAR_GRAYSCALE,
                    "detail": f"mean chroma {chroma:.2f}",
                    "key": record["key"],
                }
        return {
            "L": L_norm,
            "ab": ab_norm,
            "label": np.int32(record["label"]),
            "key": record["key"],
        }


def mean_chroma(ab_normalized: np.ndarray) -> float:
    """Mean of sqrt(a^2 + b^2) in CIELAB units over an image's pixels, from ab/110 (..., 2)."""
    ab = ab_normalized * np.float32(color.AB_SCALE)
    return float(np.sqrt(np.square(ab).sum(-1)).mean())
