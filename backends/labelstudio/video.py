"""A video rectangle's keyframes tracked forward and backward through the video, answered as
the keyframes of one prediction.

Label Studio 1.23 numbers video frames from 1 at its own frame rate (the `<Video>` tag's
`framerate`, which need not be the file's): its frame f shows the video at (f - 1) / rate
seconds, and a keyframe it saves carries `time` = f / rate (web/libs/editor: VideoCanvas
`goToFrame`, VideoRectangle `serialize`). Its rate is `framesCount / duration` of the region.
A keyframe with `enabled` false ends the box there: the box disappears until the next enabled
keyframe. So where the tracker loses the polyp, the last good frame's keyframe is disabled and
no keyframe is written until the polyp is found again.

The annotator's enabled keyframes are anchors: the tracker starts on the first one and runs
backward from it, and forward from it through the others (re-anchored on each) to
`max_frames` past the last. The annotator's own keyframes are kept as drawn, and where they
disabled one (the polyp left the view), the track is not drawn until their next keyframe.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from backends.labelstudio.regions import Region, as_object, box_value, rectangle_box
from backends.request_errors import RequestError
from polypseg.detector import PolypDetector
from polypseg.predictors.base import ImagePredictor
from polypseg.prompts import Prompt
from polypseg.video.frames import VideoFileSource, VideoInfo
from polypseg.video.tracking import TrackedFrame
from polypseg.video.tracking_job import build_tracker, track_anchored

Keyframe = dict[str, Any]


@dataclass(frozen=True)
class TrackedRegion:
    region: Region
    score: float  # mean score over the tracked frames


@dataclass(frozen=True)
class FrameClock:
    """Label Studio's frame numbers (from 1, at `rate` per second) and the file's frame
    indices (from 0, at `file_fps`), matched through time."""

    rate: float
    file_fps: float
    frame_count: int

    def index(self, frame: int) -> int:
        """The file's frame that Label Studio shows as `frame`."""
        return min(self.frame_count - 1, max(0, round((frame - 1) / self.rate * self.file_fps)))

    def frame(self, index: int) -> int:
        return round(index / self.file_fps * self.rate) + 1

    def time(self, frame: int) -> float:
        """The `time` Label Studio writes into a keyframe of `frame`."""
        return frame / self.rate


def _label_studio_rate(value: dict[str, Any], file_fps: float) -> float:
    count, duration = value.get("framesCount"), value.get("duration")
    if isinstance(count, int | float) and isinstance(duration, int | float) and count > 0 and duration > 0:
        return float(count) / float(duration)
    return file_fps


def _keyframes(value: dict[str, Any]) -> list[Keyframe]:
    sequence = value.get("sequence")
    if not isinstance(sequence, list):
        raise RequestError("the video rectangle has no keyframe sequence (a list) to track from")
    keyframes = [k for k in sequence if isinstance(k, dict) and isinstance(k.get("frame"), int | float)]
    if not any(k.get("enabled", True) for k in keyframes):
        raise RequestError("the video rectangle has no enabled keyframe to start tracking from")
    return sorted(keyframes, key=lambda k: k["frame"])


def _hidden(frame: int, drawn: list[Keyframe]) -> bool:
    """Whether the annotator's keyframes say the polyp is out of view on `frame`: after one
    of theirs that they disabled and before their next one."""
    before = [k for k in drawn if k["frame"] <= frame]
    return bool(before) and before[-1]["frame"] < frame and before[-1].get("enabled", True) is False


def track_video_region(
    path: Path,
    region: Region,
    predictor: ImagePredictor,
    tracker_kind: str,
    max_frames: int,
    detector: PolypDetector | None = None,
) -> TrackedRegion:
    """The region with its keyframes tracked from each enabled keyframe the annotator drew (the
    classical tracker re-acquires a lost polyp with `detector` where one is given)."""
    value = as_object(region.get("value"), "the video rectangle's value")
    drawn = _keyframes(value)
    source = VideoFileSource(path)
    info = source.info
    clock = FrameClock(_label_studio_rate(value, info.fps), info.fps, info.frame_count)
    anchors = {
        clock.index(int(k["frame"])): Prompt(box=rectangle_box(k, info.width, info.height))
        for k in drawn
        if k.get("enabled", True)
    }
    tracker = build_tracker(tracker_kind, predictor, detector)
    results = track_anchored(source, tracker, anchors, max_frames, keep_masks=False)

    found: dict[int, Keyframe | None] = {int(k["frame"]): dict(k) for k in drawn}  # None: lost
    for index in sorted(set(results) - set(anchors)):
        frame, result = clock.frame(index), results[index]
        if frame in found or _hidden(frame, drawn):
            continue
        found[frame] = None if result.lost or result.box is None else _keyframe(result, frame, clock, info)
    sequence: list[Keyframe] = []
    for frame in sorted(found):
        keyframe = found[frame]
        if keyframe is not None:
            sequence.append(keyframe)
        elif sequence:  # lost here: the box ends on the last frame where the polyp was found
            sequence[-1]["enabled"] = False
    if max(results) < info.frame_count - 1 and sequence:
        sequence[-1]["enabled"] = False  # tracked no further: claim nothing past the last tracked frame

    tracked_scores = [results[i].score for i in results if i not in anchors]
    score = sum(tracked_scores) / len(tracked_scores) if tracked_scores else 0.0
    tracked = {k: v for k, v in region.items() if k not in ("value", "score")}
    tracked["value"] = {**value, "sequence": sequence}
    tracked["origin"] = "prediction"
    tracked["score"] = score
    return TrackedRegion(tracked, score)


def _keyframe(result: TrackedFrame, frame: int, clock: FrameClock, info: VideoInfo) -> Keyframe:
    assert result.box is not None
    box = box_value(result.box, info.width, info.height)
    return {"frame": frame, "enabled": True, "time": clock.time(frame), **box}
