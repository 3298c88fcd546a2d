"""The interactive-segmentation protocol: IoU after 0..N rounds of simulated clicks, NoC@85/90.

Each true polyp gets its box (with the seeded box noise of `polypseg.evaluation`), then up to N
clicks, each placed by `polypseg.clicks.next_click` on the largest error of the answer for
that polyp against its own mask, every request carrying the box and all clicks so far (as
Label Studio and CVAT send them). A round clicks once on each polyp whose answer is not yet
exactly right; an image's mask is the union of its polyps' answers, scored against the whole
true mask after each click.

How clicks are counted on an image with several polyps (a round is one click there only when
the image has one polyp):
- the curve, `mean_iou_at_click[k]`, is the mean IoU after k rounds;
- NoC@T counts the clicks actually placed, over all the image's polyps, until its IoU first
  reaches T (as RITM counts per object, summed); an image that never reaches T within N rounds
  counts its budget plus one, N per polyp + 1 (N + 1 for one polyp).
Images with no polyp to prompt are left out and counted as `unprompted`.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
from tqdm import tqdm

from polypseg.atomic import atomic_output
from polypseg.clicks import next_click
from polypseg.datasets import PolypSample
from polypseg.errors import DatasetError
from polypseg.evaluation import (
    Segmenter,
    Transform,
    check_scored,
    load_evaluation_image,
    shift_transform,
    union_mask,
)
from polypseg.metrics import score_masks

log = logging.getLogger(__name__)

MAX_EVALUATION_CLICKS = 20


@dataclass
class ImageClickCurve:
    name: str
    polyps: int
    iou: list[float]  # after 0, 1, ..., N rounds
    iou_per_click: list[float]  # after 0, 1, 2, ... clicks placed, over all the polyps

    @property
    def budget(self) -> int:
        """The most clicks the protocol may place here: N per polyp."""
        return (len(self.iou) - 1) * self.polyps

    def noc(self, threshold: float) -> int:
        """Clicks placed until the IoU reaches `threshold`; the budget + 1 where it never does."""
        return next((k for k, iou in enumerate(self.iou_per_click) if iou >= threshold), self.budget + 1)

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "polyps": self.polyps,
            "iou_at_click": self.iou,
            "clicks_placed": len(self.iou_per_click) - 1,
        }


@dataclass
class ClickCurve:
    clicks: int
    per_image: list[ImageClickCurve] = field(default_factory=list)
    unprompted: int = 0  # images without a polyp to prompt, not in `per_image`

    @property
    def mean_iou_at_click(self) -> list[float]:
        """The mean IoU after 0..N rounds (clicks, on images with one polyp)."""
        return [float(v) for v in np.mean([r.iou for r in self.per_image], axis=0)]

    def noc(self, threshold: float) -> float:
        return float(np.mean([r.noc(threshold) for r in self.per_image]))

    def failures(self, threshold: float) -> int:
        """Images that never reach `threshold` within the clicks."""
        return sum(r.noc(threshold) > r.budget for r in self.per_image)

    def as_dict(self) -> dict[str, Any]:
        return {
            "n": len(self.per_image),
            "unprompted": self.unprompted,
            "clicks": self.clicks,
            "counting": "mean_iou_at_click[k]: after k rounds, one click on each polyp not yet "
            "right; noc: clicks placed over all the image's polyps (never reached: N per polyp + 1)",
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
        item = load_evaluation_image(sample, box_noise, seed, transform)
        targets = item.targets()
        for name, segment in segmenters.items():
            if not item.prompts:
                curves[name].unprompted += 1
                continue
            prompts = list(item.prompts)
            answers = [segment(item.image, prompt) for prompt in prompts]
            per_click = [_union_iou(answers, item.truth)]
            per_round = per_click[:]
            for _ in range(clicks):
                for i, target in enumerate(targets):
                    click = next_click(answers[i], target)
                    if click is None:
                        continue
                    prompts[i] = replace(prompts[i], points=(*prompts[i].points, click))
                    answers[i] = segment(item.image, prompts[i])
                    per_click.append(_union_iou(answers, item.truth))
                per_round.append(per_click[-1])
            curves[name].per_image.append(ImageClickCurve(sample.name, len(prompts), per_round, per_click))
    for curve in curves.values():
        check_scored(len(curve.per_image), curve.unprompted)
    return curves


def _union_iou(answers: list[np.ndarray], truth: np.ndarray) -> float:
    return score_masks(union_mask(answers, truth.shape), truth).iou


def click_table(curves: dict[str, ClickCurve], title: str) -> str:
    """A markdown table: IoU after 0..N rounds, NoC@85/90, failures and unprompted images
    per segmenter."""
    clicks = next(iter(curves.values())).clicks
    shown = [k for k in (0, 1, 2, 3, 5, 10, 20) if k <= clicks]
    lines = [
        title,
        "",
        "| model | " + " | ".join(f"IoU@{k}" for k in shown) + " | NoC@85 | NoC@90 | >N@90 | unprompted |",
        "|---|" + "---|" * (len(shown) + 4),
    ]
    for name, curve in curves.items():
        means = curve.mean_iou_at_click
        lines.append(
            f"| {name} | "
            + " | ".join(f"{means[k]:.4f}" for k in shown)
            + f" | {curve.noc(0.85):.2f} | {curve.noc(0.90):.2f} | {curve.failures(0.90)}"
            + f" | {curve.unprompted} |"
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
    axis.set(
        xlabel="click rounds after the box (a click on each polyp)",
        ylabel="mean IoU",
        title=title or "IoU after clicks",
    )
    axis.grid(alpha=0.3)
    axis.legend()
    figure.tight_layout()
    with atomic_output(path) as handle:
        figure.savefig(handle, format="png", dpi=100)
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
    curves = {}
    for shift in ["clean", *shifts]:
        transform = shift_transform(shift, seed)
        try:
            curves[shift] = evaluate_clicks(
                {"model": segment}, samples, clicks, box_noise, seed, progress=False, transform=transform
            )["model"]
        except DatasetError as exc:
            if shift == "clean":
                raise
            log.warning("%s: no row (%s)", shift, exc)  # it cropped every polyp away: the others stand
    return curves
