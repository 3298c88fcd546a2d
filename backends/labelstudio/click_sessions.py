"""Click sessions: the box and the clicks since it, per task, remembered between requests.

Label Studio 1.23.2 sends each smart region on its own: after a smart box, a smart keypoint
reaches `/predict` with `params.context.result` holding only that keypoint (seen in the
labelling page; `ml/api.py` `MLBackendInteractiveAnnotating` forwards the page's context as
it is). A click model needs the box and every click so far, so the backend keeps them here.

The request identifies the task (`tasks[0].id`, unique in one Label Studio) but not the user
(only the user's drafts, when some were saved), so a session is per task and image. Sessions
live in the memory of one backend process: with `--workers N` a click may reach a process
that never saw the box, and is then answered as a click alone (for a U-Net: a 422 asking to
draw the box again).
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Hashable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from backends.request_errors import RequestError
from polypseg.clicks import MAX_CLICKS
from polypseg.prompts import Box, Point, Prompt


@dataclass(frozen=True)
class ClickSession:
    """The last box drawn on a task and the clicks made since, in order."""

    box: Box
    points: tuple[Point, ...]
    touched: float  # the clock's time of the last request that used it
    anchored: bool = False  # a box the annotator drew (not one the tracker found) on a clip's page
    written: int = 0  # when it was remembered, in ClickSessions.stamp()'s count


class ClickSessions:
    """A bounded, thread-safe LRU of click sessions, each forgotten `ttl_s` after its last use."""

    def __init__(
        self, max_sessions: int = 4096, ttl_s: float = 900.0, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.max_sessions = max_sessions
        self.ttl_s = ttl_s
        self._clock = clock
        self._sessions: OrderedDict[Hashable, ClickSession] = OrderedDict()
        self._lock = threading.Lock()
        self._held: dict[Hashable, tuple[threading.Lock, list[int]]] = {}  # key -> (lock, [holders])
        self._writes = 0  # sessions remembered so far, the stamp of the latest

    def __len__(self) -> int:
        with self._lock:
            return len(self._sessions)

    @contextmanager
    def hold(self, key: Hashable) -> Iterator[None]:
        """Session `key` for one request at a time, from reading it to remembering the answer;
        other sessions go on meanwhile."""
        with self._lock:
            lock, holders = self._held.setdefault(key, (threading.Lock(), [0]))
            holders[0] += 1
        try:
            with lock:
                yield
        finally:
            with self._lock:
                holders[0] -= 1
                if not holders[0]:
                    del self._held[key]

    def _live(self, key: Hashable) -> ClickSession | None:
        session = self._sessions.get(key)
        if session is not None and self._clock() - session.touched > self.ttl_s:
            del self._sessions[key]
            return None
        return session

    def prompt_for(self, key: Hashable, prompt: Prompt) -> Prompt:
        """The prompt to answer `prompt` with: a box starts afresh; clicks alone on a task with
        a session get its box and its clicks before them; else `prompt` as it is."""
        if prompt.box is not None or not prompt.points:
            return prompt
        with self._lock:
            session = self._live(key)
        if session is None:
            return prompt
        points = session.points + prompt.points
        if len(points) > MAX_CLICKS:
            raise RequestError(
                f"{len(points)} clicks since the box; at most {MAX_CLICKS}: draw the box again to start over"
            )
        return Prompt(box=session.box, points=points)

    def anchor(self, key: Hashable) -> Box | None:
        """The box the annotator drew in session `key`, if it is live and was drawn (not tracked)."""
        with self._lock:
            session = self._live(key)
        return session.box if session is not None and session.anchored else None

    def stamp(self) -> int:
        """How many sessions have been remembered so far: `remember(..., unless_since=)` takes
        it to leave alone a session remembered after it."""
        with self._lock:
            return self._writes

    def remember(
        self, key: Hashable, prompt: Prompt, anchored: bool = False, unless_since: int | None = None
    ) -> None:
        """Keep an answered prompt that has a box as the task's session (after the model
        answered it, so a refused click does not stay in it); `anchored`: the annotator drew
        the box on a clip's page (the track runs from it). With `unless_since` (a `stamp()`),
        a session remembered after that stamp stays as it is: a box tracked onto a page never
        replaces the clicks made there while the track ran."""
        if prompt.box is None:
            return
        with self._lock:
            current = self._live(key)
            if unless_since is not None and current is not None and current.written > unless_since:
                return
            self._writes += 1
            self._sessions[key] = ClickSession(
                prompt.box, prompt.points, self._clock(), anchored, self._writes
            )
            self._sessions.move_to_end(key)
            while len(self._sessions) > self.max_sessions:
                self._sessions.popitem(last=False)
