"""Model versions in MODEL_DIR, and the `current` pointer the servers follow.

    MODEL_DIR/versions/<id>/model.pt     the checkpoint (written before the version exists)
    MODEL_DIR/versions/<id>/info.json    its metadata, metrics, parent, and why it was made
    MODEL_DIR/current                    the id of the served version (replaced atomically)
    MODEL_DIR/history.jsonl              every switch of `current`, for rollback and audit

A version appears only once its files are complete (they are written in a temporary folder
that is then renamed), and `current` changes by an atomic rename, so a server reading the
store never sees a half-written model. `CurrentModel` gives servers the current version's
predictor and loads a new one when the pointer moves, without a restart; a request that
already holds the old predictor finishes with it.
"""

from __future__ import annotations

import datetime
import json
import logging
import os
import re
import shutil
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from polypseg.atomic import atomic_output, write_atomic
from polypseg.checkpoints import load_checkpoint
from polypseg.errors import PolypsegError
from polypseg.predictors.base import ImagePredictor

log = logging.getLogger(__name__)


class ModelStoreError(PolypsegError):
    pass


@dataclass(frozen=True)
class ModelVersion:
    id: str
    path: Path  # the checkpoint
    info: dict[str, Any]

    @property
    def metrics(self) -> dict[str, float]:
        return dict(self.info.get("metrics", {}))


class ModelStore:
    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)
        self.versions = self.root / "versions"

    def list_versions(self) -> list[ModelVersion]:
        if not self.versions.is_dir():
            return []
        # ".staging-*" folders are versions being added (or left half-added by a killed process).
        folders = [p for p in sorted(self.versions.iterdir()) if not p.name.startswith(".")]
        found = [self._version(p.name) for p in folders if (p / "info.json").is_file()]
        return [v for v in found if v is not None]

    def _version(self, version_id: str) -> ModelVersion | None:
        folder = self.versions / version_id
        try:
            info = json.loads((folder / "info.json").read_text())
        except (OSError, ValueError):
            return None
        return ModelVersion(version_id, folder / "model.pt", info)

    def get(self, version_id: str) -> ModelVersion:
        version = self._version(version_id)
        if version is None:
            known = ", ".join(v.id for v in self.list_versions()) or "none"
            raise ModelStoreError(f"{self.root}: no model version {version_id!r} (known: {known})")
        return version

    def current(self) -> ModelVersion | None:
        pointer = self.root / "current"
        try:
            version_id = pointer.read_text().strip()
        except OSError:
            return None
        return self._version(version_id) if version_id else None

    def add(
        self, checkpoint: Path, metrics: dict[str, float], note: str, parent: str | None = None
    ) -> ModelVersion:
        """Copy `checkpoint` in as a new version (not yet current)."""
        _, metadata, _ = load_checkpoint(checkpoint)  # refuse a file that is not a checkpoint
        stamp = datetime.datetime.now(datetime.UTC).strftime("%Y%m%dT%H%M%S")
        name = re.sub(r"[^A-Za-z0-9._-]+", "-", str(metadata.get("version", "model")))[:60]
        version_id = f"{stamp}-{name}"
        while (self.versions / version_id).exists():
            version_id += "x"
        self.versions.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(dir=self.versions, prefix=".staging-"))
        try:
            with open(checkpoint, "rb") as source, atomic_output(staging / "model.pt") as target:
                shutil.copyfileobj(source, target)  # synced to disk before the folder is renamed
            info = {
                "id": version_id,
                "created": stamp,
                "model_version": metadata.get("version"),
                "architecture": metadata.get("architecture"),
                "metrics": metrics,
                "parent": parent,
                "note": note,
            }
            (staging / "info.json").write_text(json.dumps(info, indent=1))
            staging.chmod(0o755)  # mkdtemp's 0700 would hide the version from a server run as another user
            os.replace(staging, self.versions / version_id)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        return self.get(version_id)

    def promote(self, version_id: str, reason: str) -> ModelVersion:
        version = self.get(version_id)
        previous = self.current()
        self.root.mkdir(parents=True, exist_ok=True)
        write_atomic(self.root / "current", f"{version_id}\n".encode())
        entry = {
            "at": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
            "current": version_id,
            "previous": previous.id if previous else None,
            "reason": reason,
        }
        with open(self.root / "history.jsonl", "a") as handle:
            handle.write(json.dumps(entry) + "\n")
        return version

    def rollback(self) -> ModelVersion:
        """Make the version that was current before the present one current again."""
        current = self.current()
        if current is None:
            raise ModelStoreError(f"{self.root}: no current model to roll back from")
        history = self._history()
        # The version that preceded the current one when it was promoted (rollbacks do not count,
        # so that rolling back twice goes two versions back, not back and forth).
        promotions = [
            h for h in history if h["current"] == current.id and not h["reason"].startswith("rollback")
        ]
        previous = promotions[-1]["previous"] if promotions else None
        if not previous:
            raise ModelStoreError(f"{current.id} has no earlier version to roll back to")
        return self.promote(previous, f"rollback from {current.id}")

    def _history(self) -> list[dict[str, Any]]:
        try:
            lines = (self.root / "history.jsonl").read_text().splitlines()
        except OSError:
            return []
        entries = []
        for line in lines:
            try:
                entries.append(json.loads(line))
            except ValueError:  # a line torn by a crash while it was appended
                log.warning("%s: skipping an unreadable history line", self.root / "history.jsonl")
        return entries


class CurrentModel:
    """The predictor of the store's current version (or `fallback` while there is none),
    reloaded when `current` changes; checked at most every `interval` seconds."""

    def __init__(
        self,
        store: ModelStore | None,
        load: Callable[[Path | None], ImagePredictor],
        fallback: Path | None = None,
        interval: float = 2.0,
    ) -> None:
        self.store, self.load, self.fallback, self.interval = store, load, fallback, interval
        self._lock = threading.Lock()
        self._checked = 0.0
        self._source: Path | None = self._wanted()
        try:
            self.predictor = load(self._source)
        except (PolypsegError, OSError):
            if self._source == fallback:
                raise
            # MODEL_DIR's current model is not one this server can run (e.g. a retrained U-Net
            # for a SAM2 function): serve the configured one until `current` changes.
            log.exception("could not load %s; serving %s", self._source, fallback or "the shipped model")
            self.predictor = load(fallback)

    def _wanted(self) -> Path | None:
        version = self.store.current() if self.store is not None else None
        return version.path if version is not None else self.fallback

    def get(self) -> ImagePredictor:
        """The predictor to answer one request with (hold on to it for the whole request)."""
        if self.store is None or time.monotonic() - self._checked < self.interval:
            return self.predictor
        if not self._lock.acquire(blocking=False):
            return self.predictor  # another request is loading the new model: this one is not held up
        try:
            self._checked = time.monotonic()
            wanted = self._wanted()
            if wanted != self._source:
                try:
                    self.predictor, self._source = self.load(wanted), wanted
                except (PolypsegError, OSError):  # keep serving the model that works
                    log.exception("could not load %s; keeping %s", wanted, self._source)
                    self._source = wanted  # do not retry on every request
        finally:
            self._lock.release()
        return self.predictor
