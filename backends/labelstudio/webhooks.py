"""Label Studio's annotation webhooks, handed to the retraining hook off the request thread."""

from __future__ import annotations

import fcntl
import json
import logging
import os
import queue
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

TRAIN_EVENTS = ("ANNOTATION_CREATED", "ANNOTATION_UPDATED", "ANNOTATION_DELETED", "START_TRAINING")

Handler = Callable[[str, dict[str, Any]], None]


def project_id(payload: dict[str, Any]) -> int | None:
    """The project an event is about, as Label Studio 1.23.2 names it
    (`label_studio/ml/api_connector.py`): a webhook's serialised project (`{"id": 3, ...}`), or
    the older `/train` request's project uid (`"3.1732870000"`, the id and the project's
    creation time); None for anything else."""
    project = payload.get("project")
    if isinstance(project, dict):
        project = project.get("id")
    if isinstance(project, str):
        head = project.split(".", 1)[0]
        project = int(head) if head.isdigit() else None
    return project if isinstance(project, int) and not isinstance(project, bool) else None


def log_event(event: str, payload: dict[str, Any]) -> None:
    """The default handler until retraining is configured: say what arrived."""
    annotation = payload.get("annotation")
    annotation = annotation.get("id") if isinstance(annotation, dict) else None
    log.info("webhook %s: project %s, annotation %s", event, project_id(payload), annotation)


class WebhookQueue:
    """Events in arrival order, handled one at a time by a daemon thread, none dropped: the
    request that brought one returns at once."""

    def __init__(self, handler: Handler = log_event) -> None:
        self.handler = handler
        self.received = 0
        self.handled = 0
        self._queue: queue.Queue[tuple[str, dict[str, Any]]] = queue.Queue()
        self._thread = threading.Thread(target=self._work, name="polypseg-webhooks", daemon=True)
        self._thread.start()

    def put(self, event: str, payload: dict[str, Any]) -> None:
        self.received += 1
        self._queue.put((event, payload))

    def join(self) -> None:
        """Wait until every event so far has been handled."""
        self._queue.join()

    def _work(self) -> None:
        while True:
            event, payload = self._queue.get()
            try:
                self.handler(event, payload)
            except Exception:
                log.exception("webhook %s: the handler failed", event)
            finally:
                self.handled += 1
                self._queue.task_done()


class EventCounter:
    """Annotation events per project since its last retrain, in a file that every worker
    process of the backend counts into (under an OS record lock), so that `--workers N` does
    not make a retrain wait for N times as many events. The counts are soft state: an
    unreadable file counts from zero."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def add(self, project: int, threshold: int) -> bool:
        """Count one event; True, and the count back to zero, when it reaches `threshold`."""
        return self._update(project, lambda count: 0 if count + 1 >= threshold else count + 1) == 0

    def reset(self, project: int) -> None:
        self._update(project, lambda count: 0)

    def _update(self, project: int, change: Callable[[int], int]) -> int:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a+") as handle:
            fcntl.lockf(handle, fcntl.LOCK_EX)  # released when the file closes
            handle.seek(0)
            try:
                counts = json.loads(handle.read() or "{}")
            except ValueError:
                counts = {}
            counts[str(project)] = new = change(int(counts.get(str(project), 0)))
            handle.seek(0)
            handle.truncate()
            handle.write(json.dumps(counts))
        return new


class RetrainTrigger:
    """Starts `polypseg retrain` for a project (a separate process, so that training never slows
    the backend) after `after` annotation events there, counted across the backend's worker
    processes, or at once on START_TRAINING. The retrain's own lock runs one at a time and
    queues a request made while one runs."""

    def __init__(
        self,
        model_dir: Path,
        dataset: Path,
        label_studio_url: str,
        api_key: str,
        after: int = 20,
        extra_args: tuple[str, ...] = (),
    ) -> None:
        self.model_dir, self.dataset = model_dir, dataset
        self.label_studio_url, self.api_key, self.after = label_studio_url, api_key, after
        self.extra_args = extra_args
        self.counter = EventCounter(model_dir / "retrain-events.json")
        self.started: list[subprocess.Popen[bytes]] = []

    def __call__(self, event: str, payload: dict[str, Any]) -> None:
        log_event(event, payload)
        project = project_id(payload)
        if project is None:
            log.warning("webhook %s names no project; nothing to retrain", event)
            return
        if event == "START_TRAINING":  # the user asked: retrain even on unchanged labels
            self.counter.reset(project)
            self.start(project, "--force")
        elif self.after and self.counter.add(project, self.after):
            self.start(project)

    def start(self, project: int, *flags: str) -> None:
        self.started = [p for p in self.started if p.poll() is None]
        command = [
            sys.executable, "-m", "polypseg.cli", "retrain",
            "--model-dir", str(self.model_dir), "--dataset", str(self.dataset),
            "--label-studio-url", self.label_studio_url, "--label-studio-project", str(project),
            *flags, *self.extra_args,
        ]  # fmt: skip
        env = {**os.environ, "LABEL_STUDIO_API_KEY": self.api_key}
        self.model_dir.mkdir(parents=True, exist_ok=True)
        with open(self.model_dir / "retrain.log", "ab") as out:
            self.started.append(subprocess.Popen(command, env=env, stdout=out, stderr=subprocess.STDOUT))
        log.info("retrain of project %s started (log: %s)", project, self.model_dir / "retrain.log")
