"""The tracker interface: a prompt on one frame, then one result per frame as frames arrive.

A tracker is driven either as a generator over a stream of frames (`track`), or one frame at
a time (`start`, then `step` per frame) with the state between frames in the caller's hands:
`save_state` turns it into bytes (tensors and numbers only, loaded with torch's weights-only
reader, so stored states cannot run code) and `load_state` back, so that a track can be
continued later, by another process.
"""

from __future__ import annotations

import io
from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from polypseg.errors import PolypsegError
from polypseg.prompts import Box, Prompt

Frames = Iterable[tuple[int, np.ndarray]]


@dataclass(frozen=True)
class TrackedFrame:
    index: int
    mask: np.ndarray  # bool, the frame's size; empty where the polyp is lost
    box: Box | None  # the mask's tight box, None where lost
    score: float  # confidence that the polyp is there and the mask is right, 0..1
    lost: bool


class TrackStateError(PolypsegError):
    """A stored track state that cannot be read back (corrupt, or another tracker's)."""


class VideoTracker(ABC):
    """Follows one polyp. `start` takes the first frame and its prompt; `step` takes the next
    frame (in the order to visit them, forward or backward) and optionally a correction (a
    prompt on that frame that re-anchors the track)."""

    kind: str

    @abstractmethod
    def start(self, index: int, image: np.ndarray, prompt: Prompt) -> tuple[TrackedFrame, Any]:
        """The first frame's result and the state to continue from."""

    @abstractmethod
    def step(
        self, state: Any, index: int, image: np.ndarray, correction: Prompt | None = None
    ) -> tuple[TrackedFrame, Any]:
        """The next frame's result and the new state."""

    @abstractmethod
    def _state_tensors(self, state: Any) -> dict[str, Any]:
        """The state as nested dicts and lists of tensors, numbers and strings."""

    @abstractmethod
    def _state_from_tensors(self, data: dict[str, Any]) -> Any: ...

    def save_state(self, state: Any) -> bytes:
        buffer = io.BytesIO()
        torch.save({"tracker": self.kind, "state": self._state_tensors(state)}, buffer)
        return buffer.getvalue()

    def load_state(self, data: bytes) -> Any:
        try:
            stored = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
        except Exception as exc:
            raise TrackStateError(f"the stored track state is unreadable ({type(exc).__name__})") from None
        if not isinstance(stored, dict) or stored.get("tracker") != self.kind:
            raise TrackStateError(f"the stored track state is not a {self.kind} tracker's")
        try:
            return self._state_from_tensors(stored["state"])
        except (KeyError, TypeError, ValueError, IndexError) as exc:
            raise TrackStateError(f"the stored track state is incomplete ({exc})") from None

    def track(
        self, frames: Frames, prompt: Prompt, corrections: Mapping[int, Prompt] | None = None
    ) -> Iterator[TrackedFrame]:
        """Results for a stream of frames, lazily; the prompt is on the first frame."""
        corrections = dict(corrections or {})
        state: Any = None
        for position, (index, image) in enumerate(frames):
            if position == 0:
                result, state = self.start(index, image, prompt)
            else:
                result, state = self.step(state, index, image, corrections.get(index))
            yield result


def lost_frame(index: int, shape: tuple[int, ...], score: float) -> TrackedFrame:
    return TrackedFrame(index, np.zeros(shape[:2], dtype=bool), None, score, True)
