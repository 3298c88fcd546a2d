"""Detection scores: boxes matched to true polyps at a box IoU, precision, recall and AP.

Matching is greedy by score (as in PASCAL VOC and COCO): each detection, best first, takes the
unmatched true box it overlaps most if that overlap reaches the IoU threshold, else it is a
false positive. AP is the area under the interpolated precision-recall curve over all
detections of a dataset (COCO's 101 recall points); AP@0.5:0.95 averages it over box IoU
thresholds 0.5, 0.55, ..., 0.95.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from polypseg.prompts import Box

COCO_THRESHOLDS = tuple(round(0.5 + 0.05 * i, 2) for i in range(10))


@dataclass(frozen=True)
class ImageDetections:
    """One image's detections (box, score) and its true boxes."""

    name: str
    detections: tuple[tuple[Box, float], ...]
    truths: tuple[Box, ...]

    def assignments(self, iou: float, min_score: float = 0.0) -> list[tuple[int, int | None]]:
        """The greedy matching, best score first: (detection index, the index of the true box
        it found or None) for each detection scoring at least `min_score`."""
        taken = [False] * len(self.truths)
        out: list[tuple[int, int | None]] = []
        for d in sorted(range(len(self.detections)), key=lambda i: -self.detections[i][1]):
            box, score = self.detections[d]
            if score < min_score:
                continue
            overlaps = [0.0 if taken[i] else box.iou(t) for i, t in enumerate(self.truths)]
            best = int(np.argmax(overlaps)) if overlaps else -1
            if best >= 0 and overlaps[best] >= iou:
                taken[best] = True
                out.append((d, best))
            else:
                out.append((d, None))
        return out

    def matches(self, iou: float, min_score: float = 0.0) -> list[tuple[float, bool]]:
        """(score, true positive?) for each detection scoring at least `min_score`."""
        return [(self.detections[d][1], truth is not None) for d, truth in self.assignments(iou, min_score)]


def precision_recall(
    images: Sequence[ImageDetections], min_score: float, iou: float = 0.5
) -> tuple[float, float]:
    """Precision and recall of the detections scoring at least `min_score`."""
    hits = [hit for image in images for _, hit in image.matches(iou, min_score)]
    truths = sum(len(image.truths) for image in images)
    true_positives = sum(hits)
    precision = true_positives / len(hits) if hits else 1.0
    recall = true_positives / truths if truths else 1.0
    return precision, recall


def average_precision(images: Sequence[ImageDetections], iou: float = 0.5) -> float:
    """AP at one box IoU: the interpolated precision averaged over 101 recall points."""
    scored = sorted((m for image in images for m in image.matches(iou)), key=lambda m: -m[0])
    truths = sum(len(image.truths) for image in images)
    if truths == 0:
        return float("nan")
    hits = np.array([hit for _, hit in scored], dtype=np.float64)
    true_positives = np.cumsum(hits)
    recall = true_positives / truths
    precision = true_positives / np.arange(1, len(hits) + 1) if len(hits) else np.zeros(0)
    # Interpolate: the best precision at any recall at least this high.
    envelope = np.maximum.accumulate(precision[::-1])[::-1] if len(hits) else precision
    points = np.linspace(0, 1, 101)
    at = np.searchsorted(recall, points, side="left")
    return float(np.mean([envelope[i] if i < len(envelope) else 0.0 for i in at]))


def coco_average_precision(images: Sequence[ImageDetections]) -> float:
    return float(np.mean([average_precision(images, t) for t in COCO_THRESHOLDS]))


def _floors(images: Sequence[ImageDetections]) -> list[float]:
    """The score floors worth trying: the detections' scores rounded down to 3 decimals."""
    return sorted({math.floor(score * 1000) / 1000 for image in images for _, score in image.detections})


def best_threshold(images: Sequence[ImageDetections], iou: float = 0.5) -> tuple[float, float, float]:
    """The score floor with the best F1 of precision and recall (ties: the higher floor):
    (floor, precision, recall). The floors tried are the detections' scores rounded down to 3
    decimals, so the detection a floor comes from stays above it."""
    rows = [(floor, *precision_recall(images, floor, iou)) for floor in _floors(images)] or [(0.5, 1.0, 0.0)]
    return max(rows, key=lambda row: (round(2 * row[1] * row[2] / max(row[1] + row[2], 1e-9), 6), row[0]))


def recall_at_precision(images: Sequence[ImageDetections], precision: float, iou: float = 0.5) -> float:
    """The most recall any score floor gives with at least `precision` (0 where none does): what
    a floor chosen for that precision would find. The floors tried are best_threshold's."""
    rows = (precision_recall(images, floor, iou) for floor in _floors(images))
    return max((found for kept, found in rows if kept >= precision), default=0.0)
