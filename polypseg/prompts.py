"""Prompts in pixel coordinates of the image: a box, clicks, and an optional previous mask.

Platforms' units (Label Studio's percentages, CVAT's pixel pairs) are converted at the edge;
`Prompt.fitted_to` then checks and clips everything against one image size, once.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np

from polypseg.errors import PromptError


@dataclass(frozen=True)
class Box:
    """An axis-aligned box in pixels, x1,y1 inclusive top-left, x2,y2 exclusive bottom-right."""

    x1: float
    y1: float
    x2: float
    y2: float

    @classmethod
    def parse(cls, text: str) -> Box:
        """Parse "X1,Y1,X2,Y2" as the CLI takes it."""
        try:
            x1, y1, x2, y2 = (float(v) for v in text.split(","))
        except ValueError:
            raise PromptError(f"box {text!r} is not X1,Y1,X2,Y2 (four numbers)") from None
        return cls(x1, y1, x2, y2)

    @property
    def width(self) -> float:
        return self.x2 - self.x1

    @property
    def height(self) -> float:
        return self.y2 - self.y1

    def as_array(self) -> np.ndarray:
        return np.array([self.x1, self.y1, self.x2, self.y2], dtype=np.float32)

    def clipped(self, width: int, height: int) -> Box:
        """This box clipped to a width x height image; an error if nothing of it is left."""
        if not self.width > 0 or not self.height > 0:
            raise PromptError(f"box {self.describe()} has no area (x2 must exceed x1, y2 y1)")
        box = Box(
            min(max(self.x1, 0.0), width),
            min(max(self.y1, 0.0), height),
            min(max(self.x2, 0.0), width),
            min(max(self.y2, 0.0), height),
        )
        if box.width < 1 or box.height < 1:
            raise PromptError(f"box {self.describe()} lies outside the {width}x{height} image")
        return box

    def expanded(self, margin: float, width: int, height: int) -> Box:
        """The box grown by `margin` of its size on every side, clipped to the image."""
        dx, dy = self.width * margin, self.height * margin
        return Box(self.x1 - dx, self.y1 - dy, self.x2 + dx, self.y2 + dy).clipped(width, height)

    def iou(self, other: Box) -> float:
        """Intersection over union with another box (0 where neither has area)."""
        width = max(0.0, min(self.x2, other.x2) - max(self.x1, other.x1))
        height = max(0.0, min(self.y2, other.y2) - max(self.y1, other.y1))
        inter = width * height
        union = self.width * self.height + other.width * other.height - inter
        return inter / union if union > 0 else 0.0

    def describe(self) -> str:
        return f"({self.x1:g},{self.y1:g},{self.x2:g},{self.y2:g})"


@dataclass(frozen=True)
class Point:
    """A click in pixels; positive on the polyp, negative on the background."""

    x: float
    y: float
    positive: bool = True

    @classmethod
    def parse(cls, text: str) -> Point:
        """Parse "X,Y" or "X,Y,LABEL" (LABEL 1 positive, 0 negative) as the CLI takes it."""
        parts = text.split(",")
        try:
            if len(parts) not in (2, 3):
                raise ValueError
            x, y = float(parts[0]), float(parts[1])
            label = int(parts[2]) if len(parts) == 3 else 1
            if label not in (0, 1):
                raise ValueError
        except ValueError:
            raise PromptError(f"point {text!r} is not X,Y or X,Y,LABEL with LABEL 0 or 1") from None
        return cls(x, y, bool(label))


@dataclass(frozen=True)
class Prompt:
    """What the annotator gave: a box and/or clicks, and optionally a mask (a previous answer
    to refine, or the object to follow when a tracker starts from a mask)."""

    box: Box | None = None
    points: tuple[Point, ...] = field(default_factory=tuple)
    previous_mask: np.ndarray | None = None

    def fitted_to(self, width: int, height: int) -> Prompt:
        """Check the prompt against a width x height image: clip the box, refuse stray clicks."""
        if self.box is None and not self.points and self.previous_mask is None:
            raise PromptError("a prompt needs a box, a click or a mask")
        for p in self.points:
            if not (0 <= p.x < width and 0 <= p.y < height):
                raise PromptError(f"point ({p.x:g},{p.y:g}) lies outside the {width}x{height} image")
        if self.previous_mask is not None and self.previous_mask.shape[:2] != (height, width):
            raise PromptError(
                f"previous mask is {self.previous_mask.shape[1]}x{self.previous_mask.shape[0]}"
                f", the image {width}x{height}"
            )
        box = self.box.clipped(width, height) if self.box is not None else None
        return replace(self, box=box)

    @property
    def positive_points(self) -> list[Point]:
        return [p for p in self.points if p.positive]
