"""What a correction click costs: a box, then three clicks, as an annotator sends them.

Each request carries the box and every click so far (Label Studio and CVAT are stateless), so
the click model replays the clicks; in a session its cache holds the previous answer and each
new click costs one network pass. Measured on Kvasir-SEG validation images, clicks placed by
the evaluation protocol:
- the core: box alone; box + 3 clicks in a session (the 4th request, cache warm); the same
  request cold (a fresh image: 4 passes);
- the Label Studio backend (`polypseg serve labelstudio` on loopback, images in the requests
  as data URLs): the same session of 4 requests; its 3-click request against the core's. The
  backend runs as many requests at once as the process has cores, each on a share of the
  torch threads (`backends/labelstudio/concurrency.py`), so the core is timed on the same
  number of threads as a backend request gets; then the backend again with one request at a
  time (POLYPSEG_MODEL_CONCURRENCY=1: every thread for it), beside the core on all threads.

    python benchmarks/click_latency.py [--checkpoint FILE] [--images 10] [--markdown]
"""

from __future__ import annotations

import argparse
import functools
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

import requests
import torch

from backends.labelstudio import launcher
from backends.labelstudio.concurrency import cores_available, for_worker_processes
from benchmark_table import print_table
from polypseg.clicks import next_click
from polypseg.datasets import read_boxes_json
from polypseg.images import read_image, read_mask
from polypseg.predictors import build_predictor
from polypseg.prompts import Box, Point, Prompt

ROOT = Path(__file__).resolve().parents[1]
KVASIR = ROOT.parent / "shared" / "data" / "kvasir-seg"
CONFIG = (launcher.CONFIGS / "polyp-image.xml").read_text()


def region(kind: str, value: dict, width: int, height: int) -> dict:
    return {
        "type": kind,
        "from_name": "box" if kind == "rectanglelabels" else "click",
        "to_name": "image",
        "original_width": width,
        "original_height": height,
        "value": value,
    }


def ls_body(url: str, box: Box, points: tuple[Point, ...], width: int, height: int) -> dict:
    regions = [
        region(
            "rectanglelabels",
            {
                "x": 100 * box.x1 / width,
                "y": 100 * box.y1 / height,
                "width": 100 * box.width / width,
                "height": 100 * box.height / height,
                "rotation": 0,
                "rectanglelabels": ["Polyp"],
            },
            width,
            height,
        )
    ]
    for p in points:
        keypoint = region(
            "keypointlabels",
            {"x": 100 * p.x / width, "y": 100 * p.y / height, "width": 0.5, "keypointlabels": ["Polyp"]},
            width,
            height,
        )
        keypoint["is_positive"] = p.positive
        regions.append(keypoint)
    return {
        "tasks": [{"id": 1, "data": {"image": url}}],
        "label_config": CONFIG,
        "project": "1.1",
        "params": {"context": {"result": regions}},
    }


def session_prompts(predictor, image, truth, box: Box, clicks: int = 3) -> list[Prompt]:  # type: ignore[no-untyped-def]
    """The box, then each click the protocol places on the model's own errors."""
    prompts = [Prompt(box=box)]
    for _ in range(clicks):
        mask = predictor.predict(image, prompts[-1]).mask
        click = next_click(mask, truth)
        if click is None:
            break
        prompts.append(Prompt(box=box, points=(*prompts[-1].points, click)))
    return prompts


def timed(call) -> float:  # type: ignore[no-untyped-def]
    start = time.perf_counter()
    call()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", type=Path, help="model (default: the shipped one)")
    parser.add_argument("--images", type=int, default=10)
    parser.add_argument("--markdown", action="store_true")
    args = parser.parse_args()

    boxes = read_boxes_json(KVASIR / "bboxes.json")
    names = (ROOT / "training" / "splits" / "kvasir-seg-val.txt").read_text().split()[: args.images]
    predictor = build_predictor(None, args.checkpoint)
    sessions = []
    for name in names:
        image = read_image(KVASIR / "images" / f"{name}.jpg")
        truth = read_mask(KVASIR / "masks" / f"{name}.jpg")
        prompts = session_prompts(predictor, image, truth, boxes[name][0])
        if len(prompts) == 4:
            sessions.append((name, image, prompts))

    shared = for_worker_processes(1)  # what a backend request gets, as `serve labelstudio` runs it
    cores = cores_available()
    torch.set_num_threads(shared.torch_threads)
    box_only, warm, cold = core_times(predictor, sessions)
    torch.set_num_threads(cores)
    all_threads = core_times(predictor, sessions)[1]

    extra = {"POLYPSEG_CHECKPOINT": str(args.checkpoint)} if args.checkpoint else {}
    http_box, http_warm = backend_times(sessions, extra)
    alone_box, alone_warm = backend_times(sessions, {**extra, "POLYPSEG_MODEL_CONCURRENCY": "1"})

    median = statistics.median
    rows = [
        ("core: box alone", f"{1000 * median(box_only):.0f} ms"),
        ("core: box + 3 clicks, in a session (cache warm)", f"{1000 * median(warm):.0f} ms"),
        ("core: box + 3 clicks, cold (4 passes)", f"{1000 * median(cold):.0f} ms"),
        ("core: 3-click request / box alone (goal <= 2x)", f"{median(warm) / median(box_only):.2f}x"),
        ("backend HTTP: box alone", f"{1000 * median(http_box):.0f} ms"),
        ("backend HTTP: box + 3 clicks, in a session", f"{1000 * median(http_warm):.0f} ms"),
        ("backend 3-click round trip / core (goal <= 1.3x)", f"{median(http_warm) / median(warm):.2f}x"),
        (f"core on all {cores} threads: box + 3 clicks", f"{1000 * median(all_threads):.0f} ms"),
        ("backend, one request at a time: box + 3 clicks", f"{1000 * median(alone_warm):.0f} ms"),
        ("... its round trip / the core on all threads", f"{median(alone_warm) / median(all_threads):.2f}x"),
    ]
    title = (
        f"model {predictor.version}, {len(sessions)} images, {platform.machine()}, {cores} cores; "
        f"the backend runs {shared.limit} request(s) at once on {shared.torch_threads} torch thread(s) each, "
        f"and the core rows are timed on as many; load {os.getloadavg()[0]:.1f}"
    )
    print_table(title, ("measurement", "value"), rows, args.markdown)


def core_times(predictor, sessions) -> tuple[list[float], list[float], list[float]]:  # type: ignore[no-untyped-def]
    """Per session: the box alone, the 3-click request with the cache warm, and cold."""
    box_only, warm, cold = [], [], []
    for _, image, prompts in sessions:
        predictor.answers.clear()
        box_only.append(timed(functools.partial(predictor.predict, image, prompts[0])))
        for prompt in prompts[1:-1]:
            predictor.predict(image, prompt)
        warm.append(timed(functools.partial(predictor.predict, image, prompts[-1])))
        predictor.answers.clear()
        cold.append(timed(functools.partial(predictor.predict, image, prompts[-1])))
    return box_only, warm, cold


def backend_times(sessions, environment: dict[str, str]) -> tuple[list[float], list[float]]:  # type: ignore[no-untyped-def]
    """Per session, through a backend started with `environment`: the box alone, and the
    3-click request after the clicks before it."""
    http_box, http_warm = [], []
    with tempfile.TemporaryDirectory() as folder:
        port = 9300 + int(time.time()) % 500
        backend = launcher.start_backend(port, "", "", Path(folder) / "backend.log", environment)
        url = f"http://127.0.0.1:{port}/predict"
        try:
            with requests.Session() as http:
                for name, image, prompts in sessions:
                    height, width = image.shape[:2]
                    image_url = f"data:image/jpeg;base64,{_base64(KVASIR / 'images' / f'{name}.jpg')}"
                    times = []
                    for prompt in prompts:
                        body = ls_body(image_url, prompt.box, prompt.points, width, height)
                        times.append(timed(lambda b=body: http.post(url, json=b).raise_for_status()))
                    http_box.append(times[0])
                    http_warm.append(times[-1])
        finally:
            launcher.stop(backend)
    return http_box, http_warm


def _base64(path: Path) -> str:
    import base64

    return base64.b64encode(path.read_bytes()).decode()


if __name__ == "__main__":
    main()
