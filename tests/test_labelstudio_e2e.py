"""End to end through a real Label Studio 1.23 server and a real backend process: projects made
with the shipped configs, a Kvasir-SEG image uploaded, the backend connected through /api/ml,
then Label Studio itself calls the backend."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import requests
from label_studio_sdk.core.api_error import ApiError

from backends.labelstudio import launcher
from backends.labelstudio.brush import decode_brush_rle
from backends.labelstudio.media import MediaFetcher
from conftest import CLIP_POLYP, DATA, ONE_POLYP, LabelStudioStack, box_iou
from labelstudio_fixtures import CONFIGS, rectangle
from polypseg.images import read_image, read_mask
from polypseg.metrics import score_masks

pytestmark = pytest.mark.slow

IMAGE = DATA / "kvasir-seg" / "images" / f"{ONE_POLYP}.jpg"


def new_project(stack: LabelStudioStack, title: str, config: str) -> tuple[int, int]:
    """A project connected to the backend, and the id of its ML backend."""
    project = launcher.polyp_project(stack.client, title, config)
    return project, launcher.connect_backend(stack.client, project, stack.backend_url)


def upload(stack: LabelStudioStack, project: int, path: Path) -> dict:
    """Upload a file as Label Studio's import page does; the new task."""
    with path.open("rb") as file:
        stack.api("POST", f"/api/projects/{project}/import", files={path.name: file})
    tasks = stack.api("GET", f"/api/tasks?project={project}")["tasks"]
    return max(tasks, key=lambda t: t["id"])


def backend_metrics(stack: LabelStudioStack) -> dict:
    return requests.get(stack.backend_url + "/metrics", timeout=10).json()


@pytest.fixture(scope="module")
def image_project(label_studio: LabelStudioStack, kvasir: Path, boxes) -> dict:
    project, ml = new_project(label_studio, "Polyp images", (CONFIGS / "polyp-image.xml").read_text())
    task = upload(label_studio, project, kvasir / "images" / f"{ONE_POLYP}.jpg")
    assert task["data"]["image"].startswith("/data/upload/")
    mask = read_mask(kvasir / "masks" / f"{ONE_POLYP}.jpg")
    box = boxes[ONE_POLYP][0]
    return {"project": project, "ml": ml, "task": task, "mask": mask, "box": (box.x1, box.y1, box.x2, box.y2)}


def test_interactive_box_through_label_studio(
    label_studio: LabelStudioStack, image_project: dict, core_mask
) -> None:
    mask, box = image_project["mask"], image_project["box"]
    height, width = mask.shape
    answer = label_studio.api(
        "POST",
        f"/api/ml/{image_project['ml']}/interactive-annotating",
        json={"task": image_project["task"]["id"], "context": {"result": [rectangle(box, width, height)]}},
    )
    assert "errors" not in answer, answer
    (region,) = answer["data"]["result"]
    assert region["type"] == "brushlabels" and region["value"]["brushlabels"] == ["Polyp"]
    found = decode_brush_rle(region["value"]["rle"], region["original_width"], region["original_height"])
    assert score_masks(found, core_mask(IMAGE, box)).iou > 0.99  # the core's answer, through Label Studio


def test_bad_box_is_refused_and_the_backend_goes_on(
    label_studio: LabelStudioStack, image_project: dict
) -> None:
    height, width = image_project["mask"].shape
    flat = rectangle((10, 10, 10, 50), width, height)
    answer = label_studio.api(
        "POST",
        f"/api/ml/{image_project['ml']}/interactive-annotating",
        json={"task": image_project["task"]["id"], "context": {"result": [flat]}},
    )
    assert answer["errors"] and "422" in answer["errors"][0]
    assert requests.get(label_studio.backend_url + "/health", timeout=10).status_code == 200


def test_backend_behind_basic_auth(
    label_studio: LabelStudioStack, kvasir: Path, tmp_path: Path, core_mask
) -> None:
    """A backend that asks for basic auth, connected with its credentials: Label Studio's calls
    carry them; Label Studio refuses to connect it without them."""
    from conftest import _free_port

    port = _free_port()
    env = {"BASIC_AUTH_USER": "ls", "BASIC_AUTH_PASS": "s3cret"}
    backend = launcher.start_backend(
        port, label_studio.url, label_studio.login.token, tmp_path / "b.log", env
    )
    try:
        url = f"http://127.0.0.1:{port}"
        project = launcher.polyp_project(
            label_studio.client, "Basic auth", (CONFIGS / "polyp-image.xml").read_text()
        )
        ml = launcher.connect_backend(label_studio.client, project, url, basic_auth=("ls", "s3cret"))
        task = upload(label_studio, project, kvasir / "images" / f"{ONE_POLYP}.jpg")
        mask = read_mask(kvasir / "masks" / f"{ONE_POLYP}.jpg")
        ys, xs = mask.nonzero()
        tight = (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1)
        body = {"task": task["id"], "context": {"result": [rectangle(tight, mask.shape[1], mask.shape[0])]}}
        answer = label_studio.api("POST", f"/api/ml/{ml}/interactive-annotating", json=body)
        assert "errors" not in answer, answer
        (region,) = answer["data"]["result"]
        found = decode_brush_rle(region["value"]["rle"], region["original_width"], region["original_height"])
        assert score_masks(found, core_mask(IMAGE, tight)).iou > 0.99
        # Label Studio checks the connection itself: without the credentials it refuses to save.
        with pytest.raises(ApiError, match="401 Client Error: Unauthorized"):
            launcher.connect_backend(label_studio.client, project, url)
        assert launcher.connect_backend(label_studio.client, project, url, basic_auth=("ls", "s3cret")) == ml
    finally:
        launcher.stop(backend)


def test_annotation_webhook_then_batch_predictions(
    label_studio: LabelStudioStack, image_project: dict, core_mask
) -> None:
    mask, box = image_project["mask"], image_project["box"]
    height, width = mask.shape
    task = image_project["task"]["id"]
    before = backend_metrics(label_studio)["webhooks"]["received"]
    label_studio.api(
        "POST", f"/api/tasks/{task}/annotations", json={"result": [rectangle(box, width, height)]}
    )
    deadline = time.monotonic() + 30
    while backend_metrics(label_studio)["webhooks"]["received"] == before and time.monotonic() < deadline:
        time.sleep(0.5)
    assert backend_metrics(label_studio)["webhooks"]["received"] > before  # ANNOTATION_CREATED arrived

    done = label_studio.api(
        "POST",
        f"/api/dm/actions?id=retrieve_tasks_predictions&project={image_project['project']}",
        json={"selectedItems": {"all": False, "included": [task]}},
    )
    assert done["processed_items"] == 1
    predictions = label_studio.api("GET", f"/api/predictions?task={task}")
    (region,) = [r for r in predictions[-1]["result"] if r["type"] == "brushlabels"]
    found = decode_brush_rle(region["value"]["rle"], width, height)
    assert score_masks(found, core_mask(IMAGE, box)).iou > 0.99


def test_local_files_with_a_personal_access_token(label_studio: LabelStudioStack, kvasir: Path) -> None:
    """Tasks served from local-files storage, read with a personal access token (a JWT that the
    backend exchanges for access tokens), as a user without a legacy token would connect."""
    project = launcher.polyp_project(
        label_studio.client, "Polyp folder", (CONFIGS / "polyp-image.xml").read_text()
    )
    assert launcher.add_image_folder(label_studio.client, project, kvasir / "images") == 900
    task = label_studio.api("GET", f"/api/tasks?project={project}&page_size=1")["tasks"][0]
    assert task["data"]["image"].startswith("/data/local-files/?d=")
    token = label_studio.api("POST", "/api/token/")["token"]
    fetched = MediaFetcher(label_studio.url, token).fetch(task["data"]["image"], task["id"])
    name = task["data"]["image"].rsplit("/", 1)[-1]
    assert (read_image(fetched) == read_image(kvasir / "images" / name)).all()
    refused = MediaFetcher(label_studio.url, "not-a-token")
    with pytest.raises(Exception, match="401|refused"):
        refused.fetch(task["data"]["image"], task["id"])


def test_retrieve_predictions_tracks_a_saved_video_box(
    label_studio: LabelStudioStack, tmp_path: Path
) -> None:
    """API level (the page's own steps are in test_labelstudio_video_browser.py): an annotation
    with one video keyframe saved as the page saves it (frame 151 is the clip's frame 150, at
    151/25 s), then Label Studio's "Retrieve Predictions" action: Label Studio sends the task
    with its annotation to the backend, which tracks the box both ways. Forward, the track runs
    until the polyp leaves the view (the clip's frame 176 is the last it is in) and no further."""
    from conftest import _free_port

    # 30 frames each way: past the polyp's last frame, and a short answer on a busy CPU.
    port = _free_port()
    env = {"MAX_FRAMES_TO_TRACK": "30"}
    backend = launcher.start_backend(
        port, label_studio.url, label_studio.login.token, tmp_path / "b.log", env
    )
    try:
        project = launcher.polyp_project(
            label_studio.client, "Polyp videos", (CONFIGS / "polyp-video.xml").read_text()
        )
        launcher.connect_backend(label_studio.client, project, f"http://127.0.0.1:{port}")
        task = upload(label_studio, project, DATA / "video" / "colonoscopy-clip-1.mp4")
        prediction = _retrieve_track(label_studio, project, task["id"])
    finally:
        launcher.stop(backend)
    (tracked,) = prediction["result"]
    assert tracked["id"] == "polyp1" and tracked["value"]["labels"] == ["Polyp"]
    sequence = {k["frame"]: k for k in tracked["value"]["sequence"]}
    assert sequence[151] == SAVED_KEYFRAME  # the annotator's keyframe, as drawn
    assert list(sequence) == sorted(sequence) and min(sequence) < 140  # tracked backward too
    # Forward: every frame up to 176 (the clip's 175; the polyp's last in view is 176, which the
    # click model may already give up on), ended there.
    last = max(sequence)
    assert set(range(151, 177)) <= set(sequence) and last in (176, 177)
    assert all(sequence[f]["enabled"] for f in range(151, last)) and not sequence[last]["enabled"]
    assert all(k["time"] == pytest.approx(f / 25) for f, k in sequence.items())
    for frame, box in CLIP_POLYP.items():  # where the polyp went (Label Studio counts from 1)
        k = sequence[frame + 1]
        found = (k["x"] * 5.6, k["y"] * 4.8, (k["x"] + k["width"]) * 5.6, (k["y"] + k["height"]) * 4.8)
        assert box_iou(found, box) > 0.6, (frame, found)


# The polyp on the clip's frame 150 (Label Studio's 151, at 151/25 s): where the tracker took
# the browser test's hand box on frame 133.
SAVED_KEYFRAME = {"frame": 151, "enabled": True, "rotation": 0, "time": 151 / 25}
SAVED_KEYFRAME |= {"x": 323 / 5.6, "y": 273 / 4.8, "width": 90 / 5.6, "height": 166 / 4.8}


def _retrieve_track(label_studio: LabelStudioStack, project: int, task: int) -> dict:
    """Save an annotation with one video keyframe, then run "Retrieve Predictions" on it."""
    region = {
        "id": "polyp1",
        "type": "videorectangle",
        "from_name": "box",
        "to_name": "video",
        "origin": "manual",
        "value": {"framesCount": 181, "duration": 7.24, "sequence": [SAVED_KEYFRAME], "labels": ["Polyp"]},
    }
    label_studio.api("POST", f"/api/tasks/{task}/annotations", json={"result": [region]})
    done = requests.post(  # Label Studio answers once the backend has tracked: minutes on a CPU
        f"{label_studio.url}/api/dm/actions?id=retrieve_tasks_predictions&project={project}",
        headers={"Authorization": f"Token {label_studio.login.token}"},
        json={"selectedItems": {"all": False, "included": [task]}},
        timeout=600,
    )
    assert done.status_code == 200 and done.json()["processed_items"] == 1, done.text
    (prediction,) = label_studio.api("GET", f"/api/predictions?task={task}")
    return prediction


def test_connect_as_docker_compose_runs_it(label_studio: LabelStudioStack, kvasir: Path) -> None:
    """`backends.labelstudio.connect`, twice: one project on the folder, one backend, no duplicates."""
    import os
    import subprocess
    import sys

    command = [sys.executable, "-m", "backends.labelstudio.connect", "--label-studio", label_studio.url]
    command += [
        "--backend",
        label_studio.backend_url,
        "--images",
        str(kvasir / "images"),
        "--title",
        "Compose",
    ]
    env = {**os.environ, "LABEL_STUDIO_API_KEY": label_studio.login.token}
    for _ in range(2):
        run = subprocess.run(command, capture_output=True, text=True, timeout=300, env=env)
        assert run.returncode == 0 and "900 images" in run.stderr, run.stderr
    projects = [p for p in label_studio.api("GET", "/api/projects")["results"] if p["title"] == "Compose"]
    assert len(projects) == 1
    backends = label_studio.api("GET", f"/api/ml?project={projects[0]['id']}")
    assert [b["url"] for b in backends] == [label_studio.backend_url]


def test_rank_a_project_by_the_detectors_uncertainty(
    label_studio: LabelStudioStack, kvasir: Path, tmp_path: Path, capsys
) -> None:
    """`polypseg rank labelstudio:P`: the project's tasks without an annotation (a cancelled one
    does not count), most uncertain first, each scored as the detector scores the image."""
    import json

    from polypseg.cli import main
    from polypseg.detection_job import build_detector

    project, _ = new_project(label_studio, "Ranking", (CONFIGS / "polyp-image.xml").read_text())
    names = sorted(p.name for p in (kvasir / "images").iterdir())[10:15]
    tasks = {name: upload(label_studio, project, kvasir / "images" / name)["id"] for name in names}
    label_studio.api("POST", f"/api/tasks/{tasks[names[0]]}/annotations", json={"result": []})
    label_studio.api(
        "POST", f"/api/tasks/{tasks[names[1]]}/annotations", json={"result": [], "was_cancelled": True}
    )
    out = tmp_path / "rank.json"
    token = label_studio.login.token
    command = ["rank", f"labelstudio:{project}", "--label-studio-url", label_studio.url, "--api-key", token]
    assert main([*command, "--json", str(out)]) == 0
    ranked = json.loads(out.read_text())["ranked"]
    by_task = {int(r["image"].split()[1]): r["uncertainty"] for r in ranked}
    assert set(by_task) == {tasks[name] for name in names[1:]}  # the annotated task is left out
    assert [r["uncertainty"] for r in ranked] == sorted(by_task.values(), reverse=True)
    detector = build_detector()
    for name in names[1:]:
        expected = detector.uncertainty(read_image(kvasir / "images" / name))
        assert abs(by_task[tasks[name]] - expected) < 1e-6, name
    assert main(["rank", "labelstudio:x", "--label-studio-url", label_studio.url]) == 2
