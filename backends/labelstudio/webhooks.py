"""Label Studio's annotation webhooks, handed to the retraining hook off the request thread."""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable
from typing import Any

log = logging.getLogger(__name__)

TRAIN_EVENTS = ("ANNOTATION_CREATED", "ANNOTATION_UPDATED", "ANNOTATION_DELETED", "START_TRAINING")

Handler = Callable[[str, dict[str, Any]], None]


def log_event(event: str, payload: dict[str, Any]) -> None:
    """The default handler until retraining is configured: say what arrived."""
    project = (payload.get("project") or {}).get("id")
    annotation = (payload.get("annotation") or {}).get("id")
    log.info("webhook %s: project %s, annotation %s", event, project, annotation)


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
