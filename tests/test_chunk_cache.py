"""The in-memory chunk cache: bounded, shared fetches, failures never cached."""

from __future__ import annotations

import threading
import time

import pytest

from castore_client.chunk_cache import ENTRY_OVERHEAD, ChunkCache
from castore_client.digest import B3Digest


def d(n: int) -> B3Digest:
    return B3Digest(bytes([n]) * 32)


def test_hit_after_miss() -> None:
    cache = ChunkCache(1000)
    calls = []
    for _ in range(3):
        assert cache.get(d(1), lambda: calls.append(1) or b"abc") == b"abc"
    assert calls == [1]
    assert (cache.hits, cache.misses) == (2, 1)


def test_bounded_by_bytes_least_recent_first() -> None:
    entry = 100 + ENTRY_OVERHEAD  # each entry costs its bytes and a fixed overhead
    cache = ChunkCache(2 * entry + 50)
    for n in range(3):
        cache.get(d(n), lambda: b"x" * 100)
    assert d(0) not in cache and d(1) in cache and d(2) in cache
    assert cache.size == 2 * entry
    cache.get(d(1), lambda: b"")  # touch 1, so 2 is now the oldest
    cache.get(d(3), lambda: b"y" * 100)
    assert d(2) not in cache and d(1) in cache


def test_failures_are_not_cached() -> None:
    cache = ChunkCache(1000)

    def boom() -> bytes:
        raise ValueError("corrupt")

    with pytest.raises(ValueError):
        cache.get(d(1), boom)
    assert cache.get(d(1), lambda: b"ok") == b"ok"


def test_concurrent_requests_share_one_fetch() -> None:
    cache = ChunkCache(1000)
    fetches = 0
    started = threading.Event()

    def slow() -> bytes:
        nonlocal fetches
        fetches += 1
        started.set()
        time.sleep(0.2)
        return b"data"

    results = []
    threads = [threading.Thread(target=lambda: results.append(cache.get(d(7), slow)))]
    threads[0].start()
    started.wait(5)
    threads += [
        threading.Thread(target=lambda: results.append(cache.get(d(7), slow))) for _ in range(7)
    ]
    for t in threads[1:]:
        t.start()
    for t in threads:
        t.join(5)
    assert fetches == 1
    assert results == [b"data"] * 8


def test_tiny_entries_count_their_overhead() -> None:
    """A budget of 1 MiB holds far fewer than 1 MiB / 40 entries of 40 bytes: the memory an
    entry takes is mostly not its data."""
    cache = ChunkCache(1 << 20)
    for n in range(30_000):
        cache.put(B3Digest(n.to_bytes(32, "little")), b"%040d" % n)
    assert len(cache) < (1 << 20) // 256
    assert cache.size <= 1 << 20
