"""The interactive-segmentation protocol: IoU after 0..N simulated clicks, NoC@85 and NoC@90.

Each true polyp gets its box (with the seeded box noise of `polypseg.evaluation`), then up to N
clicks, each placed by `polypseg.clicks.next_click` on the largest error of the answer for
that polyp against its own mask, every request carrying the box and all clicks so far (as
Label Studio and CVAT send them). An image's mask after k clicks is the union of its polyps'
answers after k clicks, scored against the whole true mask. NoC@T: the clicks an image needs
to reach IoU T (N + 1 where it never does).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
from tqdm import tqdm

from polypseg.clicks import next_click
from polypseg.datasets import PolypSample, polyp_targets
from polypseg.errors import DatasetError
from polypseg.evaluation import Segmenter, Transform, polyp_prompts
from polypseg.images import read_image, read_mask
from polypseg.metrics import score_masks

MAX_EVALUATION_CLICKS = 20


@dataclass
class ImageClickCurve:
    name: str
    polyps: int
    iou: list[float]  # after 0, 1, ..., N clicks

    def noc(self, threshold: float) -> int:
        """Clicks needed to reach `threshold` IoU; N + 1 where it is never reached."""
        return next((k for k, iou in enumerate(self.iou) if iou >= threshold), len(self.iou))

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name, "polyps": self.polyps, "iou_at_click": self.iou}


@dataclass
class ClickCurve:
    clicks: int
    per_image: list[ImageClickCurve] = field(default_factory=list)

    @property
    def mean_iou_at_click(self) -> list[float]:
        return [float(v) for v in np.mean([r.iou for r in self.per_image], axis=0)]

    def noc(self, threshold: float) -> float:
        return float(np.mean([r.noc(threshold) for r in self.per_image]))

    def failures(self, threshold: float) -> int:
        """Images that never reach `threshold` within the clicks."""
        return sum(r.noc(threshold) > self.clicks for r in self.per_image)

    def as_dict(self) -> dict[str, Any]:
        return {
            "n": len(self.per_image),
            "clicks": self.clicks,
            "mean_iou_at_click": self.mean_iou_at_click,
            "noc_85": self.noc(0.85),
            "noc_90": self.noc(0.90),
            "failures_90": self.failures(0.90),
            "per_image": [
                r.as_dict() | {"noc_85": r.noc(0.85), "noc_90": r.noc(0.90)} for r in self.per_image
            ],
        }


def evaluate_clicks(
    segmenters: dict[str, Segmenter],
    samples: Sequence[PolypSample],
    clicks: int = 5,
    box_noise: float = 0.0,
    seed: int = 0,
    progress: bool = True,
    transform: Transform | None = None,
) -> dict[str, ClickCurve]:
    """Each segmenter's IoU-after-clicks curve on every sample (images read once, the same
    boxes for all; a segmenter that ignores clicks, such as the ellipse, gives a flat curve)."""
    if not 0 <= clicks <= MAX_EVALUATION_CLICKS:
        raise DatasetError(f"--clicks {clicks}: between 0 and {MAX_EVALUATION_CLICKS}")
    curves = {name: ClickCurve(clicks) for name in segmenters}
    for sample in tqdm(samples, desc="clicking", unit="image", disable=not progress):
        image, truth = read_image(sample.image_path), read_mask(sample.mask_path)
        if transform is not None:
            image, truth = transform(image, truth, sample.name)
            sample = replace(sample, boxes=None)
        prompts = polyp_prompts(sample, truth, box_noise, seed)
        targets = [target for _, target in polyp_targets(truth, sample.boxes)]
        for name, segment in segmenters.items():
            answers = [segment(image, prompt) for prompt in prompts]
            ious = [_union_iou(answers, truth)]
            for _ in range(clicks):
                for i, (prompt, target) in enumerate(zip(prompts, targets, strict=True)):
                    click = next_click(answers[i], target)
                    if click is None:
                        continue
                    prompts[i] = prompt = replace(prompt, points=(*prompt.points, click))
                    answers[i] = segment(image, prompt)
                ious.append(_union_iou(answers, truth))
            curves[name].per_image.append(ImageClickCurve(sample.name, len(prompts), ious))
            prompts = [replace(p, points=()) for p in prompts]
    return curves


def _union_iou(answers: list[np.ndarray], truth: np.ndarray) -> float:
    predicted = np.zeros_like(truth)
    for answer in answers:
        predicted |= answer
    return score_masks(predicted, truth).iou


def click_table(curves: dict[str, ClickCurve], title: str) -> str:
    """A markdown table: IoU after 0..N clicks, NoC@85/90 and failures per segmenter."""
    clicks = next(iter(curves.values())).clicks
    shown = [k for k in (0, 1, 2, 3, 5, 10, 20) if k <= clicks]
    lines = [
        title,
        "",
        "| model | " + " | ".join(f"IoU@{k}" for k in shown) + " | NoC@85 | NoC@90 | >N@90 |",
        "|---|" + "---|" * (len(shown) + 3),
    ]
    for name, curve in curves.items():
        means = curve.mean_iou_at_click
        lines.append(
            f"| {name} | "
            + " | ".join(f"{means[k]:.4f}" for k in shown)
            + f" | {curve.noc(0.85):.2f} | {curve.noc(0.90):.2f} | {curve.failures(0.90)} |"
        )
    return "\n".join(lines)


def plot_click_curves(curves: dict[str, ClickCurve], path: Any, title: str = "") -> None:
    """IoU against clicks, one line per segmenter (matplotlib PNG)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(6, 4))
    for name, curve in curves.items():
        means = curve.mean_iou_at_click
        axis.plot(range(len(means)), means, marker="o", label=name)
    axis.set(xlabel="clicks after the box", ylabel="mean IoU", title=title or "IoU after clicks")
    axis.grid(alpha=0.3)
    axis.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def evaluate_click_shifts(
    segment: Segmenter,
    samples: Sequence[PolypSample],
    shifts: Sequence[str],
    clicks: int,
    box_noise: float = 0.0,
    seed: int = 0,
) -> dict[str, ClickCurve]:
    """The model's click curve on the clean images and under each named shift (boxes from
    each shifted mask, the clean row too, so that the rows compare)."""
    from polypseg.shifts import apply_shift

    curves = {}
    for shift in ["clean", *shifts]:

        def transform(
            image: np.ndarray, mask: np.ndarray, key: str, shift: str = shift
        ) -> tuple[np.ndarray, np.ndarray]:
            return (image, mask) if shift == "clean" else apply_shift(shift, image, mask, key, seed)

        curves[shift] = evaluate_clicks(
            {"model": segment}, samples, clicks, box_noise, seed, progress=False, transform=transform
        )["model"]
    return curves
