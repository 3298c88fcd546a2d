"""Training of box-prompted smp models (U-Net, U-Net++): `polypseg train unet`.

One process on CPU or GPU, or several under `torchrun` (DistributedDataParallel: gloo on CPU,
nccl on GPU). Rank 0 validates after each epoch at box noise 0 and 0.1, keeps the best
checkpoint by IoU at noise 0.1, and writes a CSV log and PNG curves. `last.pt` holds the
optimiser and schedule too, so `--resume` continues from the step where training stopped.
"""

from __future__ import annotations

import datetime
import logging
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from polypseg.box_input import BoxInputGeometry
from polypseg.checkpoints import load_checkpoint, save_checkpoint
from polypseg.datasets import PolypSample, load_folder_dataset, polyp_targets
from polypseg.errors import PromptError
from polypseg.evaluation import evaluate
from polypseg.images import read_image, read_mask
from polypseg.masks import mask_box
from polypseg.predictors.box_channel import BoxChannelPredictor, create_box_channel_model
from polypseg.prompts import Box
from polypseg.training.augment import annotator_box, frame_shift, training_transform
from polypseg.training.common import init_distributed, split_names, write_log

log = logging.getLogger(__name__)

# Each polyp is cached as a region around its box this much larger on each side, enough for
# box jitter, loose boxes and the input margin; the region's long side is capped at
# REGION_SCALE x the input size, since the network never sees more detail than that.
REGION_MARGIN = 0.75
REGION_SCALE = 2


@dataclass
class UnetTrainConfig:
    images: Path
    masks: Path
    out: Path
    boxes: Path | None = None
    val_list: Path | None = None
    architecture: str = "unet"
    encoder: str = "resnet34"
    encoder_weights: str | None = None
    geometry: str = "crop"
    size: int = 256
    margin: float = 0.25
    negative_fraction: float = 0.1
    epochs: int = 30
    batch_size: int = 8
    lr: float = 1e-3
    weight_decay: float = 1e-4
    accumulate: int = 1
    workers: int = 1
    seed: int = 0
    resume: bool = False
    max_steps: int | None = None  # stop early after this many optimiser steps (tests, probes)
    limit: int | None = None  # use only the first N training images (tests, probes)
    save_every: int = 100  # steps between resumable snapshots within an epoch
    device: str = "auto"
    command: str = ""
    init: Path | None = None  # start from this checkpoint's weights (same architecture and encoder)
    shift_augment: float = 0.0  # chance of the shift-suite degradations per draw (0: off)
    select: str = "clean"  # best checkpoint by "clean" IoU or by "worst-shift" IoU


class PolypRegions(Dataset):
    """One training sample per polyp: its image region, its own mask, augmented per draw.

    With probability `negative_fraction` a draw is a negative instead: a box on the same frame
    where there is no polyp, whose target is empty. It teaches the model to answer "nothing
    here", which trackers rely on to say that a polyp is lost.
    """

    def __init__(
        self,
        samples: list[PolypSample],
        geometry: BoxInputGeometry,
        negative_fraction: float = 0.0,
        shift_augment: float = 0.0,
    ) -> None:
        self.geometry = geometry
        self.negative_fraction = negative_fraction
        self.shift_augment = shift_augment
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

    def _draw(self, image: np.ndarray, target: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """An augmented copy; the original when augmentations keep pushing the polyp out."""
        image, target = frame_shift(image, target, np.random.default_rng(), self.shift_augment)
        for _ in range(5):
            out = self.transform(image=image, mask=target.astype(np.uint8))
            if out["mask"].any():
                return out["image"], out["mask"] > 0
        return image, target

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        image, target, frame = self.regions[index]
        rng = np.random.default_rng()
        if rng.random() < self.negative_fraction:
            negative = self._negative(*self.frames[frame], rng)
            if negative is not None:
                return negative
        image, target = self._draw(image, target)
        height, width = target.shape
        box = annotator_box(target, rng)
        try:
            box = box.clipped(width, height) if box is not None else None
        except PromptError:  # a jittered box around a sliver at the border: take it tight
            box = None
        box = box or mask_box(target)
        assert box is not None  # _draw keeps the polyp in view
        return self._sample(image, target, box)

    def _negative(
        self, image: np.ndarray, mask: np.ndarray, rng: np.random.Generator
    ) -> tuple[torch.Tensor, torch.Tensor] | None:
        """A box on the frame that holds (almost) no polyp, or None if none was found."""
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
        crop = target[int(window.y1) : int(window.y2), int(window.x1) : int(window.x2)]
        y = cv2.resize(crop.astype(np.float32), (self.geometry.size,) * 2, interpolation=cv2.INTER_LINEAR)
        return torch.from_numpy(x), torch.from_numpy(y)[None]


def bce_dice_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    bce = F.binary_cross_entropy_with_logits(logits, target)
    probability = torch.sigmoid(logits)
    overlap = (probability * target).sum(dim=(1, 2, 3))
    total = probability.sum(dim=(1, 2, 3)) + target.sum(dim=(1, 2, 3))
    dice = 1 - (2 * overlap + 1) / (total + 1)
    return bce + dice.mean()


class _Run:
    """The state of one training run: model, optimiser, schedule, position and history."""

    def __init__(self, config: UnetTrainConfig) -> None:
        self.config = config
        self.device, self.world, self.rank = init_distributed(config.device)
        self.geometry = BoxInputGeometry(config.geometry, config.size, config.margin)
        samples = load_folder_dataset(config.images, config.masks, config.boxes)
        self.train_samples, self.val_samples = split_names(samples, config.val_list)
        if config.limit:
            self.train_samples = self.train_samples[: config.limit]
        torch.manual_seed(config.seed)
        self.model = create_box_channel_model(config.architecture, config.encoder, config.encoder_weights).to(
            self.device
        )
        if config.init is not None:
            state, _, _ = load_checkpoint(config.init)
            self.model.load_state_dict({k: v.float() for k, v in state.items()})
        self.train_model: torch.nn.Module = self.model
        if self.world > 1:
            self.train_model = torch.nn.parallel.DistributedDataParallel(self.model)
        self.data = PolypRegions(
            self.train_samples, self.geometry, config.negative_fraction, config.shift_augment
        )
        self.batches_per_epoch = max(1, len(self.data) // (config.batch_size * self.world))
        self.steps_per_epoch = max(1, self.batches_per_epoch // config.accumulate)
        self.optimizer = torch.optim.AdamW(
            self.model.parameters(), lr=config.lr, weight_decay=config.weight_decay
        )
        self.scheduler = torch.optim.lr_scheduler.OneCycleLR(
            self.optimizer,
            max_lr=config.lr,
            total_steps=config.epochs * self.steps_per_epoch,
            pct_start=0.1,
        )
        self.epoch, self.batch_in_epoch, self.step = 0, 0, 0
        self.best = -1.0
        self.history: list[dict[str, Any]] = []
        self.out = Path(config.out)
        if config.resume and (self.out / "last.pt").is_file():
            self._load(self.out / "last.pt")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def metadata(self, metrics: dict[str, float] | None = None) -> dict[str, Any]:
        c = self.config
        return {
            "architecture": c.architecture,
            "encoder": c.encoder,
            "input": self.geometry.as_dict(),
            "version": f"{c.architecture}-{c.encoder}-{self.geometry.mode}{c.size}-e{self.epoch}",
            "created": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
            "training": {
                "images": str(c.images),
                "train_images": len(self.train_samples),
                "val_images": len(self.val_samples),
                "val_list": str(c.val_list) if c.val_list else None,
                "epochs": c.epochs,
                "epochs_done": self.epoch,
                "command": c.command,
                "config": {k: str(v) if isinstance(v, Path) else v for k, v in asdict(c).items()},
            },
            "metrics": metrics or {},
        }

    def _load(self, path: Path) -> None:
        state_dict, metadata, extra = load_checkpoint(path)
        self.model.load_state_dict(state_dict)
        self.optimizer.load_state_dict(extra["optimizer"])
        self.scheduler.load_state_dict(extra["scheduler"])
        position = extra["position"]
        self.epoch, self.batch_in_epoch, self.step = position["epoch"], position["batch"], position["step"]
        self.best = float(position["best"])
        self.history = list(extra.get("history", []))
        log.info(
            "resumed from %s at epoch %d, batch %d, step %d", path, self.epoch, self.batch_in_epoch, self.step
        )

    def save_last(self) -> None:
        if not self.is_main:
            return
        save_checkpoint(
            self.out / "last.pt",
            self.model.state_dict(),
            self.metadata(),
            optimizer=self.optimizer.state_dict(),
            scheduler=self.scheduler.state_dict(),
            position={
                "epoch": self.epoch,
                "batch": self.batch_in_epoch,
                "step": self.step,
                "best": self.best,
            },
            history=self.history,
        )

    def batches(self) -> DataLoader:
        """This rank's batches of the current epoch, in an order fixed by (seed, epoch), from
        the batch where a resumed run stopped."""
        order = np.random.default_rng([self.config.seed, self.epoch]).permutation(len(self.data))
        per_rank = order[self.rank :: self.world][: self.batches_per_epoch * self.config.batch_size]
        remaining = per_rank[self.batch_in_epoch * self.config.batch_size :]
        return DataLoader(
            torch.utils.data.Subset(self.data, remaining.tolist()),
            batch_size=self.config.batch_size,
            num_workers=self.config.workers,
            persistent_workers=False,
            drop_last=True,
        )

    def validate(self) -> dict[str, float]:
        if not self.val_samples:
            return {}
        predictor = BoxChannelPredictor(self.model, self.metadata(), device=str(self.device))
        metrics = {}
        for noise in (0.0, 0.1):
            result = evaluate(
                {"model": lambda im, p: predictor.predict(im, p).mask},
                self.val_samples,
                box_noise=noise,
                progress=False,
            )["model"].mean
            metrics[f"iou@{noise:g}"], metrics[f"dice@{noise:g}"] = result.iou, result.dice
            metrics[f"precision@{noise:g}"], metrics[f"recall@{noise:g}"] = result.precision, result.recall
        if self.config.select == "worst-shift":
            from polypseg.evaluation import evaluate_shifts
            from polypseg.shifts import SHIFTS

            rows = evaluate_shifts(predictor, self.val_samples, list(SHIFTS), box_noise=0.1)
            worst = min(rows[1:], key=lambda r: r.model.iou)
            metrics["worst_shift_iou@0.1"] = worst.model.iou
            log.info("worst shift: %s (IoU %.4f)", worst.shift, worst.model.iou)
        self.model.train()
        return metrics


def train_unet(config: UnetTrainConfig) -> Path:
    """Train; returns the path of the best checkpoint (or the last one without validation)."""
    run = _Run(config)
    run.out.mkdir(parents=True, exist_ok=True)
    use_amp = run.device.type == "cuda"
    started = time.time()
    stop = False
    while run.epoch < config.epochs and not stop:
        run.train_model.train()
        losses: list[float] = []
        progress = tqdm(
            run.batches(),
            desc=f"epoch {run.epoch + 1}/{config.epochs}",
            initial=run.batch_in_epoch,
            total=run.batches_per_epoch,
            disable=not run.is_main,
        )
        for x, y in progress:
            x, y = x.to(run.device), y.to(run.device)
            with torch.autocast(run.device.type, dtype=torch.bfloat16, enabled=use_amp):
                loss = bce_dice_loss(run.train_model(x).float(), y) / config.accumulate
            loss.backward()
            losses.append(loss.item() * config.accumulate)
            run.batch_in_epoch += 1
            if run.batch_in_epoch % config.accumulate == 0:
                run.optimizer.step()
                run.optimizer.zero_grad(set_to_none=True)
                run.scheduler.step()
                run.step += 1
                progress.set_postfix(loss=f"{np.mean(losses[-20:]):.3f}")
                if run.step % config.save_every == 0:
                    run.save_last()
                if config.max_steps is not None and run.step >= config.max_steps:
                    stop = True
                    break
        if stop and run.batch_in_epoch < run.batches_per_epoch:
            run.save_last()
            break
        run.epoch, run.batch_in_epoch = run.epoch + 1, 0
        if run.is_main:
            metrics = run.validate()
            row: dict[str, float] = {
                "epoch": run.epoch,
                "step": run.step,
                "train_loss": float(np.mean(losses)) if losses else float("nan"),
                "lr": float(run.scheduler.get_last_lr()[0]),
                "seconds": round(time.time() - started, 1),
                **metrics,
            }
            run.history.append(row)
            log.info("epoch %d: %s", run.epoch, {k: round(v, 4) for k, v in row.items()})
            score = metrics.get("iou@0.1", -row["train_loss"])
            if config.select == "worst-shift" and "worst_shift_iou@0.1" in metrics:
                score = min(score, metrics["worst_shift_iou@0.1"])
            if score > run.best:
                run.best = score
                half = {
                    k: v.half() if v.is_floating_point() else v for k, v in run.model.state_dict().items()
                }
                save_checkpoint(run.out / "best.pt", half, run.metadata(metrics))
            write_log(run.out, run.history)
        run.save_last()
        if run.world > 1:
            dist.barrier()
    if run.world > 1:
        dist.destroy_process_group()
    best = run.out / "best.pt"
    return best if best.is_file() else run.out / "last.pt"
