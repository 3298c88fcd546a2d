"""Per-frame polyp masks from a CVAT task's rectangles (backends/cvat/boxes_to_masks.py), on
the real colonoscopy clip as a video task: the task's annotations as CVAT's API answers
`GET /api/tasks/{id}/annotations`, turned into cvat_sdk 2.80 models by cvat_sdk's own
deserializer. Which frames a track covers follows CVAT's `TrackManager.get_interpolated_shapes`
(cvat/apps/dataset_manager/annotation.py, develop): linear interpolation of rectangles from
every visible keyframe to the next, none from an outside one, the last visible keyframe
carried to the task's end.

A live CVAT cannot run here. The whole run (`annotate`) goes through cvat_sdk's real client and
`TaskDataset` against a small stand-in for the few REST endpoints they call (task, labels, data
meta, one frame by number, annotations, the PATCH that adds shapes): it serves the clip's
frames by index as CVAT serves a video task's frames, and records what it is sent."""

from __future__ import annotations

import io
import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlparse

import numpy as np
import PIL.Image
import pytest
from cvat_sdk import models
from cvat_sdk.api_client import Configuration
from cvat_sdk.api_client.model_utils import validate_and_convert_types
from cvat_sdk.auto_annotation.driver import _DetectionFunctionContextImpl
from cvat_sdk.core.client import Client, Config

from backends.cvat.boxes_to_masks import BoxesToMasks, FrameContext, annotate, task_boxes
from conftest import CLIP_POLYP, DATA, box_iou
from polypseg.errors import PolypsegError
from polypseg.formats.cvat_mask import decode_cvat_mask
from polypseg.formats.rasterise import fill_polygon
from polypseg.masks import mask_box
from polypseg.metrics import score_masks
from polypseg.predictors import build_predictor
from polypseg.prompts import Box
from polypseg.video.frames import VideoFileSource

CLIP = DATA / "video" / "colonoscopy-clip-1.mp4"
POLYP, OTHER = 7, 8  # label ids in the task
FIRST, LAST = sorted(CLIP_POLYP)  # frames 160 and 172, boxed by hand
GONE = LAST + 3  # the track is outside from here...
BACK = LAST + 6  # ...and visible again from here to the end


def rectangle(frame: int, points, outside: bool = False) -> dict:
    return {
        "type": "rectangle",
        "frame": frame,
        "points": [float(v) for v in points],
        "occluded": False,
        "outside": outside,
        "z_order": 0,
        "rotation": 0.0,
        "attributes": [],
    }


def annotations_json() -> dict:
    """A polyp track over the clip, a standalone polyp box, and things that must be left alone
    (a polygon, another label's track), as CVAT's API answers them."""
    polyp_track = [
        rectangle(FIRST, CLIP_POLYP[FIRST]),
        rectangle(LAST, CLIP_POLYP[LAST]),
        rectangle(GONE, CLIP_POLYP[LAST], outside=True),
        rectangle(BACK, CLIP_POLYP[LAST]),
    ]
    data = {
        "version": 0,
        "tags": [],
        "shapes": [
            {**rectangle(40, (300, 250, 380, 330)), "label_id": POLYP, "source": "manual", "group": 0},
            {
                **rectangle(41, (300, 250, 380, 330)),
                "type": "polygon",
                "label_id": POLYP,
                "source": "manual",
                "group": 0,
            },
        ],
        "tracks": [
            {
                "frame": FIRST,
                "label_id": POLYP,
                "group": 0,
                "source": "manual",
                "attributes": [],
                "shapes": polyp_track,
            },
            {
                "frame": 10,
                "label_id": OTHER,
                "group": 0,
                "source": "manual",
                "attributes": [],
                "shapes": [rectangle(10, (1, 1, 50, 50))],
            },
        ],
    }
    return data


def task_annotations() -> models.LabeledData:
    """The same, as cvat_sdk reads CVAT's answer."""
    return validate_and_convert_types(
        annotations_json(), (models.LabeledData,), ["received_data"], True, True, Configuration()
    )


@pytest.fixture(scope="module")
def clip() -> VideoFileSource:
    return VideoFileSource(CLIP)


def test_track_boxes_cover_the_frames_cvat_shows(clip: VideoFileSource) -> None:
    frames = clip.info.frame_count
    boxes = task_boxes(task_annotations(), {POLYP}, frames)
    expected_frames = {40, *range(FIRST, GONE), *range(BACK, frames)}
    assert set(boxes) == expected_frames  # no polygon, no other label, nothing while outside
    assert all(len(b) == 1 for b in boxes.values())
    first, last = np.asarray(CLIP_POLYP[FIRST]), np.asarray(CLIP_POLYP[LAST])
    middle = (FIRST + LAST) // 2
    halfway = first + (last - first) * (middle - FIRST) / (LAST - FIRST)
    assert boxes[middle][0] == Box(*halfway)
    assert boxes[FIRST][0] == Box(*first) and boxes[LAST][0] == Box(*last)
    assert boxes[frames - 1][0] == Box(*last)  # the last keyframe carried to the end


class StandInCvat(BaseHTTPRequestHandler):
    """Task 42: the clip as a video task (chunks of video, every frame named after the file)."""

    clip: VideoFileSource
    frames_served: list[int]
    added: list[dict]

    def log_message(self, *args) -> None:  # quiet
        pass

    def _send(self, body: bytes, content_type: str = "application/json") -> None:
        self.send_response(200)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:
        url = urlparse(self.path)
        path, query = url.path.rstrip("/"), parse_qs(url.query)
        info = self.clip.info
        answers = {
            "/api/tasks/42": {
                "id": 42,
                "name": "clip",
                "size": info.frame_count,
                "mode": "interpolation",
                "data_chunk_size": 36,
                "data_original_chunk_type": "video",
                "data_compressed_chunk_type": "video",
                "dimension": "2d",
                "organization": None,
                "jobs": {"count": 1, "completed": 0, "validation": 0, "url": "/api/jobs?task_id=42"},
                "labels": {"url": "/api/labels?task_id=42"},
                "updated_date": "2026-01-01T00:00:00Z",
            },
            "/api/labels": {
                "count": 2,
                "next": None,
                "previous": None,
                "results": [
                    {"id": POLYP, "name": "polyp", "type": "any", "attributes": [], "sublabels": []},
                    {"id": OTHER, "name": "tool", "type": "any", "attributes": [], "sublabels": []},
                ],
            },
            "/api/tasks/42/data/meta": {
                "chunks_updated_date": "2026-01-01T00:00:00Z",
                "deleted_frames": [],
                "frames": [
                    {"name": CLIP.name, "width": info.width, "height": info.height, "related_files": 0}
                ],
            },
            "/api/tasks/42/annotations": self.annotations(),
        }
        if path == "/api/tasks/42/data" and query.get("type") == ["frame"]:
            index = int(query["number"][0])
            self.frames_served.append(index)
            (_, pixels), *_ = self.clip.frames(index, max_frames=1)
            image = io.BytesIO()
            PIL.Image.fromarray(pixels).save(image, "PNG")
            return self._send(image.getvalue(), "image/png")
        self._send(json.dumps(answers[path]).encode())

    def annotations(self) -> dict:
        """The task's annotations with the shapes added so far, as CVAT keeps them."""
        data = annotations_json()
        added = [shape for body in self.added for shape in body["shapes"]]
        data["shapes"] += [shape | {"id": 1000 + n, "group": 0} for n, shape in enumerate(added)]
        return data

    def do_PATCH(self) -> None:
        assert urlparse(self.path).path.rstrip("/") == "/api/tasks/42/annotations"
        assert parse_qs(urlparse(self.path).query)["action"] == ["create"]
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        self.added.append(body)
        self._send(json.dumps(body).encode())


@pytest.fixture()
def cvat(clip: VideoFileSource, tmp_path) -> Iterator[tuple[Client, type[StandInCvat]]]:
    handler = type("Task42", (StandInCvat,), {"clip": clip, "frames_served": [], "added": []})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_port}"
    yield Client(url, config=Config(cache_dir=tmp_path / "cache"), check_server_version=False), handler
    server.shutdown()
    server.server_close()


@pytest.mark.slow
def test_a_mask_on_every_boxed_frame_of_a_video_task(cvat, clip: VideoFileSource, core_mask) -> None:
    client, server = cvat
    boxes = task_boxes(task_annotations(), {POLYP}, clip.info.frame_count)
    added = annotate(client, 42, build_predictor(device="cpu"), "polyp", "polyp")
    shapes = [shape for body in server.added for shape in body["shapes"]]
    assert added == len(shapes)
    # Only the boxed frames were fetched, one each; each got the mask the model gives its box,
    # keyed by the frame's index (none where the model finds nothing in the box).
    assert server.frames_served == sorted(boxes)
    assert all(s["type"] == "mask" and s["label_id"] == POLYP and s["source"] == "auto" for s in shapes)
    width, height = clip.info.width, clip.info.height
    by_frame = {s["frame"]: s for s in shapes}
    assert len(by_frame) == len(shapes)
    for frame in sorted(boxes):
        box = boxes[frame][0]
        (_, pixels), *_ = clip.frames(frame, max_frames=1)
        expected = core_mask(pixels, (box.x1, box.y1, box.x2, box.y2))
        if not expected.any():
            assert frame not in by_frame
            continue
        mask = decode_cvat_mask(by_frame[frame]["points"], width, height)
        assert score_masks(mask, expected).iou > 0.99, frame
    assert set(range(FIRST, LAST + 1)) <= set(by_frame)  # the polyp is in view on these
    masks = {s["frame"]: decode_cvat_mask(s["points"], width, height) for s in shapes}
    for frame in (FIRST, LAST):  # placed on the polyp the hand box holds
        found = mask_box(masks[frame])
        assert box_iou((found.x1, found.y1, found.x2, found.y2), CLIP_POLYP[frame]) > 0.5

    # Run again (as after a run that stopped part-way): the frames that have their mask are
    # neither fetched nor given a second one.
    server.frames_served.clear()
    assert annotate(client, 42, build_predictor(device="cpu"), "polyp", "polyp") == 0
    assert server.frames_served == sorted(set(boxes) - set(by_frame))  # only where none was found
    assert len([s for body in server.added for s in body["shapes"]]) == len(shapes)


def test_a_task_without_the_label_is_refused_with_its_labels(cvat) -> None:
    client, server = cvat
    with pytest.raises(PolypsegError, match=r"no label 'lesion' .*its labels: polyp, tool"):
        annotate(client, 42, build_predictor(device="cpu"), "lesion", "lesion")
    assert server.added == [] and server.frames_served == []


def test_the_function_needs_the_frame_index_and_honours_polygon_requests(clip: VideoFileSource) -> None:
    boxes = {FIRST: [Box(*CLIP_POLYP[FIRST])]}
    function = BoxesToMasks(build_predictor(device="cpu"), boxes)
    assert [label.name for label in function.spec.labels] == ["polyp"]
    (_, pixels), *_ = clip.frames(FIRST, max_frames=1)
    image = PIL.Image.fromarray(pixels)
    # cvat_sdk's own context (cvat-cli task auto-annotate) carries only the frame's file name,
    # the same for every frame of a video task: refused, saying why.
    named = _DetectionFunctionContextImpl(frame_name="colonoscopy-clip-1.mp4")
    with pytest.raises(PolypsegError, match="frame's index"):
        function.detect(named, image)
    (as_mask,) = function.detect(FrameContext(FIRST, "colonoscopy-clip-1.mp4"), image)
    # One polygon per box, as the detector function answers conv_mask_to_poly.
    (as_polygon,) = function.detect(FrameContext(FIRST, "clip", conv_mask_to_poly=True), image)
    assert as_polygon.type.value == "polygon"
    width, height = clip.info.width, clip.info.height
    outline = fill_polygon(np.asarray(as_polygon.points), width, height)
    assert score_masks(outline, decode_cvat_mask(as_mask.points, width, height)).iou > 0.9
    assert function.detect(FrameContext(FIRST + 1, "clip"), image) == []
