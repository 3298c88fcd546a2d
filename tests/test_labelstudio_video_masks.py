"""Masks on every frame of a video in Label Studio 1.23.2, in its own labelling page (headless
Chromium): the real clip cut into clip tasks by `polypseg video-tasks`, one clip imported with
its frames served as local files, the pager turned to a middle page, a smart box drawn there,
the backend's masks accepted and submitted; then `polypseg export-video-masks` writes the
submitted masks as a sequence folder that the video tools read.

Label Studio's side: `<Image valueList>` pages (web/libs/editor `tags/object/Image`), regions
tied to a page by `item_index` (../shared/notes/labelstudio.md, "Video frames as paginated
tasks"); the pager is `.lsf-pagination` ("11 of 30").
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from backends.labelstudio import launcher
from backends.labelstudio.brush import decode_brush_rle
from backends.labelstudio.export import LabelStudioProject
from conftest import CLIP_POLYP, DATA, LabelStudioStack, box_iou
from labelstudio_fixtures import CONFIGS
from labelstudio_page import (
    SCREENSHOTS,
    labelling_page,
    open_task_with_auto_annotation,
    stage_scale,
)
from polypseg.cli import main
from polypseg.data_store import DatasetStore
from polypseg.images import read_mask
from polypseg.masks import mask_box
from polypseg.training.sam2_video import read_sequence

pytestmark = pytest.mark.slow

CLIP = DATA / "video" / "colonoscopy-clip-1.mp4"
WIDTH, HEIGHT = 560, 480
FIRST, BOXED = 150, 160  # the clip of frames 150-179; the box goes on frame 160 (page 11)


def test_a_box_on_one_page_gives_masks_on_every_page(label_studio: LabelStudioStack, tmp_path: Path) -> None:
    from playwright.sync_api import expect

    clips = tmp_path / "clips"
    assert (
        main(["video-tasks", str(CLIP), "--out", str(clips)]) == 0
    )  # local files under / (the stack's root)
    tasks = json.loads((clips / f"{CLIP.stem}-tasks.json").read_text())
    config = (CONFIGS / "polyp-video-masks.xml").read_text()
    project = launcher.polyp_project(label_studio.client, "Clip masks", config)
    launcher.connect_backend(label_studio.client, project, label_studio.backend_url)
    clip = [t for t in tasks if t["data"]["frame_start"] == FIRST]
    assert launcher.add_clip_tasks(label_studio.client, project, clips, clip) == 1
    assert launcher.add_clip_tasks(label_studio.client, project, clips, clip) == 1  # not imported twice
    task = label_studio.api("GET", f"/api/tasks?project={project}")["tasks"][0]["id"]

    with labelling_page("clip-failure.png") as page:
        asked: list[dict] = []
        page.on(
            "request",
            lambda r: asked.append(r.post_data_json) if "interactive-annotating" in r.url else None,
        )
        open_task_with_auto_annotation(page, label_studio, project, task)
        # README: "page to a frame where the polyp is clear (the arrows under the image)"
        forward = page.locator(
            ".lsf-pagination__btn_arrow-right:not(.lsf-pagination__btn_arrow-right-double)"
        )
        for _ in range(BOXED - FIRST):
            forward.click()
        expect(page.locator(".lsf-pagination__page-indicator")).to_contain_text(f"{BOXED - FIRST + 1} of 30")
        page.wait_for_function(
            "() => window.Htx.annotationStore.selected.names.get('image').imageIsLoaded === true",
            timeout=30_000,
        )
        page.locator("button.lsf-tool_smart", has_text="Auto-Detect").click()
        scale, x0, y0 = stage_scale(page, WIDTH, HEIGHT)
        x1, y1, x2, y2 = CLIP_POLYP[BOXED]
        page.mouse.move(x0 + 5, y0 + 5)
        page.mouse.move(x0 + x1 * scale, y0 + y1 * scale)
        page.mouse.down()
        page.mouse.move(x0 + x2 * scale, y0 + y2 * scale, steps=12)
        page.mouse.up()
        accept = page.locator('[data-testid="bottombar-accept-suggestions-button"]')
        expect(accept).to_be_visible(timeout=120_000)
        accept.click()
        expect(page.locator(".lsf-tree__node_type_brushregion").first).to_be_visible(timeout=30_000)
        page.screenshot(path=str(SCREENSHOTS / "clip-masks.png"))
        page.locator('[data-testid="bottombar-submit-button"]').click()
        page.wait_for_timeout(1500)

    # The page sent the box with its page ...
    boxes = [r for body in asked for r in body["context"]["result"] if r["type"] == "rectanglelabels"]
    assert boxes and boxes[0]["item_index"] == BOXED - FIRST
    # ... and Label Studio kept one mask per tracked page, each on its page
    annotations = label_studio.api("GET", f"/api/tasks/{task}/annotations")
    assert annotations, "the annotation was not submitted"
    regions = [r for r in annotations[-1]["result"] if r["type"] == "brushlabels"]
    pages = [r["item_index"] for r in regions]
    assert len(pages) == len(set(pages)) and set(range(0, 27)) <= set(pages)
    masks = {r["item_index"]: decode_brush_rle(r["value"]["rle"], WIDTH, HEIGHT) for r in regions}
    for frame, box in CLIP_POLYP.items():  # on the hand-boxed frames, the mask lies on the polyp
        found = mask_box(masks[frame - FIRST])
        assert found is not None and box_iou(tuple(found.as_array()), box) > 0.6, frame

    # Back out: the submitted clip as a sequence folder named by the video's frame numbers
    out = tmp_path / "export"
    code = main(
        [
            "export-video-masks",
            "--label-studio-url",
            label_studio.url,
            "--api-key",
            label_studio.login.token,
            "--label-studio-project",
            str(project),
            "--out",
            str(out),
        ]
    )
    assert code == 0
    folder = out / f"{CLIP.stem}-{FIRST:06d}"
    assert sorted(p.name for p in (folder / "frames").iterdir()) == [
        f"{f:06d}.jpg" for f in range(FIRST, 180)
    ]
    for index in range(30):
        written = read_mask(folder / "masks" / f"{FIRST + index:06d}.png")
        expected = masks.get(index, np.zeros((HEIGHT, WIDTH), bool))  # no region: not in view
        assert np.array_equal(written, expected), index
    sequence = read_sequence(folder)  # the SAM2 video fine-tune's reader takes it as it is
    assert len(sequence.frames) == 30 and len(sequence.masks) == 30

    # The retraining pull takes the same clip: a still per page with a mask, named by the
    # video's frame, and the clip from its first masked page to its last as one sequence
    store = DatasetStore(tmp_path / "store")
    source = LabelStudioProject(label_studio.url, label_studio.login.token, project)
    report = source.pull(store)
    assert (report.new, report.sequences, report.failed) == (len(masks), 1, {})
    assert {e["task"] for e in store.index.values()} == {f"{task}:{FIRST + p}" for p in masks}
    (entry,) = store.sequences.values()
    assert entry["frames"] == max(masks) - min(masks) + 1
    pulled = read_sequence(store.root / entry["folder"])
    assert len(pulled.masks) == entry["frames"]
    again = source.pull(store)  # nothing changed: nothing fetched again
    assert (again.new, again.unchanged, again.sequences) == (0, len(masks), 0)
