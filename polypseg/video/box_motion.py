"""Where a box moved between two frames: median optical flow (Kalal, Mikolajczyk and Matas,
"Forward-Backward Error: Automatic Detection of Tracking Failures", 2010).

A grid of points in the box is followed into the next frame by pyramidal Lucas-Kanade optical
flow and back again; the points that come back nearest to where they started (forward-backward
error at most the median) vote: the box moves by their median displacement and scales by the
median ratio of their distances to each other. It is deterministic (the same two frames give
the same box, in any process and after any other call) and costs a few milliseconds a frame.
"""

from __future__ import annotations

import cv2
import numpy as np

from polypseg.prompts import Box

GRID = 10  # points a side
MIN_POINTS = 10  # fewer followed both ways: no answer


def _lucas_kanade(before: np.ndarray, after: np.ndarray, points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Where `points` (N x 1 x 2, float32) on `before` went on `after`, and whether each was found."""
    moved, found, _ = cv2.calcOpticalFlowPyrLK(
        before,
        after,
        points,
        np.empty_like(points),  # filled in (no initial guess is given)
        winSize=(15, 15),
        maxLevel=3,
        criteria=(cv2.TERM_CRITERIA_EPS | cv2.TERM_CRITERIA_COUNT, 20, 0.03),
    )
    return np.asarray(moved), np.asarray(found).ravel() == 1


def follow_box(previous: np.ndarray, image: np.ndarray, box: Box) -> Box | None:
    """`box` on `previous` (RGB) moved to where its content went on `image` (RGB), or None where
    too few of its points could be followed there and back, or the frames differ in size (a
    CVAT task's images may)."""
    if previous.shape != image.shape:
        return None
    before = cv2.cvtColor(previous, cv2.COLOR_RGB2GRAY)
    after = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)
    xs = np.linspace(box.x1 + 0.1 * box.width, box.x2 - 0.1 * box.width, GRID)
    ys = np.linspace(box.y1 + 0.1 * box.height, box.y2 - 0.1 * box.height, GRID)
    start = np.stack(np.meshgrid(xs, ys), axis=-1).reshape(-1, 1, 2).astype(np.float32)
    moved, forward_found = _lucas_kanade(before, after, start)
    back, backward_found = _lucas_kanade(after, before, moved)
    followed = forward_found & backward_found
    if followed.sum() < MIN_POINTS:
        return None
    error = np.linalg.norm((start - back).reshape(-1, 2), axis=1)
    followed &= error <= np.median(error[followed])
    a, b = start.reshape(-1, 2)[followed], moved.reshape(-1, 2)[followed]
    dx, dy = np.median(b - a, axis=0)
    first, second = np.triu_indices(len(a), 1)
    apart_before = np.linalg.norm(a[first] - a[second], axis=1)
    apart_after = np.linalg.norm(b[first] - b[second], axis=1)
    spread = apart_before > 1.0
    scale = float(np.median(apart_after[spread] / apart_before[spread])) if spread.any() else 1.0
    cx, cy = (box.x1 + box.x2) / 2 + float(dx), (box.y1 + box.y2) / 2 + float(dy)
    half_width, half_height = box.width * scale / 2, box.height * scale / 2
    return Box(cx - half_width, cy - half_height, cx + half_width, cy + half_height)
