"""Where tracker states live between CVAT's calls: CVAT carries only a small token per tracked
shape; the state itself (a JPEG frame and colour model, or SAM2's memory bank) is kept under
that token with a time-to-live.

Redis (`CVAT_REDIS_HOST`, `CVAT_REDIS_PORT`, `CVAT_REDIS_PASSWORD`, as CVAT's own services take
them) lets any worker or replica continue any track. Without Redis, states stay in the
function process: correct only with a single worker (`maxWorkers: 1`) and one replica.
"""

from __future__ import annotations

import secrets
import threading
import time
from abc import ABC, abstractmethod
from collections import OrderedDict

# CVAT keeps a function's states at most 8 hours.
DEFAULT_TTL = 8 * 3600
# An old state is kept a little while after its successor is written: a retried call may need it.
SUPERSEDED_TTL = 120
KEY_PREFIX = "polypseg:track:"


class StateStore(ABC):
    def __init__(self, ttl: int = DEFAULT_TTL) -> None:
        self.ttl = ttl

    def put(self, data: bytes) -> str:
        """Store a state; its new token."""
        token = secrets.token_urlsafe(16)
        self._set(KEY_PREFIX + token, data, self.ttl)
        return token

    def get(self, token: str) -> bytes | None:
        """The state under `token`, or None if it is unknown or has expired."""
        if not isinstance(token, str) or not token or len(token) > 64:
            return None
        return self._get(KEY_PREFIX + token)

    def supersede(self, token: str) -> None:
        """The state under `token` has a successor: let it expire soon."""
        self._expire(KEY_PREFIX + token, SUPERSEDED_TTL)

    @abstractmethod
    def _set(self, key: str, data: bytes, ttl: int) -> None: ...

    @abstractmethod
    def _get(self, key: str) -> bytes | None: ...

    @abstractmethod
    def _expire(self, key: str, ttl: int) -> None: ...


class RedisStateStore(StateStore):
    def __init__(self, client: object, ttl: int = DEFAULT_TTL) -> None:
        super().__init__(ttl)
        self.client = client

    def _set(self, key: str, data: bytes, ttl: int) -> None:
        self.client.set(key, data, ex=ttl)  # type: ignore[attr-defined]

    def _get(self, key: str) -> bytes | None:
        value = self.client.get(key)  # type: ignore[attr-defined]
        return bytes(value) if value is not None else None

    def _expire(self, key: str, ttl: int) -> None:
        self.client.expire(key, ttl)  # type: ignore[attr-defined]


class MemoryStateStore(StateStore):
    """In-process, bounded by count; for a single worker only (see module doc)."""

    def __init__(self, ttl: int = DEFAULT_TTL, max_states: int = 256) -> None:
        super().__init__(ttl)
        self.max_states = max_states
        self._items: OrderedDict[str, tuple[float, bytes]] = OrderedDict()
        self._lock = threading.Lock()

    def _set(self, key: str, data: bytes, ttl: int) -> None:
        with self._lock:
            self._items[key] = (time.monotonic() + ttl, data)
            self._items.move_to_end(key)
            while len(self._items) > self.max_states:
                self._items.popitem(last=False)

    def _get(self, key: str) -> bytes | None:
        with self._lock:
            item = self._items.get(key)
            if item is None or item[0] < time.monotonic():
                self._items.pop(key, None)
                return None
            return item[1]

    def _expire(self, key: str, ttl: int) -> None:
        with self._lock:
            if key in self._items:
                self._items[key] = (time.monotonic() + ttl, self._items[key][1])


def state_store(host: str, port: int = 6379, password: str = "", ttl: int = DEFAULT_TTL) -> StateStore:
    """Redis at `host` when one is given (CVAT_REDIS_HOST), else the in-process store."""
    if not host:
        return MemoryStateStore(ttl)
    import redis

    client = redis.Redis(host=host, port=port, password=password or None, socket_timeout=10)
    return RedisStateStore(client, ttl)
