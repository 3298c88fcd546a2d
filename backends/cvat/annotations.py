"""The `annotations.xml` of a CVAT export, read into frames and their shapes.

Checked against CVAT's exporter: cvat-ai/cvat `cvat/apps/dataset_manager/formats/cvat.py` and
`bindings.py` read at commit a01a8a8ff5aa (the newest stored version; the export code of the
CVAT 2.x servers that cvat-sdk 2.80 talks to), `formats/transformations.py` at 03501ddb9b75:

- "CVAT for images 1.1" (`dump_as_cvat_annotation`) writes one `<image id name width height>`
  per frame, empty ones included, holding its shapes sorted by `z_order` (tracks already
  interpolated onto the frame). Project exports add `subset` and `task_id` to each image.
- "CVAT for video 1.1" (`dump_as_cvat_interpolation`) writes `<track>` elements only: one
  shape per frame (`frame`, `outside`, `keyframe`, `z_order`), interpolated frames included;
  single shapes become two-frame tracks (the shape, then `outside="1"` one frame step later).
  Frames have no names there; their size is the video's `original_size`.
- The meta block says what was exported: `meta/task`, `meta/job` (whose video size sits in
  `meta/original_size`) or `meta/project` (with `meta/project/tasks/task` per task); each has
  an `updated` time and a `mode`, "interpolation" for video tasks.
- A video task's frame `k` (counted from 0 by CVAT, `start_frame` and the frame step applied)
  is named `frame_{k:06d}` and stored as `images/frame_{k:06d}.PNG`; in a project export the
  frame numbers of the tasks of one subset run on from task to task (`_init_task_frame_offsets`),
  and images lie under `images/<subset>/`.
"""

from __future__ import annotations

import hashlib
import re
import xml.etree.ElementTree as ET
from collections import defaultdict
from dataclasses import dataclass, field

import numpy as np

from polypseg.errors import DatasetError
from polypseg.formats.cvat_mask import decode_cvat_runs
from polypseg.formats.rasterise import fill_box, fill_ellipse, fill_polygon

FILLED_SHAPES = ("polygon", "mask", "box", "ellipse")  # what CVAT's mask export paints
POLYP_SHAPES = ("polygon", "mask")  # a polyp's outline; its boxes are prompts, not outlines
_OUTLINES = ("points", "rle", "left", "top", "width", "height")  # polygons, masks
GEOMETRY = _OUTLINES + ("xtl", "ytl", "xbr", "ybr", "cx", "cy", "rx", "ry", "rotation")  # + boxes, ellipses
VIDEO_FORMAT = "CVAT for video 1.1"
IMAGES_FORMAT = "CVAT for images 1.1"


@dataclass(frozen=True)
class Shape:
    kind: str  # polygon, mask, box or ellipse
    label: str
    z_order: int
    attributes: dict[str, str]  # the element's attributes: points, rle and its box, xtl..., cx...

    def canonical(self) -> str:
        """What the shape draws, the same whichever format it came in (no frame, keyframe...)."""
        geometry = ",".join(f"{k}={self.attributes[k]}" for k in GEOMETRY if k in self.attributes)
        return f"{self.kind}|{self.label}|{self.z_order}|{geometry}"

    def fill(self, width: int, height: int) -> np.ndarray:
        """The pixels the shape covers; a DatasetError says what is wrong with it."""
        a = self.attributes
        try:
            rotation = float(a.get("rotation", 0))
            if not np.isfinite(rotation):
                raise ValueError("a rotation that is not a number")
            if self.kind == "polygon":
                pairs = [pair.split(",") for pair in a["points"].split(";") if pair.strip()]
                points = np.array([(float(x), float(y)) for x, y in pairs])
                if len(points) < 3:
                    raise ValueError(f"{len(points)} points")
                # Far-off points would make the fine outline walk allocate without bound.
                if not np.isfinite(points).all() or np.abs(points).max() > 4 * (width + height):
                    raise ValueError(f"points far outside the {width}x{height} frame")
                return fill_polygon(points, width, height)
            if self.kind == "mask":
                return _fill_rle(a, width, height)
            if self.kind == "box":
                box = (float(a["xtl"]), float(a["ytl"]), float(a["xbr"]), float(a["ybr"]))
                if not np.isfinite(box).all() or max(map(abs, box)) > 4 * (width + height):
                    raise ValueError(f"a box far outside the {width}x{height} frame")
                return fill_box(*box, rotation, width, height)
            cx, cy, rx, ry = ellipse = [float(a[k]) for k in ("cx", "cy", "rx", "ry")]
            if not np.isfinite(ellipse).all() or max(map(abs, ellipse)) > 4 * (width + height):
                raise ValueError(f"an ellipse far outside the {width}x{height} frame")
            return fill_ellipse(cx, cy, rx, ry, rotation, width, height)
        except (KeyError, ValueError, OverflowError) as exc:  # OverflowError: int() of an infinity
            raise DatasetError(f"a {self.kind} of {self.label!r} cannot be drawn ({exc})") from None


def _fill_rle(a: dict[str, str], width: int, height: int) -> np.ndarray:
    # CVAT writes the runs over the mask's box, row by row, starting with background, then the
    # box as left, top, width, height (dump_as_cvat_annotation; MaskConverter reads them so).
    runs = [int(float(v)) for v in a["rle"].split(",") if v.strip()]
    left, top = int(float(a["left"])), int(float(a["top"]))
    return decode_cvat_runs(runs, left, top, int(float(a["width"])), int(float(a["height"])), width, height)


@dataclass
class Frame:
    source: str  # "cvat:<task id>" or "cvat:job:<job id>": where the store files it
    number: int  # the frame's number in its task (video) or in the export (images)
    name: str  # the name the store keys it by: the image's path, or frame_000012 for video
    file_name: str  # the name its image has in the archive (without images/ and subset)
    subset: str | None  # project exports keep images under images/<subset>/
    width: int
    height: int
    shapes: list[Shape] = field(default_factory=list)  # in drawing order, bottom first

    def polyp_mask(self, label: str) -> np.ndarray:
        """The polyp's pixels as CVAT paints the frame: shapes in z_order, a later (higher)
        shape over an earlier one (Datumaro's CompiledMask.from_instance_masks, which CVAT's
        mask export uses, sorts by z_order and lets each mask overwrite the ones before it);
        another label's shape on top takes its pixels away."""
        mask = np.zeros((self.height, self.width), dtype=bool)
        for shape in self.shapes:
            if shape.label == label and shape.kind in POLYP_SHAPES:
                mask |= shape.fill(self.width, self.height)
            elif shape.label != label and mask.any():
                mask &= ~shape.fill(self.width, self.height)
        return mask

    def labelled(self, label: str) -> bool:
        return any(s.label == label and s.kind in POLYP_SHAPES for s in self.shapes)

    def fingerprint(self) -> str:
        text = "\n".join([f"{self.width}x{self.height}", *(s.canonical() for s in self.shapes)])
        return hashlib.sha1(text.encode()).hexdigest()[:16]


@dataclass
class Source:
    """One task (or job) of an export: its update time, and the frames the export covers
    (labelled or not), so that labels deleted there can be deleted from the store too."""

    id: str
    updated: str
    video: bool
    covered: set[str] = field(default_factory=set)


@dataclass
class Export:
    kind: str  # task, job or project
    format: str  # IMAGES_FORMAT or VIDEO_FORMAT
    sources: dict[str, Source]
    frames: list[Frame]


def _frame_step(frame_filter: str | None) -> int:
    found = re.search(r"step\s*=\s*(\d+)", frame_filter or "")
    return int(found.group(1)) if found else 1


def _int(text: str | None, default: int = 0) -> int:
    try:
        return int(text or default)
    except ValueError:
        return default


def _video_name(number: int) -> str:
    return f"frame_{number:06d}"


@dataclass
class _TaskMeta:
    id: str
    updated: str
    video: bool
    start: int
    stop: int
    step: int
    subset: str
    size: tuple[int, int] | None  # the video's width, height
    offset: int = 0  # project exports: frame numbers of this task start this far on


def _task_meta(element: ET.Element, original_size: ET.Element | None = None) -> _TaskMeta:
    size = element.find("original_size") if original_size is None else original_size
    width, height = (
        (_int(size.findtext("width")), _int(size.findtext("height"))) if size is not None else (0, 0)
    )
    return _TaskMeta(
        id=element.findtext("id", ""),
        updated=element.findtext("updated", ""),
        video=element.findtext("mode") == "interpolation",
        start=_int(element.findtext("start_frame")),
        stop=_int(element.findtext("stop_frame")),
        step=_frame_step(element.findtext("frame_filter")),
        subset=element.findtext("subset") or "default",
        size=(width, height) if width > 0 and height > 0 else None,
    )


def _project_tasks(project: ET.Element) -> dict[str, _TaskMeta]:
    tasks = {}
    running, subset = 0, None
    for element in project.findall("tasks/task"):
        meta = _task_meta(element)
        # ProjectData._init_task_frame_offsets: tasks in (subset, id) order, as the meta lists
        # them; the count restarts with each subset.
        if meta.subset != subset:
            running, subset = 0, meta.subset
        meta.offset = running
        running += meta.start + meta.step * _int(element.findtext("size"))
        tasks[meta.id] = meta
    return tasks


def read_annotations(xml: bytes, fallback_id: str) -> Export:
    """Frames and shapes of an annotations.xml from any CVAT task, job or project export."""
    try:
        root = ET.fromstring(xml)
    except ET.ParseError as exc:
        raise DatasetError(f"annotations.xml is not readable XML ({exc})") from None
    meta = root.find("meta")
    if meta is None:
        raise DatasetError("annotations.xml has no meta block: not a CVAT 1.1 export")
    tasks: dict[str, _TaskMeta]
    if (project := meta.find("project")) is not None:
        kind, tasks = "project", _project_tasks(project)
    elif (job := meta.find("job")) is not None:
        kind, job_meta = "job", _task_meta(job, meta.find("original_size"))
        job_meta.id = f"job:{job_meta.id or fallback_id}"
        tasks = {job_meta.id: job_meta}
    elif (task := meta.find("task")) is not None:
        kind, task_meta = "task", _task_meta(task)
        task_meta.id = task_meta.id or fallback_id
        tasks = {task_meta.id: task_meta}
    else:
        raise DatasetError("annotations.xml names no task, job or project in its meta block")
    video_format = root.find("track") is not None and root.find("image") is None
    sources = {f"cvat:{t.id}": Source(t.id, t.updated, t.video) for t in tasks.values()}
    frames = (
        _track_frames(root, tasks, sources, kind)
        if video_format
        else _image_frames(root, tasks, sources, kind)
    )
    return Export(kind, VIDEO_FORMAT if video_format else IMAGES_FORMAT, sources, frames)


def _shape(element: ET.Element) -> Shape:
    return Shape(element.tag, element.get("label", ""), _int(element.get("z_order")), dict(element.attrib))


def _image_frames(
    root: ET.Element, tasks: dict[str, _TaskMeta], sources: dict[str, Source], kind: str
) -> list[Frame]:
    only = next(iter(tasks.values())) if kind != "project" else None
    frames = []
    for image in root.iter("image"):
        task = tasks.get(image.get("task_id", "")) if only is None else only
        if task is None:
            continue  # a task the meta block does not list: nothing to key its frames by
        file_name = image.get("name", "")
        number = _int(image.get("id")) - task.offset
        # A project's video frames carry the project-wide number; the store keys them by the
        # task's own, as a task export names them.
        name = _video_name(number) if task.video else file_name
        frame = Frame(
            f"cvat:{task.id}",
            number,
            name,
            file_name,
            image.get("subset") if kind == "project" else None,
            _int(image.get("width")),
            _int(image.get("height")),
            [_shape(e) for e in image if e.tag in FILLED_SHAPES],
        )
        frame.shapes.sort(key=lambda s: s.z_order)  # stable: CVAT's own order within a z_order
        sources[frame.source].covered.add(name)
        frames.append(frame)
    return frames


def _track_frames(
    root: ET.Element, tasks: dict[str, _TaskMeta], sources: dict[str, Source], kind: str
) -> list[Frame]:
    only = next(iter(tasks.values())) if kind != "project" else None
    for task in tasks.values():
        if not task.video:
            raise DatasetError(
                f"task {task.id} holds images, whose names a '{VIDEO_FORMAT}' export leaves out: "
                f"export it as '{IMAGES_FORMAT}'"
            )
        if task.size is None:
            raise DatasetError(f"task {task.id}: the export gives no original_size for its video frames")
        sources[f"cvat:{task.id}"].covered.update(
            _video_name(n) for n in range(task.start, task.stop + 1, task.step)
        )
    frames: dict[tuple[str, int], Frame] = {}
    for track in root.iter("track"):
        owner = tasks.get(track.get("task_id", "")) if only is None else only
        if owner is None or owner.size is None:
            continue
        for element in track:
            if element.tag not in FILLED_SHAPES or element.get("outside") == "1":
                continue
            number = _int(element.get("frame"), -1) - owner.offset
            if number < 0:
                continue
            key = (owner.id, number)
            if key not in frames:
                width, height = owner.size
                frames[key] = Frame(
                    f"cvat:{owner.id}",
                    number,
                    _video_name(number),
                    _video_name(number + owner.offset),
                    track.get("subset") if kind == "project" else None,
                    width,
                    height,
                )
            shape = _shape(element)
            frames[key].shapes.append(
                Shape(shape.kind, track.get("label", ""), shape.z_order, shape.attributes)
            )
    ordered = sorted(frames.values(), key=lambda f: (f.source, f.number))
    for frame in ordered:
        frame.shapes.sort(key=lambda s: s.z_order)
    return ordered


def sources_by_frame(frames: list[Frame]) -> dict[str, list[Frame]]:
    grouped: dict[str, list[Frame]] = defaultdict(list)
    for frame in frames:
        grouped[frame.source].append(frame)
    return grouped
