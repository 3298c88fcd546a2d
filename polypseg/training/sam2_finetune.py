"""SAM2 fine-tuning on polyp images with box prompts: `polypseg finetune sam2`.

From an official sam2.1 checkpoint (or random weights, for tests), every part that
`--train` names learns (image encoder, prompt encoder, mask decoder: all by default, as the
reference work found best); the memory modules, unused on still images, stay frozen. Each
sample is one polyp: the frame squashed to the model's square input as SAM2 sees it, a box
jittered as an annotator draws it, and optionally correction rounds: a click sampled from the
previous answer's error region, given with that answer as the mask input, as SAM's own
training does. Loss: focal (or BCE) + Dice on the masks, plus the IoU head's squared error
against the IoU the mask actually has. AdamW with a separate learning rate for the image
encoder, linear warm-up then cosine decay, bf16 autocast and gradient accumulation, DDP under
torchrun; validation each epoch, best checkpoint kept, `--resume` continues.
"""

from __future__ import annotations

import datetime
import logging
import math
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from polypseg.checkpoints import load_checkpoint
from polypseg.clicks import next_click
from polypseg.datasets import PolypSample, load_folder_dataset, polyp_targets
from polypseg.errors import CheckpointError, DatasetError, ModelError
from polypseg.images import read_image, read_mask
from polypseg.predictors.sam2 import (
    Sam2Predictor,
    config_from_weights,
    create_sam2_model,
    decode_masks,
    image_features,
    sam2_config_name,
    sam2_pixel_indices,
)
from polypseg.training.augment import annotator_box, training_transform
from polypseg.training.common import SeededDataset, TrainingRun, split_names, validation_metrics
from polypseg.training.config import Sam2FinetuneConfig
from polypseg.training.losses import focal, soft_dice

log = logging.getLogger(__name__)

PARTS = {
    "image-encoder": ("image_encoder",),
    "prompt-encoder": ("sam_prompt_encoder",),
    "mask-decoder": ("sam_mask_decoder", "obj_ptr_proj"),
    # memory parts: trained by the video fine-tuning
    "memory": ("memory_attention", "memory_encoder", "maskmem_tpos_enc", "no_mem_embed", "no_mem_pos_enc"),
}
# SAM2's input normalisation (ImageNet statistics), as its own transforms apply it.
MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)


def normalise(image: np.ndarray, size: int) -> torch.Tensor:
    """An RGB uint8 frame as SAM2's input: squashed to size x size, normalised, CHW."""
    resized = cv2.resize(image, (size, size), interpolation=cv2.INTER_AREA).astype(np.float32) / 255
    return torch.from_numpy(((resized - MEAN) / STD).transpose(2, 0, 1).copy())


class PolypFrames(SeededDataset):
    """One sample per polyp: the augmented frame at the model's size, that polyp's mask, and
    an annotator's box around it (x1, y1, x2, y2 in input pixels)."""

    def __init__(self, samples: list[PolypSample], size: int) -> None:
        self.size = size
        self.transform = training_transform()
        self.items = [
            (sample, index)
            for sample in samples
            for index, _ in enumerate(polyp_targets(read_mask(sample.mask_path), sample.boxes))
        ]
        if not self.items:
            raise DatasetError("no polyp in the training images")

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        sample, polyp = self.items[index]
        rng = self.draws(index, self.transform)
        image, mask = read_image(sample.image_path), read_mask(sample.mask_path)
        _, target = polyp_targets(mask, sample.boxes)[polyp]
        for _ in range(5):  # augmentations may push the polyp out: draw again
            out = self.transform(image=image, mask=target.astype(np.uint8))
            if out["mask"].any():
                image, target = out["image"], out["mask"] > 0
                break
        coverage = cv2.resize(target.astype(np.float32), (self.size, self.size), interpolation=cv2.INTER_AREA)
        # A tiny polyp may cover no input pixel by half: keep any trace of it.
        target = coverage >= 0.5 if (coverage >= 0.5).any() else coverage > 0
        box = annotator_box(target, rng)
        assert box is not None  # the polyp is kept in view
        corners = box.as_array()
        return (
            normalise(image, self.size),
            torch.from_numpy(target.astype(np.float32))[None],
            torch.from_numpy(corners),
        )


def mask_losses(
    logits: torch.Tensor, target: torch.Tensor, predicted_iou: torch.Tensor, kind: str
) -> tuple[torch.Tensor, torch.Tensor]:
    """(focal or BCE) + Dice per sample, and the IoU head's squared error, both batch means."""
    if kind == "focal":
        pixel = focal(logits, target)
    else:
        pixel = F.binary_cross_entropy_with_logits(logits, target, reduction="none").mean(dim=(1, 2, 3))
    dice = soft_dice(logits, target)
    with torch.no_grad():
        hard = (logits > 0).float()
        union = ((hard + target) > 0).float().sum(dim=(1, 2, 3))
        true_iou = torch.where(union > 0, (hard * target).sum(dim=(1, 2, 3)) / union.clamp(min=1), 1.0)
    iou_error = F.mse_loss(predicted_iou.float(), true_iou)
    return (pixel + dice).mean(), iou_error


def correction_clicks(logits: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """One click per sample where the answer is most wrong, as the clicks protocol that scores
    the model places it (`polypseg.clicks.next_click`: positive on a missed part, negative on a
    false one); where the answer is right, a positive click in the polyp (or, with none, a
    negative one). Coordinates (B, 1, 2), labels (B, 1)."""
    points, labels = [], []
    predicted = (logits.detach() > 0).squeeze(1).cpu().numpy()
    truth = target.squeeze(1).cpu().numpy() > 0.5
    for pred, true in zip(predicted, truth, strict=True):
        click = next_click(pred, true) or next_click(np.zeros_like(true), true) or next_click(~true, true)
        assert click is not None  # one of the three answers is wrong somewhere
        points.append([[click.x, click.y]])
        labels.append([int(click.positive)])
    return torch.tensor(points, dtype=torch.float32), torch.tensor(labels, dtype=torch.int)


def prompted_losses(
    model: Any, images: torch.Tensor, targets: torch.Tensor, boxes: torch.Tensor, config: Sam2FinetuneConfig
) -> torch.Tensor:
    """The loss of one batch: the box, then `config.clicks` correction rounds."""
    size = images.shape[-1]
    features = image_features(model, images)
    coords = boxes.view(-1, 2, 2)
    labels = torch.tensor([[2, 3]], dtype=torch.int, device=images.device).expand(len(boxes), 2)
    mask_input = None
    total = images.new_zeros(())
    for _ in range(1 + config.clicks):
        points = (sam2_pixel_indices(coords, labels), labels)
        sparse, dense = model.sam_prompt_encoder(points=points, boxes=None, masks=mask_input)
        low_res, predicted_iou = decode_masks(model, features, sparse, dense)
        logits = F.interpolate(low_res.float(), size=(size, size), mode="bilinear", align_corners=False)
        mask_loss, iou_loss = mask_losses(logits, targets, predicted_iou[:, 0], config.loss)
        total = total + mask_loss + config.iou_weight * iou_loss
        click, label = correction_clicks(logits, targets)
        coords = torch.cat([coords, click.to(images.device)], dim=1)
        labels = torch.cat([labels, label.to(images.device)], dim=1)
        mask_input = low_res.detach()
    return total / (1 + config.clicks)


def load_sam2(checkpoint: Path | None, size: str, image_size: int) -> tuple[torch.nn.Module, dict[str, Any]]:
    """The model and its metadata, from an official or project checkpoint or, without one, random."""
    if checkpoint is None:
        config = sam2_config_name(size)
        return create_sam2_model(config, image_size=image_size), {"config": config, "source": "random"}
    state, metadata, _ = load_checkpoint(checkpoint)
    if not any(k.startswith("image_encoder.") for k in state):
        raise CheckpointError(f"{checkpoint}: not a SAM2 checkpoint")
    config = metadata.get("config") or config_from_weights(state)
    model = create_sam2_model(config, image_size=image_size)
    try:
        model.load_state_dict({k: v.float() for k, v in state.items()}, strict=True)
    except RuntimeError as exc:
        raise CheckpointError(f"{checkpoint}: does not fit SAM2 config {config} ({str(exc)[:200]})") from None
    return model, {"config": config, "source": str(checkpoint), "base_version": metadata.get("version")}


def trainable_parts(
    model: torch.nn.Module, parts: tuple[str, ...]
) -> tuple[list[torch.nn.Parameter], list[torch.nn.Parameter]]:
    """Freeze everything but `parts`; (image encoder parameters, other trainable parameters)."""
    unknown = set(parts) - set(PARTS)
    if unknown or not parts:
        raise ModelError(
            f"--train takes some of {', '.join(PARTS)}; got {', '.join(sorted(parts)) or 'none'}"
        )
    prefixes = tuple(p for part in parts for p in PARTS[part])
    encoder: list[torch.nn.Parameter] = []
    others: list[torch.nn.Parameter] = []
    for name, parameter in model.named_parameters():
        parameter.requires_grad = name.startswith(prefixes)
        if parameter.requires_grad:
            (encoder if name.startswith("image_encoder") else others).append(parameter)
    return encoder, others


def warmup_cosine(warmup: int, total: int):
    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, total - warmup)
        return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

    return factor


class Sam2Run(TrainingRun):
    """SAM2 image fine-tuning; the video fine-tuning changes the data, the loss and the validation."""

    loss_name = "focal + Dice + IoU"

    def build(self) -> None:
        c = self.config
        self.model, self.source = load_sam2(c.checkpoint, c.size, c.image_size)
        self.model.to(self.device).train()
        encoder, others = trainable_parts(self.model, c.train)
        self.data, self.val_samples, self.train_count = self.load_data()
        groups = [{"params": others, "lr": c.lr}]
        if encoder:
            groups.append({"params": encoder, "lr": c.encoder_lr})
        self.optimizer = torch.optim.AdamW(groups, weight_decay=c.weight_decay)

    def make_scheduler(self, total_steps: int) -> torch.optim.lr_scheduler.LRScheduler:
        warmup = min(self.config.warmup_steps, max(1, total_steps // 10))
        return torch.optim.lr_scheduler.LambdaLR(self.optimizer, warmup_cosine(warmup, total_steps))

    def load_data(self) -> tuple[Any, list[PolypSample], int]:
        c = self.config
        if c.images is None or c.masks is None:
            raise DatasetError("SAM2 fine-tuning needs --images and --masks")
        train, val = split_names(load_folder_dataset(c.images, c.masks, c.boxes), c.val_list)
        if c.limit:
            train = train[: c.limit]
        return PolypFrames(train, c.image_size), val, len(train)

    def batch_loss(self, batch: Any) -> torch.Tensor:
        images, targets, boxes = (t.to(self.device) for t in batch)
        return prompted_losses(self.model, images, targets, boxes, self.config)

    def metadata(self, metrics: dict[str, float] | None = None) -> dict[str, Any]:
        c = self.config
        hiera = self.source["config"].rsplit("_", 1)[-1].removesuffix(".yaml")
        return {
            "architecture": "sam2",
            "config": self.source["config"],
            "image_size": c.image_size,
            "version": f"sam2.1-{hiera}-polyp{c.image_size}-e{self.epoch}",
            "created": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
            "training": {
                "kind": type(self).__name__,
                "start": self.source,
                "train_items": self.train_count,
                "val_images": len(self.val_samples),
                **self.training_record(),
            },
            "metrics": metrics or {},
        }

    def validate(self) -> dict[str, float]:
        if not self.val_samples:
            return {}
        predictor = Sam2Predictor(self.model, self.metadata(), device=str(self.device))
        return validation_metrics(predictor, self.val_samples)


def finetune_sam2(config: Sam2FinetuneConfig) -> Path:
    return Sam2Run(config).fit()
