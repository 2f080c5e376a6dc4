"""Room for blobs that must be read whole before any of their bytes may be handed out.

A blob is verified by hashing all of it, so a reader that proves a blob (an unchunked one, or a
chunk list not proven before) keeps the bytes it hashed and serves reads from them afterwards:
in memory while small, in an unlinked temporary file past that. The files live in one
directory (the disk cache's, when there is one) and count against one limit across every
reader of the process, so that what a server can make us hold is bounded in memory and on disk.
"""

from __future__ import annotations

import contextlib
import logging
import os
import tempfile
import threading
from typing import IO

log = logging.getLogger(__name__)

IN_MEMORY = 4 << 20
"""A blob up to this size is kept in memory; larger ones go to a spool file."""

DEFAULT_LIMIT = 1 << 30


class Spool:
    """A directory and a byte budget shared by every `KeptBlob` made from it."""

    def __init__(self, directory: str | None = None, limit: int = DEFAULT_LIMIT) -> None:
        self.directory = directory
        self.limit = limit
        self._used = 0
        self._lock = threading.Lock()

    def reserve(self, n: int) -> bool:
        with self._lock:
            if self._used + n > self.limit:
                return False
            self._used += n
            return True

    def release(self, n: int) -> None:
        with self._lock:
            self._used -= n

    @property
    def used(self) -> int:
        return self._used

    def open(self) -> IO[bytes]:
        if self.directory is not None:
            os.makedirs(self.directory, exist_ok=True)
        return tempfile.TemporaryFile(prefix="castore-blob-", dir=self.directory)


class KeptBlob:
    """The bytes of one blob as a reader verified them, appended in order, read at offsets.

    `write` returns False once the blob no longer fits (the spool's budget is spent, or its
    file cannot be written): what was kept is dropped, and the caller either does without
    (a proven chunk list can be read chunk by chunk) or fails the read.
    """

    def __init__(self, spool: Spool) -> None:
        self._spool = spool
        self._memory: bytearray | None = bytearray()
        self._file: IO[bytes] | None = None
        self._reserved = 0
        self.size = 0
        self.dropped = False

    def write(self, data: bytes | memoryview) -> bool:
        if self.dropped:
            return False
        if self._memory is not None and len(self._memory) + len(data) <= IN_MEMORY:
            self._memory += data
            self.size += len(data)
            return True
        try:
            if not self._spool.reserve(len(data) + (len(self._memory or b""))):
                self._drop("the spool is full")
                return False
            self._reserved += len(data) + len(self._memory or b"")
            if self._file is None:
                self._file = self._spool.open()
            if self._memory is not None:
                self._file.write(self._memory)
                self._memory = None
            self._file.write(data)
        except OSError as exc:
            self._drop(f"cannot write the spool: {exc}")
            return False
        self.size += len(data)
        return True

    def finish(self) -> None:
        if self._file is not None:
            try:
                self._file.flush()
            except OSError as exc:
                self._drop(f"cannot write the spool: {exc}")

    def read(self, offset: int, length: int) -> bytes:
        if self._memory is not None:
            return bytes(self._memory[offset : offset + length])
        assert self._file is not None
        return os.pread(self._file.fileno(), length, offset)

    def _drop(self, why: str) -> None:
        log.debug("not keeping a blob of %d+ bytes: %s", self.size, why)
        self.dropped = True
        self.close()

    def close(self) -> None:
        self._memory = None
        if self._file is not None:
            with contextlib.suppress(OSError):
                self._file.close()
            self._file = None
        if self._reserved:
            self._spool.release(self._reserved)
            self._reserved = 0


DEFAULT_SPOOL = Spool()
"""The spool of readers made without one (tools and tests): the system's temporary directory."""
