"""Frames streamed from a video file or a folder of frame images, forward or backward.

Nothing here holds more than a few frames: forward reads decode one frame at a time, and
backward reads decode short chunks (seek to the chunk's start, decode it forward, hand it
out reversed), so memory does not grow with the video's length.
"""

from __future__ import annotations

import os
import re
from abc import ABC, abstractmethod
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from polypseg.datasets import IMAGE_SUFFIXES
from polypseg.errors import InputImageError
from polypseg.images import read_image

# FFmpeg (inside OpenCV) prints its own errors ("moov atom not found") to the terminal before
# the clean message below says the same; OpenCV reads this when it first opens a video.
os.environ.setdefault("OPENCV_FFMPEG_LOGLEVEL", "-8")  # AV_LOG_QUIET

VIDEO_SUFFIXES = (".mp4", ".avi", ".mov", ".mkv", ".webm", ".mpg", ".mpeg")
BACKWARD_CHUNK = 16  # frames decoded at once when reading backward


@dataclass(frozen=True)
class VideoInfo:
    frame_count: int
    fps: float
    width: int
    height: int


class FrameSource(ABC):
    """Numbered RGB frames (0-based) of one video."""

    info: VideoInfo
    name: str  # the file or folder, for messages

    def check_frame(self, index: int, what: str = "frame") -> None:
        """Refuse a frame number the video does not have (before anything is loaded or written)."""
        if not 0 <= index < self.info.frame_count:
            raise InputImageError(
                f"{what} {index} is outside the video's {self.info.frame_count} frames "
                f"(0 to {self.info.frame_count - 1}) in {self.name}"
            )

    def frames(
        self, start: int, direction: str = "forward", max_frames: int | None = None
    ) -> Iterator[tuple[int, np.ndarray]]:
        """Frames from `start` (included) towards the end ("forward") or the beginning ("backward")."""
        self.check_frame(start)
        if direction not in ("forward", "backward"):
            raise ValueError(f"direction {direction!r} is not forward or backward")
        frames = self._run(start, direction, max_frames)
        first = next(frames, None)
        if first is None or first[0] != start:
            # The container promised more frames than it holds: a prompt on frame `start`
            # must not silently land on another one.
            raise InputImageError(
                f"{self.name}: frame {start} cannot be decoded (it claims {self.info.frame_count} frames)"
            )
        yield first
        yield from frames

    def _run(self, start: int, direction: str, max_frames: int | None) -> Iterator[tuple[int, np.ndarray]]:
        if direction == "forward":
            stop = (
                self.info.frame_count
                if max_frames is None
                else min(self.info.frame_count, start + max_frames)
            )
            yield from self._forward(start, stop)
        else:
            first = 0 if max_frames is None else max(0, start - max_frames + 1)
            end = start
            while end >= first:
                chunk_start = max(first, end - BACKWARD_CHUNK + 1)
                yield from reversed(list(self._forward(chunk_start, end + 1)))
                end = chunk_start - 1

    @abstractmethod
    def _forward(self, start: int, stop: int) -> Iterator[tuple[int, np.ndarray]]:
        """Frames start..stop-1 in order."""


class VideoFileSource(FrameSource):
    """A video file decoded by OpenCV (FFmpeg)."""

    def __init__(self, path: Path) -> None:
        self.path, self.name = path, str(path)
        capture = self._open()
        self.info = VideoInfo(
            frame_count=int(capture.get(cv2.CAP_PROP_FRAME_COUNT)),
            fps=float(capture.get(cv2.CAP_PROP_FPS)) or 25.0,
            width=int(capture.get(cv2.CAP_PROP_FRAME_WIDTH)),
            height=int(capture.get(cv2.CAP_PROP_FRAME_HEIGHT)),
        )
        capture.release()
        if self.info.frame_count <= 0:
            raise InputImageError(f"{path}: no frames could be read")

    def _open(self) -> cv2.VideoCapture:
        if not self.path.is_file():
            raise InputImageError(f"{self.path}: no such video file")
        capture = cv2.VideoCapture(str(self.path))
        if not capture.isOpened():
            raise InputImageError(f"{self.path}: not a video that OpenCV can decode")
        return capture

    def _forward(self, start: int, stop: int) -> Iterator[tuple[int, np.ndarray]]:
        capture = self._open()
        try:
            if start:
                capture.set(cv2.CAP_PROP_POS_FRAMES, start)
            for index in range(start, stop):
                ok, frame = capture.read()
                if not ok:
                    return  # containers often over-count their frames by one or two
                yield index, cv2.cvtColor(frame, cv2.COLOR_BGR2RGB)
        finally:
            capture.release()


def numbered_images(folder: Path) -> list[tuple[int, Path]]:
    """The image files in `folder` (none where it is missing) with the last number in each
    name, in that order; two files with the same number are an InputImageError naming both."""
    numbered = []
    for path in folder.iterdir() if folder.is_dir() else []:
        found = re.findall(r"\d+", path.stem)
        if path.suffix.lower() in IMAGE_SUFFIXES and found:
            numbered.append((int(found[-1]), path))
    numbered.sort()
    for (number, path), (again, other) in zip(numbered, numbered[1:], strict=False):
        if number == again:
            raise InputImageError(f"{folder}: {path.name} and {other.name} both have number {number}")
    return numbered


class FrameFolderSource(FrameSource):
    """A folder of frame images, ordered by the last number in each file name; frame K is the
    K-th of them (0-based), whatever the numbers (gaps, a start at 1)."""

    def __init__(self, folder: Path) -> None:
        self.name = str(folder)
        numbered = numbered_images(folder)
        if not numbered:
            raise InputImageError(f"{folder}: no numbered frame images in it")
        self.numbers = [number for number, _ in numbered]
        self.paths = [path for _, path in numbered]
        height, width = read_image(self.paths[0]).shape[:2]
        self.info = VideoInfo(frame_count=len(self.paths), fps=25.0, width=width, height=height)

    def _forward(self, start: int, stop: int) -> Iterator[tuple[int, np.ndarray]]:
        for index in range(start, stop):
            yield index, read_image(self.paths[index])


def open_frames(path: Path) -> FrameSource:
    """A video file (mp4, avi, ...) or a folder of numbered frames."""
    path = Path(path)
    if path.is_dir():
        return FrameFolderSource(path)
    if path.suffix.lower() not in VIDEO_SUFFIXES:
        raise InputImageError(f"{path}: not a video ({', '.join(VIDEO_SUFFIXES)}) or a folder of frames")
    return VideoFileSource(path)
