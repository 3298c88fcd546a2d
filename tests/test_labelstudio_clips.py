"""A video as Label Studio clip tasks (paged frames): `polypseg video-tasks` on the real clip,
and the backend's answers on those tasks, served in-process on the shipped models with the
frames read over HTTP from a loopback file server (standing for Label Studio's media URLs).

The request shapes are Label Studio 1.23.2's, seen in its labelling page
(../shared/notes/labelstudio.md, "Video frames as paginated tasks"): a smart region drawn on
page k carries `item_index` k, and the task's `data.frames` arrive unresolved; the page-level
browser test is tests/test_labelstudio_video_masks.py.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient

from backends.labelstudio.brush import decode_brush_rle
from backends.labelstudio.model import PolypModel
from backends.labelstudio.server import create_app
from backends.labelstudio.settings import Settings
from conftest import CLIP_POLYP, DATA, box_iou
from labelstudio_fixtures import CONFIGS, TOKEN, file_server, rectangle
from polypseg.cli import main
from polypseg.masks import mask_box
from polypseg.predictors import build_predictor

CLIP = DATA / "video" / "colonoscopy-clip-1.mp4"
CONFIG = (CONFIGS / "polyp-video-masks.xml").read_text()
WIDTH, HEIGHT = 560, 480
FIRST = 150  # the clip task of frames 150-179: the polyp large at the lower right, boxed by hand twice


@pytest.fixture(scope="module")
def clips(tmp_path_factory) -> Iterator[tuple[list[dict], str]]:
    """The real clip cut by `polypseg video-tasks` into tasks of 30 frames, the frames served
    over HTTP (token-checked, as Label Studio's uploads are)."""
    out = tmp_path_factory.mktemp("clips")
    with file_server(out / CLIP.stem) as media:
        code = main(["video-tasks", str(CLIP), "--out", str(out), "--frames-url", f"{media.url}/data/upload"])
        assert code == 0
        yield json.loads((out / f"{CLIP.stem}-tasks.json").read_text()), media.url


@pytest.fixture(scope="module")
def client(clips) -> TestClient:
    settings = Settings(label_studio_url=clips[1], label_studio_api_key=TOKEN)
    return TestClient(
        create_app(settings, PolypModel(settings, build_predictor())), raise_server_exceptions=False
    )


def clip_task(clips, first: int = FIRST, task_id: int = 11) -> dict:
    (task,) = [t for t in clips[0] if t["data"]["frame_start"] == first]
    return {"id": task_id, **task}


def on_page(region: dict, page: int) -> dict:
    return {**region, "item_index": page}


def ask(client: TestClient, task: dict, regions: list[dict] | None) -> tuple[int, dict]:
    params = {"context": {"result": regions}} if regions is not None else {}
    answer = client.post("/predict", json={"tasks": [task], "label_config": CONFIG, "params": params})
    return answer.status_code, answer.json()


def page_masks(prediction: dict) -> dict[int, np.ndarray]:
    masks = {}
    for region in prediction["result"]:
        assert region["type"] == "brushlabels" and isinstance(region["item_index"], int), region
        assert region["item_index"] not in masks, "two masks on one page"
        masks[region["item_index"]] = decode_brush_rle(region["value"]["rle"], WIDTH, HEIGHT)
    return masks


def inside(mask: np.ndarray, box: tuple[float, ...]) -> float:
    """The share of the mask inside `box` (a margin of 10 px for a hand-drawn box)."""
    x1, y1, x2, y2 = (int(v) for v in box)
    return float(mask[max(y1 - 10, 0) : y2 + 10, max(x1 - 10, 0) : x2 + 10].sum() / max(mask.sum(), 1))


def test_video_tasks_writes_clip_tasks_and_frames(clips, tmp_path: Path) -> None:
    tasks, url = clips
    assert [t["data"]["frame_start"] for t in tasks] == [0, 30, 60, 90, 120, 150, 180]
    assert [len(t["data"]["frames"]) for t in tasks] == [30] * 6 + [1]  # 181 frames
    data = clip_task(clips)["data"]
    assert data["frames"][0] == f"{url}/data/upload/{CLIP.stem}/000150.jpg"
    assert data["frames"][-1].endswith("/000179.jpg")
    assert (data["video"], data["frame_step"], data["fps"]) == (CLIP.name, 1, 25.0)

    # Label Studio local files (the default): paths relative to its document root; a stride
    # takes every n-th frame, and page k shows frame frame_start + k * frame_step
    assert (
        main(["video-tasks", str(CLIP), "--out", str(tmp_path), "--clip-frames", "10", "--stride", "3"]) == 0
    )
    tasks = json.loads((tmp_path / f"{CLIP.stem}-tasks.json").read_text())
    assert len(tasks) == 7 and tasks[1]["data"]["frame_start"] == 30 and tasks[1]["data"]["frame_step"] == 3
    expected = f"/data/local-files/?d={str(tmp_path).lstrip('/')}/{CLIP.stem}/000033.jpg"
    assert tasks[1]["data"]["frames"][1] == expected
    assert len(list((tmp_path / CLIP.stem).glob("*.jpg"))) == 61


def test_video_tasks_refuses_bad_input(tmp_path: Path, caplog) -> None:
    missing = tmp_path / "missing.mp4"
    assert main(["video-tasks", str(missing), "--out", str(tmp_path)]) == 2
    assert f"{missing}: no such video file" in caplog.text
    assert main(["video-tasks", str(CLIP), "--out", str(tmp_path), "--clip-frames", "0"]) == 2
    assert "--clip-frames 0" in caplog.text
    assert main(["video-tasks", str(CLIP), "--out", str(tmp_path), "--files-root", str(tmp_path / "x")]) == 2
    assert "not inside --files-root" in caplog.text


@pytest.mark.slow
def test_a_box_on_one_page_masks_every_page(client, clips) -> None:
    """A box on page 11 (frame 160) is tracked through the clip both ways: a mask on every
    page of the clip, each on its own page, and on frame 172 it lies on the polyp the hand box
    there holds."""
    task = clip_task(clips)
    status, answer = ask(client, task, [on_page(rectangle(CLIP_POLYP[160], WIDTH, HEIGHT), 160 - FIRST)])
    assert status == 200, answer
    (prediction,) = answer["results"]
    masks = page_masks(prediction)
    assert set(range(0, 27)) <= set(masks)  # the polyp is in view on frames 150-176 (blurred after)
    assert box_iou(tuple(mask_box(masks[10]).as_array()), CLIP_POLYP[160]) > 0.6
    assert box_iou(tuple(mask_box(masks[172 - FIRST]).as_array()), CLIP_POLYP[172]) > 0.6
    assert inside(masks[172 - FIRST], CLIP_POLYP[172]) > 0.9
    assert 0.3 < prediction["score"] <= 1.0

    # A second box on page 23 (frame 172) re-anchors the track: the answer holds the pages
    # nearer to it than to the first box (17-30), the first box's pages keep theirs.
    status, again = ask(client, task, [on_page(rectangle(CLIP_POLYP[172], WIDTH, HEIGHT), 172 - FIRST)])
    assert status == 200, again
    masks = page_masks(again["results"][0])
    assert 172 - FIRST in masks and min(masks) == 16 and max(masks) <= 29
    assert box_iou(tuple(mask_box(masks[172 - FIRST]).as_array()), CLIP_POLYP[172]) > 0.7


@pytest.mark.slow
def test_a_click_refines_the_page_it_is_on(client, clips) -> None:
    task = clip_task(clips, task_id=12)
    status, answer = ask(client, task, [on_page(rectangle(CLIP_POLYP[160], WIDTH, HEIGHT), 160 - FIRST)])
    assert status == 200
    tracked = page_masks(answer["results"][0])[4]  # frame 154: a tracked page, no box drawn there
    ys, xs = np.nonzero(tracked)
    y, x = int(np.median(ys)), int(xs.max()) - 6  # inside the mask, near its right edge
    click = {
        "type": "keypointlabels",
        "from_name": "click",
        "to_name": "image",
        "original_width": WIDTH,
        "original_height": HEIGHT,
        "item_index": 4,
        "value": {"x": 100 * x / WIDTH, "y": 100 * y / HEIGHT, "keypointlabels": ["Background"]},
    }
    status, answer = ask(client, task, [click])
    assert status == 200, answer
    masks = page_masks(answer["results"][0])
    assert list(masks) == [4]  # that page only
    assert not masks[4][y, x] and tracked[y, x]  # the clicked pixel left the mask
    assert (masks[4] & tracked).sum() > 0.5 * tracked.sum()  # the rest of the polyp stays


def test_bad_clip_requests_are_refused_with_a_reason(client, clips) -> None:
    task = clip_task(clips, task_id=13)
    box = rectangle(CLIP_POLYP[160], WIDTH, HEIGHT)
    status, answer = ask(client, task, [on_page(box, 30)])
    assert status == 422 and "page 31 (item_index 30) of a task of 30 pages" in answer["error"]
    status, answer = ask(client, task, [box])
    assert status == 422 and "no item_index" in answer["error"]
    status, answer = ask(client, {"id": 14, "data": {"frames": "000150.jpg"}}, [on_page(box, 0)])
    assert status == 422 and "must be a non-empty list of image URLs" in answer["error"]
    broken = {**task, "data": {**task["data"], "frames": ["http://127.0.0.1:9/none.jpg"] * 2}}
    status, answer = ask(client, broken, [on_page(box, 1)])
    assert status in (422, 502) and "none.jpg" in answer["error"]  # the page the box is on: no answer


@pytest.mark.slow
def test_a_page_that_cannot_be_fetched_is_skipped(client, clips, caplog) -> None:
    task = clip_task(clips, task_id=15)
    frames = list(task["data"]["frames"])
    frames[5] = frames[5].replace("000155.jpg", "missing.jpg")
    task = {**task, "data": {**task["data"], "frames": frames[:16]}}
    with caplog.at_level(logging.WARNING):
        status, answer = ask(client, task, [on_page(rectangle(CLIP_POLYP[160], WIDTH, HEIGHT), 10)])
    assert status == 200, answer
    masks = page_masks(answer["results"][0])
    assert 5 not in masks and {0, 4, 6, 15} <= set(masks)
    assert "page 6 (" in caplog.text and "missing.jpg) skipped" in caplog.text


@pytest.mark.slow
def test_retrieve_predictions_on_a_clip(client, clips) -> None:
    """No box yet: the detector's surest page starts a track through the clip (masks on the
    polyp's pages), and the score is 1 - the detector's mean uncertainty over the pages."""
    status, answer = ask(client, clip_task(clips, task_id=16), None)
    assert status == 200, answer
    (prediction,) = answer["results"]
    masks = page_masks(prediction)
    assert len(masks) >= 25
    assert inside(masks[172 - FIRST], CLIP_POLYP[172]) > 0.8
    assert 0.0 < prediction["score"] < 1.0
