"""CVAT exports into the dataset store: task, job and project exports, image and video tasks,
"CVAT for images 1.1" and "CVAT for video 1.1", polygons filled as CVAT fills them.

The archives are laid out as CVAT's exporter writes them (cvat-ai/cvat read at commit
a01a8a8ff5aa, the 2.x server code that cvat-sdk 2.80 talks to):
`cvat/apps/dataset_manager/formats/cvat.py` (the XML writer
`create_xml_dumper`, `dump_as_cvat_annotation` for images, `dump_as_cvat_interpolation` for
video, `_export_task_or_job` / `_export_project` / `dump_media_files` for the archive) and
`bindings.py` (the meta blocks `TaskData.meta_for_task`, `JobData._init_meta`,
`ProjectData._init_meta`; video frame names `frame_{:06d}` and the project's frame offsets).
Video frames are stored with the frame provider's `VIDEO_FRAME_EXT`, ".PNG"
(`cvat/apps/engine/frame_provider.py`). Polygon fills are checked against pycocotools 2.0.11
(`common/maskApi.c`, `rleFrPoly`), which CVAT's mask export calls through Datumaro. Images and
masks are real Kvasir-SEG ones.
"""

from __future__ import annotations

import io
import os
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from xml.sax.saxutils import XMLGenerator

import numpy as np
import pytest
from PIL import Image

from backends.cvat.export import pull_cvat_archive
from conftest import KVASIR
from polypseg.data_store import DatasetStore, entry_key
from polypseg.errors import DatasetError, PolypsegError
from polypseg.formats.cvat_mask import encode_cvat_mask
from polypseg.formats.polygons import mask_to_polygons
from polypseg.formats.rasterise import fill_polygon
from polypseg.images import read_image, read_mask
from polypseg.metrics import score_masks

# ---------------------------------------------------------------- archives as CVAT writes them

Meta = list[tuple[str, Any]]  # ordered: (tag, text) or (tag, Meta) or (tag, [(tag, Meta), ...])


class CvatXml:
    """annotations.xml as CVAT's XmlAnnotationWriter writes it: XMLGenerator, utf-8, two-space
    indentation, <version>1.1</version>, then <meta>, then images or tracks."""

    def __init__(self) -> None:
        self.buffer = io.StringIO()
        self.xml = XMLGenerator(self.buffer, "utf-8")
        self.level = 0
        self.xml.startDocument()
        self.xml.startElement("annotations", {})
        self.level = 1
        self._text("version", "1.1")

    def _indent(self) -> None:
        self.xml.ignorableWhitespace("\n" + "  " * self.level)

    def _text(self, tag: str, text: str) -> None:
        self._indent()
        self.xml.startElement(tag, {})
        self.xml.characters(text)
        self.xml.endElement(tag)

    def _meta(self, items: Meta) -> None:
        self.level += 1
        for tag, value in items:
            if isinstance(value, list):
                self._indent()
                self.xml.startElement(tag, {})
                self._meta(value)
                self._indent()
                self.xml.endElement(tag)
            else:
                self._text(tag, value)
        self.level -= 1

    def meta(self, items: Meta) -> None:
        self._indent()
        self.xml.startElement("meta", {})
        self._meta(items)
        self._indent()
        self.xml.endElement("meta")

    def open(self, tag: str, attributes: dict[str, str]) -> None:
        self._indent()
        self.xml.startElement(tag, attributes)
        self.level += 1

    def close(self, tag: str) -> None:
        self.level -= 1
        self._indent()
        self.xml.endElement(tag)

    def leaf(self, tag: str, attributes: dict[str, str]) -> None:
        self.open(tag, attributes)
        self.close(tag)

    def finish(self) -> bytes:
        self.close("annotations")
        self._indent()
        self.xml.endDocument()
        return self.buffer.getvalue().encode()


LABELS: Meta = [
    ("label", [("name", "polyp"), ("color", "#fa3253"), ("type", "any"), ("attributes", [])]),
    ("label", [("name", "instrument"), ("color", "#33ddff"), ("type", "any"), ("attributes", [])]),
]


def task_meta(task_id: int, size: int, video: tuple[int, int] | None, updated: str, subset: str = "") -> Meta:
    """TaskData.meta_for_task."""
    meta: Meta = [
        ("id", str(task_id)),
        ("name", f"colonoscopy {task_id}"),
        ("size", str(size)),
        ("mode", "interpolation" if video else "annotation"),
        ("overlap", "0"),
        ("bugtracker", ""),
        ("created", "2026-11-20 09:00:00.000000+00:00"),
        ("updated", updated),
        ("subset", subset or "default"),
        ("start_frame", "0"),
        ("stop_frame", str(size - 1)),
        ("frame_filter", ""),
        (
            "segments",
            [
                (
                    "segment",
                    [
                        ("id", str(task_id * 10)),
                        ("start", "0"),
                        ("stop", str(size - 1)),
                        ("url", f"http://cvat.local/api/jobs/{task_id * 10}"),
                    ],
                )
            ],
        ),
        ("owner", [("username", "annotator"), ("email", "annotator@example.org")]),
        ("assignee", ""),
        ("labels", LABELS),
    ]
    if video:
        meta += [("original_size", [("width", str(video[0])), ("height", str(video[1]))])]
        meta += [("source", "colonoscopy.mp4")]
    return meta


def job_meta(job_id: int, start: int, stop: int, video: tuple[int, int] | None, updated: str) -> Meta:
    """JobData._init_meta: the job's block, `dumped`, then the video size beside them."""
    job: Meta = [
        ("id", str(job_id)),
        ("size", str(stop - start + 1)),
        ("mode", "interpolation" if video else "annotation"),
        ("overlap", "0"),
        ("bugtracker", ""),
        ("created", "2026-11-20 09:00:00.000000+00:00"),
        ("updated", updated),
        ("subset", "default"),
        ("start_frame", str(start)),
        ("stop_frame", str(stop)),
        ("frame_filter", ""),
        (
            "segments",
            [
                (
                    "segment",
                    [
                        ("id", "7"),
                        ("start", str(start)),
                        ("stop", str(stop)),
                        ("url", f"http://cvat.local/api/jobs/{job_id}"),
                    ],
                )
            ],
        ),
        ("owner", [("username", "annotator"), ("email", "annotator@example.org")]),
        ("assignee", ""),
        ("labels", LABELS),
    ]
    meta: Meta = [("job", job), ("dumped", "2026-12-01 08:00:00.000000+00:00")]
    if video:
        meta.append(("original_size", [("width", str(video[0])), ("height", str(video[1]))]))
    return meta


@dataclass
class Shape:
    label: str
    kind: str  # polygon or mask
    geometry: dict[str, str]
    z_order: int = 0


def polygon(points: np.ndarray, label: str = "polyp", z_order: int = 0) -> Shape:
    # dump_as_cvat_annotation: "{:.2f},{:.2f}" pairs joined by ";"
    return Shape(label, "polygon", {"points": ";".join(f"{x:.2f},{y:.2f}" for x, y in points)}, z_order)


def rle_mask(mask: np.ndarray, label: str = "polyp", z_order: int = 0) -> Shape:
    # dump_as_cvat_annotation: rle as str(list)[1:-1] ("a, b, c"), then left, top, width, height
    *runs, x1, y1, x2, y2 = encode_cvat_mask(mask)
    geometry = {"rle": str(runs)[1:-1], "left": str(x1), "top": str(y1)}
    geometry |= {"width": str(x2 - x1 + 1), "height": str(y2 - y1 + 1)}
    return Shape(label, "mask", geometry, z_order)


@dataclass
class FrameLabels:
    name: str  # the image's name in the task (a video frame: frame_000012, no extension)
    number: int  # the frame number CVAT gives it (project-wide in project exports)
    width: int
    height: int
    shapes: list[Shape] = field(default_factory=list)
    subset: str | None = None  # project exports
    task_id: int | None = None  # project exports


def images_body(xml: CvatXml, frames: list[FrameLabels]) -> None:
    """dump_as_cvat_annotation: every frame, empty or not; shapes sorted by z_order."""
    for frame in frames:
        attributes = {"id": str(frame.number), "name": frame.name}
        if frame.task_id is not None:
            attributes |= {"subset": frame.subset or "default", "task_id": str(frame.task_id)}
        attributes |= {"width": str(frame.width), "height": str(frame.height)}
        xml.open("image", attributes)
        for shape in sorted(frame.shapes, key=lambda s: s.z_order):
            head = {"label": shape.label, "source": "manual", "occluded": "0"}
            xml.leaf(shape.kind, head | shape.geometry | {"z_order": str(shape.z_order)})
        xml.close("image")


def video_body(xml: CvatXml, frames: list[FrameLabels], stop_frame: int, task_id: int | None = None) -> None:
    """dump_as_cvat_interpolation for shapes (no tracks): each shape becomes a track, its
    keyframe, then an outside keyframe one frame step later unless that passes stop_frame."""
    track = 0
    for frame in frames:
        for shape in frame.shapes:
            attributes = {"id": str(track), "label": shape.label, "source": "manual"}
            if task_id is not None:
                attributes |= {"task_id": str(task_id), "subset": frame.subset or "default"}
            xml.open("track", attributes)
            for number, outside in ((frame.number, "0"), (frame.number + 1, "1")):
                if outside == "1" and not frame.number + 1 < stop_frame:
                    continue
                head = {"frame": str(number), "keyframe": "1", "outside": outside, "occluded": "0"}
                xml.leaf(shape.kind, head | shape.geometry | {"z_order": str(shape.z_order)})
            xml.close("track")
            track += 1


def kvasir_names(count: int, size: tuple[int, int] | None = None) -> list[str]:
    names = sorted(p.stem for p in (KVASIR / "images").iterdir())
    if size is not None:
        names = [n for n in names if Image.open(KVASIR / "images" / f"{n}.jpg").size == size]
    return names[:count]


def truth(name: str) -> np.ndarray:
    return read_mask(KVASIR / "masks" / f"{name}.jpg")


def png_of(name: str) -> bytes:
    """A video frame as CVAT's frame provider writes it: decoded, then PNG."""
    buffer = io.BytesIO()
    Image.open(KVASIR / "images" / f"{name}.jpg").convert("RGB").save(buffer, format="PNG")
    return buffer.getvalue()


def write_archive(path: Path, xml: bytes, images: dict[str, bytes]) -> Path:
    """_export_task_or_job / _export_project: annotations.xml and images/... in one zip."""
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("annotations.xml", xml)
        for name, data in images.items():
            archive.writestr(f"images/{name}", data)
    return path


def outline(mask: np.ndarray) -> np.ndarray:
    return mask_to_polygons(mask, tolerance=0.5)[0].outer


# ---------------------------------------------------------------- polygons filled as CVAT does


def test_polygons_fill_as_pycocotools_does() -> None:
    # A pixel is inside when its centre is: a 30x30 square covers 900 pixels, its left and top
    # edges' pixels in, its right and bottom edges' out.
    square = fill_polygon(np.array([(10, 10), (40, 10), (40, 40), (10, 40)]), 64, 64)
    expected = np.zeros((64, 64), bool)
    expected[10:40, 10:40] = True
    assert square.sum() == 900 and np.array_equal(square, expected)
    # pycocotools 2.0.11 frPyObjects + decode on two polygons (column-major runs, from 0s).
    golden = {
        ((2, 1), (20, 4), (6, 17)): [41, 2, 18, 6, 14, 10, 11, 13, 7, 14, 6, 14, 6, 13, 7, 12, 8, 11, 10, 9]
        + [11, 8, 12, 7, 13, 6, 14, 5, 15, 4, 17, 2, 18, 1, 115],
        ((3.25, 2.5), (18.75, 5.1), (15.4, 16.6), (1.2, 12.05)): [30, 2, 14, 6, 11, 10, 10, 10, 10, 10]
        + [10, 11, 9, 11, 9, 11, 10, 11, 9, 11, 9, 11, 9, 12, 8, 12, 8, 12, 9, 11, 9, 8, 12, 4, 16, 1, 114],
    }
    for points, counts in golden.items():
        flat = np.repeat(np.arange(len(counts)) % 2 == 1, counts)
        assert np.array_equal(fill_polygon(np.array(points), 24, 20), flat.reshape(24, 20).T), points


def test_polygons_equal_pycocotools_on_random_and_real_outlines() -> None:
    import pycocotools.mask as coco  # a test-only dependency (the dev extra)

    rng = np.random.default_rng(0)
    shapes = [(rng.uniform(-5, 70, (int(rng.integers(3, 12)), 2)), 64, 48) for _ in range(300)]
    shapes += [(outline(truth(name)), *truth(name).shape[::-1]) for name in kvasir_names(5)]
    for points, width, height in shapes:
        reference = coco.decode(coco.frPyObjects([points.ravel().tolist()], height, width)[0])
        assert np.array_equal(fill_polygon(points, width, height), reference.astype(bool))


# ---------------------------------------------------------------- an image task


def image_task_archive(
    path: Path, names: list[str], updated: str, edits: dict[int, list[Shape]] | None = None
) -> list[FrameLabels]:
    """Task 17 of Kvasir images: polygon, RLE masks, a polygon partly under an instrument,
    one image with only a box-free instrument (not a polyp frame)."""
    frames = []
    for i, name in enumerate(names):
        mask = truth(name)
        height, width = mask.shape
        shapes = [polygon(outline(mask))] if i % 2 == 0 else [rle_mask(mask)]
        if i == 2:  # an instrument drawn over the polyp's left part, and one under it
            ys, xs = np.nonzero(mask)
            x0, y0, x1, y1 = xs.min(), ys.min(), (xs.min() + xs.max()) / 2, ys.max()
            cover = np.array([(x0 - 5, y0 - 5), (x1, y0 - 5), (x1, y1 + 5), (x0 - 5, y1 + 5)], float)
            shapes += [polygon(cover, "instrument", z_order=1), polygon(cover + 40, "instrument", z_order=-1)]
        if i == len(names) - 1:
            shapes = [polygon(np.array([(5, 5), (60, 5), (60, 40)], float), "instrument")]
        frames.append(FrameLabels(f"{name}.jpg", i, width, height, (edits or {}).get(i, shapes)))
    xml = CvatXml()
    xml.meta([("task", task_meta(17, len(names), None, updated)), ("dumped", updated + "1")])
    images_body(xml, frames)
    write_archive(path, xml.finish(), {f.name: (KVASIR / "images" / f.name).read_bytes() for f in frames})
    return frames


def stored_mask(store: DatasetStore, source: str, task: str) -> np.ndarray:
    return read_mask(store.root / "masks" / store.index[entry_key(source, task)]["mask"])


def test_image_task_masks_polygons_and_z_order(tmp_path: Path) -> None:
    names = kvasir_names(5)
    frames = image_task_archive(tmp_path / "task.zip", names, "2026-11-29 10:00:00.000000+00:00")
    store = DatasetStore(tmp_path / "store")
    counts = pull_cvat_archive(tmp_path / "task.zip", store)
    assert (counts.new, counts.skipped, len(counts.failed), counts.sequences) == (4, 0, 0, 0)
    assert len(store.index) == 4  # the instrument-only image is not a polyp frame
    for i, name in enumerate(names[:4]):
        mask, true_mask = stored_mask(store, "cvat:17", f"{name}.jpg"), truth(name)
        entry = store.index[entry_key("cvat:17", f"{name}.jpg")]
        assert entry["updated"] == "2026-11-29 10:00:00.000000+00:00" and entry["image"].endswith(".jpg")
        if i % 2 == 1:
            assert np.array_equal(mask, true_mask)  # CVAT's RLE: exact
            continue
        points = np.array(
            [tuple(map(float, p.split(","))) for p in frames[i].shapes[0].geometry["points"].split(";")]
        )
        filled = fill_polygon(points, *true_mask.shape[::-1])
        if i == 2:  # the instrument on top takes its pixels; the one under it takes none
            cover = frames[i].shapes[1].geometry["points"]  # the instrument with z_order 1
            cover_points = np.array([tuple(map(float, p.split(","))) for p in cover.split(";")])
            covered = fill_polygon(cover_points, *true_mask.shape[::-1])
            assert (filled & covered).sum() > 1000
            filled &= ~covered
        assert np.array_equal(mask, filled)
        assert score_masks(mask, true_mask).iou > (0.95 if i == 0 else 0.3)


def test_a_repull_of_unchanged_labels_pulls_nothing(tmp_path: Path) -> None:
    names = kvasir_names(4)
    store = DatasetStore(tmp_path / "store")
    image_task_archive(tmp_path / "task.zip", names, "2026-11-29 10:00:00.000000+00:00")
    pull_cvat_archive(tmp_path / "task.zip", store)
    written = {p: p.stat().st_mtime_ns for p in (tmp_path / "store").rglob("*") if p.is_file()}
    # Exported again later: another dump time, and a task update time moved by an edit that
    # touched no polyp frame. Nothing is rewritten, nothing counts as changed.
    image_task_archive(tmp_path / "task.zip", names, "2026-11-30 12:00:00.000000+00:00")
    counts = pull_cvat_archive(tmp_path / "task.zip", DatasetStore(tmp_path / "store"))
    assert (counts.unchanged, counts.new, counts.changed, counts.removed) == (3, 0, 0, 0)
    assert {p: p.stat().st_mtime_ns for p in (tmp_path / "store").rglob("*") if p.is_file()} == written
    # One polygon edited, one image's polyp deleted.
    edited = rle_mask(np.pad(truth(names[0])[:-40], ((0, 40), (0, 0))))
    image_task_archive(tmp_path / "task.zip", names, "2026-12-01 09:00:00+00:00", {0: [edited], 1: []})
    store = DatasetStore(tmp_path / "store")
    counts = pull_cvat_archive(tmp_path / "task.zip", store)
    assert (counts.changed, counts.removed, counts.unchanged) == (1, 1, 1)
    assert entry_key("cvat:17", f"{names[1]}.jpg") not in store.index


# ---------------------------------------------------------------- a video task, both formats

SIZE = (622, 530)


def video_frames(count: int, offset: int = 0, subset: str | None = None, task_id: int | None = None):
    """Kvasir images of one size as the frames of a video: polyp masks on frames 0 and 5,
    polygons on 2 and 3, nothing on 1 and 4; the PNGs as CVAT stores them."""
    names = kvasir_names(count, SIZE)
    frames = []
    for k, name in enumerate(names):
        shapes = []
        if k in (0, count - 1):
            shapes = [rle_mask(truth(name))]
        elif k in (2, 3):
            shapes = [polygon(outline(truth(name)))]
        number = k + offset
        frames.append(FrameLabels(f"frame_{number:06d}", number, *SIZE, shapes, subset, task_id))
    return names, frames


def video_task_archive(
    path: Path, video_format: bool, updated: str = "2026-11-29 10:00:00+00:00", task_id: int = 31
) -> list[str]:
    names, frames = video_frames(6)
    xml = CvatXml()
    xml.meta([("task", task_meta(task_id, 6, SIZE, updated)), ("dumped", "2026-12-01 08:00:00+00:00")])
    (video_body(xml, frames, stop_frame=5) if video_format else images_body(xml, frames))
    write_archive(
        path, xml.finish(), {f"{f.name}.PNG": png_of(n) for f, n in zip(frames, names, strict=True)}
    )
    return names


@pytest.mark.parametrize("video_format", [False, True], ids=["cvat-for-images", "cvat-for-video"])
def test_video_task_frames_and_sequence(tmp_path: Path, video_format: bool) -> None:
    from polypseg.training.sam2_video import read_sequence

    names = video_task_archive(tmp_path / "video.zip", video_format)
    store = DatasetStore(tmp_path / "store")
    counts = pull_cvat_archive(tmp_path / "video.zip", store)
    assert (counts.new, counts.skipped, counts.sequences) == (4, 0, 1)
    for k in (0, 2, 3, 5):
        entry = store.index[entry_key("cvat:31", f"frame_{k:06d}")]
        assert entry["image"].endswith(".png")  # the real suffix, not a made-up .jpg
        image = read_image(store.root / "images" / entry["image"])
        assert np.array_equal(image, read_image(KVASIR / "images" / f"{names[k]}.jpg"))
        iou = score_masks(stored_mask(store, "cvat:31", f"frame_{k:06d}"), truth(names[k])).iou
        assert iou > (0.9999 if k in (0, 5) else 0.95)
    # The sequence: all six frames in order, masks on the four labelled ones, as the SAM2
    # video fine-tune reads it.
    (entry,) = store.sequences.values()
    sequence = read_sequence(store.root / entry["folder"])
    assert [p.name for p in sequence.frames] == [f"{k:06d}.png" for k in range(6)]
    assert sorted(sequence.masks) == [0, 2, 3, 5]
    assert np.array_equal(read_mask(sequence.masks[5]), truth(names[5]))
    # The other format of the same task holds the same labels: nothing to pull.
    video_task_archive(tmp_path / "other.zip", not video_format, updated="2026-11-30 10:00:00+00:00")
    counts = pull_cvat_archive(tmp_path / "other.zip", store)
    assert (counts.unchanged, counts.new, counts.changed, counts.sequences) == (4, 0, 0, 0)


def test_an_image_task_in_video_format_is_refused_in_one_line(tmp_path: Path) -> None:
    names = kvasir_names(2)
    frames = [
        FrameLabels(f"{n}.jpg", i, *truth(n).shape[::-1], [rle_mask(truth(n))]) for i, n in enumerate(names)
    ]
    xml = CvatXml()
    xml.meta([("task", task_meta(40, 2, None, "2026-11-29")), ("dumped", "2026-12-01")])
    video_body(xml, frames, stop_frame=1)
    write_archive(
        tmp_path / "v.zip", xml.finish(), {f.name: (KVASIR / "images" / f.name).read_bytes() for f in frames}
    )
    with pytest.raises(DatasetError, match="export it as 'CVAT for images 1.1'") as error:
        pull_cvat_archive(tmp_path / "v.zip", DatasetStore(tmp_path / "store"))
    assert "\n" not in str(error.value)


# ---------------------------------------------------------------- a job, a project


def test_job_export_uses_the_job_update_time_and_covers_only_its_frames(tmp_path: Path) -> None:
    names, frames = video_frames(6)
    job_frames = frames[3:]  # the job covers frames 3..5 of the task

    def job_archive(updated: str, shapes_on_5: bool = True) -> Path:
        xml = CvatXml()
        xml.meta(job_meta(55, 3, 5, SIZE, updated))
        if not shapes_on_5:
            job_frames[-1].shapes = []
        images_body(xml, job_frames)
        images = {f"{f.name}.PNG": png_of(names[f.number]) for f in job_frames}
        return write_archive(tmp_path / "job.zip", xml.finish(), images)

    store = DatasetStore(tmp_path / "store")
    counts = pull_cvat_archive(job_archive("2026-11-29 11:00:00+00:00"), store)
    assert (counts.new, counts.sequences) == (2, 1)
    assert {e["updated"] for e in store.index.values()} == {"2026-11-29 11:00:00+00:00"}
    assert {e["source"] for e in store.index.values()} == {"cvat:job:55"}
    counts = pull_cvat_archive(job_archive("2026-11-29 11:00:00+00:00"), store)
    assert (counts.unchanged, counts.new, counts.changed, counts.sequences) == (2, 0, 0, 0)
    # Frame 5's polyp deleted in the job: gone from the store, and the sequence, now labelled
    # on one frame only, is dropped.
    counts = pull_cvat_archive(job_archive("2026-11-30 09:00:00+00:00", shapes_on_5=False), store)
    assert (counts.removed, counts.unchanged) == (1, 1)
    assert not store.sequences and not list((tmp_path / "store" / "sequences").rglob("*.png"))


def test_project_export_with_an_image_task_and_a_video_task(tmp_path: Path) -> None:
    """Two tasks in subset Train: their frame numbers run on (the video task starts at 3, the
    image task's 3 images coming first), images under images/Train/."""
    stills = kvasir_names(3)
    still_frames = [
        FrameLabels(f"{n}.jpg", i, *truth(n).shape[::-1], [rle_mask(truth(n))], "Train", 21)
        for i, n in enumerate(stills)
    ]
    names, frames = video_frames(6, offset=3, subset="Train", task_id=22)
    project: Meta = [
        ("id", "3"),
        ("name", "polyps"),
        ("bugtracker", ""),
        ("created", "2026-11-01 08:00:00+00:00"),
        ("updated", "2026-11-29 12:00:00+00:00"),
        (
            "tasks",
            [
                ("task", task_meta(21, 3, None, "2026-11-28 10:00:00+00:00", "Train")),
                ("task", task_meta(22, 6, SIZE, "2026-11-29 10:00:00+00:00", "Train")),
            ],
        ),
        ("subsets", "Train"),
        ("owner", [("username", "annotator"), ("email", "annotator@example.org")]),
        ("assignee", ""),
        ("labels", LABELS),
    ]
    xml = CvatXml()
    xml.meta([("project", project), ("dumped", "2026-12-01 08:00:00+00:00")])
    images_body(xml, still_frames + frames)
    images = {f"Train/{f.name}": (KVASIR / "images" / f.name).read_bytes() for f in still_frames}
    images |= {f"Train/{f.name}.PNG": png_of(n) for f, n in zip(frames, names, strict=True)}
    write_archive(tmp_path / "project.zip", xml.finish(), images)

    # The video task pulled on its own first: the project's copy of it is the same labels.
    video_task_archive(tmp_path / "task.zip", video_format=False, task_id=22)
    store = DatasetStore(tmp_path / "store")
    assert pull_cvat_archive(tmp_path / "task.zip", store).new == 4
    counts = pull_cvat_archive(tmp_path / "project.zip", store)
    assert (counts.new, counts.unchanged, counts.skipped, counts.sequences) == (3, 4, 0, 0)
    for name in stills:
        assert np.array_equal(stored_mask(store, "cvat:21", f"{name}.jpg"), truth(name))
    assert {e["source"] for e in store.index.values()} == {"cvat:21", "cvat:22"}


def test_project_export_in_video_format(tmp_path: Path) -> None:
    """Two video tasks in one subset: the second one's frames are numbered on from the first's
    six (frame_000006...) in the tracks, and the outside shape that closes a single shape is
    left out where CVAT compares the project-wide frame with the task's stop_frame."""
    first_names, first = video_frames(6, subset="Validation", task_id=22)
    second_names, second = video_frames(6, offset=6, subset="Validation", task_id=23)
    project: Meta = [
        ("id", "4"),
        ("name", "polyp videos"),
        ("bugtracker", ""),
        ("created", "2026-11-01 08:00:00+00:00"),
        ("updated", "2026-11-29 12:00:00+00:00"),
        (
            "tasks",
            [
                ("task", task_meta(22, 6, SIZE, "2026-11-29 10:00:00+00:00", "Validation")),
                ("task", task_meta(23, 6, SIZE, "2026-11-29 10:00:00+00:00", "Validation")),
            ],
        ),
        ("subsets", "Validation"),
        ("owner", [("username", "annotator"), ("email", "annotator@example.org")]),
        ("assignee", ""),
        ("labels", LABELS),
    ]
    xml = CvatXml()
    xml.meta([("project", project), ("dumped", "2026-12-01 08:00:00+00:00")])
    video_body(xml, first, stop_frame=5, task_id=22)
    video_body(xml, second, stop_frame=5, task_id=23)
    images = {f"Validation/{f.name}.PNG": png_of(n) for f, n in zip(first, first_names, strict=True)}
    images |= {f"Validation/{f.name}.PNG": png_of(n) for f, n in zip(second, second_names, strict=True)}
    write_archive(tmp_path / "project.zip", xml.finish(), images)

    store = DatasetStore(tmp_path / "store")
    video_task_archive(tmp_path / "task.zip", video_format=True, task_id=23)  # task 23 on its own first
    assert pull_cvat_archive(tmp_path / "task.zip", store).new == 4
    counts = pull_cvat_archive(tmp_path / "project.zip", store)
    assert (counts.new, counts.unchanged, counts.skipped, counts.sequences) == (4, 4, 0, 1)
    names = {e["task"] for e in store.index.values() if e["source"] == "cvat:23"}
    assert names == {f"frame_{k:06d}" for k in (0, 2, 3, 5)}  # the task's own frame numbers
    assert len(store.sequences) == 2


# ---------------------------------------------------------------- what goes wrong


def test_a_bad_shape_or_a_missing_frame_is_skipped_and_counted(tmp_path: Path) -> None:
    names = kvasir_names(6)
    frames = image_task_archive(tmp_path / "task.zip", names, "2026-11-29")
    bad = rle_mask(truth(names[1]))
    bad.geometry["width"] = str(int(bad.geometry["width"]) + 3)  # runs no longer fill the box
    frames[1].shapes = [bad]
    xml = CvatXml()
    xml.meta([("task", task_meta(17, 6, None, "2026-11-29")), ("dumped", "2026-12-01")])
    images_body(xml, frames)
    images = {f.name: (KVASIR / "images" / f.name).read_bytes() for f in frames if f.number != 2}
    other_size = next(n for n in kvasir_names(50) if truth(n).shape != truth(names[3]).shape)
    images[frames[3].name] = (KVASIR / "images" / f"{other_size}.jpg").read_bytes()  # not its image
    write_archive(tmp_path / "task.zip", xml.finish(), images)  # frame 2's image left out
    store = DatasetStore(tmp_path / "store")
    counts = pull_cvat_archive(tmp_path / "task.zip", store)
    assert (counts.new, counts.skipped, len(counts.failed)) == (2, 2, 1)
    assert set(store.index) == {entry_key("cvat:17", f"{names[i]}.jpg") for i in (0, 4)}


def test_shapes_that_cannot_be_drawn_say_why() -> None:
    from backends.cvat.annotations import Shape as XmlShape

    cases = {
        "polygon": ({"points": "1,1;5,1"}, "2 points"),
        "mask": ({"rle": "5, 10", "left": "60", "top": "0", "width": "5", "height": "3"}, "leaves the 64x48"),
        "box": ({"xtl": "0", "ytl": "0", "xbr": "1e12", "ybr": "5"}, "far outside"),
        "ellipse": ({"cx": "nan", "cy": "3", "rx": "2", "ry": "2"}, "far outside"),
    }
    more = [  # each of these once ended the whole pull (OverflowError, or OpenCV's own error)
        ("ellipse", {"cx": "inf", "cy": "3", "rx": "2", "ry": "2"}, "far outside"),
        ("ellipse", {"cx": "5", "cy": "3", "rx": "1e12", "ry": "2"}, "far outside"),
        ("mask", {"rle": "inf, 10", "left": "0", "top": "0", "width": "5", "height": "3"}, "cannot be drawn"),
        ("mask", {"rle": "1e10, 5", "left": "0", "top": "0", "width": "5", "height": "3"}, "cover"),
    ]
    far_away = XmlShape("polygon", "polyp", 0, {"points": "0,0;1e9,0;0,1e9"})
    with pytest.raises(DatasetError, match="far outside"):
        far_away.fill(64, 48)
    for kind, attributes, reason in [(k, a, r) for k, (a, r) in cases.items()] + more:
        with pytest.raises(DatasetError, match=reason):
            XmlShape(kind, "polyp", 0, attributes).fill(64, 48)


def test_archives_that_are_not_cvat_exports(tmp_path: Path) -> None:
    (tmp_path / "a.zip").write_bytes(b"not a zip")
    with zipfile.ZipFile(tmp_path / "b.zip", "w") as archive:
        archive.writestr("labels.json", "{}")
    with zipfile.ZipFile(tmp_path / "c.zip", "w") as archive:
        archive.writestr("annotations.xml", "<annotations><version>1.1</version><meta>")
    store = DatasetStore(tmp_path / "store")
    for name, reason in (("a", "not a CVAT export"), ("b", "no annotations.xml"), ("c", "not readable XML")):
        with pytest.raises(PolypsegError, match=reason):
            pull_cvat_archive(tmp_path / f"{name}.zip", store)


# ---------------------------------------------------------------- the retrain command's CVAT flags


def test_retrain_from_a_cvat_server_needs_a_url_and_credentials(tmp_path: Path, caplog, monkeypatch) -> None:
    from polypseg.cli import main

    for variable in ("CVAT_URL", "CVAT_ACCESS_TOKEN", "CVAT_USERNAME", "CVAT_PASSWORD"):
        monkeypatch.delenv(variable, raising=False)
    base = ["retrain", "--model-dir", str(tmp_path / "models"), "--dataset", str(tmp_path / "data")]
    assert main([*base, "--cvat-task", "5"]) == 2
    assert "--cvat-url (or CVAT_URL) is needed" in caplog.text
    caplog.clear()
    assert main([*base, "--cvat-task", "5", "--cvat-url", "http://127.0.0.1:9"]) == 2
    assert "set CVAT_ACCESS_TOKEN" in caplog.text and "CVAT_USERNAME and CVAT_PASSWORD" in caplog.text
    # A server that cannot be reached: the source is reported as not pulled, nothing retrains.
    caplog.clear()
    monkeypatch.setenv("CVAT_ACCESS_TOKEN", "a-token")
    assert main([*base, "--cvat-task", "5", "--cvat-url", "http://127.0.0.1:9"]) == 0
    assert "CVAT task 5 at http://127.0.0.1:9 not pulled" in caplog.text
    assert "no retrain this round" in caplog.text
    with pytest.raises(SystemExit):
        main([*base, "--cvat-task", "five"])
    assert not os.path.exists(tmp_path / "models" / "current")


def test_a_sequence_write_that_fails_leaves_the_earlier_one(tmp_path: Path) -> None:
    from polypseg.data_store import LabelledSequence, SequenceFrame

    video_task_archive(tmp_path / "video.zip", video_format=True)
    store = DatasetStore(tmp_path / "store")
    pull_cvat_archive(tmp_path / "video.zip", store)
    (entry,) = store.sequences.values()
    folder = store.root / entry["folder"]
    before = sorted(p.relative_to(folder) for p in folder.rglob("*"))
    good = SequenceFrame(
        0, ".png", lambda: (folder / "frames" / "000000.png").read_bytes(), lambda: truth_like(folder)
    )
    broken = SequenceFrame(1, ".png", lambda: b"not an image", lambda: truth_like(folder))
    with pytest.raises(PolypsegError, match="not a readable image"):
        store.put_sequence(LabelledSequence("cvat:31", "other", "t", [good, broken]))
    assert sorted(p.relative_to(folder) for p in folder.rglob("*")) == before
    assert DatasetStore(tmp_path / "store").sequences == store.sequences
    assert [p.name for p in (store.root / "sequences").rglob("frames")] == ["frames"]  # no half copy


def truth_like(folder: Path) -> np.ndarray:
    return read_mask(folder / "masks" / "000000.png")
