"""Per-frame polyp masks from a CVAT task's rectangles (serverless/cvat/boxes_to_masks.py), on
the real colonoscopy clip as a video task: the task's annotations as CVAT's API answers
`GET /api/tasks/{id}/annotations`, turned into cvat_sdk 2.80 models by cvat_sdk's own
deserializer; frames fetched one at a time by index, as the runner fetches them with
`TaskDataset(..., media_download_policy=FETCH_FRAMES_ON_DEMAND)`. Which frames a track covers
follows CVAT's `TrackManager.get_interpolated_shapes` (cvat/apps/dataset_manager/
annotation.py, develop): linear interpolation of rectangles from every visible keyframe to the
next, none from an outside one, the last visible keyframe carried to the task's end.
A live CVAT cannot run here: uploading (`partial_update_annotations`) is not exercised."""

from __future__ import annotations

import numpy as np
import PIL.Image
import pytest
from cvat_sdk import models
from cvat_sdk.api_client import Configuration
from cvat_sdk.api_client.model_utils import validate_and_convert_types
from cvat_sdk.auto_annotation.driver import _DetectionFunctionContextImpl

from conftest import CLIP_POLYP, DATA, box_iou
from polypseg.errors import PolypsegError
from polypseg.formats.cvat_mask import decode_cvat_mask
from polypseg.formats.polygons import Polygon, polygons_to_mask
from polypseg.masks import mask_box
from polypseg.metrics import score_masks
from polypseg.predictors import build_predictor
from polypseg.prompts import Box
from polypseg.video.frames import VideoFileSource
from serverless.cvat.boxes_to_masks import BoxesToMasks, FrameContext, mask_shapes, task_boxes

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


def task_annotations() -> models.LabeledData:
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
            {**rectangle(41, (300, 250, 380, 330)), "type": "polygon", "label_id": POLYP, "group": 0},
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
    return validate_and_convert_types(
        data, (models.LabeledData,), ["received_data"], True, True, Configuration()
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


def test_a_mask_on_every_boxed_frame_of_a_video_task(clip: VideoFileSource, core_mask) -> None:
    frames = clip.info.frame_count
    boxes = task_boxes(task_annotations(), {POLYP}, frames)
    wanted = sorted(f for f in boxes if FIRST <= f <= LAST)  # the frames the hand boxes span
    fetched: list[int] = []

    def fetch(index: int) -> PIL.Image.Image:  # one frame on demand, as the runner fetches it
        fetched.append(index)
        (_, pixels), *_ = clip.frames(index, max_frames=1)
        return PIL.Image.fromarray(pixels)

    function = BoxesToMasks(build_predictor(device="cpu"), boxes)
    shapes = [s for batch in mask_shapes(function, wanted, fetch, POLYP) for s in batch]
    assert fetched == wanted
    assert [s.frame for s in shapes] == wanted  # one mask per boxed frame, keyed by its index
    assert all(s.type.value == "mask" and s.label_id == POLYP and s.source == "auto" for s in shapes)
    width, height = clip.info.width, clip.info.height
    for shape in shapes:
        mask = decode_cvat_mask(shape.points, width, height)
        box = boxes[shape.frame][0]
        frame_pixels = np.asarray(fetch(shape.frame))
        expected = core_mask(frame_pixels, (box.x1, box.y1, box.x2, box.y2))
        assert score_masks(mask, expected).iou > 0.99, shape.frame
    for frame in (FIRST, LAST):  # placed on the polyp the hand box holds
        found = mask_box(decode_cvat_mask(shapes[wanted.index(frame)].points, width, height))
        assert box_iou((found.x1, found.y1, found.x2, found.y2), CLIP_POLYP[frame]) > 0.5


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
    polygons = function.detect(FrameContext(FIRST, "clip", conv_mask_to_poly=True), image)
    assert polygons and all(p.type.value == "polygon" for p in polygons)
    width, height = clip.info.width, clip.info.height
    outline = polygons_to_mask([Polygon(np.asarray(polygons[0].points).reshape(-1, 2))], width, height)
    assert score_masks(outline, decode_cvat_mask(as_mask.points, width, height)).iou > 0.9
    assert function.detect(FrameContext(FIRST + 1, "clip"), image) == []
