"""The video steps of README's Label Studio section, done in Label Studio 1.23.2's own pages in
headless Chromium, as an annotator does them: a box drawn around the polyp on one frame of the
real clip, Submit; in the Data Manager, "Retrieve Predictions"; the task opened again, the
prediction duplicated into an annotation, the box found on the polyp on later frames as the
page draws it, Submit.

The clip's frame k (0-based, the file's) is Label Studio's frame k + 1 (it counts from 1).
"""

from __future__ import annotations

import re
from collections.abc import Iterator

import pytest

from backends.labelstudio import launcher
from conftest import CLIP_POLYP, DATA, LabelStudioStack, _free_port, box_iou
from labelstudio_fixtures import CONFIGS
from labelstudio_page import SCREENSHOTS, labelling_page, log_in

pytestmark = pytest.mark.slow

CLIP = DATA / "video" / "colonoscopy-clip-1.mp4"
WIDTH, HEIGHT, FPS = 560, 480, 25
DRAWN_FRAME = 134  # Label Studio's; the clip's frame 133, where README's box is
POLYP_ON_133 = (360, 240, 450, 400)
# Frames tracked each way from the drawn box: enough to pass frame 172, few enough that one
# CPU answers within the ML_TIMEOUT_PREDICT that tests give Label Studio (conftest).
MAX_FRAMES = 40

VIDEO = "window.Htx?.annotationStore?.selected?.names?.get('video')"
VIDEO_READY = f"() => {VIDEO}?.ref?.current?.duration > 0"
# Every rectangle the page draws on its video stage, in stage pixels, strokes left out.
DRAWN_RECTANGLES = """() => (window.Konva?.stages || []).flatMap(stage => stage.find('Rect')
    .filter(r => r.isVisible() && !r.name())
    .map(r => { const b = r.getClientRect({relativeTo: stage, skipStroke: true});
                return [b.x, b.y, b.x + b.width, b.y + b.height]; }))"""


@pytest.fixture(scope="module")
def tracking_backend(label_studio: LabelStudioStack, tmp_path_factory) -> Iterator[str]:
    port = _free_port()
    log = tmp_path_factory.mktemp("video-backend") / "backend.log"
    backend = launcher.start_backend(
        port, label_studio.url, label_studio.login.token, log, {"MAX_FRAMES_TO_TRACK": str(MAX_FRAMES)}
    )
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        launcher.stop(backend)


def go_to_frame(page, frame: int) -> None:
    """Click the frame counter under the video ("1 of 181"), type the frame, Enter."""
    counter = page.locator(".lsf-frames-control").first
    counter.click()
    counter.locator("input").fill(str(frame))
    counter.locator("input").press("Enter")
    page.wait_for_function(
        "f => document.querySelector('.lsf-frames-control')?.innerText.trim().split(/\\s+/)[0] === f",
        arg=str(frame),
    )
    page.wait_for_timeout(300)  # the stage redraws on the next animation frame


class VideoStage:
    """Video pixels <-> the page's pixels, for the video as the page shows it (fitted and
    centred on its canvas, not panned)."""

    def __init__(self, page) -> None:
        canvas = page.locator(".lsf-video-canvas__view canvas").first.bounding_box()
        assert canvas is not None
        self.zoom = page.evaluate(
            "() => window.Htx.annotationStore.selected.names.get('video').ref.current.zoom"
        )
        self.left = canvas["x"]
        self.top = canvas["y"]
        self.dx = (canvas["width"] - WIDTH * self.zoom) / 2
        self.dy = (canvas["height"] - HEIGHT * self.zoom) / 2

    def on_screen(self, x: float, y: float) -> tuple[float, float]:
        return self.left + self.dx + x * self.zoom, self.top + self.dy + y * self.zoom

    def in_video(self, box: list[float]) -> tuple[float, float, float, float]:
        x1, y1, x2, y2 = box
        z = self.zoom
        return ((x1 - self.dx) / z, (y1 - self.dy) / z, (x2 - self.dx) / z, (y2 - self.dy) / z)


def pixels(keyframe: dict) -> tuple[float, float, float, float]:
    x, y = keyframe["x"] * WIDTH / 100, keyframe["y"] * HEIGHT / 100
    return x, y, x + keyframe["width"] * WIDTH / 100, y + keyframe["height"] * HEIGHT / 100


def test_video_box_tracked_through_the_labelling_page(
    label_studio: LabelStudioStack, tracking_backend: str
) -> None:
    from playwright.sync_api import expect

    config = (CONFIGS / "polyp-video.xml").read_text()
    project = launcher.polyp_project(label_studio.client, "Video in the page", config)
    launcher.connect_backend(label_studio.client, project, tracking_backend)
    with CLIP.open("rb") as file:
        label_studio.api("POST", f"/api/projects/{project}/import", files={CLIP.name: file})
    task = label_studio.api("GET", f"/api/tasks?project={project}")["tasks"][0]["id"]
    seen: dict[int, tuple[float, float, float, float]] = {}
    annotations_url = f"{label_studio.url}/api/tasks/{task}/annotations"

    with labelling_page("video-failure.png") as page:
        VIDEO_READY = (
            "() => window.Htx?.annotationStore?.selected?.names?.get('video')?.ref?.current?.duration > 0"
        )
        log_in(page, label_studio)
        # 1. Open the task, go to a frame where the polyp is in view, label a box around it, Submit.
        page.goto(f"{label_studio.url}/projects/{project}/data?task={task}")
        page.wait_for_function(VIDEO_READY, timeout=60_000)
        go_to_frame(page, DRAWN_FRAME)
        page.locator(".lsf-label", has_text="Polyp").first.click()
        stage = VideoStage(page)
        x1, y1, x2, y2 = POLYP_ON_133
        page.mouse.move(*stage.on_screen(x1, y1))
        page.mouse.down()
        page.mouse.move(*stage.on_screen(x2, y2), steps=12)
        page.mouse.up()
        with page.expect_response(
            lambda r: r.url.startswith(annotations_url) and r.request.method == "POST"
        ) as saved:
            page.get_by_role("button", name="Submit").click()
        assert saved.value.status == 201

        # 2. In the Data Manager: tick the task, "1 Task" (the actions), "Retrieve Predictions", OK.
        page.goto(f"{label_studio.url}/projects/{project}/data")
        page.get_by_label(f"Select Task {task}").click()
        page.get_by_text("1 Task", exact=True).click()
        page.get_by_text("Retrieve Predictions", exact=True).click()
        with page.expect_response(
            lambda r: "id=retrieve_tasks_predictions" in r.url and r.request.method == "POST",
            timeout=600_000,
        ) as retrieved:
            page.get_by_text("OK", exact=True).click()
        assert retrieved.value.status == 200

        # 3. Open the task again: the prediction (the model's tab, with its score) is there;
        #    "Duplicate Annotation" in its menu makes it an annotation to check and submit.
        page.locator(".lsf-table-row").first.get_by_text(str(task), exact=True).first.click()
        page.wait_for_function(VIDEO_READY, timeout=60_000)
        prediction = page.locator(".lsf-annotation-button", has_text=re.compile(r"\d%"))
        expect(prediction).to_have_count(1, timeout=30_000)
        prediction.click()
        page.locator(".lsf-annotation-button_selected .lsf-annotation-button__trigger").click()
        page.get_by_text("Duplicate Annotation", exact=True).click()
        expect(page.get_by_role("button", name="Submit")).to_be_visible(timeout=30_000)
        for frame in [*range(145, 171, 5), *(k + 1 for k in CLIP_POLYP)]:
            go_to_frame(page, frame)
            (drawn,) = page.evaluate(DRAWN_RECTANGLES)
            seen[frame] = VideoStage(page).in_video(drawn)
        page.screenshot(path=str(SCREENSHOTS / "video-track.png"))
        with page.expect_response(
            lambda r: r.url.startswith(annotations_url) and r.request.method == "POST"
        ) as saved:
            page.get_by_role("button", name="Submit").click()
        assert saved.value.status == 201

    # The page drew the box where the polyp went (it moved ~100 px left: a box left standing
    # where it was drawn scores below 0.2 there) ...
    for frame, box in CLIP_POLYP.items():
        assert box_iou(seen[frame + 1], box) > 0.6, (frame, seen[frame + 1])
        assert box_iou(POLYP_ON_133, box) < 0.2
    centres = [((b[0] + b[2]) / 2, (b[1] + b[3]) / 2) for _, b in sorted(seen.items())]
    assert all(
        abs(a[0] - b[0]) < 40 and abs(a[1] - b[1]) < 40 for a, b in zip(centres, centres[1:], strict=False)
    )

    # ... and the submitted annotation holds the track: a keyframe on every frame 145-170, at
    # Label Studio's own time for it, where the page drew it, and the annotator's box as drawn.
    annotations = sorted(label_studio.api("GET", f"/api/tasks/{task}/annotations"), key=lambda a: a["id"])
    assert len(annotations) == 2  # the box as drawn, then the track
    (first,) = annotations[0]["result"]
    (drawn_key,) = first["value"]["sequence"]
    assert drawn_key["frame"] == DRAWN_FRAME and box_iou(pixels(drawn_key), POLYP_ON_133) > 0.9
    (track,) = annotations[-1]["result"]
    assert track["type"] == "videorectangle" and track["value"]["labels"] == ["Polyp"]
    keyframes = {k["frame"]: k for k in track["value"]["sequence"]}
    assert set(range(145, 171)) <= set(keyframes)
    assert all(
        keyframes[f]["enabled"] and keyframes[f]["time"] == pytest.approx(f / FPS) for f in range(145, 171)
    )
    assert keyframes[DRAWN_FRAME]["x"] == drawn_key["x"]  # the annotator's own keyframe, kept
    assert min(keyframes) < DRAWN_FRAME  # tracked backward too
    for frame, box in seen.items():
        assert box_iou(pixels(keyframes[frame]), box) > 0.9, frame
