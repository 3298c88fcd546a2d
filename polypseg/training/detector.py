"""Training of the polyp detectors: `polypseg train detector [--model fcos]`.

Whole frames, resized to the working size, with the augmentations of the box models (geometry,
colour, and with `--shift-augment` the other-centre degradations), plus random crops that
often leave the polyp out, so that the network also sees frames without one. The whole-frame
segmenter learns the frame's polyp mask (BCE + Dice); the box detector (FCOS) the boxes of
the mask's polyps (its own focal, GIoU and centre-ness losses). Validation after each epoch:
detection AP at box IoU 0.5 on the validation images; the best epoch is kept, with the score
floor of the best F1 of precision and recall written into its metadata (`threshold`).

`--init` takes a detector of the same design to go on from, or another model of the same
encoder whose encoder weights start the network (a box U-Net's box channel dropped): its
features already know polyps.
"""

from __future__ import annotations

import datetime
import re
from pathlib import Path
from typing import Any

import albumentations as A
import cv2
import numpy as np
import torch
from scipy import ndimage
from tqdm import tqdm

from polypseg.datasets import PolypSample, polyp_targets
from polypseg.detection_metrics import ImageDetections, average_precision, best_threshold, precision_recall
from polypseg.detector import (
    MIN_AREA_FRACTION,
    FcosDetector,
    MapDetector,
    PolypDetector,
    create_detector_model,
    create_fcos_model,
    detector_input,
)
from polypseg.images import read_image, read_mask
from polypseg.training.augment import camera_view, frame_shift, training_transform
from polypseg.training.common import SeededDataset, TrainingRun, dataset_split, start_from
from polypseg.training.config import DetectorTrainConfig
from polypseg.training.losses import bce_dice_loss


class WholeFrames(SeededDataset):
    """Whole frames and their polyp masks, cached at twice the working size, augmented per draw."""

    def __init__(
        self,
        samples: list[PolypSample],
        size: int,
        crop_fraction: float,
        shift_augment: float,
        camera_augment: float = 0.0,
    ) -> None:
        self.size = size
        self.shift_augment = shift_augment
        self.camera_augment = camera_augment
        self.transform = training_transform(robust=shift_augment > 0)
        self.crop = A.RandomResizedCrop(
            size=(size, size), scale=(0.15, 0.6), ratio=(0.6, 1.6), p=crop_fraction
        )
        self.frames = []
        for sample in tqdm(samples, desc="caching frames", unit="image", leave=False):
            image, mask = read_image(sample.image_path), read_mask(sample.mask_path)
            scale = min(1.0, 2 * size / max(image.shape[:2]))
            if scale < 1:
                shape = (round(image.shape[1] * scale), round(image.shape[0] * scale))
                image = cv2.resize(image, shape, interpolation=cv2.INTER_AREA)
                mask = cv2.resize(mask.astype(np.uint8), shape, interpolation=cv2.INTER_NEAREST) > 0
            self.frames.append((image, mask))

    def __len__(self) -> int:
        return len(self.frames)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        image, mask = self.frames[index]
        rng = self.draws(index, self.transform, self.crop)
        image, mask = frame_shift(image, mask, rng, self.shift_augment)
        image, mask = camera_view(image, mask, rng, self.camera_augment)
        out = self.transform(image=image, mask=mask.astype(np.uint8))
        out = self.crop(image=out["image"], mask=out["mask"])
        image, mask = out["image"], out["mask"]
        x = detector_input(image, self.size)
        y = cv2.resize(mask.astype(np.float32), (self.size, self.size), interpolation=cv2.INTER_LINEAR)
        return torch.from_numpy(x), torch.from_numpy(y)[None]


def detector_state_from(state: dict[str, torch.Tensor], model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """A box-channel U-Net's weights for the detector: the box channel of the first
    convolution dropped, every other weight of the same shape kept."""
    target = model.state_dict()
    fitted = {}
    for key, value in state.items():
        value = value.float()
        if key in target and value.dim() == 4 and value.shape[1] == 4 and target[key].shape[1] == 3:
            value = value[:, :3].contiguous()
        fitted[key] = value
    return fitted


def fcos_state_from(state: dict[str, torch.Tensor], model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Another model's encoder weights (smp's encoders are torchvision ResNets: the same names)
    in the box detector's backbone, a box channel dropped; its other weights as they are."""
    fitted = dict(model.state_dict())
    for key, value in state.items():
        if not key.startswith("encoder."):
            continue
        name = "backbone.body." + key.removeprefix("encoder.")
        value = value.float()
        if value.dim() == 4 and value.shape[1] == 4 and name in fitted and fitted[name].shape[1] == 3:
            value = value[:, :3].contiguous()
        if name in fitted:
            fitted[name] = value
    return fitted


def deepened_state(state: dict[str, torch.Tensor], model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """A trained box detector's weights in a deeper one of the same widths (a resnet18 FCOS in a
    resnet34 FCOS): every weight the two share by name and shape is the trained one, and each
    residual block the trained backbone lacks starts with its last batch norm's scale at zero,
    so that it passes its input through unchanged and the deeper model starts out answering as
    the trained one did (the deepening of Net2Net, Chen et al. 2016)."""
    grown = dict(model.state_dict())
    for key, value in state.items():
        if key in grown and grown[key].shape == value.shape:
            grown[key] = value.float()
    for key in grown:
        if key not in state and re.fullmatch(r"backbone\.body\.layer\d\.\d+\.bn2\.weight", key):
            grown[key] = torch.zeros_like(grown[key])
    return grown


def mask_boxes(mask: torch.Tensor) -> torch.Tensor:
    """The boxes (x1, y1, x2, y2, pixels) of the polyps of a 1 x H x W target mask: its
    connected parts, specks left out as the map detector leaves them out."""
    labels, _ = ndimage.label(mask.numpy()[0] > 0.5)
    min_area = MIN_AREA_FRACTION * labels.size
    boxes = [
        [xs.start, ys.start, xs.stop, ys.stop]
        for index, (ys, xs) in enumerate(ndimage.find_objects(labels), start=1)
        if (labels[ys, xs] == index).sum() >= min_area
    ]
    return torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4)


def detections_on(
    detector: PolypDetector, samples: list[PolypSample], min_score: float = 0.05
) -> list[ImageDetections]:
    """The detector's boxes (down to `min_score`) and the true polyp boxes of each sample."""
    out = []
    for sample in samples:
        image, truth = read_image(sample.image_path), read_mask(sample.mask_path)
        found = detector.detect(image, min_score=min_score)
        truths = tuple(box for box, _ in polyp_targets(truth, sample.boxes))
        out.append(ImageDetections(sample.name, tuple((d.box, d.score) for d in found), truths))
    return out


class DetectorRun(TrainingRun):
    loss_name = "BCE + Dice"
    selection = "ap50"

    @property
    def fcos(self) -> bool:
        return bool(self.config.decoder == "fcos")

    @property
    def architecture(self) -> str:
        return "fcos-detector" if self.fcos else "detector"

    def build(self) -> None:
        c = self.config
        self.train_samples, self.val_samples = dataset_split(c)
        if self.fcos:
            self.model = create_fcos_model(c.encoder, c.size)
            self.loss_name = "FCOS (focal + GIoU + centre-ness)"
        else:
            self.model = create_detector_model(c.encoder, c.decoder)

        def adapt(state: dict[str, torch.Tensor], metadata: dict[str, Any]) -> dict[str, torch.Tensor]:
            if metadata.get("architecture") == self.architecture:
                deeper = self.fcos and metadata.get("encoder", "resnet18") != c.encoder
                return deepened_state(state, self.model) if deeper else state
            if self.fcos:
                return fcos_state_from(state, self.model)
            box_model = metadata.get("architecture") in ("unet", "unetplusplus")
            return detector_state_from(state, self.model) if box_model else state

        start_from(self.model, c.init, adapt, f"a detector with a {c.encoder} encoder")
        self.model.to(self.device)
        self.data = WholeFrames(
            self.train_samples, c.size, c.crop_fraction, c.shift_augment, c.camera_augment
        )
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=c.lr, weight_decay=c.weight_decay)
        self.threshold = 0.5

    def batch_loss(self, batch: Any) -> torch.Tensor:
        x, y = batch
        if self.fcos:
            targets = [
                {
                    "boxes": boxes.to(self.device),
                    "labels": torch.ones(len(boxes), dtype=torch.int64, device=self.device),
                }
                for boxes in map(mask_boxes, y)
            ]
            losses = self.model(list(x.to(self.device)), targets)
            return sum(losses.values(), torch.zeros((), device=self.device))
        return bce_dice_loss(self.model(x.to(self.device)).float(), y.to(self.device))

    def validate(self) -> dict[str, float]:
        if not self.val_samples:
            return {}
        design: type[PolypDetector] = FcosDetector if self.fcos else MapDetector
        detector = design(self.model, self.metadata(), device=str(self.device))
        images = detections_on(detector, self.val_samples)
        self.threshold, precision, recall = best_threshold(images)
        return {
            "ap50": average_precision(images, 0.5),
            "threshold": self.threshold,
            "precision": precision,
            "recall": recall,
            "precision@0.5": precision_recall(images, 0.5)[0],
            "recall@0.5": precision_recall(images, 0.5)[1],
        }

    def metadata(self, metrics: dict[str, float] | None = None) -> dict[str, Any]:
        c = self.config
        return {
            "architecture": self.architecture,
            "encoder": c.encoder,
            "decoder": c.decoder,
            "input": {"mode": "whole", "size": c.size},
            "threshold": round(float(getattr(self, "threshold", 0.5)), 3),
            "version": f"detector-{'fcos-' if self.fcos else ''}{c.encoder}-whole{c.size}"
            f"{'-shifts' if c.shift_augment else ''}-e{self.epoch}",
            "created": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
            "training": {
                "images": str(c.images),
                "train_images": len(self.train_samples),
                "val_images": len(self.val_samples),
                "val_list": str(c.val_list) if c.val_list else None,
                "init": str(c.init) if c.init else None,
                "epochs": c.epochs,
                **self.training_record(),
            },
            "metrics": metrics or {},
        }


def train_detector(config: DetectorTrainConfig) -> Path:
    return DetectorRun(config).fit()
