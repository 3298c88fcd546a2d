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


def decode_cvat_runs(
    runs: list[int], left: int, top: int, box_width: int, box_height: int, width: int, height: int
) -> np.ndarray:
    """Runs over a box (row by row, background first) placed at (left, top) on a width x height
    frame, as a bool mask (H, W): the one decoder for both of CVAT's mask forms, the shapes its
    functions exchange and the `rle` of its annotations.xml. A ValueError says what does not fit."""
    if min(runs, default=0) < 0 or box_width < 1 or box_height < 1:
        raise ValueError("negative runs or an empty box")
    if left < 0 or top < 0 or left + box_width > width or top + box_height > height:
        raise ValueError(
            f"its {box_width}x{box_height} box at ({left}, {top}) leaves the {width}x{height} frame"
        )
    # Counted before anything is allocated: runs of 1e10 pixels must not become an array.
    if (covered := sum(runs)) != box_width * box_height:
        raise ValueError(f"its runs cover {covered} pixels, its box {box_width * box_height}")
    flat = np.repeat(np.arange(len(runs)) % 2 == 1, runs)
    mask = np.zeros((height, width), dtype=bool)
    mask[top : top + box_height, left : left + box_width] = flat.reshape(box_height, box_width)
    return mask


def decode_cvat_mask(encoded: list[float], width: int, height: int) -> np.ndarray:
    """CVAT's shape form (runs, then the inclusive box x1, y1, x2, y2) back to a bool mask (H, W);
    a ValueError says what does not fit."""
    if len(encoded) < 5:
        raise ValueError("a CVAT mask needs runs and a box: at least 5 numbers")
    try:
        *runs, x1, y1, x2, y2 = (int(v) for v in encoded)
    except OverflowError:  # an infinite number
        raise ValueError("a CVAT mask's numbers must be finite") from None
    return decode_cvat_runs(runs, x1, y1, x2 - x1 + 1, y2 - y1 + 1, width, height)
