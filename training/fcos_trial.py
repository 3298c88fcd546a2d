"""The second detector design of issue #16, tried against the shipped one: a box detector.

torchvision's FCOS (anchor-free: per-location class, box and centre-ness) on a resnet18 FPN,
at the shipped detector's working size (256 x 256 whole frames, the same data, augmentations
and shift families as `polypseg train detector`), scored on the same validation images by the
same code (AP at box IoU 0.5, precision and recall at the best-F1 score floor). The resnet18
starts from the shipped detector's encoder (the smp encoder is a torchvision ResNet, so the
weights map one to one): no pretrained weights can be had here, and this gives the box
detector the same head start the shipped one had. Each epoch is saved; `--resume` goes on.

    .venv/bin/python training/fcos_trial.py --epochs 12 --out runs/fcos-trial [--resume]

Writes OUT/log.csv (one row per epoch) and OUT/last.pt. Not a shipped design: see
docs/models.md ("The polyp detector") for what it measured against the whole-frame segmenter.
"""

from __future__ import annotations

import argparse
import csv
import math
import time
from pathlib import Path

import numpy as np
import torch
import torchvision
from scipy import ndimage
from torch.utils.data import DataLoader
from torchvision.models.detection import FCOS
from torchvision.models.detection.backbone_utils import BackboneWithFPN
from torchvision.ops.feature_pyramid_network import LastLevelP6P7

from polypseg.checkpoints import load_checkpoint
from polypseg.datasets import load_folder_dataset, polyp_targets
from polypseg.detection_metrics import ImageDetections, average_precision, best_threshold
from polypseg.detector import MIN_AREA_FRACTION, detector_input
from polypseg.images import read_image, read_mask
from polypseg.prompts import Box
from polypseg.training.detector import WholeFrames

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "kvasir-seg"


def create_fcos(size: int, channels: int = 128) -> FCOS:
    body = torchvision.models.resnet18(weights=None)
    backbone = BackboneWithFPN(
        body,
        {"layer2": "0", "layer3": "1", "layer4": "2"},
        [128, 256, 512],
        channels,
        extra_blocks=LastLevelP6P7(channels, channels),
    )
    # Inputs arrive normalised and at the working size (detector_input): no second transform.
    return FCOS(
        backbone,
        num_classes=2,
        min_size=size,
        max_size=size,
        image_mean=[0.0, 0.0, 0.0],
        image_std=[1.0, 1.0, 1.0],
        score_thresh=0.05,
        detections_per_img=20,
    )


def init_from_detector(model: FCOS, path: Path) -> int:
    """The shipped detector's encoder weights into the FCOS resnet18; how many tensors."""
    state, _, _ = load_checkpoint(path)
    body = model.backbone.body
    target = body.state_dict()
    taken = {
        key.removeprefix("encoder."): value.float()
        for key, value in state.items()
        if key.startswith("encoder.") and key.removeprefix("encoder.") in target
    }
    body.load_state_dict(taken, strict=False)
    return len(taken)


def mask_boxes(mask: torch.Tensor) -> torch.Tensor:
    """The boxes (x1, y1, x2, y2, network pixels) of a target mask's polyp components."""
    labels, _ = ndimage.label(mask.numpy()[0] > 0.5)
    min_area = MIN_AREA_FRACTION * labels.size
    boxes = [
        [xs.start, ys.start, xs.stop, ys.stop]
        for index, (ys, xs) in enumerate(ndimage.find_objects(labels), start=1)
        if (labels[ys, xs] == index).sum() >= min_area
    ]
    return torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4)


def collate(batch: list[tuple[torch.Tensor, torch.Tensor]]) -> tuple[list[torch.Tensor], list[dict]]:
    images, targets = [], []
    for x, y in batch:
        boxes = mask_boxes(y)
        images.append(x)
        targets.append({"boxes": boxes, "labels": torch.ones(len(boxes), dtype=torch.int64)})
    return images, targets


def validate(model: FCOS, samples: list, size: int) -> dict[str, float]:
    model.eval()
    images, seconds = [], []
    with torch.inference_mode():
        for sample in samples:
            image, truth = read_image(sample.image_path), read_mask(sample.mask_path)
            height, width = image.shape[:2]
            start = time.perf_counter()
            out = model([torch.from_numpy(detector_input(image, size))])[0]
            seconds.append(time.perf_counter() - start)
            sx, sy = width / size, height / size
            found = tuple(
                (Box(b[0] * sx, b[1] * sy, b[2] * sx, b[3] * sy), float(s))
                for b, s in zip(out["boxes"].tolist(), out["scores"].tolist(), strict=True)
            )
            truths = tuple(box for box, _ in polyp_targets(truth, sample.boxes))
            images.append(ImageDetections(sample.name, found, truths))
    model.train()
    threshold, precision, recall = best_threshold(images)
    return {
        "ap50": average_precision(images, 0.5),
        "threshold": threshold,
        "precision": precision,
        "recall": recall,
        "s_per_frame": float(np.median(seconds)),
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--val-list", type=Path, default=ROOT / "training/splits/kvasir-seg-val.txt")
    parser.add_argument("--init", type=Path, default=ROOT / "polypseg/models/detector.pt")
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--epochs", type=int, default=12)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--shift-augment", type=float, default=0.5)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--resume", action="store_true")
    args = parser.parse_args()

    names = args.val_list.read_text().split()
    every = load_folder_dataset(args.data / "images", args.data / "masks", args.data / "bboxes.json")
    train = [s for s in every if s.name not in set(names)]
    val = [s for s in every if s.name in set(names)]
    model = create_fcos(args.size)
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=1e-4)
    data = WholeFrames(train, args.size, crop_fraction=0.3, shift_augment=args.shift_augment)
    loader = DataLoader(data, batch_size=args.batch_size, shuffle=True, collate_fn=collate, drop_last=True)
    steps = args.epochs * len(loader)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: min(1.0, (step + 1) / 100) * 0.5 * (1 + math.cos(math.pi * step / steps))
    )
    args.out.mkdir(parents=True, exist_ok=True)
    start_epoch = 1
    if args.resume and (args.out / "last.pt").exists():
        saved = torch.load(args.out / "last.pt", weights_only=True)
        model.load_state_dict(saved["model"])
        optimizer.load_state_dict(saved["optimizer"])
        schedule.load_state_dict(saved["schedule"])
        start_epoch = saved["epoch"] + 1
    else:
        print(f"{init_from_detector(model, args.init)} encoder tensors from {args.init}")
    model.train()
    for epoch in range(start_epoch, args.epochs + 1):
        began, losses = time.time(), []
        for images, targets in loader:
            loss = sum(model(images, targets).values())
            optimizer.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 10.0)
            optimizer.step()
            schedule.step()
            losses.append(loss.item())
        row = {"epoch": epoch, "loss": float(np.mean(losses)), "minutes": (time.time() - began) / 60}
        row |= validate(model, val, args.size)
        print(
            " ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in row.items()),
            flush=True,
        )
        log = args.out / "log.csv"
        with log.open("a", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(row))
            if f.tell() == 0:
                writer.writeheader()
            writer.writerow(row)
        saved = {
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "schedule": schedule.state_dict(),
        }
        torch.save(saved | {"epoch": epoch}, args.out / "last.pt.partial")
        (args.out / "last.pt.partial").replace(args.out / "last.pt")


if __name__ == "__main__":
    main()
