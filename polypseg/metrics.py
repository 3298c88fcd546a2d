"""Overlap metrics of a predicted mask against the true one.

Empty masks: when prediction and truth are both empty every score is 1 (nothing to find,
nothing found); when exactly one is empty every score is 0.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import asdict, dataclass

import numpy as np


@dataclass(frozen=True)
class Scores:
    iou: float
    dice: float
    precision: float
    recall: float

    def as_dict(self) -> dict[str, float]:
        return asdict(self)


def score_masks(prediction: np.ndarray, truth: np.ndarray) -> Scores:
    """IoU, Dice (= F1), precision and recall of one bool mask against another."""
    if prediction.shape != truth.shape:
        raise ValueError(f"prediction {prediction.shape} and truth {truth.shape} differ in size")
    tp = int(np.count_nonzero(prediction & truth))
    predicted, actual = int(np.count_nonzero(prediction)), int(np.count_nonzero(truth))
    if predicted == 0 and actual == 0:
        return Scores(1.0, 1.0, 1.0, 1.0)
    if predicted == 0 or actual == 0:
        return Scores(0.0, 0.0, 0.0, 0.0)
    return Scores(
        iou=tp / (predicted + actual - tp),
        dice=2 * tp / (predicted + actual),
        precision=tp / predicted,
        recall=tp / actual,
    )


def mean_scores(scores: Iterable[Scores]) -> Scores:
    """The per-image scores averaged over a dataset (each image weighs the same)."""
    rows = np.array([[s.iou, s.dice, s.precision, s.recall] for s in scores], dtype=np.float64)
    if rows.size == 0:
        raise ValueError("no scores to average")
    return Scores(*(float(v) for v in rows.mean(axis=0)))
