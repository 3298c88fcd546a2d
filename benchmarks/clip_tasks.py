"""How long the Label Studio backend takes to answer a clip task (paged frames), on this machine.

A box drawn on frame 160 (boxed by hand) of a clip of the real video ending on frame 179 is
answered with the track through the whole clip: one request, which must come back within
Label Studio's ML request time-out (ML_TIMEOUT_PREDICT, 100 s by default; `make
annotate` sets 3600). Timed in-process (FastAPI's test client) with the frames read over HTTP
from a loopback server, for clips of 20, 30, 60 and 90 frames, beside the reference: the core
tracker alone on the same frames decoded from the video file (no HTTP, no region encoding).
Also "Retrieve predictions" on a 30-frame clip (the detector on every page, then the track).

    python benchmarks/clip_tasks.py [--threads N] [--markdown]
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

import torch
from fastapi.testclient import TestClient

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))  # the loopback file server the backend tests use

from backends.labelstudio.clips import video_tasks  # noqa: E402
from backends.labelstudio.model import PolypModel  # noqa: E402
from backends.labelstudio.server import create_app  # noqa: E402
from backends.labelstudio.settings import Settings  # noqa: E402
from benchmark_table import print_table  # noqa: E402
from labelstudio_fixtures import CONFIGS, TOKEN, file_server, rectangle  # noqa: E402
from polypseg.predictors import build_predictor  # noqa: E402
from polypseg.prompts import Box, Prompt  # noqa: E402
from polypseg.video.frames import VideoFileSource  # noqa: E402
from polypseg.video.tracking_job import build_tracker, track_anchored  # noqa: E402

CLIP = ROOT.parent / "shared" / "data" / "video" / "colonoscopy-clip-1.mp4"
LAST = 179  # clips end here; the polyp is in view on 113-177
BOXED, BOX = 160, (264, 290, 355, 418)  # tests/conftest.py CLIP_POLYP
CONFIG = (CONFIGS / "polyp-video-masks.xml").read_text()


def seconds(run) -> float:  # type: ignore[no-untyped-def]
    begin = time.perf_counter()
    run()
    return time.perf_counter() - begin


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--markdown", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    predictor = build_predictor(device="cpu")
    rows = []
    with tempfile.TemporaryDirectory() as folder, file_server(Path(folder) / CLIP.stem) as media:
        settings = Settings(label_studio_url=media.url, label_studio_api_key=TOKEN)
        client = TestClient(create_app(settings, PolypModel(settings, predictor)))
        source = VideoFileSource(CLIP)
        for length in (20, 30, 60, 90):
            first = LAST + 1 - length
            out = Path(folder) / str(length)
            tasks_file = video_tasks(CLIP, out, length, frames_url=f"{media.url}/data/upload/x")
            (Path(folder) / CLIP.stem).mkdir(exist_ok=True)
            for frame in (out / CLIP.stem).iterdir():  # served flat by the file server
                frame.replace(Path(folder) / CLIP.stem / frame.name)
            (task,) = [t for t in json.loads(tasks_file.read_text()) if t["data"]["frame_start"] == first]
            body = {
                "tasks": [{"id": length, **task}],
                "label_config": CONFIG,
                "params": {
                    "context": {"result": [{**rectangle(BOX, 560, 480), "item_index": BOXED - first}]},
                },
            }
            if length == 20:  # the first request also loads the model's kernels: not timed
                _ok(client.post("/predict", json=body))
            answer_s = seconds(lambda body=body: _ok(client.post("/predict", json=body)))
            tracker = build_tracker("classical", predictor)
            anchors = {BOXED - first: Prompt(box=Box(*BOX))}
            clip = _Window(source, first, length)
            core_s = seconds(lambda c=clip, t=tracker, a=anchors: track_anchored(c, t, a))
            rows.append(
                (
                    f"box on a {length}-frame clip",
                    f"{answer_s:.1f} s",
                    f"{answer_s / core_s:.2f}x the core tracker alone ({core_s:.1f} s, "
                    f"{length / core_s:.1f} frames/s)",
                )
            )
            if length == 30:
                body = {"tasks": [{"id": 1000, **task}], "label_config": CONFIG, "params": {}}
                pre_s = seconds(lambda body=body: _ok(client.post("/predict", json=body)))
                rows.append(
                    ("Retrieve predictions, 30-frame clip", f"{pre_s:.1f} s", "detector on 30 pages + track")
                )

    title = (
        f"{platform.processor() or platform.machine()}, {args.threads} torch threads, "
        f"model {predictor.version}"
    )
    print_table(title, ("request", "answered in", "against"), rows, args.markdown)


def _ok(response) -> None:  # type: ignore[no-untyped-def]
    if response.status_code != 200:
        raise SystemExit(f"the backend answered {response.status_code}: {response.text[:300]}")


class _Window(VideoFileSource):
    """Frames first..first+length-1 of a video, numbered from 0 (as the clip's pages are)."""

    def __init__(self, source: VideoFileSource, first: int, length: int) -> None:
        self.path, self.name, self.first = source.path, source.name, first
        self.info = source.info.__class__(length, source.info.fps, source.info.width, source.info.height)

    def _forward(self, start: int, stop: int):  # type: ignore[no-untyped-def]
        for index, image in super()._forward(start + self.first, stop + self.first):
            yield index - self.first, image


if __name__ == "__main__":
    main()
