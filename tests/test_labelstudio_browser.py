"""An annotator's session in a real browser: Label Studio's own labelling page in headless
Chromium (Debian's, driven by Playwright), step by step as README.md tells an annotator (no
other click): Auto-Annotation on, Auto-Detect, a box drawn, the backend's brush region
accepted; a "Background" click for a correction; submitted."""

from __future__ import annotations

from pathlib import Path

import pytest

from backends.labelstudio import launcher
from backends.labelstudio.brush import decode_brush_rle
from backends.labelstudio.regions import prompt_from_context
from conftest import ONE_POLYP, LabelStudioStack, _free_port
from labelstudio_fixtures import CONFIGS
from labelstudio_page import (
    SCREENSHOTS,
    labelling_page,
    open_task_with_auto_annotation,
    stage_scale,
)
from polypseg.clicks import next_click
from polypseg.images import read_mask
from polypseg.metrics import score_masks

pytestmark = pytest.mark.slow


def test_smart_box_in_the_labelling_page(
    label_studio: LabelStudioStack, kvasir: Path, boxes, core_mask
) -> None:
    from playwright.sync_api import expect

    project = launcher.polyp_project(
        label_studio.client, "Browser", (CONFIGS / "polyp-image.xml").read_text()
    )
    launcher.connect_backend(label_studio.client, project, label_studio.backend_url)
    with (kvasir / "images" / f"{ONE_POLYP}.jpg").open("rb") as file:
        label_studio.api("POST", f"/api/projects/{project}/import", files={f"{ONE_POLYP}.jpg": file})
    task = label_studio.api("GET", f"/api/tasks?project={project}")["tasks"][0]["id"]
    truth = read_mask(kvasir / "masks" / f"{ONE_POLYP}.jpg")
    height, width = truth.shape
    polyp = boxes[ONE_POLYP][0]

    with labelling_page("failure.png") as page:
        asked: list[dict] = []  # what the labelling page sends to the backend, through Label Studio
        page.on(
            "request",
            lambda request: (
                asked.append(request.post_data_json) if "interactive-annotating" in request.url else None
            ),
        )
        # README: "turn on Auto-Annotation in the bottom bar"
        open_task_with_auto_annotation(page, label_studio, project, task)
        # The box's label is selected from the start (no label to hunt for first).
        expect(page.locator(".lsf-label_selected")).to_have_text(["Polyp box1"])
        # README: "click Auto-Detect in the toolbar (the sparkle) and draw a box around the polyp"
        auto_detect = page.locator("button.lsf-tool_smart", has_text="Auto-Detect")
        auto_detect.click()

        scale, x0, y0 = stage_scale(page, width, height)
        page.mouse.move(x0 + 5, y0 + 5)
        page.mouse.move(x0 + polyp.x1 * scale, y0 + polyp.y1 * scale)
        page.mouse.down()
        page.mouse.move(x0 + polyp.x2 * scale, y0 + polyp.y2 * scale, steps=12)
        page.mouse.up()

        # README: "accept the suggestion (the check mark in the bottom bar)"
        accept = page.locator('[data-testid="bottombar-accept-suggestions-button"]')
        expect(accept).to_be_visible(timeout=60_000)
        accept.click()
        expect(page.locator(".lsf-tree__node_type_brushregion").first).to_be_visible(timeout=30_000)
        page.screenshot(path=str(SCREENSHOTS / "brush-region.png"))
        boxed = len(asked)

        # README: "to correct, pick Key Point under Auto-Detect, then On the polyp or
        # Background, and click"
        auto_detect.hover()
        page.locator('button.lsf-tool_smart[aria-label="key-point-tool"]').click()
        page.locator(".lsf-label", has_text="Background").click()
        _, x0, y0 = stage_scale(page, width, height)  # the layout may have moved
        page.mouse.click(x0 + (width - 20) * scale, y0 + 20 * scale)  # top right: no polyp there
        for _ in range(60):
            if len(asked) > boxed:
                break
            page.wait_for_timeout(250)
        page.locator('[data-testid="bottombar-submit-button"]').click()
        page.wait_for_timeout(1500)

    annotations = label_studio.api("GET", f"/api/tasks/{task}/annotations")
    assert annotations, "the annotation was not submitted"
    (brush,) = [r for r in annotations[-1]["result"] if r["type"] == "brushlabels"]
    found = decode_brush_rle(brush["value"]["rle"], width, height)
    # The core's answer to the box the mouse drew, as the page sent it (a drag lands a few pixels
    # from where it was aimed).
    (rectangle,) = [r for r in asked[boxed - 1]["context"]["result"] if r["type"] == "rectanglelabels"]
    v = rectangle["value"]
    drawn = (v["x"] * width / 100, v["y"] * height / 100, (v["x"] + v["width"]) * width / 100)
    drawn += ((v["y"] + v["height"]) * height / 100,)
    assert max(abs(a - b) for a, b in zip(drawn, (polyp.x1, polyp.y1, polyp.x2, polyp.y2), strict=True)) < 30
    expected = core_mask(kvasir / "images" / f"{ONE_POLYP}.jpg", drawn)
    assert score_masks(found, expected).iou > 0.99

    # The correction click arrived labelled "Background", and the backend reads it as a
    # negative click where the page put it.
    # (After the Submit, Label Studio also asks with an empty context: not the click.)
    clicks = [request for request in asked[boxed:] if request["context"]["result"]]
    assert clicks, "the Background click sent nothing to the backend"
    (click,) = clicks[-1]["context"]["result"]
    assert click["type"] == "keypointlabels" and click["value"]["keypointlabels"] == ["Background"]
    prompt, _ = prompt_from_context([click], "image", width, height)
    (point,) = prompt.points
    assert not point.positive and abs(point.x - (width - 20)) < 30 and abs(point.y - 20) < 30


def test_background_click_corrects_the_box_mask(label_studio: LabelStudioStack, kvasir: Path, boxes) -> None:
    """README's steps: Auto-Annotation on, Auto-Detect, a loose box, accept; then Key Point,
    Background, a click where the mask spills over the polyp's edge (the clicks protocol's next
    negative click on the backend's first answer). Label Studio sends the click alone; the
    backend's click session adds the box, and the region Label Studio keeps loses the clicked
    pixel without losing overlap with the polyp."""
    from playwright.sync_api import expect

    checkpoint = None  # the shipped default: the click-guided U-Net
    port = _free_port()
    backend = launcher.start_backend(
        port,
        label_studio.url,
        label_studio.login.token,
        label_studio.data_dir / "click-backend.log",
        extra_env={"POLYPSEG_CHECKPOINT": str(checkpoint)} if checkpoint else None,
    )
    try:
        project = launcher.polyp_project(
            label_studio.client, "Browser clicks", (CONFIGS / "polyp-image.xml").read_text()
        )
        launcher.connect_backend(label_studio.client, project, f"http://127.0.0.1:{port}")
        with (kvasir / "images" / f"{ONE_POLYP}.jpg").open("rb") as file:
            label_studio.api("POST", f"/api/projects/{project}/import", files={f"{ONE_POLYP}.jpg": file})
        task = label_studio.api("GET", f"/api/tasks?project={project}")["tasks"][0]["id"]
        truth = read_mask(kvasir / "masks" / f"{ONE_POLYP}.jpg")
        height, width = truth.shape
        polyp = boxes[ONE_POLYP][0]
        # a loose box (25% wider on each side): its mask spills over the polyp's edge
        pad_x, pad_y = 0.25 * polyp.width, 0.25 * polyp.height
        loose = (
            max(polyp.x1 - pad_x, 2),
            max(polyp.y1 - pad_y, 2),
            min(polyp.x2 + pad_x, width - 3),
            min(polyp.y2 + pad_y, height - 3),
        )
        with labelling_page("click-failure.png") as page:
            answers: list = []  # the backend's answers, as Label Studio hands them to the page
            page.on("response", lambda r: answers.append(r) if "interactive-annotating" in r.url else None)
            open_task_with_auto_annotation(page, label_studio, project, task)
            auto_detect = page.locator("button.lsf-tool_smart", has_text="Auto-Detect")
            auto_detect.click()
            scale, x0, y0 = stage_scale(page, width, height)
            page.mouse.move(x0 + 5, y0 + 5)
            page.mouse.move(x0 + loose[0] * scale, y0 + loose[1] * scale)
            page.mouse.down()
            page.mouse.move(x0 + loose[2] * scale, y0 + loose[3] * scale, steps=12)
            page.mouse.up()
            accept = page.locator('[data-testid="bottombar-accept-suggestions-button"]')
            expect(accept).to_be_visible(timeout=60_000)
            accept.click()
            expect(page.locator(".lsf-tree__node_type_brushregion").first).to_be_visible(timeout=30_000)
            boxed = _brush(answers[-1].json(), width, height)

            # the protocol's next click on the box's answer, negative: only the mask's
            # false part counts as an error when the truth is cut to the mask
            click = next_click(boxed, truth & boxed)
            assert click is not None and not click.positive, "the loose box's mask does not spill over"
            # README: a click on a shown mask selects it (Label Studio 1.23.2 places no
            # keypoint there): "hide the regions (the eye in the Regions panel), then Key
            # Point, Background, and click"
            page.keyboard.press("Escape")
            page.get_by_role("button", name="Hide all regions").click()
            auto_detect.hover()
            page.locator('button.lsf-tool_smart[aria-label="key-point-tool"]').click()
            page.locator(".lsf-label", has_text="Background").click()
            expect(page.locator(".lsf-label_selected")).to_have_text(["Background3"])
            scale, x0, y0 = stage_scale(page, width, height)  # the layout may have moved
            asked = len(answers)
            page.mouse.click(x0 + (click.x + 0.5) * scale, y0 + (click.y + 0.5) * scale)
            for _ in range(120):
                if len(answers) > asked:
                    break
                page.wait_for_timeout(250)
            assert len(answers) > asked, "the Background click on the mask sent nothing to the backend"
            expect(accept).to_be_visible(timeout=60_000)
            page.wait_for_timeout(500)
            accept.click()
            page.wait_for_timeout(1000)
            page.screenshot(path=str(SCREENSHOTS / "background-click.png"))
            page.locator('[data-testid="bottombar-submit-button"]').click()
            page.wait_for_timeout(1500)
            clicked = answers[-1].request.post_data_json["context"]["result"]
    finally:
        launcher.stop(backend)

    # Label Studio sent the click alone, labelled Background, where the page put it
    (sent,) = clicked
    assert sent["type"] == "keypointlabels" and sent["value"]["keypointlabels"] == ["Background"]
    prompt, _ = prompt_from_context([sent], "image", width, height)
    (point,) = prompt.points
    assert not point.positive and abs(point.x - click.x) < 4 and abs(point.y - click.y) < 4
    # the region Label Studio kept from that click: the clicked pixel left the mask
    annotations = label_studio.api("GET", f"/api/tasks/{task}/annotations")
    assert annotations, "the annotation was not submitted"
    brushes = [r for r in annotations[-1]["result"] if r["type"] == "brushlabels"]
    corrected = decode_brush_rle(brushes[-1]["value"]["rle"], width, height)
    assert boxed[int(point.y), int(point.x)] and not corrected[int(point.y), int(point.x)]
    assert score_masks(corrected, truth).iou >= score_masks(boxed, truth).iou


def _brush(answer: dict, width: int, height: int):
    (region,) = [r for r in answer["data"]["result"] if r["type"] == "brushlabels"]
    return decode_brush_rle(region["value"]["rle"], width, height)
