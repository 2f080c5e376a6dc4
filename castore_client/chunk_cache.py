"""Verified chunks kept in memory, so repeated reads do not go back to the server.

Keys are digests and values are bytes that already matched them, so nothing in here can be
wrong, only missing. The cache is bounded in bytes (least recently used goes first), and
concurrent requests for the same digest share one fetch instead of downloading it twice.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable

from .digest import B3Digest
from .disk_cache import DiskChunkCache

ENTRY_OVERHEAD = 256
"""Bytes each entry costs beyond its data, counted against the budget: measured with
tracemalloc, 105 for the ordered dict's slot and 113 for the digest key, plus the bytes
object's header. Without it, 128 MiB of 40-byte files held about 1 GB."""


def _cost(value: bytes) -> int:
    return len(value) + ENTRY_OVERHEAD


class _Flight:
    def __init__(self) -> None:
        self.done = threading.Event()
        self.value: bytes | None = None
        self.error: BaseException | None = None


class ChunkCache:
    """Memory first, then (optionally) a shared cache on disk, then the fetch."""

    def __init__(self, max_bytes: int = 256 << 20, disk: DiskChunkCache | None = None) -> None:
        self.max_bytes = max_bytes
        self.disk = disk
        self._lock = threading.Lock()
        self._items: OrderedDict[B3Digest, bytes] = OrderedDict()
        self._size = 0
        self._flights: dict[B3Digest, _Flight] = {}
        self.hits = 0
        self.misses = 0

    def get(self, digest: B3Digest, fetch: Callable[[], bytes]) -> bytes:
        """The verified bytes for `digest`, from memory, disk or else `fetch` (which must return
        verified bytes or raise); concurrent calls for one digest share one fetch."""
        with self._lock:
            value = self._hit(digest)
            if value is not None:
                return value
            flight = self._flights.get(digest)
            leader = flight is None
            if flight is None:
                flight = self._flights[digest] = _Flight()
                self.misses += 1
        if not leader:
            flight.done.wait()
            if flight.error is not None:
                raise flight.error
            assert flight.value is not None
            return flight.value
        try:
            value = self.disk.get(digest) if self.disk is not None else None
            if value is None:
                value = bytes(fetch())
                if self.disk is not None:
                    self.disk.put(digest, value)
            flight.value = value
            self._insert(digest, value)
            return value
        except BaseException as exc:
            flight.error = exc
            raise
        finally:
            with self._lock:
                del self._flights[digest]
            flight.done.set()

    def peek(self, digest: B3Digest, *, disk: bool = False) -> bytes | None:
        """The bytes if they are cached, without ever fetching; a hit counts as a use.

        Memory only by default, which never blocks, so the filesystem may call it on its event
        loop; with `disk` the disk cache is asked too (blocking), and a hit there is kept in
        memory as well.
        """
        with self._lock:
            value = self._hit(digest)
        if value is None and disk and self.disk is not None:
            value = self.disk.get(digest)
            if value is not None:
                self._insert(digest, value)
        return value

    def _hit(self, digest: B3Digest) -> bytes | None:
        """The bytes in memory, counted as a use; the caller holds the lock."""
        value = self._items.get(digest)
        if value is not None:
            self._items.move_to_end(digest)
            self.hits += 1
        return value

    def put(self, digest: B3Digest, value: bytes, *, memory: bool = True) -> None:
        """Keep bytes the caller has verified against `digest`.

        `memory=False` keeps them on disk only: a long sequential read would otherwise push
        everything else out of memory (and grow the process) for data read once.
        """
        if memory:
            self._insert(digest, value)
        if self.disk is not None:
            self.disk.put(digest, value)

    def _insert(self, digest: B3Digest, value: bytes) -> None:
        if _cost(value) > self.max_bytes:
            return
        with self._lock:
            if digest in self._items:
                return
            self._items[digest] = value
            self._size += _cost(value)
            while self._size > self.max_bytes:
                _, evicted = self._items.popitem(last=False)
                self._size -= _cost(evicted)

    @property
    def size(self) -> int:
        """Bytes held, each entry's overhead included."""
        return self._size

    def __contains__(self, digest: B3Digest) -> bool:
        return digest in self._items

    def __len__(self) -> int:
        return len(self._items)
