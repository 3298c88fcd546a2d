"""Tracking a whole video to a folder: a mask PNG per frame, a JSON track, an overlay video."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from tqdm import tqdm

from polypseg.atomic import write_json
from polypseg.errors import ModelError, PolypsegError
from polypseg.images import read_mask, write_mask
from polypseg.masks import draw_overlay
from polypseg.predictors.base import ImagePredictor
from polypseg.prompts import Box, Prompt
from polypseg.video.frames import FrameSource
from polypseg.video.tracking import TrackedFrame, VideoTracker

TRACKERS = ("classical", "sam2")


def build_tracker(kind: str, predictor: ImagePredictor, detector: Any = None) -> VideoTracker:
    """A tracker of `kind`; the classical one re-acquires a lost polyp with `detector` (a
    polypseg.detector.PolypDetector) where one is given."""
    if kind == "classical":
        from polypseg.video.classical import ClassicalTracker

        return ClassicalTracker(predictor, detector=detector)
    if kind == "sam2":
        from polypseg.predictors.sam2 import Sam2Predictor
        from polypseg.video.sam2_memory import Sam2MemoryTracker

        if not isinstance(predictor, Sam2Predictor):
            raise ModelError("the sam2 tracker needs a SAM2 checkpoint (--checkpoint sam2.1_hiera_*.pt)")
        return Sam2MemoryTracker(predictor)
    raise ModelError(f"unknown tracker {kind!r}: one of {', '.join(TRACKERS)}")


def track_anchored(
    source: FrameSource,
    tracker: VideoTracker,
    anchors: Mapping[int, Prompt],
    reach: int | None = None,
    keep_masks: bool = True,
) -> dict[int, TrackedFrame]:
    """One track through `source` from prompts on some of its frames (`anchors`, by frame):
    backward from the first anchor, and forward from it through the others, re-anchored on
    each; `reach` frames at most before the first and after the last (default: to the ends).
    Without `keep_masks` the results carry no masks, so memory stays flat over a long video."""
    first, last = min(anchors), max(anchors)
    results: dict[int, TrackedFrame] = {}
    keep = (lambda result: result) if keep_masks else without_mask
    backward = source.frames(first, "backward", None if reach is None else reach + 1)
    for result in tracker.track(backward, anchors[first]):
        results[result.index] = keep(result)
    forward = source.frames(first, "forward", None if reach is None else last - first + reach + 1)
    for result in tracker.track(forward, anchors[first], anchors):
        results[result.index] = keep(result)
    return results


def without_mask(result: TrackedFrame) -> TrackedFrame:
    """The result with an empty mask in place of its own (box, score and lost kept)."""
    return replace(result, mask=np.zeros((0, 0), bool))


def mask_path(out: Path, index: int) -> Path:
    return out / f"mask_{index:06d}.png"


def track_video(
    source: FrameSource,
    tracker: VideoTracker,
    start: int,
    prompt: Prompt,
    out: Path,
    direction: str = "forward",
    max_frames: int | None = None,
    corrections: Mapping[int, Prompt] | None = None,
) -> list[TrackedFrame]:
    """Track from frame `start` in one or both directions, re-anchored on the frames that
    `corrections` names; masks go to `out` as they come, and the returned results (in frame
    order) carry no masks, so memory stays flat."""
    out.mkdir(parents=True, exist_ok=True)
    runs = ["backward", "forward"] if direction == "both" else [direction]
    results: dict[int, TrackedFrame] = {}
    for run in runs:
        frames = source.frames(start, run, max_frames)
        total = min(
            max_frames or source.info.frame_count,
            start + 1 if run == "backward" else source.info.frame_count - start,
        )
        tracked = tracker.track(frames, prompt, corrections)
        for result in tqdm(tracked, total=total, desc=f"tracking {run}", unit="frame"):
            write_mask(mask_path(out, result.index), result.mask)
            results[result.index] = without_mask(result)
    ordered = [results[i] for i in sorted(results)]
    summary = track_summary(ordered, start, prompt, corrections or {})
    write_json(out / "track.json", summary)
    return ordered


def track_summary(
    results: list[TrackedFrame], start: int, prompt: Prompt, corrections: Mapping[int, Prompt]
) -> dict[str, Any]:
    return {
        "start_frame": start,
        "prompt_box": _box(prompt.box),
        "corrections": [{"frame": i, "box": _box(corrections[i].box)} for i in sorted(corrections)],
        "frames": [
            {
                "frame": r.index,
                "box": _box(r.box),
                "score": round(r.score, 4),
                "lost": r.lost,
            }
            for r in results
        ],
    }


def _box(box: Box | None) -> list[float] | None:
    return [box.x1, box.y1, box.x2, box.y2] if box else None


def write_overlay(source: FrameSource, results: list[TrackedFrame], masks: Path, path: Path) -> None:
    """An mp4 of the tracked frames with their masks drawn on, in frame order."""
    path.parent.mkdir(parents=True, exist_ok=True)
    size = (source.info.width, source.info.height)
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter.fourcc(*"mp4v"), source.info.fps, size)
    if not writer.isOpened():
        raise PolypsegError(f"{path}: cannot write an mp4 video there (name it .mp4, in a writable folder)")
    try:
        for index, image in _frames_of(source, results):
            overlay = draw_overlay(image, read_mask(mask_path(masks, index)))
            if overlay.shape[1::-1] != size:  # a folder's frame of another size: OpenCV would drop it
                overlay = cv2.resize(overlay, size, interpolation=cv2.INTER_AREA)
            writer.write(cv2.cvtColor(overlay, cv2.COLOR_RGB2BGR))
    finally:
        writer.release()


def _frames_of(source: FrameSource, results: list[TrackedFrame]) -> Iterator[tuple[int, np.ndarray]]:
    if not results:
        return
    wanted = {r.index for r in results}
    first, last = results[0].index, results[-1].index
    for index, image in source.frames(first, "forward", last - first + 1):
        if index in wanted:
            yield index, image
