"""Label Studio regions <-> the core's prompts and masks.

Label Studio gives coordinates in percent of the image (`original_width` / `original_height`
say its pixel size); a rectangle's `rotation` turns it, in degrees clockwise, about its
top-left corner. The core works in pixels. Conversion happens here, once.
"""

from __future__ import annotations

import math
import uuid
from collections.abc import Callable
from typing import Any

import numpy as np

from backends.labelstudio.brush import encode_brush_rle
from backends.labelstudio.label_config import Control, LabelConfig
from backends.request_errors import RequestError
from polypseg.formats.polygons import mask_to_polygons
from polypseg.label_sources import latest_annotation as latest_of
from polypseg.prompts import Box, Point, Prompt

Region = dict[str, Any]


def as_object(value: Any, what: str) -> dict[str, Any]:
    """`value` as a JSON object (None as an empty one), or a 422 naming `what`."""
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise RequestError(f"{what} must be an object, not {type(value).__name__}")
    return value


def as_regions(value: Any, what: str) -> list[Region]:
    """`value` as a list of region objects, or a 422 naming `what`."""
    if not isinstance(value, list) or not all(isinstance(r, dict) for r in value):
        raise RequestError(f"{what} must be a list of region objects")
    return value


def _number(value: dict[str, Any], key: str) -> float:
    try:
        number = float(value[key])
    except (KeyError, TypeError, ValueError):
        raise RequestError(f"region value has no numeric {key!r}") from None
    if not math.isfinite(number):
        raise RequestError(f"region value {key!r} is not a finite number")
    return number


def rectangle_box(value: dict[str, Any], width: int, height: int) -> Box:
    """The pixel box around a (possibly rotated) percent rectangle."""
    x, y = _number(value, "x") * width / 100, _number(value, "y") * height / 100
    w, h = _number(value, "width") * width / 100, _number(value, "height") * height / 100
    if w <= 0 or h <= 0:
        raise RequestError(f"the box has no area ({w:.1f} x {h:.1f} px)")
    angle = math.radians(_number(value, "rotation") if value.get("rotation") is not None else 0.0)
    cos, sin = math.cos(angle), math.sin(angle)
    corners = [
        (x + dx * cos - dy * sin, y + dx * sin + dy * cos) for dx, dy in ((0, 0), (w, 0), (0, h), (w, h))
    ]
    xs, ys = [c[0] for c in corners], [c[1] for c in corners]
    return Box(min(xs), min(ys), max(xs), max(ys))


def box_value(box: Box, width: int, height: int) -> dict[str, float]:
    """A pixel box as Label Studio's percent x, y, width, height."""
    return {
        "x": 100 * box.x1 / width,
        "y": 100 * box.y1 / height,
        "width": 100 * box.width / width,
        "height": 100 * box.height / height,
        "rotation": 0,
    }


# A click's sign: Label Studio 1.23 sets `is_positive: false` on a smart keypoint placed with
# Alt held; the shipped config also offers it as a label of its own ("Background", beside "On
# the polyp"), which Label Studio sends as the keypoint's label with `is_positive: true`. A
# label that is neither kind is refused rather than guessed.
NEGATIVE_CLICK_LABELS = frozenset({"background", "negative"})
POSITIVE_CLICK_LABELS = frozenset({"on the polyp", "polyp", "positive", "foreground"})


def _is_positive_click(region: Region, labels: Any) -> bool:
    named = [str(label).strip().lower() for label in labels] if isinstance(labels, list) else []
    unknown = [label for label in named if label not in NEGATIVE_CLICK_LABELS | POSITIVE_CLICK_LABELS]
    if unknown:
        raise RequestError(
            f"a click labelled {unknown[0]!r} is neither on the polyp nor background; label it "
            "'On the polyp' or 'Background'"
        )
    negative = any(label in NEGATIVE_CLICK_LABELS for label in named)
    return bool(region.get("is_positive", True)) and not negative


def prompt_from_context(
    regions: list[Region], object_name: str, width: int, height: int
) -> tuple[Prompt, list[str]]:
    """The prompt of the smart regions the user just drew on the image, and their labels."""
    box: Box | None = None
    points: list[Point] = []
    labels: list[str] = []
    for region in regions:
        if region.get("to_name") not in (None, object_name):
            continue
        if region.get("image_rotation"):
            raise RequestError(
                "the image is shown rotated in Label Studio; rotate it back to 0 degrees to use polypseg"
            )
        kind, value = region.get("type", ""), as_object(region.get("value"), "a region's value")
        if kind in ("rectanglelabels", "rectangle"):
            box = rectangle_box(value, width, height)
        elif kind in ("keypointlabels", "keypoint"):
            x, y = _number(value, "x") * width / 100, _number(value, "y") * height / 100
            points.append(Point(x, y, positive=_is_positive_click(region, value.get(kind))))
        else:
            continue
        labels.extend(value.get(kind, []) if isinstance(value.get(kind), list) else [])
    if box is None and not points:
        raise RequestError("the context holds no rectangle or keypoint on the image to segment from")
    return Prompt(box=box, points=tuple(points)), labels


def mask_regions(mask: np.ndarray, score: float, config: LabelConfig, labels: list[str]) -> list[Region]:
    """A brush region (RLE) for the mask, and polygon regions (one per outline) where the
    config has a polygon control; labelled with the user's label where the control has it."""
    height, width = mask.shape
    common = {"to_name": config.object_name, "original_width": width, "original_height": height}

    def region(control: Control, value: dict[str, Any]) -> Region:
        if control.result_type.endswith("labels"):
            value[control.result_type] = control.label_for(labels)
        kind = {"from_name": control.name, "type": control.result_type}
        return {
            "id": uuid.uuid4().hex[:10],
            **kind,
            "value": value,
            "score": score,
            "image_rotation": 0,
            **common,
        }

    regions: list[Region] = []
    if config.mask_control is not None:
        regions.append(region(config.mask_control, {"format": "rle", "rle": encode_brush_rle(mask)}))
    if config.polygon_control is not None:
        for outline in mask_to_polygons(mask):  # as Label Studio's canvas draws pixels
            points = [[100 * float(x) / width, 100 * float(y) / height] for x, y in outline.outer]
            regions.append(region(config.polygon_control, {"points": points, "closed": True}))
    return regions


def task_rectangles(task: dict[str, Any], object_name: str) -> list[Region]:
    """The rectangles on a task's latest annotation, or else its latest prediction."""
    return task_regions(
        task, lambda r: r.get("type") in ("rectanglelabels", "rectangle") and r.get("to_name") == object_name
    )


def latest_annotation(
    task: dict[str, Any], key: str = "annotations", wanted: Callable[[Region], bool] | None = None
) -> dict[str, Any] | None:
    """Of a task's annotations (or, with `key="predictions"`, its predictions) that are not
    cancelled and, where `wanted` is given, hold a wanted region, the one edited last by the
    core's rule (`polypseg.label_sources`: times compared as times, ties to the larger id)."""
    candidates = [
        a
        for a in task.get(key) or []
        if isinstance(a, dict)
        and not a.get("was_cancelled")
        and isinstance(a.get("result"), list)
        and (wanted is None or any(isinstance(r, dict) and wanted(r) for r in a["result"]))
    ]
    return latest_of(
        candidates,
        lambda a: str(a.get("updated_at") or a.get("created_at") or ""),
        lambda a: int(a.get("id") or 0),
    )


def task_regions(task: dict[str, Any], wanted: Callable[[Region], bool]) -> list[Region]:
    """The `wanted` regions on a task's latest annotation that has any, or else on its latest
    prediction that has any."""
    for key in ("annotations", "predictions"):
        latest = latest_annotation(task, key, wanted)
        if latest is not None:
            return [r for r in latest["result"] if isinstance(r, dict) and wanted(r)]
    return []
