"""What the trainers share: devices and processes, the validation split, the epoch log, the
training loop."""

from __future__ import annotations

import csv
import logging
import math
import os
import re
import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from polypseg.checkpoints import load_checkpoint, load_weights, save_checkpoint
from polypseg.datasets import PolypSample
from polypseg.errors import DatasetError
from polypseg.predictors.registry import resolve_device

log = logging.getLogger("polypseg.training")


def split_names(
    samples: list[PolypSample], val_list: Path | None
) -> tuple[list[PolypSample], list[PolypSample]]:
    """Training and validation samples; validation names come from a committed list file."""
    if val_list is None:
        return samples, []
    names = {line.strip() for line in Path(val_list).read_text().splitlines() if line.strip()}
    return [s for s in samples if s.name not in names], [s for s in samples if s.name in names]


def dataset_split(config: Any) -> tuple[list[PolypSample], list[PolypSample]]:
    """A config's image/mask folders as training samples (the first --limit) and validation
    samples (--val-list)."""
    from polypseg.datasets import load_folder_dataset

    samples = load_folder_dataset(config.images, config.masks, config.boxes)
    train, val = split_names(samples, config.val_list)
    return (train[: config.limit] if config.limit else train), val


def start_from(
    model: torch.nn.Module,
    init: Path | None,
    adapt: Callable[[dict[str, torch.Tensor], dict[str, Any]], dict[str, torch.Tensor]],
    what: str,
) -> dict[str, Any] | None:
    """Load --init's weights into `model`, after `adapt` fits another family's (e.g. a box
    U-Net's first convolution); a checkpoint that still does not fit is a named error. Returns
    --init's metadata (None without --init)."""
    if init is None:
        return None
    state, metadata, _ = load_checkpoint(init)
    load_weights(
        model, adapt(state, metadata), init, f"{what}: --model and --encoder must match the checkpoint's"
    )
    return metadata


def version_name(
    fresh: list[str], start: dict[str, Any] | None, same_kind: bool, tags: dict[str, float], epoch: int
) -> str:
    """A checkpoint's version that says what it is. Trained afresh (or from another kind of
    model): its `fresh` parts (architecture, encoder, input) and the augmentations it used, then
    its epoch. Fine-tuned from a model of the same kind (`same_kind`): that model's version and
    the augmentations this run added, then its epoch (`...-shifts-e6-camera-e3`); a fine-tune
    that adds none counts itself instead (`-ft1-e3`, then `-ft2-e3`), so that the names of
    retrains made day after day do not grow."""
    used = [name for name, chance in tags.items() if chance]
    base = str((start or {}).get("version") or "")
    if not (same_kind and base):
        return "-".join([*fresh, *used, f"e{epoch}"])
    added = [t for t in used if f"-{t}-" not in f"-{base}-"]
    if added:
        return "-".join([base, *added, f"e{epoch}"])
    counted = re.fullmatch(r"(.*)-ft(\d+)-e\d+", base)
    if counted:
        return f"{counted[1]}-ft{int(counted[2]) + 1}-e{epoch}"
    return f"{base}-ft1-e{epoch}"


def validation_metrics(predictor: Any, samples: list[PolypSample]) -> dict[str, float]:
    """IoU, Dice, precision and recall of an image predictor at box noise 0 and 0.1."""
    from polypseg.evaluation import evaluate

    metrics, segment = {}, {"model": predictor.segmenter()}
    for noise in (0.0, 0.1):
        scores = evaluate(segment, samples, box_noise=noise, progress=False)["model"].mean
        metrics[f"iou@{noise:g}"], metrics[f"dice@{noise:g}"] = scores.iou, scores.dice
        metrics[f"precision@{noise:g}"], metrics[f"recall@{noise:g}"] = scores.precision, scores.recall
    return metrics


class SeededDataset(Dataset, ABC):
    """A training dataset whose random draws for an item (augmentations, boxes, negatives) are
    a function of (seed, epoch, item): a run draws the same whatever its data-loader workers
    and wherever it was resumed, and each epoch draws anew. The run sets `seed` and `epoch`
    before each epoch's batches."""

    seed = 0
    epoch = 0

    @abstractmethod
    def __len__(self) -> int: ...

    def draws(self, index: int, *pipelines: Any) -> np.random.Generator:
        """The item's generator; each albumentations pipeline given is seeded from it too."""
        rng = np.random.default_rng([self.seed, self.epoch, index])
        for pipeline in pipelines:
            pipeline.set_random_seed(int(rng.integers(2**32)))
        return rng


def init_distributed(device_name: str) -> tuple[torch.device, int, int]:
    """This process's device, the world size and its rank; joins the process group under
    torchrun (gloo on CPU, nccl on GPU)."""
    device = torch.device(resolve_device(device_name))
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


class TrainingRun(ABC):
    """One training run: position (epoch, batch, step), history, best score, and the loop every
    trainer shares: batches in an order fixed by (seed, epoch), bf16 autocast on CUDA, gradient
    accumulation, gradients averaged across torchrun processes, resumable snapshots in
    `last.pt` (optimiser and schedule too), validation after each epoch on rank 0, the best
    checkpoint (fp16) kept as `best.pt` by `selection` (`final.pt`, the last weights, where no
    validation kept one), and `log.csv` / `curves.png`.

    Subclasses set `self.model`, `self.data` and `self.optimizer` in `build`, and give the
    schedule, the loss of a batch, the validation and the checkpoint metadata."""

    loss_name = "loss"
    selection = "iou@0.1"  # the validation metric that picks the best checkpoint

    model: torch.nn.Module
    data: SeededDataset
    optimizer: torch.optim.Optimizer

    def __init__(self, config: Any) -> None:
        self.config = config
        self.device, self.world, self.rank = init_distributed(config.device)
        torch.manual_seed(config.seed)
        self.epoch, self.batch_in_epoch, self.step = 0, 0, 0
        self.best = -math.inf
        self.history: list[dict[str, Any]] = []
        self.out = Path(config.out)
        self.build()
        if len(self.data) < self.world:
            raise DatasetError(
                f"{len(self.data)} training items (polyps, or frames) for {self.world} process(es): "
                "nothing to train on (are the masks all empty, or --limit too small?)"
            )
        # Fewer samples than a batch (a small retraining set) train in one smaller batch, not in none.
        self.batch_size = max(1, min(config.batch_size, len(self.data) // self.world))
        batches = max(1, len(self.data) // (self.batch_size * self.world))
        # An optimiser step takes `accumulate` batches, all from one epoch: an epoch is whole
        # groups (the few batches left over are drawn in later epochs' shuffles).
        self.accumulate = max(1, min(config.accumulate, batches))
        if self.accumulate < config.accumulate:
            log.warning(
                "only %d batches an epoch: accumulating %d, not %d",
                batches,
                self.accumulate,
                config.accumulate,
            )
        self.steps_per_epoch = batches // self.accumulate
        self.batches_per_epoch = self.steps_per_epoch * self.accumulate
        # The schedule spans all epochs; --max-steps only stops early (a resumed run goes on).
        self.scheduler = self.make_scheduler(config.epochs * self.steps_per_epoch)
        if config.resume and (self.out / "last.pt").is_file():
            self._load(self.out / "last.pt")

    @abstractmethod
    def build(self) -> None:
        """Set self.model (on self.device), self.data and self.optimizer."""

    def make_scheduler(self, total_steps: int) -> torch.optim.lr_scheduler.LRScheduler:
        """One-cycle (10% warm-up to the config's rate, then cosine down); SAM2 runs differ."""
        return torch.optim.lr_scheduler.OneCycleLR(
            self.optimizer, max_lr=self.config.lr, total_steps=total_steps, pct_start=0.1
        )

    @abstractmethod
    def batch_loss(self, batch: Any) -> torch.Tensor: ...

    @abstractmethod
    def validate(self) -> dict[str, float]:
        """Validation metrics (empty without validation data); it may leave the model in
        evaluation mode (every epoch starts with `train_mode`)."""

    def train_mode(self) -> None:
        """The model as it learns; a run that keeps parts of it fixed overrides this."""
        self.model.train()

    @abstractmethod
    def metadata(self, metrics: dict[str, float] | None = None) -> dict[str, Any]: ...

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def training_record(self) -> dict[str, Any]:
        """What every checkpoint's metadata says of the run that made it."""
        config = {k: str(v) if isinstance(v, Path) else v for k, v in asdict(self.config).items()}
        return {"epochs_done": self.epoch, "command": self.config.command, "config": config}

    def _load(self, path: Path) -> None:
        state, _, extra = load_checkpoint(path)
        self.model.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in state.items()})
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
        position = {"epoch": self.epoch, "batch": self.batch_in_epoch, "step": self.step, "best": self.best}
        save_checkpoint(
            self.out / "last.pt",
            self.model.state_dict(),
            self.metadata(),
            optimizer=self.optimizer.state_dict(),
            scheduler=self.scheduler.state_dict(),
            position=position,
            history=self.history,
        )

    def batches(self) -> DataLoader:
        """This rank's batches of the current epoch, in an order and with draws fixed by (seed,
        epoch), from the batch where a resumed run stopped."""
        self.data.seed, self.data.epoch = self.config.seed, self.epoch
        order = np.random.default_rng([self.config.seed, self.epoch]).permutation(len(self.data))
        per_rank = order[self.rank :: self.world][: self.batches_per_epoch * self.batch_size]
        remaining = per_rank[self.batch_in_epoch * self.batch_size :]
        return DataLoader(
            torch.utils.data.Subset(self.data, remaining.tolist()),
            batch_size=self.batch_size,
            num_workers=self.config.workers,
            drop_last=True,
        )

    def fit(self) -> Path:
        """Train; the best checkpoint's path (`final.pt`'s where no validation kept one)."""
        c = self.config
        self.out.mkdir(parents=True, exist_ok=True)
        use_amp = self.device.type == "cuda"
        started, stop = time.time(), False
        while self.epoch < c.epochs and not stop:
            self.train_mode()
            losses: list[float] = []
            progress = tqdm(
                self.batches(),
                desc=f"epoch {self.epoch + 1}/{c.epochs}",
                initial=self.batch_in_epoch,
                total=self.batches_per_epoch,
                disable=not self.is_main,
            )
            for batch in progress:
                with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=use_amp):
                    loss = self.batch_loss(batch) / self.accumulate
                loss.backward()
                losses.append(loss.item() * self.accumulate)
                self.batch_in_epoch += 1
                if self.batch_in_epoch % self.accumulate == 0:
                    self._average_gradients()
                    self.optimizer.step()
                    self.optimizer.zero_grad(set_to_none=True)
                    self.scheduler.step()
                    self.step += 1
                    progress.set_postfix(loss=f"{np.mean(losses[-20:]):.3f}")
                    if self.step % c.save_every == 0:
                        self.save_last()
                    if c.max_steps is not None and self.step >= c.max_steps:
                        stop = True
                        break
            if stop and self.batch_in_epoch < self.batches_per_epoch:
                self.save_last()
                break
            self.epoch, self.batch_in_epoch = self.epoch + 1, 0
            if self.is_main:
                self._end_epoch(losses, started)
            self.save_last()
            if self.world > 1:
                dist.barrier()
        best, final = self.out / "best.pt", self.out / "final.pt"
        if self.is_main and not best.is_file():
            # No validation kept a best (--max-steps stopped the run within its first epoch, or
            # no epoch scored): the weights where it stopped, as best.pt would hold them; last.pt,
            # with the optimiser, is for --resume.
            self._save_weights(final)
        if self.world > 1:
            dist.barrier()
            dist.destroy_process_group()
        return best if best.is_file() else final

    def _save_weights(self, path: Path, metrics: dict[str, float] | None = None) -> None:
        """The model's weights in fp16 and its metadata: a file to serve, not to resume from."""
        half = {k: v.half() if v.is_floating_point() else v for k, v in self.model.state_dict().items()}
        save_checkpoint(path, half, self.metadata(metrics))

    def _average_gradients(self) -> None:
        """The mean of every process's gradients (a process without a gradient counts zero)."""
        if self.world == 1:
            return
        for parameter in self.model.parameters():
            if parameter.requires_grad:
                if parameter.grad is None:
                    parameter.grad = torch.zeros_like(parameter)
                dist.all_reduce(parameter.grad)
                parameter.grad /= self.world

    def selection_score(self, metrics: dict[str, float], train_loss: float) -> float:
        return metrics.get(self.selection, -train_loss)

    def _end_epoch(self, losses: list[float], started: float) -> None:
        metrics = self.validate()
        row: dict[str, float] = {
            "epoch": self.epoch,
            "step": self.step,
            "train_loss": float(np.mean(losses)) if losses else float("nan"),
            "lr": float(self.scheduler.get_last_lr()[0]),
            "seconds": round(time.time() - started, 1),
            **metrics,
        }
        self.history.append(row)
        log.info("epoch %d: %s", self.epoch, {k: round(v, 4) for k, v in row.items()})
        score = self.selection_score(metrics, row["train_loss"])
        if score > self.best:
            self.best = score
            self._save_weights(self.out / "best.pt", metrics)
        write_log(self.out, self.history, self.loss_name)
