"""What the polyp detector costs, on this machine.

- Per frame at 720 x 576 (PAL, the issue's target: at most 150 ms) and at the clip's own
  560 x 480: the detector alone (`PolypDetector.find`: one pass of the network, boxes and
  uncertainty), and pre-annotation (`find_polyps`: the detector, then the model outlines each
  detection), beside the reference, the model alone answering one box on the same frame.
- The classical tracker on the real clip, from the box on frame 133 backward (where the polyp
  leaves the view, so the track is lost on many frames): frames per second with re-acquisition
  (the default: the detector runs on every lost frame) and without (`--no-reacquire`).

    python benchmarks/detection_speed.py [--frames 20] [--threads N] [--detector FILE] [--markdown]
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time
from pathlib import Path

import cv2
import numpy as np
import torch

from benchmark_table import print_table
from polypseg.detection_job import build_detector, find_polyps
from polypseg.predictors import build_predictor
from polypseg.prompts import Box, Prompt
from polypseg.video.classical import ClassicalTracker
from polypseg.video.frames import open_frames

ROOT = Path(__file__).resolve().parents[1]
CLIP = ROOT.parent / "shared" / "data" / "video" / "colonoscopy-clip-1.mp4"
START, BOX = 133, Box(360, 240, 450, 400)


def per_frame_ms(run, frames: list[np.ndarray]) -> float:  # type: ignore[no-untyped-def]
    run(frames[0])  # warm-up
    times = []
    for frame in frames:
        begin = time.perf_counter()
        run(frame)
        times.append(time.perf_counter() - begin)
    return 1000 * statistics.median(times)


def tracker_fps(tracker: ClassicalTracker, frames: int) -> tuple[float, int]:
    source = open_frames(CLIP)
    begin = time.perf_counter()
    results = list(tracker.track(source.frames(START, "backward", frames), Prompt(box=BOX), None))
    return len(results) / (time.perf_counter() - begin), sum(r.lost for r in results)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=20, help="clip frames timed per row")
    parser.add_argument("--track-frames", type=int, default=60, help="frames tracked backward from 133")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--markdown", action="store_true")
    parser.add_argument("--detector", type=Path, help="a detector checkpoint (default: the shipped one)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    detector, predictor = build_detector(args.detector, device="cpu"), build_predictor(device="cpu")
    source = open_frames(CLIP)
    clip = [frame for _, frame in source.frames(START - args.frames, "forward", args.frames)]
    sizes = {
        "720x576": [cv2.resize(f, (720, 576), interpolation=cv2.INTER_LINEAR) for f in clip],
        "560x480": clip,
    }

    rows = []
    for name, frames in sizes.items():
        scale = frames[0].shape[1] / clip[0].shape[1]
        box = Prompt(box=Box(BOX.x1 * scale, BOX.y1 * scale, BOX.x2 * scale, BOX.y2 * scale))
        reference = per_frame_ms(lambda f, box=box: predictor.predict(f, box), frames)
        for what, run in (
            ("detector alone", lambda f: detector.find(f)),
            ("pre-annotation (detect + outline)", lambda f: find_polyps(detector, predictor, f)),
        ):
            ms = per_frame_ms(run, frames)
            rows.append(
                (
                    f"{what}, {name}",
                    f"{ms:.0f} ms",
                    f"{ms / reference:.2f}x the model on one box ({reference:.0f} ms)",
                )
            )
    plain_fps, plain_lost = tracker_fps(ClassicalTracker(predictor), args.track_frames)
    found_fps, found_lost = tracker_fps(ClassicalTracker(predictor, detector=detector), args.track_frames)
    rows.append(
        (
            "classical tracker, clip 133 backward, --no-reacquire",
            f"{plain_fps:.1f} frames/s",
            f"{plain_lost} lost of {args.track_frames}",
        )
    )
    rows.append(
        (
            "... re-acquiring (the default)",
            f"{found_fps:.1f} frames/s",
            f"{found_lost} lost; {found_fps / plain_fps:.2f}x the frames/s without",
        )
    )

    title = (
        f"{platform.processor() or platform.machine()}, {args.threads} torch threads, "
        f"detector {detector.version}, model {predictor.version}"
    )
    print_table(title, ("measurement", "cost", "against"), rows, args.markdown)


if __name__ == "__main__":
    main()
