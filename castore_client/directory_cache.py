"""Verified directories kept for reuse: in memory within a byte budget, and on local disk.

A mount walking millions of files cannot keep every Directory it fetched, so the memory tier
is bounded in bytes (least recently used go first) and a directory that falls out is fetched
again when next needed; its entries come back in the same order, so a listing's offsets stay
valid across the refetch. With a disk cache, every directory also goes there, under its own
digest: a directory's canonical encoding hashes to its digest, so the disk cache's check on the
way out is the same check as for chunks, and a later mount (or this one, after an eviction)
finds it without asking the server, with the server gone too. What comes from disk is
validated again before use, as if the server had sent it.

The memory budget is accounted by an estimate, `directory_cost`, not measured per object.
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict

from .codec import decode_named_directory
from .digest import B3Digest
from .directory import Directory, SizeFormula
from .disk_cache import DiskChunkCache
from .errors import CastoreError
from .services import DirectoryService

log = logging.getLogger(__name__)

DEFAULT_MEMORY = 32 << 20

DIRECTORY_COST = 600
ENTRY_COST = 300
"""Bytes a decoded Directory costs in memory, per directory and per entry. Measured with
tracemalloc: 231 bytes per entry for the nodes and the ordered listing of 500 decoded
directories of 200 files, plus 51 per entry for the canonical encoding kept once the digest
has been computed."""


def directory_cost(directory: Directory) -> int:
    return DIRECTORY_COST + ENTRY_COST * len(directory)


class DirectoryCache:
    """Directories by digest: memory (bounded, LRU), then disk; `put` only what is verified.

    Thread-safe: the filesystem asks from its event loop while worker threads add."""

    def __init__(
        self,
        max_bytes: int = DEFAULT_MEMORY,
        disk: DiskChunkCache | None = None,
        *,
        formula: SizeFormula = SizeFormula.CURRENT,
    ) -> None:
        self.max_bytes = max_bytes
        self.disk = disk
        self.formula = formula
        self._lock = threading.Lock()
        self._memory: OrderedDict[B3Digest, Directory] = OrderedDict()
        self._bytes = 0
        self.evictions = 0

    def get(self, digest: B3Digest, disk: bool = False) -> Directory | None:
        """From memory (never blocks), or with `disk` also from disk (blocking)."""
        with self._lock:
            directory = self._memory.get(digest)
            if directory is not None:
                self._memory.move_to_end(digest)
                return directory
        if not disk or self.disk is None:
            return None
        data = self.disk.get(digest)
        if data is None:
            return None
        try:
            directory = decode_named_directory(data, digest)
            directory.validate(self.formula)
        except (CastoreError, ValueError) as exc:
            # The bytes matched the digest, so whoever wrote them hashed an invalid directory.
            log.warning("disk cache: directory %s is not valid (%s); ignoring it", digest, exc)
            return None
        self._keep(digest, directory)
        return directory

    def load(self, digest: B3Digest, directories: DirectoryService) -> Directory:
        """From memory, disk, or else `directories` (then kept); blocking."""
        directory = self.get(digest, disk=True)
        if directory is None:
            directory = directories.get(digest)
            self.put(directory)
        return directory

    def put(self, directory: Directory, *, disk: bool = True) -> None:
        """Keep a directory verified against its digest (and validated)."""
        digest = directory.digest
        self._keep(digest, directory)
        if disk and self.disk is not None:
            self.disk.put(digest, directory.encoded)

    def _keep(self, digest: B3Digest, directory: Directory) -> None:
        """The newest directory stays even past the budget: one larger than the whole budget
        is still being listed, and refetching it for every readdir call would be worse."""
        with self._lock:
            if digest in self._memory:
                return
            self._memory[digest] = directory
            self._bytes += directory_cost(directory)
            while self._bytes > self.max_bytes and len(self._memory) > 1:
                _, old = self._memory.popitem(last=False)
                self._bytes -= directory_cost(old)
                self.evictions += 1

    def __contains__(self, digest: B3Digest) -> bool:
        return digest in self._memory

    @property
    def size(self) -> int:
        """Bytes the memory tier holds, by `directory_cost`."""
        return self._bytes

    def __len__(self) -> int:
        return len(self._memory)
