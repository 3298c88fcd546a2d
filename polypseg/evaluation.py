"""Evaluation on an image/mask dataset: one box prompt per true polyp, scores per image.

Each image's prediction is the union of the masks for its polyps' boxes, scored against its
whole true mask. Box noise is seeded per image name, so every model sees the same boxes.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from tqdm import tqdm

from polypseg.datasets import PolypSample, jitter_box, polyp_targets, seeded_rng
from polypseg.errors import DatasetError
from polypseg.images import read_image, read_mask
from polypseg.masks import ellipse_in_box
from polypseg.metrics import Scores, mean_scores, score_masks
from polypseg.prompts import Prompt

Segmenter = Callable[[np.ndarray, Prompt], np.ndarray]


@dataclass
class ImageResult:
    name: str
    polyps: int
    scores: Scores
    seconds_per_prompt: float

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "polyps": self.polyps,
            **self.scores.as_dict(),
            "seconds_per_prompt": self.seconds_per_prompt,
        }


@dataclass
class EvaluationResult:
    per_image: list[ImageResult] = field(default_factory=list)

    @property
    def mean(self) -> Scores:
        return mean_scores(r.scores for r in self.per_image)

    @property
    def median_latency(self) -> float:
        return float(np.median([r.seconds_per_prompt for r in self.per_image]))

    def as_dict(self) -> dict[str, Any]:
        mean = self.mean
        return {
            "n": len(self.per_image),
            "mean_iou": mean.iou,
            "mean_dice": mean.dice,
            "mean_precision": mean.precision,
            "mean_recall": mean.recall,
            "median_seconds_per_prompt": self.median_latency,
            "per_image": [r.as_dict() for r in self.per_image],
        }


def ellipse_baseline(image: np.ndarray, prompt: Prompt) -> np.ndarray:
    """The trivial segmenter: the ellipse inscribed in the box."""
    assert prompt.box is not None
    return ellipse_in_box(prompt.box, image.shape[1], image.shape[0])


def polyp_prompts(sample: PolypSample, truth: np.ndarray, box_noise: float, seed: int) -> list[Prompt]:
    """One box prompt per true polyp, moved by the seeded box noise of this image."""
    height, width = truth.shape
    rng = seeded_rng(sample.name, seed)
    return [
        Prompt(box=jitter_box(box, box_noise, rng)).fitted_to(width, height)
        for box, _ in polyp_targets(truth, sample.boxes)
    ]


def evaluate(
    segmenters: dict[str, Segmenter],
    samples: Sequence[PolypSample],
    box_noise: float = 0.0,
    seed: int = 0,
    progress: bool = True,
) -> dict[str, EvaluationResult]:
    """Score each segmenter on every sample with the same (noisy) boxes; images read once."""
    results = {name: EvaluationResult() for name in segmenters}
    for sample in tqdm(samples, desc="evaluating", unit="image", disable=not progress):
        image, truth = read_image(sample.image_path), read_mask(sample.mask_path)
        if image.shape[:2] != truth.shape:
            raise DatasetError(
                f"{sample.mask_path}: mask is {truth.shape[1]}x{truth.shape[0]}, "
                f"its image {image.shape[1]}x{image.shape[0]}"
            )
        prompts = polyp_prompts(sample, truth, box_noise, seed)
        for name, segment in segmenters.items():
            predicted = np.zeros_like(truth)
            start = time.perf_counter()
            for prompt in prompts:
                predicted |= segment(image, prompt)
            seconds = (time.perf_counter() - start) / max(len(prompts), 1)
            results[name].per_image.append(
                ImageResult(sample.name, len(prompts), score_masks(predicted, truth), seconds)
            )
    return results
