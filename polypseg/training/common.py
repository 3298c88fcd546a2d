"""What the trainers share: devices and processes, the validation split, the epoch log."""

from __future__ import annotations

import csv
import os
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from polypseg.datasets import PolypSample


def split_names(
    samples: list[PolypSample], val_list: Path | None
) -> tuple[list[PolypSample], list[PolypSample]]:
    """Training and validation samples; validation names come from a committed list file."""
    if val_list is None:
        return samples, []
    names = {line.strip() for line in Path(val_list).read_text().splitlines() if line.strip()}
    return [s for s in samples if s.name not in names], [s for s in samples if s.name in names]


def pick_device(name: str) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(name)


def init_distributed(device_name: str) -> tuple[torch.device, int, int]:
    """This process's device, the world size and its rank; joins the process group under
    torchrun (gloo on CPU, nccl on GPU)."""
    device = pick_device(device_name)
    world, rank = int(os.environ.get("WORLD_SIZE", "1")), int(os.environ.get("RANK", "0"))
    if world > 1:
        if device.type == "cuda":
            device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
            torch.cuda.set_device(device)
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return device, world, rank


def write_log(out: Path, history: list[dict[str, Any]], loss_name: str = "BCE + Dice") -> None:
    """The epoch table as CSV and the loss and IoU curves as PNG."""
    keys = list(dict.fromkeys(k for row in history for k in row))
    with open(out / "log.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=keys)
        writer.writeheader()
        writer.writerows(history)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [row["epoch"] for row in history]
    figure, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    left.plot(epochs, [row["train_loss"] for row in history])
    left.set(title=f"training loss ({loss_name})", xlabel="epoch")
    validated = [key for key in ("iou@0", "iou@0.1") if key in history[-1]]
    for key in validated:
        right.plot(epochs, [row.get(key) for row in history], label=f"box noise {key[4:]}")
    right.set(title="validation IoU", xlabel="epoch")
    if validated:
        right.legend()
    figure.tight_layout()
    figure.savefig(out / "curves.png", dpi=100)
    plt.close(figure)
