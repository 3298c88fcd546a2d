"""Clicks as the interactive-segmentation protocol places them, and as a network sees them.

The next click goes where the prediction is most clearly wrong: at the deepest point of its
error, the wrongly answered pixel (missed polyp or false polyp) farthest from the edge of the
error it lies in, so the widest error region is usually the one clicked; positive on a missed
part and negative on a false one (Xu et al. 2016; RITM, Sofiiuk et al. 2022). Evaluation
uses it to count clicks; training uses it to teach the model to fix its own mistakes. A
network sees clicks as disks drawn on two channels (positive, negative).
"""

from __future__ import annotations

import math

import cv2
import numpy as np

from polypseg.prompts import Point

# Disk radius in network input pixels (RITM uses 5 at 320-480 px inputs).
CLICK_RADIUS = 5
# More clicks than this in one request is not annotation any more (and replaying them costs
# a forward pass each).
MAX_CLICKS = 50


def next_click(predicted: np.ndarray, truth: np.ndarray) -> Point | None:
    """The next simulated click for a bool prediction against the bool truth; None when they
    agree everywhere."""
    missed, false = truth & ~predicted, predicted & ~truth
    best: tuple[float, int, int, bool] | None = None
    for error, positive in ((missed, True), (false, False)):
        if not error.any():
            continue
        # The distance to the nearest pixel outside the error (the image border counts as
        # outside, so a click never sits on the frame's edge).
        padded = np.pad(error, 1).astype(np.uint8)
        distance = cv2.distanceTransform(padded, cv2.DIST_L2, cv2.DIST_MASK_PRECISE)[1:-1, 1:-1]
        row, column = np.unravel_index(int(np.argmax(distance)), distance.shape)
        if best is None or distance[row, column] > best[0]:
            best = (float(distance[row, column]), int(column), int(row), positive)
    if best is None:
        return None
    _, x, y, positive = best
    return Point(x + 0.5, y + 0.5, positive)


def click_channels(
    points: tuple[Point, ...] | list[Point],
    offset: tuple[float, float],
    scale: tuple[float, float],
    size: int,
    radius: int = CLICK_RADIUS,
) -> np.ndarray:
    """Positive and negative clicks as two `size` x `size` float32 disk maps, each click at
    ((x - offset_x) * scale_x, (y - offset_y) * scale_y) in network pixels. Clicks that fall
    outside the window are drawn where they are, clipped away by the map's edge. A disk is
    centred on the pixel that holds the click: the floor of its continuous coordinate (a click
    at a pixel's centre, x + 0.5, lands on pixel x)."""
    maps = np.zeros((2, size, size), dtype=np.float32)
    for p in points:
        cx = math.floor((p.x - offset[0]) * scale[0])
        cy = math.floor((p.y - offset[1]) * scale[1])
        cv2.circle(maps[0 if p.positive else 1], (cx, cy), radius, 1.0, -1)
    return maps
