"""A video cut into short clips of still frames: JPEG files named by frame number, written as
they are decoded (one frame in memory at a time), for tools that label frames one by one."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from polypseg.errors import InputImageError
from polypseg.video.frames import FrameSource


@dataclass(frozen=True)
class Clip:
    """One clip: the source frames `frame_start`, `frame_start + frame_step`, ... written as `paths`."""

    index: int
    frame_start: int
    frame_step: int
    paths: tuple[Path, ...]

    def frame(self, page: int) -> int:
        """The video's frame number shown on the clip's page `page` (0-based)."""
        return self.frame_start + page * self.frame_step


def frame_file(folder: Path, frame: int) -> Path:
    return folder / f"{frame:06d}.jpg"


def cut_clips(source: FrameSource, out: Path, clip_frames: int, stride: int = 1) -> Iterator[Clip]:
    """Every `stride`-th frame of `source` as a JPEG in `out` (named by its frame number), in
    consecutive clips of `clip_frames` frames (the last may be shorter), each yielded as soon
    as its frames are written."""
    if clip_frames < 1:
        raise InputImageError(f"--clip-frames {clip_frames}: a clip needs at least one frame")
    if stride < 1:
        raise InputImageError(f"--stride {stride}: take every frame (1) or every n-th (n > 1)")
    out.mkdir(parents=True, exist_ok=True)
    paths: list[Path] = []
    start, count = 0, 0
    for index, image in source.frames(0, "forward"):
        if index % stride:
            continue
        if not paths:
            start = index
        path = frame_file(out, index)
        Image.fromarray(image).save(path, quality=95)
        paths.append(path)
        if len(paths) == clip_frames:
            yield Clip(count, start, stride, tuple(paths))
            paths, count = [], count + 1
    if paths:
        yield Clip(count, start, stride, tuple(paths))
