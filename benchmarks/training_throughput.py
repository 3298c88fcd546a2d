"""Training throughput of `polypseg train unet` on this machine, in images per second.

Times optimiser steps of the real training path (augmented Kvasir-SEG regions through the
data loader, forward, BCE + Dice, backward, AdamW) against a reference measured in the same
run: the bare smp step on random tensors of the same shape (no data, no augmentation).

    python benchmarks/training_throughput.py [--encoder resnet18] [--size 224] [--batch-size 8] [--steps 10]
"""

from __future__ import annotations

import argparse
import itertools
import time
from pathlib import Path

import torch

from polypseg.box_input import BoxInputGeometry
from polypseg.datasets import load_folder_dataset
from polypseg.predictors.box_channel import create_box_channel_model
from polypseg.training.losses import bce_dice_loss
from polypseg.training.unet import PolypRegions

KVASIR = Path(__file__).resolve().parents[2] / "shared/data/kvasir-seg"


def images_per_second(batches, model: torch.nn.Module, steps: int, batch_size: int) -> float:
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model.train()
    batches = iter(batches)
    for x, y in itertools.islice(batches, 2):  # warm-up
        bce_dice_loss(model(x), y).backward()
    start = time.perf_counter()
    for x, y in itertools.islice(batches, steps):
        optimizer.zero_grad()
        bce_dice_loss(model(x), y).backward()
        optimizer.step()
    return steps * batch_size / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default="unet")
    parser.add_argument("--encoder", default="resnet18")
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--workers", type=int, default=1)
    args = parser.parse_args()
    samples = load_folder_dataset(KVASIR / "images", KVASIR / "masks", KVASIR / "bboxes.json")[:64]
    data = PolypRegions(samples, BoxInputGeometry("crop", args.size, 0.25), negative_fraction=0.1)
    loader = torch.utils.data.DataLoader(
        data, batch_size=args.batch_size, shuffle=True, num_workers=args.workers, drop_last=True
    )
    torch.manual_seed(0)
    real = images_per_second(
        itertools.cycle(loader),
        create_box_channel_model(args.model, args.encoder),
        args.steps,
        args.batch_size,
    )
    x = torch.randn(args.batch_size, 4, args.size, args.size)
    y = (torch.rand(args.batch_size, 1, args.size, args.size) > 0.5).float()
    bare = images_per_second(
        itertools.repeat((x, y)),
        create_box_channel_model(args.model, args.encoder),
        args.steps,
        args.batch_size,
    )
    threads = torch.get_num_threads()
    print(f"{args.model} {args.encoder} {args.size}px, batch {args.batch_size}, {threads} threads")
    print("| path | images/s | ratio |\n|---|---|---|")
    print(f"| polypseg training step (augmented data) | {real:.2f} | {real / bare:.2f} |")
    print(f"| reference: bare smp step, random tensors | {bare:.2f} | 1.00 |")


if __name__ == "__main__":
    main()
