"""Training of box-prompted smp models (U-Net, U-Net++): `polypseg train unet`.

One process on CPU or GPU, or several under `torchrun` (gloo on CPU, nccl on GPU; the loop in
polypseg.training.common). Rank 0 validates after each epoch at box noise 0 and 0.1 (and
under the shift suite with `--select worst-shift`), keeps the best checkpoint, and writes a
CSV log and PNG curves. `last.pt` holds the optimiser and schedule too, so `--resume`
continues from the step where training stopped.
"""

from __future__ import annotations

import datetime
import functools
import logging
import math
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
from tqdm import tqdm

from polypseg.box_input import BoxInputGeometry
from polypseg.datasets import PolypSample, polyp_targets
from polypseg.images import read_image, read_mask
from polypseg.predictors import build_predictor
from polypseg.predictors.box_channel import BoxChannelPredictor, create_box_channel_model
from polypseg.prompts import Box
from polypseg.training.augment import annotator_box, camera_view, frame_shift, training_transform
from polypseg.training.common import (
    SeededDataset,
    TrainingRun,
    dataset_split,
    start_from,
    validation_metrics,
    version_name,
)
from polypseg.training.config import UnetTrainConfig
from polypseg.training.losses import bce_dice_loss

log = logging.getLogger(__name__)

# Each polyp is cached as a region around its box this much larger on each side, enough for
# box jitter, loose boxes and the input margin; the region's long side is capped at
# REGION_SCALE x the input size, since the network never sees more detail than that.
REGION_MARGIN = 0.75
REGION_SCALE = 2


class PolypRegions(SeededDataset):
    """One training sample per polyp: its image region, its own mask, augmented per draw.

    With probability `negative_fraction` a draw is a negative instead: a box on the same frame
    where there is no polyp, whose target is empty. It teaches the model to answer "nothing
    here", which trackers rely on to say that a polyp is lost. With probability
    `camera_augment` a draw (polyp or negative) is seen as by a moving camera: turned, zoomed,
    motion-blurred and relit as the frames of a synthetic sequence are.
    """

    def __init__(
        self,
        samples: list[PolypSample],
        geometry: BoxInputGeometry,
        negative_fraction: float = 0.0,
        shift_augment: float = 0.0,
        camera_augment: float = 0.0,
    ) -> None:
        self.geometry = geometry
        self.negative_fraction = negative_fraction
        self.shift_augment = shift_augment
        self.camera_augment = camera_augment
        self.transform = training_transform(robust=shift_augment > 0)
        self.regions: list[tuple[np.ndarray, np.ndarray, int]] = []
        self.frames: list[tuple[np.ndarray, np.ndarray]] = []  # whole frames (downscaled) for negatives
        for sample in tqdm(samples, desc="caching regions", unit="image", leave=False):
            image, mask = read_image(sample.image_path), read_mask(sample.mask_path)
            for box, target in polyp_targets(mask, sample.boxes):
                region, region_target = self._region(image, target, box)
                if region_target.any():
                    self.regions.append((region, region_target, len(self.frames)))
            if negative_fraction > 0:
                self.frames.append(self._downscale(image, mask))

    def _region(self, image: np.ndarray, target: np.ndarray, box: Box) -> tuple[np.ndarray, np.ndarray]:
        height, width = target.shape
        if self.geometry.mode == "crop":
            r = box.expanded(REGION_MARGIN, width, height)
            x1, y1, x2, y2 = int(r.x1), int(r.y1), int(np.ceil(r.x2)), int(np.ceil(r.y2))
            image, target = image[y1:y2, x1:x2], target[y1:y2, x1:x2]
        return self._downscale(image, target)

    def _downscale(self, image: np.ndarray, target: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        scale = min(1.0, REGION_SCALE * self.geometry.size / max(image.shape[:2]))
        if scale < 1.0:
            size = (max(1, round(image.shape[1] * scale)), max(1, round(image.shape[0] * scale)))
            image = cv2.resize(image, size, interpolation=cv2.INTER_AREA)
            coverage = cv2.resize(target.astype(np.float32), size, interpolation=cv2.INTER_AREA)
            # A tiny polyp in a downscaled whole frame may cover no pixel by half: keep any trace.
            target = coverage >= 0.5 if (coverage >= 0.5).any() else coverage > 0
        return np.ascontiguousarray(image), np.ascontiguousarray(target)

    def __len__(self) -> int:
        return len(self.regions)

    def _draw(
        self, image: np.ndarray, target: np.ndarray, rng: np.random.Generator
    ) -> tuple[np.ndarray, np.ndarray]:
        """An augmented copy; the original when augmentations keep pushing the polyp out."""
        image, target = frame_shift(image, target, rng, self.shift_augment)
        image, target = camera_view(image, target, rng, self.camera_augment)
        for _ in range(5):
            out = self.transform(image=image, mask=target.astype(np.uint8))
            if out["mask"].any():
                return out["image"], out["mask"] > 0
        return image, target

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        image, target, frame = self.regions[index]
        rng = self.draws(index, self.transform)
        if rng.random() < self.negative_fraction:
            negative = self._negative(*self.frames[frame], rng)
            if negative is not None:
                return negative
        image, target = self._draw(image, target, rng)
        box = annotator_box(target, rng)
        assert box is not None  # _draw keeps the polyp in view
        return self._sample(image, target, box)

    def _negative(
        self, image: np.ndarray, mask: np.ndarray, rng: np.random.Generator
    ) -> tuple[torch.Tensor, torch.Tensor] | None:
        """A box on the frame that holds (almost) no polyp, or None if none was found."""
        image, mask = camera_view(image, mask, rng, self.camera_augment)
        out = self.transform(image=image, mask=mask.astype(np.uint8))
        image, mask = out["image"], out["mask"] > 0
        height, width = mask.shape
        for _ in range(10):
            w, h = rng.uniform(0.1, 0.5) * width, rng.uniform(0.1, 0.5) * height
            x, y = rng.uniform(0, width - w), rng.uniform(0, height - h)
            box = Box(x, y, x + w, y + h)
            if mask[int(y) : int(y + h), int(x) : int(x + w)].mean() < 0.02:
                return self._sample(image, np.zeros_like(mask), box)
        return None

    def _sample(self, image: np.ndarray, target: np.ndarray, box: Box) -> tuple[torch.Tensor, torch.Tensor]:
        height, width = target.shape
        window = self.geometry.window(box, width, height)
        x = self.geometry.make_input(image, box, window)
        return torch.from_numpy(x), torch.from_numpy(self.geometry.crop_map(target, window))[None]


class UnetRun(TrainingRun):
    """A U-Net / U-Net++ run: one sample per polyp region, BCE + Dice, AdamW with one-cycle."""

    loss_name = "BCE + Dice"

    def build(self) -> None:
        c = self.config
        self.geometry = BoxInputGeometry(c.geometry, c.size, c.margin)
        self.train_samples, self.val_samples = dataset_split(c)
        self.model = create_box_channel_model(c.architecture, c.encoder, c.encoder_weights).to(self.device)
        self.start = start_from(
            self.model, c.init, lambda state, _: state, f"a {c.architecture} with a {c.encoder} encoder"
        )
        self.data = PolypRegions(
            self.train_samples, self.geometry, c.negative_fraction, c.shift_augment, c.camera_augment
        )
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=c.lr, weight_decay=c.weight_decay)

    def batch_loss(self, batch: Any) -> torch.Tensor:
        x, y = (t.to(self.device) for t in batch)
        return bce_dice_loss(self.model(x).float(), y)

    def selection_score(self, metrics: dict[str, float], train_loss: float) -> float:
        """Clean IoU; with `--select worst-shift`, the worst shift's IoU, among epochs whose
        clean IoU has not fallen below the starting model's (`--init`), if there is one."""
        score = super().selection_score(metrics, train_loss)
        if self.config.select != "worst-shift" or "worst_shift_iou@0.1" not in metrics:
            return score
        if self.clean_floor is not None and metrics["iou@0.1"] < self.clean_floor:
            return -math.inf
        return (
            min(score, metrics["worst_shift_iou@0.1"])
            if self.clean_floor is None
            else metrics["worst_shift_iou@0.1"]
        )

    @functools.cached_property
    def clean_floor(self) -> float | None:
        """The starting model's clean validation IoU (box noise 0.1), when fine-tuning."""
        if self.config.init is None or not self.val_samples:
            return None
        predictor = build_predictor(None, self.config.init, str(self.device))
        floor = validation_metrics(predictor, self.val_samples)["iou@0.1"]
        log.info("starting model's clean IoU@0.1: %.4f (later epochs must not fall below it)", floor)
        return floor

    def metadata(self, metrics: dict[str, float] | None = None) -> dict[str, Any]:
        c = self.config
        return {
            "architecture": c.architecture,
            "encoder": c.encoder,
            "input": self.geometry.as_dict(),
            "version": self.version(),
            "created": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
            "training": {
                "images": str(c.images),
                "train_images": len(self.train_samples),
                "val_images": len(self.val_samples),
                "val_list": str(c.val_list) if c.val_list else None,
                "epochs": c.epochs,
                **self.training_record(),
            },
            "metrics": metrics or {},
        }

    def kind(self) -> str:
        """The model's kind as its versions name it."""
        return self.config.architecture

    @staticmethod
    def kind_of(metadata: dict[str, Any]) -> str:
        """The kind of the checkpoint whose metadata this is, named as `kind` names it."""
        return str(metadata.get("architecture"))

    def version(self) -> str:
        c, start = self.config, self.start or {}
        same_input = BoxInputGeometry(**start.get("input", {})) == self.geometry
        same_kind = self.kind_of(start) == self.kind() and same_input
        fresh = [self.kind(), c.encoder, f"{self.geometry.mode}{c.size}"]
        tags = {"shifts": c.shift_augment, "camera": c.camera_augment}
        return version_name(fresh, self.start, same_kind, tags, self.epoch)

    def validate(self) -> dict[str, float]:
        if not self.val_samples:
            return {}
        predictor = BoxChannelPredictor(self.model, self.metadata(), device=str(self.device))
        metrics = validation_metrics(predictor, self.val_samples)
        if self.config.select == "worst-shift":
            from polypseg.evaluation import evaluate_shifts
            from polypseg.shifts import SHIFTS

            rows = evaluate_shifts(predictor, self.val_samples, list(SHIFTS), box_noise=0.1)
            worst = min(rows[1:], key=lambda r: r.model.iou)
            metrics["worst_shift_iou@0.1"] = worst.model.iou
            log.info("worst shift: %s (IoU %.4f)", worst.shift, worst.model.iou)
        return metrics


def train_unet(config: UnetTrainConfig) -> Path:
    """Train; returns the path of the best checkpoint (or the last one without validation)."""
    return UnetRun(config).fit()
