"""How a box-channel model sees an image: the RGB window plus the box drawn as a mask.

Two geometries: `crop` takes a window around the box (the box grown by `margin` of its size
on each side) and resizes it to `size` x `size`, so small polyps keep their detail; `whole`
resizes the entire image. Training and prediction share this code, so both see the same input.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import cv2
import numpy as np

from polypseg.errors import ModelError
from polypseg.prompts import Box

# ImageNet statistics: what smp encoders are pretrained with, kept for users who have weights.
MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32) * 255
STD = np.array([0.229, 0.224, 0.225], dtype=np.float32) * 255
BOX_CHANNELS = 4  # RGB and the box: what `make_input` gives


@dataclass(frozen=True)
class BoxInputGeometry:
    mode: str = "crop"  # "crop" or "whole"
    size: int = 256
    margin: float = 0.25

    def __post_init__(self) -> None:
        if self.mode not in ("crop", "whole"):
            raise ModelError(f"input geometry {self.mode!r} is not 'crop' or 'whole'")
        if self.size % 32 or self.size < 32:
            raise ModelError(f"input size {self.size} is not a positive multiple of 32")

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def window(self, box: Box, width: int, height: int) -> Box:
        """The part of the image the network sees, in integer pixels."""
        if self.mode == "whole":
            return Box(0, 0, width, height)
        w = box.expanded(self.margin, width, height)
        return Box(int(w.x1), int(w.y1), int(np.ceil(w.x2)), int(np.ceil(w.y2)))

    def make_input(self, image: np.ndarray, box: Box, window: Box) -> np.ndarray:
        """The BOX_CHANNELS x size x size float32 network input: normalised RGB and the box channel."""
        crop = image[int(window.y1) : int(window.y2), int(window.x1) : int(window.x2)]
        rgb = cv2.resize(crop, (self.size, self.size), interpolation=cv2.INTER_AREA)
        sx, sy = self.size / window.width, self.size / window.height
        channel = np.zeros((self.size, self.size), dtype=np.float32)
        x1, x2 = round((box.x1 - window.x1) * sx), round((box.x2 - window.x1) * sx)
        y1, y2 = round((box.y1 - window.y1) * sy), round((box.y2 - window.y1) * sy)
        channel[max(y1, 0) : max(y2, y1 + 1), max(x1, 0) : max(x2, x1 + 1)] = 1.0
        normalised = (rgb.astype(np.float32) - MEAN) / STD
        return np.concatenate([normalised.transpose(2, 0, 1), channel[None]], axis=0)

    def crop_map(self, values: np.ndarray, window: Box) -> np.ndarray:
        """An image-sized map (a mask, a probability) in the window, as the network's size x
        size float32 channel or target."""
        crop = values[int(window.y1) : int(window.y2), int(window.x1) : int(window.x2)].astype(np.float32)
        return cv2.resize(crop, (self.size, self.size), interpolation=cv2.INTER_LINEAR)

    def paste(self, probability: np.ndarray, window: Box, width: int, height: int) -> np.ndarray:
        """Network output (size x size) back into a full image-sized float map."""
        w, h = int(window.width), int(window.height)
        full = np.zeros((height, width), dtype=np.float32)
        full[int(window.y1) : int(window.y1) + h, int(window.x1) : int(window.x1) + w] = cv2.resize(
            probability, (w, h), interpolation=cv2.INTER_LINEAR
        )
        return full
