"""CVAT's mask shape encoding: run lengths over the mask's box, then the box itself.

`[run, run, ..., x1, y1, x2, y2]`: runs alternate background/foreground starting with
background over the row-major crop x1..x2, y1..y2 (inclusive), as cvat_sdk.masks encodes it.
"""

from __future__ import annotations

import numpy as np


def encode_cvat_mask(mask: np.ndarray) -> list[int]:
    """A bool mask (H, W) in CVAT's form, cropped to its tight box."""
    ys, xs = np.nonzero(mask)
    if ys.size == 0:
        x1 = y1 = x2 = y2 = 0
    else:
        x1, y1, x2, y2 = int(xs.min()), int(ys.min()), int(xs.max()), int(ys.max())
    flat = mask[y1 : y2 + 1, x1 : x2 + 1].ravel()
    changes = np.flatnonzero(flat[1:] != flat[:-1]) + 1
    bounds = np.concatenate(([0], changes, [flat.size]))
    runs = np.diff(bounds).tolist()
    if flat[0]:
        runs.insert(0, 0)
    return runs + [x1, y1, x2, y2]


def decode_cvat_mask(encoded: list[float], width: int, height: int) -> np.ndarray:
    """CVAT's form back to a bool mask (H, W); a ValueError says what does not fit."""
    if len(encoded) < 5:
        raise ValueError("a CVAT mask needs runs and a box: at least 5 numbers")
    *runs, x1, y1, x2, y2 = (int(v) for v in encoded)
    if not (0 <= x1 <= x2 < width and 0 <= y1 <= y2 < height):
        raise ValueError(f"CVAT mask box ({x1},{y1},{x2},{y2}) lies outside {width}x{height}")
    crop_w, crop_h = x2 - x1 + 1, y2 - y1 + 1
    values = np.arange(len(runs)) % 2 == 1
    flat = np.repeat(values, runs)
    if flat.size != crop_w * crop_h:
        raise ValueError(f"CVAT mask runs cover {flat.size} pixels, its box {crop_w * crop_h}")
    mask = np.zeros((height, width), dtype=bool)
    mask[y1 : y2 + 1, x1 : x2 + 1] = flat.reshape(crop_h, crop_w)
    return mask
