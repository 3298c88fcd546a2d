"""Frames per second and peak memory of the trackers on the real clip, and on a 10x longer
stream (the clip looped), on this machine.

Each measurement runs in a fresh process so that its peak resident memory is its own.
References measured in the same run: `sam2`'s own `SAM2VideoPredictor` (which loads every
frame up front) beside the streaming SAM2 tracker; beside the classical tracker, the image
model alone on each frame, and the same tracker with OpenCV's MIL box tracker (its box tracker
until 2026-12-06) in place of the box's optical flow. SAM2 uses random weights (speed and
memory do not depend on them) at a reduced working resolution so that the run fits a CPU.

    python benchmarks/tracker_speed_memory.py [--frames 60] [--sam2-frames 12] [--sam2-size 256]
        [--sam2-sizes 1024,512,256] [--trackers classical,mil,image,sam2,sam2-reference]
"""

from __future__ import annotations

import argparse
import itertools
import json
import resource
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

if TYPE_CHECKING:
    from polypseg.video.classical import ClassicalTracker

KINDS = {
    "classical": "classical",
    "mil": "reference: classical with OpenCV's MIL",
    "image": "image model alone",
    "sam2": "sam2 streaming",
    "sam2-reference": "reference: sam2 SAM2VideoPredictor",
}
CLIP = Path(__file__).resolve().parents[2] / "shared/data/video/colonoscopy-clip-1.mp4"
START, BOX = 113, (360, 240, 450, 400)


def looped_frames(count: int) -> Iterator[tuple[int, np.ndarray]]:
    """`count` frames from frame START of the clip on, looping over frames START..180."""
    from polypseg.video.frames import open_frames

    source = open_frames(CLIP)
    span = source.info.frame_count - START
    for index in range(count):
        if index % span == 0:
            frames = source.frames(START, "forward")
        yield index, next(frames)[1]


def sam2_checkpoint(folder: Path) -> Path:
    from polypseg.predictors.sam2 import create_sam2_model, sam2_config_name

    path = folder / "sam2.1_hiera_tiny.pt"
    if not path.exists():
        torch.save({"model": create_sam2_model(sam2_config_name("t")).state_dict()}, path)
    return path


def mil_classical_tracker() -> ClassicalTracker:
    """The classical tracker with OpenCV's MIL box tracker (polypseg's until 2026-12-06) in place
    of the box's optical flow: MIL learns the box's look on the last frame where the polyp was
    found and searches the next one for it."""
    import cv2

    from polypseg.predictors import build_predictor
    from polypseg.prompts import Box
    from polypseg.video.classical import ClassicalTracker, followable_box

    class MilClassicalTracker(ClassicalTracker):
        def _follow(self, previous: np.ndarray, box: Box, image: np.ndarray) -> Box | None:
            x1, y1, x2, y2 = followable_box(box, image.shape[1], image.shape[0]).as_array()
            tracker = cv2.TrackerMIL.create()
            try:
                tracker.init(
                    cv2.cvtColor(previous, cv2.COLOR_RGB2BGR), (int(x1), int(y1), int(x2 - x1), int(y2 - y1))
                )
            except cv2.error:  # MIL samples positives around the box; some boxes leave it none
                return None
            found, (x, y, w, h) = tracker.update(cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
            return Box(x, y, x + w, y + h) if found else None

    return MilClassicalTracker(build_predictor(device="cpu"))


def child(kind: str, frames: int, size: int, folder: Path) -> dict[str, float]:
    from polypseg.predictors import build_predictor
    from polypseg.prompts import Box, Prompt

    prompt = Prompt(box=Box(*BOX))
    start = time.perf_counter()
    if kind == "classical":
        from polypseg.video.classical import ClassicalTracker

        for _ in ClassicalTracker(build_predictor(device="cpu")).track(looped_frames(frames), prompt):
            pass
    elif kind == "mil":
        for _ in mil_classical_tracker().track(looped_frames(frames), prompt):
            pass
    elif kind == "image":
        predictor = build_predictor(device="cpu")
        for _, image in looped_frames(frames):
            predictor.predict(image, prompt)
    elif kind == "sam2":
        from polypseg.video.sam2_memory import Sam2MemoryTracker

        predictor = build_predictor(checkpoint=sam2_checkpoint(folder), device="cpu", image_size=size)
        start = time.perf_counter()
        for _ in Sam2MemoryTracker(predictor).track(looped_frames(frames), prompt):
            pass
    else:  # sam2's own video predictor: frames written as JPEGs, all loaded by init_state
        import cv2
        from sam2.build_sam import build_sam2_video_predictor

        jpegs = folder / f"frames-{frames}"
        jpegs.mkdir(exist_ok=True)
        for index, image in looped_frames(frames):
            cv2.imwrite(str(jpegs / f"{index}.jpg"), cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
        predictor = build_sam2_video_predictor(
            "configs/sam2.1/sam2.1_hiera_t.yaml",
            str(sam2_checkpoint(folder)),
            device="cpu",
            hydra_overrides_extra=[f"++model.image_size={size}"],
        )
        start = time.perf_counter()
        state = predictor.init_state(str(jpegs))
        predictor.add_new_points_or_box(state, frame_idx=0, obj_id=1, box=np.array(BOX, dtype=np.float32))
        for _ in predictor.propagate_in_video(state):
            pass
    seconds = time.perf_counter() - start
    return {"fps": frames / seconds, "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def measure(kind: str, frames: int, size: int, folder: str) -> dict[str, float]:
    """One measurement in a fresh process."""
    command = [sys.executable, __file__, "--child", kind, str(frames), "--sam2-size", str(size)]
    run = subprocess.run([*command, "--folder", folder], capture_output=True, text=True, check=True)
    return json.loads(run.stdout)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--frames", type=int, default=60, help="frames of the short run (classical)")
    parser.add_argument("--sam2-frames", type=int, default=12, help="frames of the short run (SAM2)")
    parser.add_argument("--sam2-size", type=int, default=256)
    parser.add_argument(
        "--sam2-sizes",
        default="1024,512,256",
        help="working resolutions for the SAM2 cost table ('' skips it)",
    )
    parser.add_argument("--trackers", default=",".join(KINDS), help="which rows, of " + ", ".join(KINDS))
    parser.add_argument("--child", nargs=2, metavar=("KIND", "FRAMES"), help=argparse.SUPPRESS)
    parser.add_argument("--folder", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    if args.child:
        print(json.dumps(child(args.child[0], int(args.child[1]), args.sam2_size, args.folder)))
        return
    threads = torch.get_num_threads()
    print(f"clip {CLIP.name} from frame {START}, looped; {threads} threads, SAM2 at {args.sam2_size} px")
    print("| tracker | frames | frames/s | peak memory MB |\n|---|---|---|---|")
    with tempfile.TemporaryDirectory() as folder:
        chosen = [name.strip() for name in args.trackers.split(",") if name.strip()]
        if unknown := set(chosen) - set(KINDS):
            parser.error(f"--trackers: {', '.join(sorted(unknown))} not among {', '.join(KINDS)}")
        lengths = [(kind, args.sam2_frames if kind.startswith("sam2") else args.frames) for kind in chosen]
        runs = itertools.product(lengths, (1, 10))
        for (kind, frames), factor in runs:
            result = measure(kind, frames * factor, args.sam2_size, folder)
            print(
                f"| {KINDS[kind]} | {frames * factor} | {result['fps']:.2f} | {result['peak_mb']:.0f} |",
                flush=True,
            )

        sizes = [int(size) for size in args.sam2_sizes.split(",") if size.strip()]
        if sizes:
            print(f"\nSAM2 streaming by working resolution, {args.sam2_frames} frames")
            print("| working size px | s/frame | peak memory MB | reference: s/frame | reference: peak MB |")
            print("|---|---|---|---|---|")
        for size in sizes:
            ours = measure("sam2", args.sam2_frames, size, folder)
            theirs = measure("sam2-reference", args.sam2_frames, size, folder)
            print(
                f"| {size} | {1 / ours['fps']:.2f} | {ours['peak_mb']:.0f} "
                f"| {1 / theirs['fps']:.2f} | {theirs['peak_mb']:.0f} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
