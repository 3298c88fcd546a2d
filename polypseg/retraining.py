"""Retrain on the dataset store and promote only a model that is not worse.

One retrain at a time per MODEL_DIR (an OS record lock, released even if the process is killed);
a retrain asked for while one runs brings its own labels in (once the running round lets go
of the store), is recorded with its --force, and run right after it, not lost. Each round
pulls and trains under the dataset store's lock too, so no other process changes the store
while a round reads it, and trains on exactly the images the store's index lists. Training
writes only into MODEL_DIR/runs/<time>/; the candidate becomes a version only once it is
complete, and `current` moves only after the candidate has been scored against the current
model on the store's validation images (box noise 0.1, fixed seed), and only if it is not worse
and the served model is still the one it started from. Killed at any point, the served model
and the dataset store are as they were.
"""

from __future__ import annotations

import datetime
import fcntl
import logging
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from polypseg.atomic import write_atomic
from polypseg.checkpoints import load_checkpoint
from polypseg.data_store import DatasetStore, store_lock
from polypseg.datasets import PolypSample
from polypseg.errors import ModelError, PolypsegError
from polypseg.evaluation import evaluate
from polypseg.families import family_of
from polypseg.model_store import ModelStore, ModelVersion
from polypseg.predictors import build_predictor, default_checkpoint
from polypseg.predictors.registry import resolve_device

log = logging.getLogger(__name__)


@dataclass
class RetrainSettings:
    model_dir: Path
    dataset: Path
    epochs: int = 3
    lr: float = 5e-4
    batch_size: int = 8
    tolerance: float = 0.0  # promote when candidate IoU >= current IoU - tolerance: not worse
    max_steps: int | None = None
    device: str = "auto"
    seed: int = 0
    force: bool = False  # retrain even if no label changed since the last retrain
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class RetrainResult:
    status: str  # promoted, kept, skipped, queued
    reason: str
    version: str | None = None
    metrics: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class Pending:
    """Retrain requests recorded while a retrain ran: whether any came, and whether one asked
    for a retrain even without new labels (--force, Label Studio's "Start training")."""

    asked: bool = False
    force: bool = False


class RetrainLock:
    """An exclusive lock on MODEL_DIR/retrain.lock, and the requests recorded beside it
    (MODEL_DIR/retrain.pending) for its holder to run."""

    def __init__(self, model_dir: Path) -> None:
        model_dir.mkdir(parents=True, exist_ok=True)
        self.path, self.pending = model_dir / "retrain.lock", model_dir / "retrain.pending"
        self._handle: Any = None

    def acquire(self) -> bool:
        self._handle = open(self.path, "a")  # noqa: SIM115 (held open while locked)
        try:
            # A POSIX record lock: it belongs to this process alone (forked data-loader workers
            # do not inherit it) and dies with it, so a killed retrain never leaves it held.
            fcntl.lockf(self._handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            self._handle.close()
            self._handle = None
            return False
        return True

    def request(self, force: bool) -> None:
        """Record a request for the holder (one line each, appended: none is lost)."""
        with open(self.pending, "a") as pending:
            pending.write("force\n" if force else "retrain\n")

    def take_pending(self) -> Pending:
        """The requests recorded so far, taken (renamed away first, so that one recorded while
        they are read waits for the next look)."""
        taken = self.pending.with_name(self.pending.name + ".taken")
        try:
            os.replace(self.pending, taken)
        except FileNotFoundError:
            return Pending()
        lines = taken.read_text().split()
        taken.unlink(missing_ok=True)
        return Pending(asked=True, force="force" in lines)

    def release(self) -> None:
        if self._handle is not None:
            fcntl.lockf(self._handle, fcntl.LOCK_UN)
            self._handle.close()
            self._handle = None


Pull = Callable[[], bool]  # pulls the label sources into the store; False if one could not be read


def retrain(settings: RetrainSettings, pull: Pull | None = None, train_anyway: bool = False) -> RetrainResult:
    """Pull, then retrain (again, while requests arrive); the last round's result.

    A request that finds a retrain running brings its own labels in (its project or task,
    once that round lets go of the store), records itself with its --force and returns
    "queued": the running retrain trains once more, on them."""
    lock = RetrainLock(settings.model_dir)
    if not lock.acquire():
        if pull is not None:
            with store_lock(settings.dataset):
                pull()
        lock.request(settings.force)
        if not lock.acquire():  # still running: its next round is this request's
            return RetrainResult("queued", "a retrain is running; it trains once more for this request")
    while True:
        try:
            result = _rounds(settings, lock, pull, train_anyway)
        finally:
            lock.release()
        # A request made after the last round's look at `pending` but before the release found
        # the lock held and only recorded itself: run it, unless another process took the lock.
        if not lock.pending.exists() or not lock.acquire():
            return result


def _rounds(
    settings: RetrainSettings, lock: RetrainLock, pull: Pull | None, train_anyway: bool
) -> RetrainResult:
    """Rounds while requests arrive: each pulls afresh and trains, holding the store's lock
    throughout, so that no other process's pull changes the files it trains on."""
    while True:
        # This round (and its pull) covers the requests made before it started.
        asked = lock.take_pending()
        this_round = replace(settings, force=True) if asked.force else settings
        with store_lock(settings.dataset):
            if pull is None or pull() or train_anyway:
                result = _retrain_once(this_round)
            else:
                result = RetrainResult("skipped", "a source could not be read; the served model is unchanged")
                log.error("no retrain this round: %s (--train-anyway trains all the same)", result.reason)
        log.info("retrain %s: %s", result.status, result.reason)
        if not lock.pending.exists():
            return result


def _iou(checkpoint: Path, samples: list[Any], device: str, seed: int) -> float:
    predictor = build_predictor(None, checkpoint, device)
    scores = evaluate({"m": predictor.segmenter()}, samples, box_noise=0.1, seed=seed, progress=False)
    return float(scores["m"].mean.iou)


def _registered_current(store: ModelStore) -> ModelVersion:
    """The store's current version; the shipped (or configured) model, registered, if none yet,
    so that a rollback can always return to it."""
    current = store.current()
    if current is None:
        current = store.add(default_checkpoint(), {}, "the model served before the first retrain")
        store.promote(current.id, "first retrain: the starting model")
    return current


def _link_samples(samples: list[PolypSample], folder: Path) -> tuple[Path, Path]:
    """Image and mask folders of links to exactly these samples, for the trainers (which read
    whole folders): a file that the store's index does not list (left by a pull killed half-way)
    is never trained on. Each link is named by its sample (the store's key), as the validation
    list names them, whatever the store's own file names. Symbolic links, as the store and
    MODEL_DIR may be different volumes."""
    shutil.rmtree(folder, ignore_errors=True)  # a round started within the same second
    images, masks = folder / "images", folder / "masks"
    images.mkdir(parents=True)
    masks.mkdir()
    for sample in samples:
        (images / f"{sample.name}{sample.image_path.suffix}").symlink_to(sample.image_path.resolve())
        (masks / f"{sample.name}{sample.mask_path.suffix}").symlink_to(sample.mask_path.resolve())
    return images, masks


def _train(
    base: Path, settings: RetrainSettings, out: Path, samples: list[PolypSample], val_list: Path
) -> Path:
    state, metadata, _ = load_checkpoint(base)
    images, masks = _link_samples(samples, out / "data")
    common: dict[str, Any] = {
        "images": images,
        "masks": masks,
        "val_list": val_list,
        "out": out,
        "epochs": settings.epochs,
        "lr": settings.lr,
        "batch_size": settings.batch_size,
        "max_steps": settings.max_steps,
        "device": settings.device,
        "seed": settings.seed,
        "command": f"polypseg retrain (from {base.name})",
    }
    found = family_of(state, metadata, base)
    if found.retrain is None:
        raise ModelError(f"{base}: a {found.name} model cannot be retrained")
    return found.retrain(base, metadata, common)


def _retrain_once(settings: RetrainSettings) -> RetrainResult:
    data = DatasetStore(settings.dataset)
    train, val = data.samples("train"), data.samples("val")
    if not train or not val:
        return RetrainResult(
            "skipped",
            f"the dataset has {len(train)} training and {len(val)} validation images; need one of each",
        )
    last_data = settings.model_dir / "last-retrain-data.txt"
    fingerprint = data.fingerprint()
    if not settings.force and last_data.is_file() and last_data.read_text().strip() == fingerprint:
        return RetrainResult("skipped", "no label added, changed or removed since the last retrain (--force)")
    result = _train_and_compare(settings, train, val)
    if result.status in ("promoted", "kept"):
        write_atomic(last_data, fingerprint.encode())
    return result


def _drop_checkpoints(runs: Path) -> None:
    """Delete the training runs' checkpoints (snapshots with optimiser state, several times the
    model's size each), keeping their logs: a retrain every day must not fill the disk."""
    for path in runs.glob("*/*.pt"):
        path.unlink(missing_ok=True)


def _train_and_compare(settings: RetrainSettings, train: list[Any], val: list[Any]) -> RetrainResult:
    store = ModelStore(settings.model_dir)
    current = _registered_current(store)
    runs = settings.model_dir / "runs"
    _drop_checkpoints(runs)  # of a run killed before it could (one retrain runs at a time)
    out = runs / datetime.datetime.now(datetime.UTC).strftime("%Y%m%dT%H%M%S")
    out.mkdir(parents=True, exist_ok=True)
    val_list = out / "val.txt"
    val_list.write_text("\n".join(s.name for s in val) + "\n")
    candidate = _train(current.path, settings, out, train + val, val_list)
    if not candidate.is_file():
        return RetrainResult("skipped", f"training wrote no checkpoint in {out}")
    device = resolve_device(settings.device)
    new_iou = _iou(candidate, val, device, settings.seed)
    old_iou = _iou(current.path, val, device, settings.seed)
    metrics = {
        "iou": round(new_iou, 4),
        "current_iou": round(old_iou, 4),
        "train": len(train),
        "val": len(val),
    }
    version = store.add(candidate, metrics, f"retrained on {len(train)} images from {current.id}", current.id)
    _drop_checkpoints(runs)  # the candidate is a version now; the run keeps its log
    if new_iou < old_iou - settings.tolerance:
        return RetrainResult(
            "kept",
            f"candidate IoU {new_iou:.4f} < current {old_iou:.4f} - {settings.tolerance}: {current.id} stays",
            version.id,
            metrics,
        )
    served = store.current()  # an admin may have promoted or rolled back meanwhile
    if served is None or served.id != current.id:
        return RetrainResult(
            "kept",
            f"the served model changed during training (from {current.id} to "
            f"{served.id if served else 'none'}): the candidate, compared with {current.id}, is not "
            "promoted (--force retrains from the served one)",
            version.id,
            metrics,
        )
    store.promote(version.id, f"IoU {new_iou:.4f} vs {old_iou:.4f} on {len(val)} validation images")
    return RetrainResult(
        "promoted", f"IoU {new_iou:.4f} >= {old_iou:.4f} - {settings.tolerance}", version.id, metrics
    )


def retrain_every(
    settings: RetrainSettings,
    every: float | None,
    pull: Pull,
    train_anyway: bool = False,
    rounds: int | None = None,
) -> None:
    """Pull, then retrain; with `every` (seconds), again and again, `rounds` times or for ever.
    A round that fails (a source unreadable, a broken dataset, the GPU out of memory) is
    logged and the schedule goes on: the served model stays as it was."""
    done = 0
    while True:
        try:
            result = retrain(settings, pull, train_anyway)
            version = f" ({result.version})" if result.version else ""
            log.info("%s: %s%s", result.status, result.reason, version)
        except Exception:
            if every is None:
                raise
            log.exception("this retrain round failed; the served model is unchanged")
        done += 1
        if every is None or (rounds is not None and done >= rounds):
            return
        time.sleep(every)


def parse_interval(text: str) -> float:
    """Seconds in "30m", "24h", "2d" or a plain number of seconds."""
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    cleaned = text.strip().lower()
    try:
        seconds = float(cleaned[:-1]) * units[cleaned[-1]] if cleaned[-1] in units else float(cleaned)
    except (ValueError, IndexError):
        seconds = 0
    # At most a year: a sleep beyond the platform's clock (1e300 s, inf) fails after a round.
    if not 0 < seconds <= 366 * 86400:
        raise PolypsegError(f"{text!r} is not an interval like 30m, 24h or 2d (at most a year)")
    return seconds
