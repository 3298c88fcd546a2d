"""Polyp detection without a prompt: boxes with scores on a whole frame.

The detector is a whole-frame segmentation network (segmentation-models-pytorch, RGB in, the
polyp probability out, at a fixed square working size); each connected region of its
probability map above `threshold` is one detection, its box the region's bounding box in the
frame's pixels and its score the region's peak probability. `uncertainty` says how unsure
the network is about a frame: the mean binary entropy of its probability map over the pixels
it is not confident about, used to rank frames for labelling.

Masks for detections come from the box-prompted model (`refine`): the detector finds, the
interactive model outlines, as the reference work's pipeline does.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np
import segmentation_models_pytorch as smp
import torch
from scipy import ndimage

from polypseg.box_input import MEAN, STD
from polypseg.checkpoints import load_weights
from polypseg.errors import ModelError
from polypseg.images import as_rgb
from polypseg.prompts import Box

DECODERS = {"unet": "Unet", "unetplusplus": "UnetPlusPlus"}
# Regions smaller than this share of the frame are specks, not polyps.
MIN_AREA_FRACTION = 0.0008
# The probability at which a region's outline (and so its box) is drawn.
REGION_THRESHOLD = 0.5


@dataclass(frozen=True)
class Detection:
    box: Box
    score: float

    def as_dict(self) -> dict[str, Any]:
        b = self.box
        return {"box": [round(b.x1, 1), round(b.y1, 1), round(b.x2, 1), round(b.y2, 1)], "score": self.score}


def create_detector_model(encoder: str = "resnet18", decoder: str = "unet") -> torch.nn.Module:
    """An untrained whole-frame polyp segmenter: RGB in, polyp logits out."""
    if decoder not in DECODERS:
        raise ModelError(f"unknown detector decoder {decoder!r}; known: {', '.join(DECODERS)}")
    return smp.create_model(
        DECODERS[decoder], encoder_name=encoder, encoder_weights=None, in_channels=3, classes=1
    )


def detector_input(image: np.ndarray, size: int) -> np.ndarray:
    """The 3 x size x size float32 network input of a whole RGB frame."""
    resized = cv2.resize(image, (size, size), interpolation=cv2.INTER_AREA)
    return ((resized.astype(np.float32) - MEAN) / STD).transpose(2, 0, 1)


def detections_from_probability(
    probability: np.ndarray, width: int, height: int, min_score: float = REGION_THRESHOLD
) -> list[Detection]:
    """Regions of the working-size probability map as boxes in the frame's pixels, scored by
    their peak probability, best first. A region is outlined at REGION_THRESHOLD; below it,
    down to `min_score`, faint regions that hold no such outline are detections too (their
    outline at `min_score`), so that lowering the score floor only adds detections."""
    size_y, size_x = probability.shape
    scale = (width / size_x, height / size_y)
    min_area = MIN_AREA_FRACTION * size_x * size_y
    detections = _regions(probability, REGION_THRESHOLD, scale, min_area)
    if min_score < REGION_THRESHOLD:
        faint = _regions(probability, min_score, scale, min_area)
        detections += [d for d in faint if d.score < REGION_THRESHOLD]
    return sorted((d for d in detections if d.score >= min_score), key=lambda d: -d.score)


def _regions(
    probability: np.ndarray, threshold: float, scale: tuple[float, float], min_area: float
) -> list[Detection]:
    labels, _ = ndimage.label(probability > threshold)
    found = []
    for index, window in enumerate(ndimage.find_objects(labels), start=1):
        region = labels[window] == index
        if region.sum() < min_area:
            continue
        ys, xs = window
        box = Box(xs.start * scale[0], ys.start * scale[1], xs.stop * scale[0], ys.stop * scale[1])
        found.append(Detection(box, float(probability[window][region].max())))
    return found


def frame_uncertainty(probability: np.ndarray) -> float:
    """Mean binary entropy (bits) of the probability map over its undecided pixels (those
    between 0.05 and 0.95), times their share of the frame: 0 for a frame the network is sure
    about everywhere, higher the more of it is in doubt and the deeper the doubt."""
    p = np.clip(probability.astype(np.float64), 1e-6, 1 - 1e-6)
    entropy = -(p * np.log2(p) + (1 - p) * np.log2(1 - p))
    return float(entropy[(p > 0.05) & (p < 0.95)].sum() / p.size)


class PolypDetector:
    """A trained detector: `detect(image)` gives boxes with scores, `probability(image)` the map."""

    def __init__(
        self, model: torch.nn.Module, metadata: dict[str, Any], device: str = "cpu", threshold: float = 0.5
    ) -> None:
        self.model = model.to(device).eval()
        self.metadata = metadata
        self.version = str(metadata.get("version", "unversioned"))
        self.size = int(metadata.get("input", {}).get("size", 320))
        self.device = torch.device(device)
        # The shipped score floor, chosen on validation data (precision and recall), in the file.
        self.threshold = float(metadata.get("threshold", threshold))

    @classmethod
    def from_state(
        cls, state: dict[str, torch.Tensor], metadata: dict[str, Any], path: str, **kwargs: Any
    ) -> PolypDetector:
        encoder = metadata.get("encoder", "resnet18")
        model = create_detector_model(encoder, metadata.get("decoder", "unet"))
        load_weights(model, state, path, f"a detector with encoder {encoder}")
        return cls(model, metadata, **kwargs)

    def probability(self, image: np.ndarray) -> np.ndarray:
        """The polyp probability at the working size (size x size)."""
        x = torch.from_numpy(detector_input(as_rgb(image), self.size))[None].to(self.device)
        with torch.inference_mode():
            return torch.sigmoid(self.model(x)[0, 0].float()).cpu().numpy()

    def detect(self, image: np.ndarray, min_score: float | None = None) -> list[Detection]:
        """Polyps in a frame, best first; only those scoring at least `min_score` (default:
        the detector's shipped threshold)."""
        return self.find(image, min_score)[0]

    def find(self, image: np.ndarray, min_score: float | None = None) -> tuple[list[Detection], float]:
        """`detect` and `uncertainty` from one pass of the network."""
        height, width = image.shape[:2]
        floor = self.threshold if min_score is None else min_score
        probability = self.probability(image)
        return detections_from_probability(probability, width, height, floor), frame_uncertainty(probability)

    def uncertainty(self, image: np.ndarray) -> float:
        return frame_uncertainty(self.probability(image))
