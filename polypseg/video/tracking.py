"""The tracker interface: a prompt on one frame, then one result per frame as frames stream in."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass

import numpy as np

from polypseg.prompts import Box, Prompt

Frames = Iterable[tuple[int, np.ndarray]]


@dataclass(frozen=True)
class TrackedFrame:
    index: int
    mask: np.ndarray  # bool, the frame's size; empty where the polyp is lost
    box: Box | None  # the mask's tight box, None where lost
    score: float  # confidence that the polyp is there and the mask is right, 0..1
    lost: bool


class VideoTracker(ABC):
    """Follows one polyp. `track` takes frames in the order to visit them (forward or backward),
    the prompt for the first of them, and optional corrections (prompts on later frames that
    re-anchor the track); it yields a TrackedFrame per frame, lazily."""

    @abstractmethod
    def track(
        self, frames: Frames, prompt: Prompt, corrections: Mapping[int, Prompt] | None = None
    ) -> Iterator[TrackedFrame]: ...


def lost_frame(index: int, shape: tuple[int, ...], score: float) -> TrackedFrame:
    return TrackedFrame(index, np.zeros(shape[:2], dtype=bool), None, score, True)
