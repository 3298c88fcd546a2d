"""Masks as polygons: outer contours, simplified, with holes and several components."""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from polypseg.formats.rasterise import fill_polygon


@dataclass(frozen=True)
class Polygon:
    """One component's outline and its holes, each an (N, 2) float array of x, y pixels."""

    outer: np.ndarray
    holes: tuple[np.ndarray, ...] = ()


def mask_to_polygons(mask: np.ndarray, tolerance: float = 1.0, min_area: float = 4.0) -> list[Polygon]:
    """Trace a bool mask into polygons, largest first.

    `tolerance` is the Douglas-Peucker distance in pixels (0 keeps every contour pixel);
    components and holes smaller than `min_area` square pixels are dropped.

    Pixel (x, y) is the square from (x, y) to (x + 1, y + 1), as Label Studio's and CVAT's
    canvases draw it, and a polygon holds the pixels whose centres lie inside it, as CVAT's
    export and COCO tools fill polygons (`polypseg.formats.rasterise`; `polygons_to_mask`). The
    outline runs along the boundary pixels' outer edges, a quarter pixel in so that it never
    passes through a pixel's centre: traced on the mask doubled, whose boundary "pixels" are
    half-pixels.
    """
    traced = np.kron(mask.astype(np.uint8), np.ones((2, 2), np.uint8))
    contours, hierarchy = cv2.findContours(traced, cv2.RETR_CCOMP, cv2.CHAIN_APPROX_SIMPLE)
    if hierarchy is None:
        return []
    min_area *= 4  # in the doubled mask's pixels

    def simplify(contour: np.ndarray) -> np.ndarray:
        if tolerance > 0:
            contour = cv2.approxPolyDP(contour, tolerance * 2, closed=True)
        return (contour.reshape(-1, 2).astype(np.float32) + 0.5) / 2

    polygons = []
    for index, (_, _, first_child, parent) in enumerate(hierarchy[0]):
        if parent != -1 or cv2.contourArea(contours[index]) < min_area:
            continue
        holes = []
        child = first_child
        while child != -1:
            if cv2.contourArea(contours[child]) >= min_area:
                holes.append(simplify(contours[child]))
            child = hierarchy[0][child][0]
        outer = simplify(contours[index])
        if len(outer) >= 3:
            polygons.append(Polygon(outer, tuple(h for h in holes if len(h) >= 3)))
    polygons.sort(key=lambda p: -cv2.contourArea(p.outer))
    return polygons


def largest_outline(mask: np.ndarray) -> list[float] | None:
    """The outline of the mask's largest component as flat x, y pixel points (x1, y1, x2, y2, ...)
    rounded to 0.01 px: one polygon for one object, as platforms that keep a single polygon per
    object want it. None where the mask has no component large enough to outline."""
    outlines = mask_to_polygons(mask)
    return outlines[0].outer.reshape(-1).round(2).tolist() if outlines else None


def polygons_to_mask(polygons: list[Polygon], width: int, height: int) -> np.ndarray:
    """Rasterise polygons (holes cut out) into a bool mask, a pixel in where its centre is."""
    mask = np.zeros((height, width), dtype=bool)
    for polygon in polygons:
        mask |= fill_polygon(polygon.outer, width, height)
        for hole in polygon.holes:
            mask &= ~fill_polygon(hole, width, height)
    return mask
