"""How many requests run the model at once in one backend process, and in what order the rest wait.

Eight annotators on a small CPU send boxes in bursts. Run all at once, their requests compete
for the same cores and every one of them gets slower; queued, each runs at full speed in turn.
`ModelSlots` lets at most `limit` requests run the model, hands a freed slot to the longest
waiting request (first come, first served: no thundering herd of waiters racing for it), and
answers a request that waited longer than `queue_timeout` with "busy, retry after N s" instead
of letting it run into the client's time-out.

Settings (environment, read once per worker process):
- POLYPSEG_MODEL_CONCURRENCY: requests running the model at once (default: this process's
  share of the CPU cores, see `default_concurrency`).
- POLYPSEG_QUEUE_TIMEOUT: seconds a request may wait for a slot before a 503 (default 30: well
  inside the 100 s Label Studio 1.23.2 gives a prediction, ML_TIMEOUT_PREDICT in
  ml/api_connector.py, so the annotator sees "busy" rather than a time-out).
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
import threading
import time
from collections import deque
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

from polypseg.environment import Environment

log = logging.getLogger(__name__)

# Set by `serve` (`for_worker_processes`) for its worker processes, so that each takes its
# share of the cores.
WORKER_PROCESSES_VARIABLE = "POLYPSEG_WORKER_PROCESSES"
QUEUE_TIMEOUT = 30.0  # seconds


class ModelBusy(Exception):
    """No slot came free within the queue time-out; the client should retry after `retry_after` s."""

    def __init__(self, waited: float, retry_after: int) -> None:
        super().__init__(
            f"the model is busy: waited {waited:.1f} s for a free slot; retry in {retry_after} s"
        )
        self.retry_after = retry_after


def cores_available() -> int:
    """CPU cores this process may run on (a container's CPU set, not the host's count)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def default_concurrency(cores: int, workers: int) -> int:
    """Requests at once per process: the process's share of the cores. Each request then gets
    (about) one intra-op thread per slot (see `threads_per_request`)."""
    return max(1, cores // max(1, workers))


def threads_per_request(cores: int, workers: int, concurrency: int) -> int:
    """torch's intra-op threads, so that workers x concurrency x threads is about the core
    count: each running request calling a pool of all the cores would ask for N times as many
    threads as there are cores, and they would slow each other down (oversubscription)."""
    return max(1, cores // (max(1, workers) * concurrency))


@dataclass(frozen=True)
class ConcurrencySettings:
    limit: int
    queue_timeout: float
    torch_threads: int

    @classmethod
    def from_env(cls) -> ConcurrencySettings:
        cores, env = cores_available(), Environment()
        workers = env.integer(WORKER_PROCESSES_VARIABLE, 1, minimum=1)
        limit = env.integer("POLYPSEG_MODEL_CONCURRENCY", default_concurrency(cores, workers), minimum=1)
        timeout = env.number("POLYPSEG_QUEUE_TIMEOUT", QUEUE_TIMEOUT)
        return cls(limit, timeout, threads_per_request(cores, workers, limit))


def for_worker_processes(workers: int) -> ConcurrencySettings:
    """Record `workers` for every worker process to read (each takes its share of the cores),
    and the settings that follow from it (a bad setting is a SettingsError here)."""
    os.environ[WORKER_PROCESSES_VARIABLE] = str(max(1, workers))
    return ConcurrencySettings.from_env()


def apply_torch_threads(threads: int) -> None:
    """torch's intra-op pool size for this process (every thread that runs the model takes it up)."""
    import torch

    torch.set_num_threads(threads)


class _Turn:
    """A waiting request: its event loop, what wakes it, and whether a slot was handed to it."""

    def __init__(self) -> None:
        self.loop = asyncio.get_running_loop()
        self.woken: asyncio.Future[None] = self.loop.create_future()
        self.granted = False

    def wake(self) -> None:
        if not self.woken.done():
            self.woken.set_result(None)


class ModelSlots:
    """At most `limit` holders at once; waiters served in arrival order; a wait longer than
    `queue_timeout` raises `ModelBusy`. Safe across threads and event loops (uvicorn runs one
    loop per process; FastAPI's test client one per request)."""

    def __init__(self, limit: int, queue_timeout: float) -> None:
        if limit < 1:
            raise ValueError("limit must be at least 1")
        self.limit, self.queue_timeout = limit, queue_timeout
        self.running = 0
        self.refused = 0
        self._lock = threading.Lock()
        self._waiters: deque[_Turn] = deque()
        self._seconds_per_run = 0.0  # moving average, for Retry-After

    @property
    def waiting(self) -> int:
        return len(self._waiters)

    @asynccontextmanager
    async def slot(self) -> AsyncIterator[None]:
        await self._acquire()
        started = time.monotonic()
        try:
            yield
        finally:
            elapsed = time.monotonic() - started
            with self._lock:
                previous = self._seconds_per_run
                self._seconds_per_run = 0.8 * previous + 0.2 * elapsed if previous else elapsed
                self._release()

    async def _acquire(self) -> None:
        with self._lock:
            if self.running < self.limit and not self._waiters:
                self.running += 1
                return
            turn = _Turn()
            self._waiters.append(turn)
        queued = time.monotonic()
        try:
            await asyncio.wait({turn.woken}, timeout=self.queue_timeout)
        except asyncio.CancelledError:  # the client went away while waiting
            with self._lock:
                self._leave(turn)
            raise
        with self._lock:
            # `granted`, not the wake-up, decides: a slot handed over just as the wait timed out
            # is taken rather than lost.
            if turn.granted:
                return  # `running` already counts it (see `_release`)
            self._leave(turn)
            self.refused += 1
            retry_after = self._retry_after()
        raise ModelBusy(time.monotonic() - queued, retry_after)

    def _leave(self, turn: _Turn) -> None:
        """`turn` gives up its place (under the lock); a slot it was handed passes on."""
        if turn.granted:
            self._release()
        else:
            self._waiters.remove(turn)

    def _release(self) -> None:
        """One holder is done (under the lock). The slot passes straight to the first waiter,
        so no newcomer can take it in between."""
        if self._waiters:
            turn = self._waiters.popleft()
            turn.granted = True
            turn.loop.call_soon_threadsafe(turn.wake)
        else:
            self.running -= 1

    def _retry_after(self) -> int:
        """Whole seconds until the queue ahead of a new request has probably drained."""
        ahead = len(self._waiters) + self.running
        return max(1, math.ceil(ahead * self._seconds_per_run / self.limit))
