"""A user's VideoRectangle tracked forward through the video, answered as keyframes.

Label Studio numbers video frames from 1 at its own frame rate (`framesCount / duration`),
which need not be the file's; frames are matched through time. A keyframe with `enabled`
false ends the box there: the box disappears until the next enabled keyframe. So where the
tracker loses the polyp, the last good frame's keyframe is disabled and no keyframe is
written until the polyp is found again.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from backends.labelstudio.regions import Region, as_object, box_value, rectangle_box
from backends.request_errors import RequestError
from polypseg.predictors.base import ImagePredictor
from polypseg.prompts import Prompt
from polypseg.video.frames import VideoFileSource
from polypseg.video.tracking_job import build_tracker


@dataclass(frozen=True)
class TrackedRegion:
    region: Region
    score: float  # mean score over the tracked frames


def _frame_rate(value: dict[str, Any], file_fps: float) -> float:
    count, duration = value.get("framesCount"), value.get("duration")
    if isinstance(count, int | float) and isinstance(duration, int | float) and count > 0 and duration > 0:
        return float(count) / float(duration)
    return file_fps


def _is_keyframe(item: Any) -> bool:
    return isinstance(item, dict) and isinstance(item.get("frame"), int | float)


def _start_keyframe(sequence: list[Any]) -> dict[str, Any]:
    keyframes = [k for k in sequence if _is_keyframe(k)]
    if not keyframes:
        raise RequestError("the video rectangle has no keyframe to start tracking from")
    return max(keyframes, key=lambda k: k["frame"])


def track_video_region(
    path: Path, region: Region, predictor: ImagePredictor, tracker_kind: str, max_frames: int
) -> TrackedRegion:
    value = as_object(region.get("value"), "the video rectangle's value")
    sequence = value.get("sequence")
    if not isinstance(sequence, list):
        raise RequestError("the video rectangle has no keyframe sequence (a list) to track from")
    start_key = _start_keyframe(sequence)
    source = VideoFileSource(path)
    info = source.info
    ls_fps = _frame_rate(value, info.fps)
    start_frame = int(start_key["frame"])
    start = min(info.frame_count - 1, max(0, round((start_frame - 1) / ls_fps * info.fps)))
    box = rectangle_box(start_key, info.width, info.height)
    tracker = build_tracker(tracker_kind, predictor)

    keyframes = [k for k in sequence if _is_keyframe(k) and k["frame"] <= start_frame]
    scores = []
    last_seen = start_key
    for result in tracker.track(source.frames(start, "forward", max_frames + 1), Prompt(box=box)):
        if result.index == start:
            continue
        scores.append(result.score)
        frame = round(result.index / info.fps * ls_fps) + 1
        if result.lost or result.box is None:
            last_seen["enabled"] = False
            continue
        last_seen = {
            "frame": frame,
            "enabled": True,
            "time": (frame - 1) / ls_fps,
            **box_value(result.box, info.width, info.height),
        }
        keyframes.append(last_seen)
    tracked = {k: v for k, v in region.items() if k not in ("value", "score")}
    tracked["value"] = {**value, "sequence": keyframes}
    tracked["origin"] = "prediction"
    score = sum(scores) / len(scores) if scores else 0.0
    tracked["score"] = score
    return TrackedRegion(tracked, score)
