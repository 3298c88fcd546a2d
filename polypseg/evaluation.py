"""Evaluation on an image/mask dataset: one box prompt per true polyp, scores per image.

Each image's prediction is the union of the masks for its polyps' boxes, scored against its
whole true mask. Box noise is seeded per image name, so every model sees the same boxes.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
from tqdm import tqdm

from polypseg.datasets import PolypSample, jitter_box, polyp_targets, seeded_rng
from polypseg.errors import DatasetError, PromptError
from polypseg.images import read_image, read_mask
from polypseg.masks import ellipse_in_box
from polypseg.metrics import Scores, mean_scores, score_masks
from polypseg.prompts import Prompt

Segmenter = Callable[[np.ndarray, Prompt], np.ndarray]
# (image, mask, image name) -> (image, mask): a shift applied before prompting and scoring
Transform = Callable[[np.ndarray, np.ndarray, str], tuple[np.ndarray, np.ndarray]]


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
    transform: Transform | None = None,
) -> dict[str, EvaluationResult]:
    """Score each segmenter on every sample with the same (noisy) boxes; images read once.
    With `transform`, each image and mask are changed first, and the boxes come from the
    changed mask's components (a shift may move, cut or hide a polyp)."""
    results = {name: EvaluationResult() for name in segmenters}
    for sample in tqdm(samples, desc="evaluating", unit="image", disable=not progress):
        image, truth = read_image(sample.image_path), read_mask(sample.mask_path)
        if image.shape[:2] != truth.shape:
            raise DatasetError(
                f"{sample.mask_path}: mask is {truth.shape[1]}x{truth.shape[0]}, "
                f"its image {image.shape[1]}x{image.shape[0]}"
            )
        if transform is not None:
            image, truth = transform(image, truth, sample.name)
            sample = replace(sample, boxes=None)
        try:
            prompts = polyp_prompts(sample, truth, box_noise, seed)
        except PromptError as exc:  # a box from a boxes file that misses its image
            raise PromptError(f"{sample.image_path}: {exc}") from None
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


@dataclass(frozen=True)
class ShiftScores:
    shift: str
    model: Scores
    ellipse: Scores

    def as_dict(self) -> dict[str, Any]:
        return {"shift": self.shift, "model": self.model.as_dict(), "ellipse": self.ellipse.as_dict()}


def evaluate_shifts(
    predictor: Any,
    samples: Sequence[PolypSample],
    shifts: Sequence[str],
    box_noise: float = 0.0,
    seed: int = 0,
) -> list[ShiftScores]:
    """The model and the ellipse baseline on the clean images, then under each shift (boxes
    from each shifted mask, the clean row too, so that the rows compare)."""
    from polypseg.shifts import apply_shift

    rows = []
    for shift in ["clean", *shifts]:

        def transform(
            image: np.ndarray, mask: np.ndarray, key: str, shift: str = shift
        ) -> tuple[np.ndarray, np.ndarray]:
            return (image, mask) if shift == "clean" else apply_shift(shift, image, mask, key, seed)

        segmenters: dict[str, Segmenter] = {
            "model": lambda image, prompt: predictor.predict(image, prompt).mask,
            "ellipse": ellipse_baseline,
        }
        results = evaluate(segmenters, samples, box_noise, seed, progress=False, transform=transform)
        rows.append(ShiftScores(shift, results["model"].mean, results["ellipse"].mean))
    return rows


def shift_table(rows: list[ShiftScores], title: str) -> str:
    clean = rows[0].model.iou
    lines = [
        title,
        "",
        "| shift | IoU | Dice | IoU - clean | ellipse IoU | ellipse Dice |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r.shift} | {r.model.iou:.4f} | {r.model.dice:.4f} | {r.model.iou - clean:+.4f} "
            f"| {r.ellipse.iou:.4f} | {r.ellipse.dice:.4f} |"
        )
    worst = min(rows[1:] or rows, key=lambda r: r.model.iou)
    lines += [
        "",
        f"worst shift: {worst.shift} (IoU {worst.model.iou:.4f}, {worst.model.iou - clean:+.4f} from clean)",
    ]
    return "\n".join(lines)
