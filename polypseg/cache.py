"""A thread-safe LRU of prepared images, bounded in bytes.

Keyed by (model version, image digest): a second prompt on the same image costs only the
decoder. Two threads asking for the same missing key compute it once.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable
from typing import Generic, TypeVar

V = TypeVar("V")


class _Pending(Generic[V]):
    """A value being computed: its waiters take it from here even when the cache keeps none."""

    def __init__(self) -> None:
        self.done = threading.Event()
        self.value: V | None = None
        self.computed = False  # False once done: the computation failed, and a waiter tries again


class EmbeddingCache(Generic[V]):
    def __init__(self, max_bytes: int, size_of: Callable[[V], int]) -> None:
        self.max_bytes = max_bytes
        self._size_of = size_of
        self._entries: OrderedDict[Hashable, tuple[V, int]] = OrderedDict()
        self._pending: dict[Hashable, _Pending[V]] = {}
        self._lock = threading.Lock()
        self.bytes = 0
        self.hits = 0
        self.misses = 0

    def __len__(self) -> int:
        return len(self._entries)

    def get_or_compute(self, key: Hashable, compute: Callable[[], V]) -> V:
        while True:
            with self._lock:
                if key in self._entries:
                    self._entries.move_to_end(key)
                    self.hits += 1
                    return self._entries[key][0]
                waiting = self._pending.get(key)
                if waiting is None:
                    pending = self._pending[key] = _Pending[V]()
                    self.misses += 1
                    break
            waiting.done.wait()  # another thread computes it
            if waiting.computed:
                with self._lock:
                    self.hits += 1
                return waiting.value  # type: ignore[return-value]  # set with computed
            # it failed there: look again (and compute here, unless another waiter does)
        try:
            pending.value = compute()
            pending.computed = True
            self._store(key, pending.value)
            return pending.value
        finally:
            with self._lock:
                self._pending.pop(key).done.set()

    def get(self, key: Hashable) -> V | None:
        """The cached value, or None; computes nothing."""
        with self._lock:
            entry = self._entries.get(key)
            if entry is None:
                return None
            self._entries.move_to_end(key)
            self.hits += 1
            return entry[0]

    def put(self, key: Hashable, value: V) -> None:
        self._store(key, value)

    def _store(self, key: Hashable, value: V) -> None:
        size = self._size_of(value)
        with self._lock:
            if size > self.max_bytes:
                return  # larger than the whole cache: use it once, keep nothing
            if key in self._entries:
                self.bytes -= self._entries.pop(key)[1]
            self._entries[key] = (value, size)
            self.bytes += size
            while self.bytes > self.max_bytes:
                _, (_, evicted) = self._entries.popitem(last=False)
                self.bytes -= evicted

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
            self.bytes = 0
