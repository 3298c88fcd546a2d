"""Evaluation on an image/mask dataset: one box prompt per true polyp, scores per image.

Each image's prediction is the union of the masks for its polyps' boxes, scored against its
whole true mask. Box noise is seeded per image name, so every model sees the same boxes. An
image with no polyp to prompt (an empty mask, one a shift emptied, or only specks and slivers
too small to be a polyp: `polyp_targets`) tells nothing about a prompted model: it is counted as
`unprompted` and left out of the means, in both protocols.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

import numpy as np
from tqdm import tqdm

from polypseg.datasets import PolypSample, jitter_box, polyp_targets, seeded_rng
from polypseg.errors import DatasetError, PromptError
from polypseg.images import read_image, read_mask
from polypseg.masks import ellipse_in_box
from polypseg.metrics import Scores, mean_scores, score_masks
from polypseg.prompts import Prompt

if TYPE_CHECKING:
    from polypseg.predictors.base import ImagePredictor

log = logging.getLogger(__name__)

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
    unprompted: int = 0  # images without a polyp to prompt, not in `per_image`

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
            "unprompted": self.unprompted,
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


@dataclass(frozen=True)
class EvaluationImage:
    """One image as both protocols score it: its pixels and truth (shifted, where a shift is
    given) and one box prompt per true polyp."""

    sample: PolypSample  # after a shift, without boxes: they come from the changed mask
    image: np.ndarray
    truth: np.ndarray
    prompts: list[Prompt]

    def targets(self) -> list[np.ndarray]:
        """Each prompted polyp's own mask, in the order of `prompts`."""
        return [target for _, target in polyp_targets(self.truth, self.sample.boxes)]


def load_evaluation_image(
    sample: PolypSample, box_noise: float, seed: int, transform: Transform | None = None
) -> EvaluationImage:
    """Read a sample, check that its mask fits its image, apply `transform`, prompt its polyps."""
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
    except (PromptError, DatasetError) as exc:  # a box from a boxes file that misses its image
        raise type(exc)(f"{sample.image_path}: {exc}") from None
    return EvaluationImage(sample, image, truth, prompts)


def union_mask(answers: Iterable[np.ndarray], shape: tuple[int, ...]) -> np.ndarray:
    """An image's predicted mask: the union of the answers for its polyps."""
    predicted = np.zeros(shape, dtype=bool)
    for answer in answers:
        predicted |= answer
    return predicted


def shift_transform(shift: str, seed: int) -> Transform:
    """The named shift as a `Transform`; "clean" changes nothing (but its boxes, as a shift's,
    come from the mask, so that the rows compare)."""
    from polypseg.shifts import apply_shift

    def transform(image: np.ndarray, mask: np.ndarray, key: str) -> tuple[np.ndarray, np.ndarray]:
        return (image, mask) if shift == "clean" else apply_shift(shift, image, mask, key, seed)

    return transform


def check_scored(scored: int, unprompted: int) -> None:
    """Refuse a run in which no image had a polyp to prompt: there is no mean to give."""
    if not scored and unprompted:
        raise DatasetError(f"none of the {unprompted} images has a polyp to prompt: nothing to score")


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
        item = load_evaluation_image(sample, box_noise, seed, transform)
        for name, segment in segmenters.items():
            if not item.prompts:
                results[name].unprompted += 1
                continue
            start = time.perf_counter()
            predicted = union_mask((segment(item.image, p) for p in item.prompts), item.truth.shape)
            seconds = (time.perf_counter() - start) / len(item.prompts)
            results[name].per_image.append(
                ImageResult(sample.name, len(item.prompts), score_masks(predicted, item.truth), seconds)
            )
    for result in results.values():
        check_scored(len(result.per_image), result.unprompted)
    return results


@dataclass(frozen=True)
class ShiftScores:
    shift: str
    model: Scores
    ellipse: Scores
    unprompted: int  # images the shift left without a polyp to prompt, not in the means

    def as_dict(self) -> dict[str, Any]:
        return {
            "shift": self.shift,
            "model": self.model.as_dict(),
            "ellipse": self.ellipse.as_dict(),
            "unprompted": self.unprompted,
        }


def evaluate_shifts(
    predictor: ImagePredictor,
    samples: Sequence[PolypSample],
    shifts: Sequence[str],
    box_noise: float = 0.0,
    seed: int = 0,
) -> list[ShiftScores]:
    """The model and the ellipse baseline on the clean images, then under each shift (boxes
    from each shifted mask, the clean row too, so that the rows compare)."""
    segmenters = {"model": predictor.segmenter(), "ellipse": ellipse_baseline}
    rows = []
    for shift in ["clean", *shifts]:
        try:
            results = evaluate(
                segmenters, samples, box_noise, seed, progress=False, transform=shift_transform(shift, seed)
            )
        except DatasetError as exc:
            if shift == "clean":
                raise
            log.warning("%s: no row (%s)", shift, exc)  # it cropped every polyp away: the others stand
            continue
        model, ellipse = results["model"], results["ellipse"]
        rows.append(ShiftScores(shift, model.mean, ellipse.mean, model.unprompted))
    return rows


def shift_table(rows: list[ShiftScores], title: str) -> str:
    clean = rows[0].model.iou
    lines = [
        title,
        "",
        "| shift | IoU | Dice | IoU - clean | ellipse IoU | ellipse Dice | unprompted |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r.shift} | {r.model.iou:.4f} | {r.model.dice:.4f} | {r.model.iou - clean:+.4f} "
            f"| {r.ellipse.iou:.4f} | {r.ellipse.dice:.4f} | {r.unprompted} |"
        )
    worst = min(rows[1:] or rows, key=lambda r: r.model.iou)
    lines += [
        "",
        f"worst shift: {worst.shift} (IoU {worst.model.iou:.4f}, {worst.model.iou - clean:+.4f} from clean)",
    ]
    return "\n".join(lines)
