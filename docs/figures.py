"""Makes docs/images/clip-masks.jpg: the shipped model on the real colonoscopy clip (interlaced
footage from another scope than Kvasir-SEG's), started from a box on frame 133 and carried by
the classical tracker over the frames where the polyp is in view, 8 of them in a grid.

    python docs/figures.py [--checkpoint FILE] [--out docs/images/clip-masks.jpg]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import cv2
import numpy as np

from polypseg.masks import draw_overlay
from polypseg.predictors import build_predictor
from polypseg.prompts import Box, Prompt
from polypseg.video.classical import ClassicalTracker
from polypseg.video.frames import open_frames

ROOT = Path(__file__).resolve().parents[1]
CLIP = ROOT.parent / "shared" / "data" / "video" / "colonoscopy-clip-1.mp4"
START, BOX = 133, Box(360, 240, 450, 400)  # the polyp, read by eye (shared/data/README.md)
SHOWN = (113, 121, 129, 137, 145, 153, 161, 169)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", type=Path)
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "images" / "clip-masks.png")
    args = parser.parse_args()
    predictor = build_predictor(None, args.checkpoint, "cpu")
    tracker = ClassicalTracker(predictor)
    source = open_frames(CLIP)
    tiles: dict[int, np.ndarray] = {}
    shown: dict[int, np.ndarray] = {}

    def remembered(frames):  # the frames to show, kept as they stream past the tracker
        for index, image in frames:
            if index in SHOWN:
                shown[index] = image
            yield index, image

    for direction in ("backward", "forward"):
        count = START - SHOWN[0] + 1 if direction == "backward" else SHOWN[-1] - START + 1
        for result in tracker.track(remembered(source.frames(START, direction, count)), Prompt(box=BOX)):
            if result.index in SHOWN:
                tile = draw_overlay(shown[result.index], result.mask)
                label = f"frame {result.index}" + (" (lost)" if result.lost else "")
                cv2.putText(tile, label, (10, 30), cv2.FONT_HERSHEY_SIMPLEX, 0.9, (255, 255, 255), 2)
                tiles[result.index] = tile
    rows = [np.hstack([tiles[i] for i in SHOWN[r : r + 4]]) for r in (0, 4)]
    grid = np.vstack(rows)
    grid = cv2.resize(grid, (grid.shape[1] // 2, grid.shape[0] // 2), interpolation=cv2.INTER_AREA)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(args.out), cv2.cvtColor(grid, cv2.COLOR_RGB2BGR))
    print(f"{args.out}: model {predictor.version}")


if __name__ == "__main__":
    main()
