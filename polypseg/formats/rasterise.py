"""Shapes filled as pycocotools fills them: a pixel (the square from (x, y) to (x + 1, y + 1))
belongs to a polygon when its centre lies inside. CVAT fills its annotations so when it turns
them into masks, and so do the COCO tools that read Label Studio's polygon exports; both
platforms' canvases draw pixels as those squares.

CVAT's "Segmentation mask" export (cvat-ai/cvat `cvat/apps/dataset_manager/formats/mask.py`
and `transformations.py`) turns polygons and boxes into masks through Datumaro's
`polygons_to_masks` / `boxes_to_masks`, which call pycocotools' `frPyObjects` (the C function
`rleFrPoly`); rotated boxes become polygons first (`RotatedBoxesToPolygons`), masks come from
the CVAT RLE as they are (`MaskConverter.cvat_rle_to_dm_rle`) and ellipses go through
`cv2.ellipse` (`EllipsesToMasks`).

`fill_polygon` reproduces `rleFrPoly` (pycocotools 2.0.11, `common/maskApi.c`) pixel for pixel
without pycocotools: the outline is walked on a grid five times finer than the pixels, the
points where it crosses a pixel column's centre are kept, and every column is filled between
its crossings. A pixel belongs to the polygon when its centre lies inside, so an axis-aligned
30x30 square covers 900 pixels, not the 961 that filling its edges too would give.
"""

from __future__ import annotations

import math

import cv2
import numpy as np

UPSAMPLE = 5  # rleFrPoly's grid: five sub-steps a pixel


def _c_int(values: np.ndarray) -> np.ndarray:
    """C's (int) cast of doubles: truncation toward zero."""
    return np.trunc(values).astype(np.int64)


def _outline(xs: np.ndarray, ys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Every fine-grid point along the closed outline, edge by edge, each edge from its first
    vertex to its last (both included), the way rleFrPoly steps along the longer axis and
    rounds the other from the end it starts at."""
    x0, y0, x1, y1 = xs[:-1], ys[:-1], xs[1:], ys[1:]
    dx, dy = np.abs(x1 - x0), np.abs(y1 - y0)
    along_x = dx >= dy
    flip = (along_x & (x0 > x1)) | (~along_x & (y0 > y1))
    # Measured from the vertex with the smaller coordinate on the stepping axis.
    sx, ex = np.where(flip, x1, x0), np.where(flip, x0, x1)
    sy, ey = np.where(flip, y1, y0), np.where(flip, y0, y1)
    steps = np.where(along_x, dx, dy)
    with np.errstate(divide="ignore", invalid="ignore"):
        slope = np.where(along_x, (ey - sy) / steps, (ex - sx) / steps)
    slope = np.where(steps == 0, 0.0, slope)  # a repeated vertex: one point, whose value is never read
    counts = steps + 1
    edge = np.repeat(np.arange(len(steps)), counts)
    d = np.arange(counts.sum()) - np.repeat(np.cumsum(counts) - counts, counts)
    t = np.where(flip[edge], steps[edge] - d, d)
    stepped_x = t + sx[edge]
    stepped_y = t + sy[edge]
    rounded_y = _c_int(sy[edge] + slope[edge] * t + 0.5)
    rounded_x = _c_int(sx[edge] + slope[edge] * t + 0.5)
    return np.where(along_x[edge], stepped_x, rounded_x), np.where(along_x[edge], rounded_y, stepped_y)


def fill_polygon(points: np.ndarray, width: int, height: int) -> np.ndarray:
    """A polygon (N, 2) of x, y pixel coordinates as a bool mask (height, width), equal to
    pycocotools.mask.decode(frPyObjects([flat points], height, width)[0])."""
    points = np.asarray(points, dtype=np.float64).reshape(-1, 2)
    mask = np.zeros((height, width), dtype=bool)
    if len(points) == 0 or width <= 0 or height <= 0:
        return mask
    xs = _c_int(UPSAMPLE * points[:, 0] + 0.5)
    ys = _c_int(UPSAMPLE * points[:, 1] + 0.5)
    u, v = _outline(np.append(xs, xs[0]), np.append(ys, ys[0]))
    moved = np.flatnonzero(u[1:] != u[:-1]) + 1  # steps that cross from one fine column to the next
    column = np.where(u[moved] < u[moved - 1], u[moved], u[moved] - 1).astype(np.float64)
    column = (column + 0.5) / UPSAMPLE - 0.5
    keep = (np.floor(column) == column) & (column >= 0) & (column <= width - 1)  # a pixel centre
    row = np.minimum(v[moved], v[moved - 1]).astype(np.float64)
    row = np.ceil(np.clip((row + 0.5) / UPSAMPLE - 0.5, 0, height))
    # Each crossing toggles the column-major run from its pixel on; an even number of toggles
    # at one place cancel out, as rleFrPoly's merging of empty runs does.
    toggles = column[keep].astype(np.int64) * height + row[keep].astype(np.int64)
    flips = np.bincount(toggles, minlength=width * height + 1)[: width * height]
    inside = (np.cumsum(flips) % 2).astype(bool)
    return inside.reshape(width, height).T.copy()


def fill_box(
    xtl: float, ytl: float, xbr: float, ybr: float, rotation: float, width: int, height: int
) -> np.ndarray:
    """A box as CVAT's mask export fills it: rotated boxes become polygons first
    (RotatedBoxesToPolygons, about the centre, degrees clockwise on screen), then every box goes
    through the polygon filler (Datumaro's boxes_to_masks)."""
    corners = np.array([(xtl, ytl), (xbr, ytl), (xbr, ybr), (xtl, ybr)], dtype=np.float64)
    if rotation:
        angle = math.radians(rotation)
        cx, cy = xtl + (xbr - xtl) / 2, ytl + (ybr - ytl) / 2
        cos, sin = math.cos(angle), math.sin(angle)
        corners = np.array(
            [(cx + cos * (x - cx) - sin * (y - cy), cy + sin * (x - cx) + cos * (y - cy)) for x, y in corners]
        )
    return fill_polygon(corners, width, height)


def fill_ellipse(
    cx: float, cy: float, rx: float, ry: float, rotation: float, width: int, height: int
) -> np.ndarray:
    """An ellipse as CVAT's EllipsesToMasks draws it: centre and axes rounded, cv2.ellipse filled."""
    canvas = np.zeros((height, width), dtype=np.uint8)
    cv2.ellipse(canvas, (round(cx), round(cy)), (round(rx), round(ry)), rotation, 0, 360, 255, thickness=-1)
    return canvas.astype(bool)
