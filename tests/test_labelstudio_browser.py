"""An annotator's session in a real browser: Label Studio's own labelling page in headless
Chromium (Debian's, driven by Playwright), step by step as README.md tells an annotator (no
other click): Auto-Annotation on, Auto-Detect, a box drawn, the backend's brush region
accepted; a "Background" click for a correction; submitted."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from backends.labelstudio import launcher
from backends.labelstudio.regions import prompt_from_context
from conftest import ONE_POLYP, ROOT, LabelStudioStack
from labelstudio_fixtures import CONFIGS
from polypseg.formats.brush import decode_brush_rle
from polypseg.images import read_mask
from polypseg.metrics import score_masks

pytestmark = pytest.mark.slow

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
SCREENSHOTS = ROOT / "runs" / "browser"
FLAGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
LOOPBACK = ("http://127.0.0.1", "http://localhost", "data:", "blob:")


def test_smart_box_in_the_labelling_page(
    label_studio: LabelStudioStack, kvasir: Path, boxes, core_mask
) -> None:
    from playwright.sync_api import expect, sync_playwright

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
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        asked: list[dict] = []  # what the labelling page sends to the backend, through Label Studio
        page.on(
            "request",
            lambda request: (
                asked.append(request.post_data_json) if "interactive-annotating" in request.url else None
            ),
        )
        page.route(
            "**/*",
            lambda route: route.continue_() if route.request.url.startswith(LOOPBACK) else route.abort(),
        )
        try:
            page.goto(f"{label_studio.url}/user/login")
            page.fill("input[name=email]", label_studio.login.username)
            page.fill("input[name=password]", label_studio.login.password)
            page.click("button[type=submit]")
            page.wait_for_url(lambda url: "/user/login" not in url)

            page.goto(f"{label_studio.url}/projects/{project}/data?task={task}")
            page.wait_for_selector(".konvajs-content canvas", timeout=60_000)
            page.wait_for_function(
                "() => window.Htx?.annotationStore?.selected?.names?.get('image')?.imageIsLoaded === true",
                timeout=60_000,
            )
            # README: "turn on Auto-Annotation in the bottom bar"
            toggle = page.locator('input[data-testid="bottombar-auto-annotation-toggle"]')
            toggle.locator("xpath=..").click()
            page.evaluate("() => document.activeElement && document.activeElement.blur()")
            # The box's label is selected from the start (no label to hunt for first).
            expect(page.locator(".lsf-label_selected")).to_have_text(["Polyp box1"])
            # README: "click Auto-Detect in the toolbar (the sparkle) and draw a box around the polyp"
            auto_detect = page.locator("button.lsf-tool_smart", has_text="Auto-Detect")
            auto_detect.click()

            stage = page.locator(".konvajs-content").first.bounding_box()
            assert stage is not None
            scale = min(stage["width"] / width, stage["height"] / height)
            x0, y0 = stage["x"], stage["y"]
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
            stage = page.locator(".konvajs-content").first.bounding_box()  # the layout may have moved
            assert stage is not None
            x0, y0 = stage["x"], stage["y"]
            page.mouse.click(x0 + (width - 20) * scale, y0 + 20 * scale)  # top right: no polyp there
            for _ in range(60):
                if len(asked) > boxed:
                    break
                page.wait_for_timeout(250)
            page.locator('[data-testid="bottombar-submit-button"]').click()
            page.wait_for_timeout(1500)
        except Exception:
            page.screenshot(path=str(SCREENSHOTS / "failure.png"))
            raise
        finally:
            browser.close()

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
    assert len(asked) > boxed, "the Background click sent nothing to the backend"
    (click,) = asked[-1]["context"]["result"]
    assert click["type"] == "keypointlabels" and click["value"]["keypointlabels"] == ["Background"]
    prompt, _ = prompt_from_context([click], "image", width, height)
    (point,) = prompt.points
    assert not point.positive and abs(point.x - (width - 20)) < 30 and abs(point.y - 20) < 30
