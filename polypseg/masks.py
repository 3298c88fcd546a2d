"""Operations on binary masks: cleaning, boxes, the ellipse baseline, overlays."""

from __future__ import annotations

import cv2
import numpy as np
from scipy import ndimage

from polypseg.prompts import Box, Prompt

# The least a true polyp is: a component of 16 pixels or more, at least 4 pixels on each side.
# Smaller ones are specks, and narrower ones strips, that an annotation tool leaves behind: 6 of
# Kvasir-SEG's 949 official boxes are 1-3 pixels wide or high (a 3 x 134 strip along the frame's
# edge, a 129 x 1 line along its top), and no detector or prompt can find a polyp there.
MIN_POLYP_AREA = 16
MIN_POLYP_SIDE = 4


def is_sliver(box: Box) -> bool:
    """Whether a box is too narrow to hold a polyp (`MIN_POLYP_SIDE`)."""
    return min(box.width, box.height) < MIN_POLYP_SIDE


def fill_holes(mask: np.ndarray) -> np.ndarray:
    """Fill enclosed holes: a polyp outline has none (glare spots make them in predictions)."""
    return ndimage.binary_fill_holes(mask)


def keep_prompted_components(mask: np.ndarray, prompt: Prompt) -> np.ndarray:
    """Drop connected components that neither overlap the box nor hold a positive click.

    Specks far from where the annotator pointed are noise; what touches the prompt stays.
    If nothing touches it, the mask is returned unchanged rather than emptied.
    """
    labels, count = ndimage.label(mask)
    if count <= 1:
        return mask
    keep = np.zeros(count + 1, dtype=bool)
    if prompt.box is not None:
        b = prompt.box
        window = labels[int(b.y1) : int(np.ceil(b.y2)), int(b.x1) : int(np.ceil(b.x2))]
        keep[np.unique(window)] = True
    for p in prompt.positive_points:
        keep[labels[int(p.y), int(p.x)]] = True
    keep[0] = False
    if not keep.any():
        return mask
    return keep[labels]


def clean_mask(mask: np.ndarray, prompt: Prompt) -> np.ndarray:
    """Fill holes and drop specks away from the prompt."""
    return fill_holes(keep_prompted_components(mask, prompt))


def mask_box(mask: np.ndarray) -> Box | None:
    """The tight box around all of the mask (x2, y2 exclusive), None for an empty mask."""
    ys, xs = np.nonzero(mask.any(axis=1))[0], np.nonzero(mask.any(axis=0))[0]
    if ys.size == 0:
        return None
    return Box(float(xs[0]), float(ys[0]), float(xs[-1] + 1), float(ys[-1] + 1))


def component_boxes(mask: np.ndarray, min_area: int = MIN_POLYP_AREA) -> list[Box]:
    """The tight box of each connected component at least `min_area` pixels large and not a
    sliver (`is_sliver`)."""
    labels, _ = ndimage.label(mask)
    boxes = []
    for index, window in enumerate(ndimage.find_objects(labels), start=1):
        if window is None or (labels[window] == index).sum() < min_area:
            continue
        ys, xs = window
        box = Box(float(xs.start), float(ys.start), float(xs.stop), float(ys.stop))
        if not is_sliver(box):
            boxes.append(box)
    return boxes


def ellipse_in_box(box: Box, width: int, height: int) -> np.ndarray:
    """The ellipse inscribed in the box: the trivial baseline any model must beat."""
    yy, xx = np.mgrid[0:height, 0:width]
    cx, cy = (box.x1 + box.x2) / 2, (box.y1 + box.y2) / 2
    rx, ry = max(box.width / 2, 0.5), max(box.height / 2, 0.5)
    return ((xx + 0.5 - cx) / rx) ** 2 + ((yy + 0.5 - cy) / ry) ** 2 <= 1.0


def draw_overlay(image: np.ndarray, mask: np.ndarray, prompt: Prompt | None = None) -> np.ndarray:
    """The image with the mask tinted green, its outline, and the prompt drawn on it."""
    out = image.copy()
    green = np.array([0, 255, 0], dtype=np.float32)
    out[mask] = (0.6 * out[mask] + 0.4 * green).astype(np.uint8)
    contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    cv2.drawContours(out, contours, -1, (0, 255, 0), 2)
    if prompt is not None and prompt.box is not None:
        b = prompt.box
        cv2.rectangle(out, (int(b.x1), int(b.y1)), (int(b.x2) - 1, int(b.y2) - 1), (255, 255, 0), 2)
    for p in prompt.points if prompt is not None else ():
        colour = (0, 0, 255) if p.positive else (255, 0, 0)
        cv2.circle(out, (int(p.x), int(p.y)), 5, colour, -1)
    return out
