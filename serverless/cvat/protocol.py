"""CVAT's function wire formats, in and out.

Interactor request (CVAT's lambda manager): `{"image": base64 frame, "pos_points": [[x, y],
...], "neg_points": [...], "obj_bbox": [[x1, y1], [x2, y2]] or null, "threshold": ...}`; with
`startswith_box` the lambda manager has already split the first two positive points off as
`obj_bbox`. Answer, as CVAT's UI reads it: `mask` (rows of 0/255 over the crop `bounds` =
`[x1, y1, x2, y2]`, inclusive), `bounds`, and `points` (the outline as [x, y] pairs).

Tracker request: `{"image", "shapes", "states"}`: `shapes` one per tracked object, `states`
absent or null on the first call (start tracking on this frame), else the states this
function answered last time (follow onto this frame). A shape is CVAT's flat `points`
([x1, y1, x2, y2] for a rectangle, [x, y, x, y, ...] for a polygon) or `{"type", "points"}`
with `type` rectangle, polygon or mask (CVAT's mask encoding). Answers keep each shape's kind.
"""

from __future__ import annotations

import base64
import binascii
import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from polypseg.errors import InputImageError
from polypseg.formats.cvat_mask import decode_cvat_mask, encode_cvat_mask
from polypseg.formats.polygons import Polygon, mask_to_polygons, polygons_to_mask
from polypseg.images import read_image
from polypseg.masks import mask_box
from polypseg.prompts import Box, Point, Prompt

MAX_POINTS = 100  # clicks per request; more is a runaway client, not an annotator


class RequestError(Exception):
    """A request that cannot be answered as sent; `status` is the HTTP status to answer."""

    def __init__(self, reason: str, status: int = 400) -> None:
        super().__init__(reason)
        self.reason = reason
        self.status = status


def decode_image(body: dict[str, Any]) -> np.ndarray:
    encoded = body.get("image")
    if not isinstance(encoded, str) or not encoded:
        raise RequestError("the request has no image (base64 frame in 'image')")
    try:
        data = base64.b64decode(encoded, validate=True)
    except (binascii.Error, ValueError):
        raise RequestError("'image' is not valid base64") from None
    try:
        return read_image(data)
    except InputImageError as exc:
        raise RequestError(str(exc)) from None


def _xy(value: Any, what: str) -> tuple[float, float]:
    try:
        x, y = (float(v) for v in value)
    except (TypeError, ValueError):
        raise RequestError(f"{what} {value!r} is not an [x, y] pair") from None
    if not (math.isfinite(x) and math.isfinite(y)):
        raise RequestError(f"{what} {value!r} is not finite")
    return x, y


def _points(body: dict[str, Any], key: str) -> list[tuple[float, float]]:
    raw = body.get(key) or []
    if not isinstance(raw, list):
        raise RequestError(f"'{key}' must be a list of [x, y] points")
    return [_xy(p, f"{key} point") for p in raw]


def interaction_prompt(body: dict[str, Any], needs_box: bool = False) -> Prompt:
    """The prompt of an interactor request: box from `obj_bbox`, positive and negative clicks."""
    positive, negative = _points(body, "pos_points"), _points(body, "neg_points")
    if len(positive) + len(negative) > MAX_POINTS:
        raise RequestError(f"too many points ({len(positive) + len(negative)} > {MAX_POINTS})")
    box = None
    raw_box = body.get("obj_bbox")
    if raw_box:
        if not isinstance(raw_box, list) or len(raw_box) != 2:
            raise RequestError("'obj_bbox' must be [[x1, y1], [x2, y2]]")
        (x1, y1), (x2, y2) = (_xy(p, "obj_bbox corner") for p in raw_box)
        box = Box(min(x1, x2), min(y1, y2), max(x1, x2), max(y1, y2))
        if box.width <= 0 or box.height <= 0:
            raise RequestError(f"the box {box.describe()} has no area: draw it around the polyp")
    if needs_box and box is None:
        raise RequestError("this interactor needs a box around the polyp first")
    if box is None and not positive:
        raise RequestError("give a box or at least one positive click on the polyp")
    points = [Point(x, y, True) for x, y in positive] + [Point(x, y, False) for x, y in negative]
    return Prompt(box=box, points=tuple(points))


def interaction_answer(mask: np.ndarray) -> dict[str, Any]:
    """The mask cropped to its box (0/255 rows), the box as `bounds`, the largest outline."""
    box = mask_box(mask)
    if box is None:
        return {"mask": [], "bounds": [0, 0, 0, 0], "points": []}
    x1, y1, x2, y2 = int(box.x1), int(box.y1), int(box.x2) - 1, int(box.y2) - 1
    crop = mask[y1 : y2 + 1, x1 : x2 + 1].astype(np.uint8) * 255
    outlines = mask_to_polygons(mask)
    points = outlines[0].outer.round(1).tolist() if outlines else []
    return {"mask": crop.tolist(), "bounds": [x1, y1, x2, y2], "points": points}


@dataclass(frozen=True)
class Shape:
    """One tracked object's shape as CVAT sent it: kind, pixel points, and how it came (a bare
    points list or a typed object), so that the answer takes the same form."""

    kind: str  # rectangle, polygon, mask
    points: list[float]
    typed: bool

    def prompt(self, width: int, height: int) -> Prompt:
        """The shape as a prompt on a width x height frame: a box, or a mask for outlines."""
        if self.kind == "rectangle":
            x1, y1, x2, y2 = self.points
            box = Box(min(x1, x2), min(y1, y2), max(x1, x2), max(y1, y2))
            if box.width <= 0 or box.height <= 0:
                raise RequestError(f"the rectangle {box.describe()} has no area")
            return Prompt(box=box)
        if self.kind == "polygon":
            outline = np.asarray(self.points, dtype=np.float64).reshape(-1, 2)
            mask = polygons_to_mask([Polygon(outline)], width, height)
        else:
            try:
                mask = decode_cvat_mask(self.points, width, height)
            except ValueError as exc:
                raise RequestError(f"mask shape: {exc}") from None
        if not mask.any():
            raise RequestError(f"the {self.kind} covers no pixel of the frame")
        return Prompt(previous_mask=mask)

    def answer(self, mask: np.ndarray, box: Box | None) -> Any:
        """The tracked result in this shape's kind and form (None where the polyp is lost)."""
        if box is None:
            return None
        if self.kind == "rectangle":
            points: list[float] = [box.x1, box.y1, box.x2, box.y2]
        elif self.kind == "polygon":
            outlines = mask_to_polygons(mask)
            if not outlines:
                return None
            points = outlines[0].outer.reshape(-1).round(1).tolist()
        else:
            points = [float(v) for v in encode_cvat_mask(mask)]
        return {"type": self.kind, "points": points} if self.typed else points


def parse_shape(raw: Any) -> Shape:
    typed = isinstance(raw, dict)
    kind = raw.get("type") if typed else None
    points = raw.get("points") if typed else raw
    if not isinstance(points, list) or not all(isinstance(v, int | float) for v in points):
        raise RequestError("a shape is a flat list of numbers, or {'type', 'points'}")
    if not all(math.isfinite(v) for v in points):
        raise RequestError("a shape's points must be finite numbers")
    if kind is None:
        kind = "rectangle" if len(points) == 4 else "polygon"
    if kind not in ("rectangle", "polygon", "mask"):
        raise RequestError(f"shape type {kind!r} cannot be tracked: rectangle, polygon or mask")
    if kind == "rectangle" and len(points) != 4:
        raise RequestError("a rectangle is [x1, y1, x2, y2]")
    if kind == "polygon" and (len(points) < 6 or len(points) % 2):
        raise RequestError("a polygon needs at least 3 [x, y] points")
    if kind == "mask" and len(points) < 5:
        raise RequestError("a mask shape is CVAT's run lengths followed by its box")
    return Shape(kind, [float(v) for v in points], typed)


def parse_shapes(body: dict[str, Any]) -> list[Shape]:
    raw = body.get("shapes")
    if not isinstance(raw, list) or not raw:
        raise RequestError("the request has no shapes to track")
    return [parse_shape(s) for s in raw]
