"""Scoring a tracker over time on sequences with a true mask on every frame.

A sequence is a folder with `frames/` and `masks/` (numbered alike, as `make-sequences`
writes them). The tracker starts from the tight box of the first frame's mask.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from polypseg.errors import DatasetError
from polypseg.images import read_mask
from polypseg.masks import mask_box
from polypseg.metrics import score_masks
from polypseg.prompts import Box, Prompt
from polypseg.video.frames import FrameFolderSource
from polypseg.video.tracking import VideoTracker


@dataclass
class SequenceResult:
    name: str
    ious: list[float] = field(default_factory=list)
    dices: list[float] = field(default_factory=list)
    lost: list[bool] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def recoveries(self) -> int:
        """Times the track came back after being lost."""
        return sum(1 for before, now in zip(self.lost, self.lost[1:], strict=False) if before and not now)

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "frames": len(self.ious),
            "mean_iou": round(float(np.mean(self.ious)), 4),
            "mean_dice": round(float(np.mean(self.dices)), 4),
            "lost_frames": sum(self.lost),
            "recoveries": self.recoveries,
            "iou": [round(v, 4) for v in self.ious],
            "lost": self.lost,
        }


def summarise(results: list[SequenceResult]) -> dict[str, Any]:
    """All sequences' frames together: mean IoU and Dice, lost frames, recoveries, speed."""
    frames = sum(len(r.ious) for r in results)
    return {
        "sequences": len(results),
        "frames": frames,
        "mean_iou": round(float(np.mean([v for r in results for v in r.ious])), 4),
        "mean_dice": round(float(np.mean([v for r in results for v in r.dices])), 4),
        "lost_frames": sum(sum(r.lost) for r in results),
        "recoveries": sum(r.recoveries for r in results),
        "frames_per_second": round(frames / max(sum(r.seconds for r in results), 1e-9), 2),
    }


def evaluate_sequence(tracker: VideoTracker, folder: Path) -> SequenceResult:
    frames = FrameFolderSource(folder / "frames")
    masks = FrameFolderSource(folder / "masks")
    if masks.numbers != frames.numbers:
        missing = sorted(set(frames.numbers) ^ set(masks.numbers))[:5]
        raise DatasetError(
            f"{folder}: frames/ and masks/ are not numbered alike ({frames.info.frame_count} frames, "
            f"{masks.info.frame_count} masks; numbers in only one of them: {missing})"
        )
    if (masks.info.width, masks.info.height) != (frames.info.width, frames.info.height):
        raise DatasetError(
            f"{folder}: masks of {masks.info.width}x{masks.info.height} for frames of "
            f"{frames.info.width}x{frames.info.height}"
        )
    box = mask_box(read_mask(masks.paths[0]))
    if box is None:
        raise DatasetError(f"{masks.paths[0]}: the first frame's mask is empty: nothing to track")
    return score_track(tracker, folder.name, frames.frames(0), lambda i: read_mask(masks.paths[i]), box)


def score_track(
    tracker: VideoTracker,
    name: str,
    frames: Iterable[tuple[int, np.ndarray]],
    truth: Callable[[int], np.ndarray],
    box: Box,
) -> SequenceResult:
    """Track `frames` (index, image) from `box` on the first; each frame scored against
    `truth(index)`."""
    result = SequenceResult(name)
    start = time.perf_counter()
    for tracked in tracker.track(frames, Prompt(box=box)):
        scores = score_masks(tracked.mask, truth(tracked.index))
        result.ious.append(scores.iou)
        result.dices.append(scores.dice)
        result.lost.append(tracked.lost)
    result.seconds = time.perf_counter() - start
    return result


def sequence_folders(root: Path) -> list[Path]:
    folders = sorted(p for p in Path(root).iterdir() if (p / "frames").is_dir() and (p / "masks").is_dir())
    if not folders:
        raise DatasetError(f"{root}: no sequence folders (each with frames/ and masks/) in it")
    return folders


def plot_iou_over_time(results: list[SequenceResult], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    length = max(len(r.ious) for r in results)
    table = np.full((len(results), length), np.nan)
    for row, r in enumerate(results):
        table[row, : len(r.ious)] = r.ious
    figure, axis = plt.subplots(figsize=(7, 4))
    for series in table:
        axis.plot(series, color="0.8", linewidth=0.8)
    axis.plot(np.nanmean(table, axis=0), color="C0", linewidth=2, label="mean over sequences")
    axis.set(xlabel="frame", ylabel="IoU", ylim=(0, 1), title="IoU over time")
    axis.legend()
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=100)
    plt.close(figure)
