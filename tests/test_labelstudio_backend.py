"""The Label Studio backend served in-process (FastAPI's test client) on the shipped model, with
real Kvasir-SEG images and the real clip read over HTTP from a loopback file server."""

from __future__ import annotations

import base64
import json
import math
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient

from backends.labelstudio.brush import decode_brush_rle
from backends.labelstudio.click_sessions import ClickSessions
from backends.labelstudio.label_config import parse_label_config
from backends.labelstudio.model import PolypModel
from backends.labelstudio.regions import mask_regions, rectangle_box
from backends.labelstudio.server import create_app
from backends.labelstudio.settings import Settings
from backends.request_errors import RequestError
from conftest import CLIP_POLYP, DATA, ONE_POLYP, box_iou
from labelstudio_fixtures import CONFIGS, TOKEN, file_server, image_config, predict_body, rectangle
from polypseg.clicks import MAX_CLICKS, next_click
from polypseg.detection_job import build_detector, find_polyps
from polypseg.formats.rasterise import fill_polygon
from polypseg.images import read_image, read_mask
from polypseg.metrics import score_masks
from polypseg.predictors import build_predictor
from polypseg.prompts import Box, Point, Prompt

CLIP = DATA / "video" / "colonoscopy-clip-1.mp4"


@pytest.fixture(scope="module")
def default_predictor():
    return build_predictor()


@pytest.fixture(scope="module")
def servers(kvasir: Path) -> Iterator[tuple]:
    """Two loopback hosts serving the same files: `ls` stands for Label Studio, `other` for a
    host that must never receive Label Studio's token."""
    root = kvasir / "images"
    with file_server(root) as other, file_server(root, redirect_to=other.url) as ls:
        yield ls, other


def make_client(ls_url: str, predictor, **settings) -> tuple[TestClient, list]:
    events: list = []
    config = Settings(**{"label_studio_url": ls_url, "label_studio_api_key": TOKEN, **settings})
    app = create_app(config, PolypModel(config, predictor), on_webhook=lambda e, p: events.append((e, p)))
    return TestClient(app, raise_server_exceptions=False), events


@pytest.fixture(scope="module")
def client(servers, default_predictor) -> TestClient:
    return make_client(servers[0].url, default_predictor)[0]


IMAGE = DATA / "kvasir-seg" / "images" / f"{ONE_POLYP}.jpg"


@pytest.fixture(scope="module")
def polyp(kvasir: Path, boxes) -> tuple[np.ndarray, tuple[float, ...], int, int]:
    mask = read_mask(kvasir / "masks" / f"{ONE_POLYP}.jpg")
    box = boxes[ONE_POLYP][0]
    return mask, (box.x1, box.y1, box.x2, box.y2), mask.shape[1], mask.shape[0]


def brush_mask(region: dict) -> np.ndarray:
    return decode_brush_rle(region["value"]["rle"], region["original_width"], region["original_height"])


def test_health_setup_and_versions(client: TestClient) -> None:
    health = client.get("/health").json()
    assert health["status"] == "UP" and health["model_version"].startswith("clickunet-")
    answer = client.post("/setup", json={"project": "3.17", "schema": image_config()})
    assert answer.status_code == 200 and answer.json() == {"model_version": health["model_version"]}
    assert client.get("/versions").json() == {"versions": [health["model_version"]]}


def test_smart_rectangle_gives_the_polyp_as_a_brush_region(client: TestClient, polyp, core_mask) -> None:
    mask, box, width, height = polyp
    body = predict_body(f"/data/upload/{ONE_POLYP}.jpg", [rectangle(box, width, height)])
    answer = client.post("/predict", json=body)
    assert answer.status_code == 200, answer.text
    (prediction,) = answer.json()["results"]
    (region,) = prediction["result"]
    assert region["type"] == "brushlabels" and region["from_name"] == "mask" and region["to_name"] == "image"
    assert region["value"]["brushlabels"] == ["Polyp"]
    assert prediction["model_version"] == answer.json()["model_version"]
    assert 0 < prediction["score"] <= 1
    assert score_masks(brush_mask(region), core_mask(IMAGE, box)).iou > 0.99


def test_clicks_alone_need_sam2_with_the_default_model(client: TestClient, polyp) -> None:
    _, (x1, y1, x2, y2), width, height = polyp
    click = {
        "type": "keypointlabels",
        "to_name": "image",
        "original_width": width,
        "original_height": height,
        "value": {"x": 50 * (x1 + x2) / width, "y": 50 * (y1 + y2) / height, "keypointlabels": ["Polyp"]},
    }
    # a task no box was drawn on (the module's client keeps other tests' boxes as click sessions)
    answer = client.post("/predict", json=predict_body(f"/data/upload/{ONE_POLYP}.jpg", [click], id=9001))
    assert answer.status_code == 422 and "needs a box" in answer.json()["error"]
    assert "draw the box again" in answer.json()["error"]


def test_clicks_with_sam2(servers, sam2_checkpoint: Path, polyp) -> None:
    """A positive and a negative click reach SAM2 as points where the user put them (random
    weights: the answer must be the model's own answer to those clicks, not an accurate one)."""
    _, (x1, y1, x2, y2), width, height = polyp
    sam2 = build_predictor("sam2", sam2_checkpoint, "cpu", image_size=256)
    client, _ = make_client(servers[0].url, sam2)
    clicks = [
        {
            "type": "keypointlabels",
            "to_name": "image",
            "is_positive": positive,
            "value": {"x": 100 * x / width, "y": 100 * y / height, "keypointlabels": ["Polyp"]},
        }
        for x, y, positive in (((x1 + x2) / 2, (y1 + y2) / 2, True), (5, 5, False))
    ]
    answer = client.post("/predict", json=predict_body(f"/data/upload/{ONE_POLYP}.jpg", clicks))
    assert answer.status_code == 200, answer.text
    (region,) = answer.json()["results"][0]["result"]
    points = (Point((x1 + x2) / 2, (y1 + y2) / 2, True), Point(5, 5, False))
    expected = sam2.predict(read_image(IMAGE), Prompt(points=points)).mask
    assert expected.any() and score_masks(brush_mask(region), expected).iou > 0.99
    assert answer.json()["model_version"] == sam2_checkpoint.stem


def test_label_the_user_picked_and_polygons(client: TestClient, polyp) -> None:
    mask, box, width, height = polyp
    config = """<View><Image name="img" value="$image"/>
      <RectangleLabels name="r" toName="img" smart="true">
        <Label value="Adenoma"/><Label value="Polyp"/>
      </RectangleLabels>
      <BrushLabels name="b" toName="img"><Label value="Polyp"/><Label value="Adenoma"/></BrushLabels>
      <PolygonLabels name="p" toName="img"><Label value="Adenoma"/></PolygonLabels></View>"""
    region = rectangle(box, width, height, label="Adenoma") | {"to_name": "img", "from_name": "r"}
    body = predict_body(f"/data/upload/{ONE_POLYP}.jpg", [region], config)
    body["tasks"][0]["data"] = {"image": f"/data/upload/{ONE_POLYP}.jpg"}
    results = client.post("/predict", json=body).json()["results"][0]["result"]
    brush = [r for r in results if r["type"] == "brushlabels"]
    polygons = [r for r in results if r["type"] == "polygonlabels"]
    assert brush[0]["value"]["brushlabels"] == ["Adenoma"] and brush[0]["to_name"] == "img"
    assert polygons and all(p["value"]["polygonlabels"] == ["Adenoma"] for p in polygons)
    filled = [
        fill_polygon(np.array(p["value"]["points"]) * [width / 100, height / 100], width, height)
        for p in polygons
    ]
    # the outline of the brush's mask, filled as COCO tools fill Label Studio's polygons
    assert score_masks(np.logical_or.reduce(filled), brush_mask(brush[0])).iou > 0.98


def test_rotated_rectangles_become_their_bounding_box() -> None:
    # 100 x 50 px at (200, 100), turned 90 degrees clockwise about its top-left corner.
    value = {"x": 20, "y": 10, "width": 10, "height": 5, "rotation": 90}
    box = rectangle_box(value, 1000, 1000)
    assert [round(v, 6) for v in (box.x1, box.y1, box.x2, box.y2)] == [150, 100, 200, 200]
    with pytest.raises(RequestError, match="no area"):
        rectangle_box({"x": 10, "y": 10, "width": 0, "height": 5}, 100, 100)


def test_batch_turns_the_task_boxes_into_masks(
    client: TestClient, polyp, kvasir: Path, boxes, core_mask, default_predictor
) -> None:
    mask, box, width, height = polyp
    annotation = {"id": 1, "updated_at": "2026-11-29T10:00:00Z", "result": [rectangle(box, width, height)]}
    older = {"id": 0, "updated_at": "2026-11-28T10:00:00Z", "result": []}
    body = predict_body(f"/data/upload/{ONE_POLYP}.jpg", None, annotations=[older, annotation])
    (prediction,) = client.post("/predict", json=body).json()["results"]
    (region,) = prediction["result"]
    assert score_masks(brush_mask(region), core_mask(IMAGE, box)).iou > 0.99

    two = next(name for name, b in sorted(boxes.items()) if len(b) == 2)
    w2, h2 = read_image(kvasir / "images" / f"{two}.jpg").shape[1::-1]
    two_boxes = [rectangle((b.x1, b.y1, b.x2, b.y2), w2, h2) for b in boxes[two]]
    body = predict_body(f"/data/upload/{two}.jpg", None, predictions=[{"id": 4, "result": two_boxes}])
    body["tasks"] += [
        {"id": 8, "data": {"image": f"/data/upload/{ONE_POLYP}.jpg"}},  # no box: pre-annotated
        {"id": 9, "data": {"image": "/data/upload/missing.jpg"}, "annotations": [annotation]},  # fails alone
        {"id": 10, "data": {"image": "http://[abc/x.jpg"}, "annotations": [annotation]},  # not a URL: alone
    ]
    boxed, detected, failed, malformed = client.post("/predict", json=body).json()["results"]
    assert len(boxed["result"]) == 2 and failed == malformed == []  # Label Studio asks again next time
    union = brush_mask(boxed["result"][0]) | brush_mask(boxed["result"][1])
    expected = core_mask(kvasir / "images" / f"{two}.jpg", *[(b.x1, b.y1, b.x2, b.y2) for b in boxes[two]])
    assert score_masks(union, expected).iou > 0.99
    # The task without a box: the detector's polyps, outlined by the model, as the core finds them.
    found = find_polyps(build_detector(device="cpu"), default_predictor, read_image(IMAGE))
    assert [r["type"] for r in detected["result"]] == ["brushlabels"] * len(found.polyps)
    assert detected["score"] == pytest.approx(1 - found.uncertainty, abs=1e-4)
    for region, polyp in zip(detected["result"], found.polyps, strict=True):
        assert score_masks(brush_mask(region), polyp.mask).iou > 0.99
        assert region["value"]["brushlabels"] == ["Polyp"]
    assert score_masks(brush_mask(detected["result"][0]), mask).iou > 0.6  # on the polyp (0.80 measured)


def test_pre_annotation_is_off_when_the_settings_say_so(servers, default_predictor) -> None:
    client, _ = make_client(servers[0].url, default_predictor, preannotate=False)
    (prediction,) = client.post("/predict", json=predict_body(f"/data/upload/{ONE_POLYP}.jpg", None)).json()[
        "results"
    ]
    assert prediction["result"] == []
    assert client.get("/metrics").json()["detector"] is None  # not even loaded


def bad_requests(polyp) -> list[tuple[str, dict | bytes, int, str]]:
    _, box, width, height = polyp
    good = [rectangle(box, width, height)]
    no_brush = '<View><Image name="image" value="$image"/><Rectangle name="r" toName="image"/></View>'
    flat = rectangle(box, width, height)
    flat["value"]["height"] = 0
    rotated_view = rectangle(box, width, height) | {"image_rotation": 90}
    turned = rectangle(box, width, height)
    turned["value"]["rotation"] = "ninety"
    image = f"/data/upload/{ONE_POLYP}.jpg"
    return [
        ("malformed JSON", b"{not json", 400, "not JSON"),
        ("no Image", predict_body("x", good, "<View><Text name='t' value='$t'/></View>"), 422, "no <Image>"),
        ("no brush", predict_body("x", good, no_brush), 422, "no <BrushLabels>"),
        (
            "no region",
            predict_body(f"/data/upload/{ONE_POLYP}.jpg", [{"type": "choices"}]),
            422,
            "no rectangle",
        ),
        ("401", predict_body("/data/upload/x.jpg", good) | {"_token": False}, 422, "401"),
        ("404", predict_body("/data/upload/missing.jpg", good), 422, "404"),
        ("not an image", predict_body("/text", good), 422, "not a readable image"),
        ("zero area", predict_body(f"/data/upload/{ONE_POLYP}.jpg", [flat]), 422, "no area"),
        ("rotated view", predict_body(f"/data/upload/{ONE_POLYP}.jpg", [rotated_view]), 422, "rotated"),
        ("no url", predict_body("", good), 422, "has no 'image'"),
        ("odd scheme", predict_body("ftp://x/y.jpg", good), 422, "not a URL"),
        ("bad port", predict_body("http://127.0.0.1:99999/y.jpg", good), 422, "not a valid URL (its port)"),
        ("bad host", predict_body("http://[abc/y.jpg", good), 422, "not a valid URL (Invalid IPv6 URL)"),
        ("config not a string", predict_body(image, good) | {"label_config": 5}, 422, "no label_config"),
        ("result not a list", predict_body(image, None) | {"params": {"context": {"result": "box"}}}, 422,
         "context.result must be a list of region objects"),
        ("value not an object", predict_body(image, [good[0] | {"value": [1]}]), 422,
         "a region's value must be an object"),
        ("rotation not a number", predict_body(image, [turned]), 422, "no numeric 'rotation'"),
        ("data not an object", predict_body(image, good) | {"tasks": [{"id": 7, "data": "x"}]}, 422,
         "task 7's data must be an object"),
    ]  # fmt: skip


def test_bad_input_gets_a_reason_and_the_server_goes_on(servers, default_predictor, polyp) -> None:
    ls, _ = servers
    client, _ = make_client(ls.url, default_predictor)
    no_token, _ = make_client(ls.url, default_predictor, label_studio_api_key="")
    _, box, width, height = polyp
    for name, body, status, reason in bad_requests(polyp):
        sender = no_token if isinstance(body, dict) and body.pop("_token", True) is False else client
        if isinstance(body, dict) and name == "401":
            body["tasks"][0]["data"]["image"] = f"/data/upload/{ONE_POLYP}.jpg"
        answer = (
            sender.post("/predict", content=body, headers={"Content-Type": "application/json"})
            if isinstance(body, bytes)
            else sender.post("/predict", json=body)
        )
        assert answer.status_code == status, (name, answer.text)
        assert answer.json()["status"] == "error" and reason in answer.json()["error"], (name, answer.text)
    answer = client.post(
        "/predict", json=predict_body(f"/data/upload/{ONE_POLYP}.jpg", [rectangle(box, width, height)])
    )
    assert answer.status_code == 200
    assert client.post("/setup", json={"project": "1.1", "schema": "<View/>"}).status_code == 422


def test_the_token_goes_to_label_studio_only(servers, default_predictor, polyp) -> None:
    ls, other = servers
    client, _ = make_client(ls.url, default_predictor)
    _, box, width, height = polyp
    region = [rectangle(box, width, height)]
    other.seen_authorization.clear()
    for url in (f"{other.url}/plain/{ONE_POLYP}.jpg", f"{ls.url}/redirect/{ONE_POLYP}.jpg"):
        assert client.post("/predict", json=predict_body(url, region)).status_code == 200
    assert other.seen_authorization == [None, None]
    ls.seen_authorization.clear()
    assert (
        client.post(
            "/predict", json=predict_body(f"{ls.url}/data/upload/{ONE_POLYP}.jpg", region)
        ).status_code
        == 200
    )
    assert ls.seen_authorization == [f"Token {TOKEN}"]
    encoded = base64.b64encode(
        (Path(DATA) / "kvasir-seg" / "images" / f"{ONE_POLYP}.jpg").read_bytes()
    ).decode()
    answer = client.post("/predict", json=predict_body(f"data:image/jpeg;base64,{encoded}", region))
    assert answer.status_code == 200


def test_basic_auth(servers, default_predictor) -> None:
    client, _ = make_client(servers[0].url, default_predictor, basic_auth_user="ls", basic_auth_pass="pw")
    setup = {"project": "1.1", "schema": image_config()}
    assert client.post("/setup", json=setup).status_code == 401
    assert client.post("/setup", json=setup, auth=("ls", "wrong")).status_code == 401
    assert client.post("/setup", json=setup, auth=("ls", "pw")).status_code == 200
    assert client.post("/setup", json=setup, auth=("lś", "pw")).status_code == 401  # not ASCII: no 500
    accented, _ = make_client(servers[0].url, default_predictor, basic_auth_user="ls", basic_auth_pass="pâté")
    assert accented.post("/setup", json=setup, auth=("ls", "pâté")).status_code == 200
    assert accented.post("/setup", json=setup, auth=("ls", "pate")).status_code == 401
    assert client.post("/predict", json={"tasks": []}).status_code == 401
    assert client.get("/health").status_code == 200  # for health checks; it tells nothing more
    for n in range(20):  # a scan of paths, unauthenticated
        assert client.get(f"/admin-{n}.php").status_code == 401
    routes = client.get("/metrics", auth=("ls", "pw")).json()["routes"]
    assert routes["other"] == {"requests": 20, "errors": 20, "mean_seconds": routes["other"]["mean_seconds"]}
    assert set(routes) <= {"other", "/setup", "/predict", "/health", "/metrics"}  # one entry per route


def test_an_internal_failure_is_answered_500_and_counted(
    servers, default_predictor, polyp, monkeypatch
) -> None:
    client, _ = make_client(servers[0].url, default_predictor)
    _, box, width, height = polyp

    def broken(*args: object) -> None:
        raise RuntimeError("the model's disk went away")

    monkeypatch.setattr(client.app.state.model, "predict", broken)
    answer = client.post(
        "/predict", json=predict_body(f"/data/upload/{ONE_POLYP}.jpg", [rectangle(box, width, height)])
    )
    assert answer.status_code == 500 and answer.json()["status"] == "error"
    assert client.get("/metrics").json()["routes"]["/predict"] == {
        "requests": 1, "errors": 1, "mean_seconds": pytest.approx(0.0, abs=5.0)
    }  # fmt: skip
    assert client.get("/health").status_code == 200  # and it goes on serving


def test_webhooks_are_handed_on_without_blocking(servers, default_predictor) -> None:
    client, events = make_client(servers[0].url, default_predictor)
    payload = {"action": "ANNOTATION_CREATED", "project": {"id": 3}, "annotation": {"id": 11}}
    assert client.post("/webhook", json=payload).status_code == 201
    assert client.post("/webhook", json={"action": "PROJECT_UPDATED"}).status_code == 200
    assert client.post("/train", json={"project": "3.1"}).status_code == 201
    client.app.state.webhooks.join()
    assert [e for e, _ in events] == ["ANNOTATION_CREATED", "START_TRAINING"]
    assert events[0][1]["annotation"]["id"] == 11
    metrics = client.get("/metrics").json()
    assert metrics["webhooks"] == {"received": 2, "handled": 2}
    assert metrics["detector"] == {"version": build_detector(device="cpu").version, "mirror_image": False}
    assert metrics["routes"]["/webhook"]["requests"] == 2


def test_concurrent_requests_share_one_model(client: TestClient, polyp, core_mask) -> None:
    _, box, width, height = polyp
    expected = core_mask(IMAGE, box)
    body = predict_body(f"/data/upload/{ONE_POLYP}.jpg", [rectangle(box, width, height)])
    answers: list[int] = []

    def call() -> None:
        answer = client.post("/predict", json=body)
        answers.append(
            answer.status_code
            if score_masks(brush_mask(answer.json()["results"][0]["result"][0]), expected).iou > 0.99
            else -1
        )

    threads = [threading.Thread(target=call) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert answers == [200] * 6


def video_context(frame: int, box: tuple[float, float, float, float], frames_count: int = 181) -> list[dict]:
    x1, y1, x2, y2 = box
    keyframe = {
        "frame": frame,
        "enabled": True,
        "rotation": 0,
        "x": 100 * x1 / 560,
        "y": 100 * y1 / 480,
        "width": 100 * (x2 - x1) / 560,
        "height": 100 * (y2 - y1) / 480,
        "time": frame / 25,  # Label Studio's time for its frame
    }
    return [
        {
            "id": "trk1",
            "type": "videorectangle",
            "from_name": "box",
            "to_name": "video",
            "origin": "manual",
            "value": {
                "framesCount": frames_count,
                "duration": frames_count / 25,
                "sequence": [keyframe],
                "labels": ["Polyp"],
            },
        }
    ]


def track_video_box(predictor, frame: int, box: tuple[float, float, float, float], max_frames: int):
    """The backend's answer to a video rectangle on the clip's `frame` (Label Studio's number)."""
    with file_server(CLIP.parent) as media:
        client, _ = make_client(media.url, predictor, max_frames_to_track=max_frames)
        body = {
            "tasks": [{"id": 1, "data": {"video": f"/data/upload/{CLIP.name}"}}],
            "project": "5.1",
            "label_config": (CONFIGS / "polyp-video.xml").read_text(),
            "params": {"context": {"result": video_context(frame, box)}},
        }
        return client.post("/predict", json=body)


def keyframe_box(k: dict) -> tuple[float, float, float, float]:
    """A keyframe's rectangle in the clip's pixels (560 x 480; Label Studio gives percent)."""
    return (k["x"] * 5.6, k["y"] * 4.8, (k["x"] + k["width"]) * 5.6, (k["y"] + k["height"]) * 4.8)


@pytest.mark.slow
def test_video_box_is_tracked_both_ways(default_predictor) -> None:
    answer = track_video_box(default_predictor, 134, (360, 240, 450, 400), max_frames=40)
    assert answer.status_code == 200, answer.text
    (region,) = answer.json()["results"][0]["result"]
    assert region["type"] == "videorectangle" and region["id"] == "trk1"
    keyframes = region["value"]["sequence"]
    assert keyframes[0]["frame"] < 134  # tracked backward too
    assert all(k["time"] == k["frame"] / 25 for k in keyframes)  # Label Studio's time
    assert keyframes == sorted(keyframes, key=lambda k: k["frame"])
    sequence = [k for k in keyframes if k["frame"] >= 134]
    assert [k["frame"] for k in sequence] == list(range(134, 175))  # the user's frame + 40 tracked
    assert sequence[0] == video_context(134, (360, 240, 450, 400))[0]["value"]["sequence"][0]
    assert all(k["enabled"] for k in sequence[:-1]) and not sequence[-1]["enabled"]  # 40 frames, no more
    centres = [(k["x"] + k["width"] / 2, k["y"] + k["height"] / 2) for k in sequence]
    # The box follows without jumping away ...
    assert all(math.dist(a, b) < 8 for a, b in zip(centres, centres[1:], strict=False))
    for frame, box in CLIP_POLYP.items():  # ... and goes where the polyp went (Label Studio counts from 1)
        found = keyframe_box(sequence[frame + 1 - 134])
        assert box_iou(found, box) > 0.6, (frame, found)
    assert json.dumps(region)  # plain JSON for Label Studio


@pytest.mark.slow
def test_a_video_box_lost_out_of_view_is_found_again_by_the_detector(default_predictor) -> None:
    """Tracked backward from frame 133, the polyp leaves the view at the right edge: out of view
    on frames 100-109, back small near the lumen on the right on 57-98 (read by eye from the
    frames). Nothing is drawn on 100-108; the detector (loaded for pre-annotation) finds the
    polyp again, on frame 59 at least; and whatever is drawn on 57-98 is on the polyp, not on
    the fold at the left that the detector boxes there (tests/test_video.py has the core's
    side of this)."""
    answer = track_video_box(default_predictor, 134, (360, 240, 450, 400), max_frames=80)
    assert answer.status_code == 200, answer.text
    keyframes = {k["frame"] - 1: k for k in answer.json()["results"][0]["result"][0]["value"]["sequence"]}
    assert not [i for i in range(100, 109) if i in keyframes and keyframes[i]["enabled"]], sorted(keyframes)
    found = keyframe_box(keyframes[59])
    assert keyframes[59]["enabled"] and box_iou(found, (391, 176, 445, 287)) > 0.5, found
    for i in range(57, 99):
        if i in keyframes and keyframes[i]["enabled"]:
            x1, y1, x2, y2 = keyframe_box(keyframes[i])
            assert 340 < (x1 + x2) / 2 < 470 and 160 < (y1 + y2) / 2 < 320, (i, keyframes[i])


def test_video_frames_out_of_view_are_disabled(default_predictor) -> None:
    """Started on a frame where the polyp is out of view (frames 0-28), the track is lost at
    once: the user's keyframe is disabled and nothing is invented after it."""
    answer = track_video_box(default_predictor, 5, (20, 20, 60, 60), max_frames=5)
    sequence = answer.json()["results"][0]["result"][0]["value"]["sequence"]
    assert [(k["frame"], k["enabled"]) for k in sequence] == [(5, False)]


def test_label_configs_shipped_parse() -> None:
    image = parse_label_config((CONFIGS / "polyp-image.xml").read_text())
    assert (image.kind, image.object_name, image.data_key, image.mask_control.name) == (
        "image",
        "image",
        "image",
        "mask",
    )
    video = parse_label_config((CONFIGS / "polyp-video.xml").read_text())
    assert (video.kind, video.data_key, video.video_control.name) == ("video", "video", "box")


def test_cloud_links_are_presigned_through_label_studio() -> None:
    from backends.labelstudio.media import MediaFetcher

    fetcher = MediaFetcher("http://ls.example:8080", TOKEN)
    url = fetcher.resolve("s3://bucket/polyps/a.jpg", task_id=42)
    assert url.startswith("http://ls.example:8080/tasks/42/presign/?fileuri=")
    assert base64.urlsafe_b64decode(url.split("fileuri=")[1]).decode() == "s3://bucket/polyps/a.jpg"
    assert fetcher.resolve("/data/upload/1/a.jpg") == "http://ls.example:8080/data/upload/1/a.jpg"
    assert fetcher._headers_for("http://ls.example:8080/x") == {"Authorization": f"Token {TOKEN}"}
    assert fetcher._headers_for("http://elsewhere.example/x") == {}
    assert fetcher._headers_for("http://ls.example:9999/x") == {}  # another port is another host
    with pytest.raises(RequestError, match="task id"):
        fetcher.resolve("gs://bucket/a.jpg")
    with pytest.raises(RequestError, match="LABEL_STUDIO_URL"):
        MediaFetcher("", "").resolve("/data/upload/1/a.jpg")


def test_pulling_from_an_unreachable_or_refusing_label_studio(tmp_path, monkeypatch) -> None:
    from backends.labelstudio import export
    from backends.labelstudio.export import LabelStudioProject
    from conftest import _free_port
    from polypseg.data_store import DatasetStore
    from polypseg.label_sources import PullError

    monkeypatch.setattr(export, "RETRY_WAIT", 0.01)
    store = DatasetStore(tmp_path)
    with pytest.raises(PullError, match="unreachable"):
        LabelStudioProject(f"http://127.0.0.1:{_free_port()}", TOKEN, 1).pull(store)
    # a server that is not Label Studio's API: a clear error, not a crash
    with file_server(tmp_path) as refusing, pytest.raises(PullError, match="404"):
        LabelStudioProject(refusing.url, TOKEN, 1).pull(store)
    assert store.index == {} and not (tmp_path / "index.json").exists()


def test_garbled_video_regions_are_refused_with_a_reason(default_predictor) -> None:
    with file_server(CLIP.parent) as media:
        client, _ = make_client(media.url, default_predictor, max_frames_to_track=2)
        good = video_context(5, (20, 20, 60, 60))
        no_sequence = [good[0] | {"value": good[0]["value"] | {"sequence": "frames"}}]
        odd_frame = [
            good[0]
            | {"value": good[0]["value"] | {"sequence": [*good[0]["value"]["sequence"], {"frame": "x"}]}}
        ]
        for context, reason in ((no_sequence, "no keyframe sequence"), (odd_frame, None)):
            body = {
                "tasks": [{"id": 1, "data": {"video": f"/data/upload/{CLIP.name}"}}],
                "project": "5.1",
                "label_config": (CONFIGS / "polyp-video.xml").read_text(),
                "params": {"context": {"result": context}},
            }
            answer = client.post("/predict", json=body)
            if reason is None:  # a keyframe without a frame number is passed over
                assert answer.status_code == 200, answer.text
            else:
                assert answer.status_code == 422 and reason in answer.json()["error"], answer.text


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"POLYPSEG_TRACKER": "kalman"}, "POLYPSEG_TRACKER='kalman': one of auto, classical, sam2"),
        ({"RETRAIN_AFTER": "ten"}, "RETRAIN_AFTER='ten' is not a whole number"),
        ({"POLYPSEG_FETCH_TIMEOUT": "0"}, "POLYPSEG_FETCH_TIMEOUT='0': at least 1"),
    ],
)
def test_a_bad_setting_stops_the_server_with_its_reason(env, message) -> None:
    import os
    import subprocess
    import sys

    command = [sys.executable, "-m", "polypseg.cli", "serve", "labelstudio", "--port", "1"]
    run = subprocess.run(command, capture_output=True, text=True, timeout=120, env={**os.environ, **env})
    assert run.returncode == 2 and message in run.stderr and "Traceback" not in run.stderr


def keypoint(point: Point, width: int, height: int) -> dict:
    """A smart keypoint as Label Studio 1.23.2 sends it: alone in `params.context.result`."""
    label = "On the polyp" if point.positive else "Background"
    return {
        "type": "keypointlabels",
        "from_name": "click",
        "to_name": "image",
        "original_width": width,
        "original_height": height,
        "image_rotation": 0,
        "origin": "manual",
        "is_positive": True,
        "value": {"x": 100 * point.x / width, "y": 100 * point.y / height, "keypointlabels": [label]},
    }


def test_clicks_refine_the_box_drawn_before_them(servers, default_predictor, polyp) -> None:
    """Box, click, click, each request holding only the region just drawn (as Label Studio
    sends them): each answer is the core's own answer to the box and every click so far; a new
    box starts over; another task's click does not use this task's box; a session expires."""
    truth, (x1, y1, x2, y2), width, height = polyp
    now = [0.0]
    config = Settings(label_studio_url=servers[0].url, label_studio_api_key=TOKEN)
    model = PolypModel(config, default_predictor)
    model.click_sessions = ClickSessions(ttl_s=600, clock=lambda: now[0])
    client = TestClient(create_app(config, model), raise_server_exceptions=False)
    image, url = read_image(IMAGE), f"/data/upload/{ONE_POLYP}.jpg"
    # a loose box: its mask spills outside the polyp, so there is something to correct
    pad_x, pad_y = 0.15 * (x2 - x1), 0.15 * (y2 - y1)
    loose = (max(x1 - pad_x, 0), max(y1 - pad_y, 0), min(x2 + pad_x, width - 1), min(y2 + pad_y, height - 1))
    box = rectangle_box(rectangle(loose, width, height)["value"], width, height)

    def ask(region: dict, task: int = 7):
        return client.post("/predict", json=predict_body(url, [region], config=CONFIGS_XML, id=task))

    answer = ask(rectangle(loose, width, height, "Polyp box"))
    assert answer.status_code == 200, answer.text
    mask = brush_mask(answer.json()["results"][0]["result"][0])
    clicks: list[Point] = []
    for _ in range(2):
        click = next_click(mask, truth)
        assert click is not None
        clicks.append(click)
        answer = ask(keypoint(click, width, height))
        assert answer.status_code == 200, answer.text
        mask = brush_mask(answer.json()["results"][0]["result"][0])
        expected = default_predictor.predict(image, Prompt(box=box, points=tuple(clicks))).mask
        assert score_masks(mask, expected).iou > 0.99, clicks

    # another task: a click alone, refused by a U-Net with the way out
    answer = ask(keypoint(clicks[0], width, height), task=8)
    assert answer.status_code == 422 and "draw the box again" in answer.json()["error"]

    # a new box starts a new session: the clicks before it are not replayed
    tight = rectangle_box(rectangle((x1, y1, x2, y2), width, height)["value"], width, height)
    assert ask(rectangle((x1, y1, x2, y2), width, height, "Polyp box")).status_code == 200
    answer = ask(keypoint(clicks[-1], width, height))
    expected = default_predictor.predict(image, Prompt(box=tight, points=(clicks[-1],))).mask
    assert score_masks(brush_mask(answer.json()["results"][0]["result"][0]), expected).iou > 0.99

    # past the time to live, the box is forgotten
    now[0] += 601
    answer = ask(keypoint(clicks[-1], width, height))
    assert answer.status_code == 422 and "draw the box again" in answer.json()["error"]


def test_bad_clicks_get_a_reason(servers, default_predictor, polyp) -> None:
    _, box, width, height = polyp
    client, _ = make_client(servers[0].url, default_predictor)
    url = f"/data/upload/{ONE_POLYP}.jpg"
    inside = Point((box[0] + box[2]) / 2, (box[1] + box[3]) / 2)

    def ask(regions: list[dict]):
        return client.post("/predict", json=predict_body(url, regions, config=CONFIGS_XML))

    assert ask([rectangle(box, width, height, "Polyp box")]).status_code == 200
    outside = ask([keypoint(Point(width + 40, 10, False), width, height)])
    assert outside.status_code == 422 and "outside" in outside.json()["error"], outside.text
    odd = keypoint(inside, width, height)
    odd["value"]["keypointlabels"] = ["Adenoma"]
    unknown = ask([odd])
    assert unknown.status_code == 422 and "neither on the polyp nor background" in unknown.json()["error"]
    many = ask([keypoint(inside, width, height)] * (MAX_CLICKS + 1))
    assert many.status_code == 422 and f"at most {MAX_CLICKS}" in many.json()["error"], many.text
    # none of the refused clicks stayed in the session: one more click is answered
    assert ask([keypoint(inside, width, height)]).status_code == 200


CONFIGS_XML = (CONFIGS / "polyp-image.xml").read_text()


def test_two_clicks_in_flight_on_one_task_both_stay_in_its_session() -> None:
    """Each request reads the session, waits for the model, then remembers the answer (as
    PolypModel does inside `hold`): the second click waits for the first, so neither is lost,
    while another task's request goes on meanwhile."""
    sessions = ClickSessions()
    sessions.remember(7, Prompt(box=Box(0, 0, 50, 50)))
    sessions.remember(8, Prompt(box=Box(0, 0, 20, 20)))
    order: list[str] = []
    first_read = threading.Event()

    def request(key: int, click: Point, name: str) -> None:
        with sessions.hold(key):
            prompt = sessions.prompt_for(key, Prompt(points=(click,)))
            order.append(f"{name} read")
            first_read.set()
            time.sleep(0.5)  # the model answering
            sessions.remember(key, prompt)
            order.append(f"{name} done")

    first = threading.Thread(target=request, args=(7, Point(10, 10, True), "a"))
    first.start()
    assert first_read.wait(10)  # a holds task 7's session, its model at work
    threads = [
        first,
        threading.Thread(target=request, args=(7, Point(40, 40, False), "b")),
        threading.Thread(target=request, args=(8, Point(5, 5, True), "other")),
    ]
    for thread in threads[1:]:
        thread.start()
    for thread in threads:
        thread.join()
    assert order.index("other read") < order.index("a done")  # another task is not held up
    assert order.index("a done") < order.index("b read")
    assert sessions.prompt_for(7, Prompt(points=(Point(1, 1, True),))).points == (
        Point(10, 10, True),
        Point(40, 40, False),
        Point(1, 1, True),
    )
    assert sessions._held == {}  # nothing kept once no request holds the session


def test_click_sessions_keep_the_most_recent_tasks() -> None:
    """The LRU bound: the least recently used task's box goes first; a task used again stays."""
    sessions = ClickSessions(max_sessions=2)
    click = Prompt(points=(Point(5, 5, False),))
    for task in (1, 2):
        sessions.remember(task, Prompt(box=Box(0, 0, 10 * task, 10 * task)))
    sessions.remember(1, sessions.prompt_for(1, click))  # task 1 used again: task 2 is the oldest
    sessions.remember(3, Prompt(box=Box(0, 0, 30, 30)))
    assert len(sessions) == 2
    assert sessions.prompt_for(2, click) == click  # forgotten: the click alone
    assert sessions.prompt_for(1, click) == Prompt(box=Box(0, 0, 10, 10), points=click.points * 2)


def test_a_tracked_box_never_replaces_the_clicks_made_on_its_page_while_the_track_ran() -> None:
    """A box drawn on one page of a clip is tracked through the others (seconds), then each
    page's tracked box becomes that page's session (`PagedTasks.box`), without holding those
    pages: a click on another page meanwhile is kept, the pages nobody touched take the track."""
    sessions = ClickSessions()
    before = Prompt(box=Box(0, 0, 10, 10))
    sessions.remember("page 4", before)
    started = sessions.stamp()  # the track begins
    clicked = Prompt(box=Box(5, 5, 60, 60), points=(Point(20, 20, False),))
    sessions.remember("page 5", clicked)  # a click answered on page 5 while the track runs
    tracked = Box(8, 8, 50, 50)
    for page in ("page 4", "page 5", "page 6"):
        sessions.remember(page, Prompt(box=tracked), unless_since=started)
    click = Prompt(points=(Point(30, 30, True),))
    assert sessions.prompt_for("page 5", click) == Prompt(
        box=clicked.box, points=clicked.points + click.points
    )
    assert (
        sessions.prompt_for("page 4", click)
        == sessions.prompt_for("page 6", click)
        == Prompt(box=tracked, points=click.points)
    )
    sessions.remember("page 5", Prompt(box=tracked), unless_since=sessions.stamp())  # a later track
    assert sessions.prompt_for("page 5", click).box == tracked


def test_polygon_regions_go_both_ways_as_label_studio_draws_them() -> None:
    """Label Studio's canvas draws pixel (x, y) as the square (x, y)-(x+1, y+1), and COCO tools
    fill its exported polygons by pixel centres: a polygon answered for a mask fills back to it,
    and an annotator's polygon along a 20 x 20 square's edges reads as those 400 pixels."""
    from backends.labelstudio.export import annotation_mask

    square = np.zeros((48, 64), bool)
    square[10:30, 12:32] = True
    config = parse_label_config(
        '<View><Image name="image" value="$image"/><PolygonLabels name="p" toName="image">'
        '<Label value="Polyp"/></PolygonLabels></View>'
    )
    (answered,) = mask_regions(square, 0.9, config, ["Polyp"])
    assert np.array_equal(annotation_mask([answered], config.object_name), square)
    corners = ((12, 10), (32, 10), (32, 30), (12, 30))
    drawn = {
        "type": "polygonlabels", "to_name": config.object_name, "original_width": 64, "original_height": 48,
        "value": {"points": [[100 * x / 64, 100 * y / 48] for x, y in corners]},
    }  # fmt: skip
    assert np.array_equal(annotation_mask([drawn], config.object_name), square)
