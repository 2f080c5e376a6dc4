"""Where file contents come from: the one object the filesystem asks for a blob's bytes.

`BlobReaders` owns every rule about reading a blob whose size a FileNode announces: the
small-blob rule (fetched whole by its own digest, no Stat round trip), the memory and disk
caches, verification (every byte returned has matched its digest, see `chunked_reader`), and
for larger blobs the choice between one whole-blob stream and single chunk fetches (made by
`ChunkedReader`). The filesystem keeps one `OpenBlob` per open file and calls nothing else.

A read of a small blob that is already in memory is answered by `cached` without blocking, so
the filesystem serves it on its event loop; anything else blocks, in exactly one call
(`OpenBlob.read_at`), which the filesystem runs on one worker thread.

What a FileNode claims is checked too, so that one store path cannot change what another
shows: the size it announces must be the blob's (a cached blob of another size is an error
for this node only), and a node announced empty must name the empty blob. A chunk list proven
to belong to its blob (see `chunked_reader`) is remembered in the caches, in memory and on
disk, under a digest of the blob and the list, so that it is proven once per host, not per
open file.
"""

from __future__ import annotations

import logging
import struct
import threading
import time
from collections import deque

from .chunk_cache import ChunkCache
from .chunked_reader import check_range, fetch_verified, open_blob
from .digest import EMPTY_DIGEST, B3Digest
from .errors import DigestMismatch, Unavailable
from .services import BlobReader, BlobService, ChunkMeta
from .spool import DEFAULT_SPOOL, Spool

log = logging.getLogger(__name__)

SMALL_BLOB = 1 << 20
"""Blobs up to this size are read whole with one Read by their own digest, without a Stat.

Reading a blob by its digest returns all of its bytes however the server chunked it, so
skipping Stat is always correct; below this size it is also always cheaper."""

SLOW_FETCH = 0.005
"""Seconds the quickest of the recent fetches (of a small blob or a chunk) took, past which the
link counts as slow and read-ahead gets eager (see `castore_fuse.prefetch`). Measured: 0.5-1 ms
per small blob over loopback, about one round trip more over a LAN or WAN. At a 20 ms round
trip eager read-ahead made an import of numpy and trio 2.0 s instead of 3.3; at 0.5 ms it made
it 1.2 s instead of 0.7, since a fetch not needed costs about as much client CPU as the round
trip it saves: hence 5 ms, between the two. The quickest, not the average: a loaded client
makes fetches slower, and an average let eager read-ahead keep itself going on a fast link.
And only fetches that started with at most QUIET_FETCHES running count: 32 read-ahead
fetches at once queue at the server, so each took more than 5 ms on loopback, the link
looked slow and stayed so, and a tar of every tenth directory of a large tree fetched the
other nine in walk order too."""

QUIET_FETCHES = 4
"""Fetches at once (a fast link's read-ahead) whose times still show the link, not a queue."""

RECENT_FETCHES = 16
SLOW_AFTER = 4
"""Fetches seen before a link may count as slow: the first reads after a mount also wait for
the server's cold disk and a new connection."""

UNAVAILABLE_MEMO = 1.0
"""Seconds for which a read that found the server unavailable answers a retry of the same
range at once, with the same error: after a failed buffered read the kernel asks again at once,
for the same offset, and a server that has just timed out would make that second request wait
out a second deadline for the same answer."""


class BlobReaders:
    """Verified, cached reads of blobs whose size the caller knows (from a FileNode)."""

    def __init__(
        self,
        service: BlobService,
        cache: ChunkCache | None = None,
        *,
        timeout: float | None = None,
        spool: Spool = DEFAULT_SPOOL,
    ) -> None:
        self.service = service
        self.cache = cache if cache is not None else ChunkCache()
        self.timeout = timeout
        self.spool = spool
        self._fetch_times: deque[float] = deque(maxlen=RECENT_FETCHES)
        self._in_flight = 0
        self._in_flight_lock = threading.Lock()

    @staticmethod
    def is_small(size: int) -> bool:
        return size <= SMALL_BLOB

    def cached(self, digest: B3Digest, size: int) -> bytes | None:
        """The whole of a small blob if it is in memory; never blocks."""
        if size > SMALL_BLOB:
            return None
        data = self.cache.peek(digest)
        return None if data is None else _claimed(data, digest, size)

    @property
    def slow(self) -> bool:
        """Whether fetches wait long enough that fetching ahead in parallel pays."""
        times = self._fetch_times
        return len(times) >= SLOW_AFTER and min(times) > SLOW_FETCH

    def note_fetch_time(self, seconds: float) -> None:
        """How long one fetch from the server took, in seconds (one of few running at once).
        Read-ahead's own fetches count too: once it serves the reads, it may be all that
        still shows the link."""
        self._fetch_times.append(seconds)

    def has(self, digest: B3Digest) -> bool:
        """Whether the blob (or chunk) is in memory, without counting it as a use."""
        return digest in self.cache

    def fetch_small(self, digest: B3Digest, size: int) -> bytes:
        """A small blob whole, verified, through the caches (blocking)."""
        meta = ChunkMeta(digest, size)
        return _claimed(self.cache.get(digest, lambda: self._fetch(meta, "blob")), digest, size)

    def open(self, digest: B3Digest, size: int) -> OpenBlob:
        """A reader for one open file; costs nothing until its first read."""
        if size == 0 and digest != EMPTY_DIGEST:
            raise DigestMismatch(f"blob {digest}: announced as empty, but it is not the empty blob")
        return OpenBlob(self, digest, size)

    def _fetch(self, meta: ChunkMeta, what: str) -> bytes:
        with self._in_flight_lock:
            self._in_flight += 1
            quiet = self._in_flight <= QUIET_FETCHES
        started = time.monotonic()
        try:
            data = fetch_verified(self.service, meta, timeout=self.timeout, what=what)
        finally:
            with self._in_flight_lock:
                self._in_flight -= 1
        if quiet:
            self.note_fetch_time(time.monotonic() - started)
        return data

    def _reader(self, digest: B3Digest, size: int) -> BlobReader:
        """The cheapest verified reader for the blob (blocking: a large blob is Stat'ed)."""
        if self.is_small(size):
            return _SmallBlob(self, digest, size)
        return open_blob(
            self.service,
            digest,
            size,
            timeout=self.timeout,
            fetch=lambda meta: self.cache.get(meta.digest, lambda: self._fetch(meta, "chunk")),
            cache=self.cache,
            spool=self.spool,
            proven=lambda chunks: (
                self.cache.peek(_proof_key(digest, chunks), disk=True) is not None
            ),
            on_proven=lambda chunks: self.cache.put(*_proof(digest, chunks)),
        )


def _claimed(data: bytes, digest: B3Digest, size: int) -> bytes:
    """`data` (verified against `digest`) if it also has the size the node announced."""
    if len(data) != size:
        raise DigestMismatch(f"blob {digest}: announced as {size} bytes, but it has {len(data)}")
    return data


def _proof(digest: B3Digest, chunks: list[ChunkMeta]) -> tuple[B3Digest, bytes]:
    """A cache entry that exists only for a chunk list proven to be `digest`'s: the blob's
    digest and the list, stored under their own digest (so the disk cache verifies it too)."""
    record = b"".join(
        [b"castore proven chunk list\0", digest.raw]
        + [chunk.digest.raw + struct.pack(">Q", chunk.size) for chunk in chunks]
    )
    return B3Digest.of(record), record


def _proof_key(digest: B3Digest, chunks: list[ChunkMeta]) -> B3Digest:
    return _proof(digest, chunks)[0]


class _SmallBlob:
    """A small blob read whole on each request, from the cache after the first."""

    def __init__(self, readers: BlobReaders, digest: B3Digest, size: int) -> None:
        self.size: int | None = size
        self._readers = readers
        self._digest = digest

    def read_at(self, offset: int, length: int) -> bytes:
        check_range(offset, length)
        if offset >= (self.size or 0) or length == 0:
            return b""
        assert self.size is not None
        return self._readers.fetch_small(self._digest, self.size)[offset : offset + length]

    def close(self) -> None:
        pass


class OpenBlob:
    """The reader of one open file, made at its first read on the thread that serves it.

    Opening a file therefore costs no round trip, and a cold read costs one blocking call.
    Thread-safe: the kernel sends several reads of one file at once.
    """

    def __init__(self, readers: BlobReaders, digest: B3Digest, size: int) -> None:
        self.digest = digest
        self.size = size
        self._readers = readers
        self._lock = threading.Lock()
        self._reader: BlobReader | None = None
        self._closed = False
        # (when, offset, end, error) of the last read that found the server unavailable.
        self._unavailable: tuple[float, int, int, Unavailable] | None = None

    def read_at(self, offset: int, length: int) -> bytes:
        failed = self._unavailable
        if failed is not None:
            failed_at, start, end, error = failed
            if time.monotonic() - failed_at < UNAVAILABLE_MEMO and start <= offset < end:
                raise error
            self._unavailable = None
        try:
            with self._lock:
                reader = self._reader
                if reader is None:
                    reader = self._readers._reader(self.digest, self.size)
                    if self._closed:
                        reader.close()
                    else:
                        self._reader = reader
            return reader.read_at(offset, length)
        except Unavailable as exc:
            self._unavailable = (time.monotonic(), offset, offset + length, exc)
            raise

    def close(self) -> None:
        """Never blocks (not even on a Stat in flight): a running stream is cancelled."""
        self._closed = True
        reader, self._reader = self._reader, None
        if reader is not None:
            reader.close()


__all__ = ["SMALL_BLOB", "BlobReaders", "OpenBlob"]
