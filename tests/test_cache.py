import threading
import time

import pytest

from polypseg.cache import EmbeddingCache


def test_lru_bounded_in_bytes():
    cache = EmbeddingCache(max_bytes=100, size_of=len)
    for key in "abc":
        cache.get_or_compute(key, lambda: b"x" * 40)
    assert len(cache) == 2 and cache.bytes == 80  # "a" evicted
    calls = []
    cache.get_or_compute("b", lambda: calls.append("b") or b"")
    cache.get_or_compute("a", lambda: calls.append("a") or b"y" * 40)
    assert calls == ["a"]  # "b" was a hit, "a" recomputed, evicting "c" (least recent)
    assert cache.get_or_compute("b", lambda: b"z") == b"x" * 40
    assert cache.hits == 2 and cache.misses == 4


def test_value_larger_than_cache_is_not_kept():
    cache = EmbeddingCache(max_bytes=10, size_of=len)
    assert cache.get_or_compute("k", lambda: b"x" * 11) == b"x" * 11
    assert len(cache) == 0


@pytest.mark.parametrize("max_bytes", [1000, 0])  # 0: POLYPSEG_CACHE_BYTES=0, nothing kept
def test_concurrent_requests_compute_once(max_bytes):
    cache = EmbeddingCache(max_bytes=max_bytes, size_of=len)
    runs = []

    def slow():
        runs.append(1)
        time.sleep(0.2)
        return b"features"

    results = []
    threads = [
        threading.Thread(target=lambda: results.append(cache.get_or_compute("img", slow))) for _ in range(8)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(runs) == 1 and results == [b"features"] * 8
    assert len(cache) == (1 if max_bytes else 0)


def test_failed_compute_lets_the_next_caller_retry():
    cache = EmbeddingCache(max_bytes=1000, size_of=len)

    def broken():
        raise RuntimeError("encoder failed")

    with pytest.raises(RuntimeError, match="encoder failed"):
        cache.get_or_compute("img", broken)
    assert cache.get_or_compute("img", lambda: b"ok") == b"ok"


def test_a_failed_compute_is_tried_again_by_one_of_its_waiters():
    cache = EmbeddingCache(max_bytes=1000, size_of=len)
    started, attempts, results = threading.Event(), [], []

    def flaky():
        attempts.append(1)
        if len(attempts) == 1:
            started.set()
            time.sleep(0.2)
            raise RuntimeError("encoder failed")
        return b"ok"

    def ask():
        try:
            results.append(cache.get_or_compute("img", flaky))
        except RuntimeError:
            results.append("failed")

    first = threading.Thread(target=ask)
    first.start()
    assert started.wait(10)
    waiters = [threading.Thread(target=ask) for _ in range(3)]
    for t in waiters:
        t.start()
    for t in [first, *waiters]:
        t.join()
    assert len(attempts) == 2 and sorted(results, key=str) == [b"ok"] * 3 + ["failed"]
