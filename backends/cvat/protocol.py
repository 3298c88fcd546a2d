"""CVAT's function wire formats, in and out, as CVAT's own code sends and reads them.

Verified against CVAT's source (develop, late 2026: `cvat/apps/lambda_manager/views.py`,
`cvat-ui/.../controls-side-bar/tools-control.tsx`, `cvat-core/src/ml-model.ts`):

Interactor request: `{"image": base64 frame, "pos_points": [[x, y], ...], "neg_points": [...],
"obj_bbox": [[x1, y1], [x2, y2]] or [] or absent}` in pixels, x before y. Answer (interactor API
version 2): `{"shapes": [{"type": "mask", "points": <CVAT mask encoding: runs over the mask's
box, then the inclusive box x1, y1, x2, y2>, "attributes": [{"spec_id": 0, "value": "<confidence
0..1>"}]}]}`; the UI keeps only mask shapes, places each at its own box, and reads spec_id 0 as
the confidence its threshold slider filters on. `{"shapes": []}` is "nothing found".

Tracker requests: the start call carries `shapes` (one per object, `{"type": "rectangle",
"points": [x1, y1, x2, y2]}` from the UI) and `states: []` (the server's default); a continue
call carries only `states` (the server sends `shapes` empty, or padded with nulls). The answer
has one shape and one state per object, never null; the UI reduces every shape to its bounding
box. Bare point lists and polygon/mask shapes are accepted too, for callers that send them.

Detector request (automatic annotation, one call per frame): `{"image": base64 frame,
"threshold": number}`, the threshold only when the user gave a non-zero one. Answer: a JSON list,
one object per detected polyp, `{"label", "type": "mask", "mask": <the mask's inclusive box,
row by row, as 0/1 values, then x1, y1, x2, y2>, "points": <its outline as a polygon>,
"confidence"}`. The server turns `mask` into its run lengths itself, or takes `points` as a
polygon when the user asked to convert masks to polygons; it reads no confidence.
"""

from __future__ import annotations

import base64
import binascii
import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from backends.request_errors import RequestError
from polypseg.clicks import MAX_CLICKS  # per request; more is a runaway client, not an annotator
from polypseg.errors import InputImageError
from polypseg.formats.cvat_mask import decode_cvat_mask, encode_cvat_mask
from polypseg.formats.polygons import largest_outline
from polypseg.formats.rasterise import fill_polygon
from polypseg.images import read_image
from polypseg.prompts import Box, Point, Prompt

SHAPE_KINDS = ("rectangle", "polygon", "mask")


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
    if isinstance(value, str | bytes) or not hasattr(value, "__iter__"):
        raise RequestError(f"{what} {value!r} is not an [x, y] pair")
    try:
        x, y = (float(v) for v in value)
    except (TypeError, ValueError):
        raise RequestError(f"{what} {value!r} is not an [x, y] pair") from None
    if not (math.isfinite(x) and math.isfinite(y)):
        raise RequestError(f"{what} {value!r} is not finite")
    return x, y


def _clicks(body: dict[str, Any], key: str, what: str, width: int, height: int) -> list[tuple[float, float]]:
    raw = body.get(key)
    if raw is None:
        return []
    if not isinstance(raw, list):
        raise RequestError(f"'{key}' must be a list of [x, y] points")
    if len(raw) > MAX_CLICKS:  # checked before parsing: a huge list is refused cheaply
        raise RequestError(f"too many clicks ({len(raw)} {what}; at most {MAX_CLICKS} in all)")
    clicks = [_xy(p, f"{what} click") for p in raw]
    for x, y in clicks:
        if not (0 <= x < width and 0 <= y < height):
            raise RequestError(f"the {what} click ({x:g}, {y:g}) lies outside the {width}x{height} frame")
    return clicks


def _box(raw: Any) -> Box | None:
    if raw is None or (isinstance(raw, list) and not raw):
        return None
    if not isinstance(raw, list) or len(raw) != 2:
        raise RequestError("'obj_bbox' must be [[x1, y1], [x2, y2]] (or [] for no box)")
    (x1, y1), (x2, y2) = (_xy(p, "obj_bbox corner") for p in raw)
    box = Box(min(x1, x2), min(y1, y2), max(x1, x2), max(y1, y2))
    if box.width <= 0 or box.height <= 0:
        raise RequestError(f"the box {box.describe()} has no area: draw it around the polyp")
    return box


def interaction_prompt(body: dict[str, Any], width: int, height: int, needs_box: bool = False) -> Prompt:
    """The prompt of an interactor request on a width x height frame: the box from `obj_bbox`
    and every click, positive and negative, in the order given."""
    positive = _clicks(body, "pos_points", "positive", width, height)
    negative = _clicks(body, "neg_points", "negative", width, height)
    if len(positive) + len(negative) > MAX_CLICKS:
        raise RequestError(f"too many clicks ({len(positive) + len(negative)}; at most {MAX_CLICKS} in all)")
    box = _box(body.get("obj_bbox"))
    if box is not None and not (box.x1 < width and box.y1 < height and box.x2 > 0 and box.y2 > 0):
        raise RequestError(f"the box {box.describe()} lies outside the {width}x{height} frame")
    if box is None and needs_box:
        raise RequestError(
            "this interactor needs a box around the polyp first: draw the box, then click to correct"
        )
    if box is None and not positive:
        if negative:
            raise RequestError("a negative click needs a box or a positive click on the polyp first")
        raise RequestError("give a box or at least one positive click on the polyp")
    points = [Point(x, y, True) for x, y in positive] + [Point(x, y, False) for x, y in negative]
    return Prompt(box=box, points=tuple(points))


def interaction_answer(mask: np.ndarray, confidence: float) -> dict[str, Any]:
    """The mask as one CVAT mask shape (placed by its own box) with its confidence; no shape
    where the mask is empty."""
    if not mask.any():
        return {"shapes": []}
    value = f"{min(max(confidence, 0.0), 1.0):.4f}"
    shape = {"type": "mask", "points": encode_cvat_mask(mask), "attributes": [{"spec_id": 0, "value": value}]}
    return {"shapes": [shape]}


def detection_threshold(body: dict[str, Any]) -> float | None:
    """The detector request's score floor (0..1), or None where CVAT sent none."""
    raw = body.get("threshold")
    if raw is None:
        return None
    if isinstance(raw, bool) or not isinstance(raw, int | float) or not 0.0 <= raw <= 1.0:
        raise RequestError(f"'threshold' must be a number from 0 to 1, not {raw!r}")
    return float(raw)


def detected_object(mask: np.ndarray, confidence: float, label: str) -> dict[str, Any]:
    """One detected polyp's mask as a CVAT detector answers it: the crop of its inclusive box
    as 0/1 values row by row, then the box (CVAT run-length encodes it), and its largest
    outline as the polygon CVAT keeps instead when asked to convert masks to polygons."""
    ys, xs = np.nonzero(mask)
    x1, y1, x2, y2 = int(xs.min()), int(ys.min()), int(xs.max()), int(ys.max())
    crop = mask[y1 : y2 + 1, x1 : x2 + 1].astype(np.uint8).ravel().tolist()
    found: dict[str, Any] = {
        "label": label,
        "type": "mask",
        "mask": crop + [x1, y1, x2, y2],
        "confidence": f"{min(max(confidence, 0.0), 1.0):.4f}",
    }
    outline = largest_outline(mask)
    if outline:  # a speck has none, and stays a mask
        found["points"] = outline
    return found


@dataclass(frozen=True)
class Shape:
    """One tracked object's shape: kind and pixel points."""

    kind: str  # rectangle, polygon, mask
    points: list[float]

    def prompt(self, width: int, height: int) -> Prompt:
        """The shape as a prompt on a width x height frame: a box, or a mask for outlines."""
        if self.kind == "rectangle":
            x1, y1, x2, y2 = self.points
            box = Box(min(x1, x2), min(y1, y2), max(x1, x2), max(y1, y2))
            if box.width <= 0 or box.height <= 0:
                raise RequestError(f"the rectangle {box.describe()} has no area")
            return Prompt(box=box)
        if self.kind == "polygon":
            mask = fill_polygon(np.asarray(self.points, dtype=np.float64), width, height)  # as CVAT fills it
        else:
            try:
                mask = decode_cvat_mask(self.points, width, height)
            except ValueError as exc:
                raise RequestError(f"mask shape: {exc}") from None
        if not mask.any():
            raise RequestError(f"the {self.kind} covers no pixel of the frame")
        return Prompt(previous_mask=mask)

    def followed(self, mask: np.ndarray, box: Box | None) -> Shape | None:
        """The tracked result as a shape of this kind; None where the polyp is lost."""
        if box is None or not mask.any():
            return None
        if self.kind == "rectangle":
            return Shape("rectangle", [box.x1, box.y1, box.x2, box.y2])
        if self.kind == "polygon":
            outline = largest_outline(mask)
            return Shape("polygon", outline) if outline else None
        return Shape("mask", [float(v) for v in encode_cvat_mask(mask)])

    def as_json(self) -> dict[str, Any]:
        return {"type": self.kind, "points": self.points}


def parse_shape(raw: Any, kinds: tuple[str, ...] = SHAPE_KINDS) -> Shape:
    """A shape as CVAT sends it (`{"type", "points"}`, or bare points: 4 numbers a rectangle,
    more a polygon); `kinds` are the kinds this caller may track."""
    typed = isinstance(raw, dict)
    kind = raw.get("type") if typed else None
    points = raw.get("points") if typed else raw
    if not isinstance(points, list) or not all(
        isinstance(v, int | float) and not isinstance(v, bool) for v in points
    ):
        raise RequestError("a shape is {'type', 'points'} with a flat list of numbers, or that list alone")
    if not all(math.isfinite(v) for v in points):
        raise RequestError("a shape's points must be finite numbers")
    if kind is None:
        kind = "rectangle" if len(points) == 4 else "polygon"
    if kind not in SHAPE_KINDS:
        raise RequestError(f"shape type {kind!r} cannot be tracked: rectangle, polygon or mask")
    if kind not in kinds:
        raise RequestError(
            f"this tracker follows {' and '.join(k + 's' for k in kinds)} only; a {kind} was sent"
        )
    if kind == "rectangle" and len(points) != 4:
        raise RequestError(f"a rectangle is [x1, y1, x2, y2], not {len(points)} numbers")
    if kind == "polygon" and (len(points) < 6 or len(points) % 2):
        raise RequestError("a polygon needs at least 3 [x, y] points")
    if kind == "mask" and len(points) < 5:
        raise RequestError("a mask shape is CVAT's run lengths followed by its box")
    return Shape(kind, [float(v) for v in points])


def tracking_objects(body: dict[str, Any]) -> list[tuple[Any, Any]]:
    """Per tracked object, its (shape, state) as sent; either may be None. Start calls carry
    shapes and `states` [] or null; continue calls carry states and `shapes` [], absent or nulls."""
    shapes, states = body.get("shapes"), body.get("states")
    shapes = [] if shapes is None else shapes
    states = [] if states is None else states
    if not isinstance(shapes, list) or not isinstance(states, list):
        raise RequestError("'shapes' and 'states' must be lists (one entry per tracked object)")
    if shapes and states and len(shapes) != len(states):
        raise RequestError(
            f"{len(shapes)} shapes and {len(states)} states: give one state per shape, or only one of the two"
        )
    count = max(len(shapes), len(states))
    if count == 0:
        raise RequestError("the request has no shapes to start tracking and no states to continue")
    shapes = shapes or [None] * count
    states = states or [None] * count
    for position, (shape, state) in enumerate(zip(shapes, states, strict=True)):
        if shape is None and state is None:
            raise RequestError(
                f"object {position + 1} has neither a shape to start from nor a state to continue"
            )
    return list(zip(shapes, states, strict=True))
