"""Evaluation results as a console table, and as a report folder a user can browse."""

from __future__ import annotations

import csv
import io
import sys
from collections.abc import Sequence
from pathlib import Path

from rich.console import Console
from rich.table import Table

from polypseg.atomic import atomic_output, write_atomic
from polypseg.datasets import PolypSample
from polypseg.evaluation import EvaluationResult, load_evaluation_image, union_mask
from polypseg.masks import draw_overlay
from polypseg.predictors.base import ImagePredictor

COLUMNS = (
    "model",
    "images",
    "unprompted",
    "mean IoU",
    "mean Dice",
    "precision",
    "recall",
    "median s/prompt",
)


def _rows(results: dict[str, EvaluationResult]) -> list[list[str]]:
    rows = []
    for name, result in results.items():
        mean = result.mean
        rows.append(
            [
                name,
                str(len(result.per_image)),
                str(result.unprompted),
                f"{mean.iou:.4f}",
                f"{mean.dice:.4f}",
                f"{mean.precision:.4f}",
                f"{mean.recall:.4f}",
                f"{result.median_latency:.4f}",
            ]
        )
    return rows


def print_table(results: dict[str, EvaluationResult], title: str) -> None:
    table = Table(*COLUMNS, title=title)
    for row in _rows(results):
        table.add_row(*row)
    # Piped or redirected output would otherwise be wrapped at 80 columns.
    Console(width=None if sys.stdout.isatty() else 160).print(table)


def markdown_table(results: dict[str, EvaluationResult]) -> str:
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(row) + " |" for row in _rows(results)]
    return "\n".join(lines) + "\n"


def write_report(
    folder: Path,
    results: dict[str, EvaluationResult],
    model: str,
    samples: Sequence[PolypSample],
    predictor: ImagePredictor,
    box_noise: float,
    seed: int,
    worst: int = 8,
) -> None:
    """`summary.md` (the table), `per_image.csv`, and `worst.png`: the worst images of `model`
    as image | truth | prediction rows (each file written whole or not at all)."""
    title = f"# Evaluation: {len(samples)} images, box noise {box_noise:g}\n\n"
    write_atomic(folder / "summary.md", (title + markdown_table(results)).encode())
    per_image = results[model].per_image
    rows = io.StringIO(newline="")
    writer = csv.DictWriter(rows, fieldnames=list(per_image[0].as_dict()))
    writer.writeheader()
    writer.writerows(r.as_dict() for r in per_image)
    write_atomic(folder / "per_image.csv", rows.getvalue().encode())
    by_name = {s.name: s for s in samples}
    chosen = sorted(per_image, key=lambda r: r.scores.iou)[:worst]
    _worst_grid(
        folder / "worst.png",
        [by_name[r.name] for r in chosen],
        [r.scores.iou for r in chosen],
        predictor,
        box_noise,
        seed,
    )


def _worst_grid(
    path: Path,
    samples: list[PolypSample],
    ious: list[float],
    predictor: ImagePredictor,
    box_noise: float,
    seed: int,
) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(len(samples), 3, figsize=(9, 3 * len(samples)), squeeze=False)
    segment = predictor.segmenter()
    for row, (sample, iou) in enumerate(zip(samples, ious, strict=True)):
        item = load_evaluation_image(sample, box_noise, seed)
        image, prompts = item.image, item.prompts
        predicted = union_mask((segment(image, p) for p in prompts), item.truth.shape)
        panels = [
            (image, sample.name),
            (draw_overlay(image, item.truth), "truth"),
            (draw_overlay(image, predicted, prompts[0] if prompts else None), f"prediction, IoU {iou:.3f}"),
        ]
        for ax, (picture, label) in zip(axes[row], panels, strict=True):
            ax.imshow(picture)
            ax.set_title(label, fontsize=8)
            ax.axis("off")
    figure.tight_layout()
    with atomic_output(path) as handle:
        figure.savefig(handle, format="png", dpi=80)
    plt.close(figure)
