"""Seekable readers over blobs that never hand out a byte before it has been verified.

A blob Stat'ed with a chunk list is read chunk by chunk: a read touches only the chunks that
cover the requested range, and each chunk's size and BLAKE3 are checked before any of its bytes
are returned. A blob without a chunk list can only be verified whole, so it is downloaded and
hashed completely first, kept in memory while small and spooled to an unlinked temporary file
past a threshold, so that a large unchunked blob never sits in RAM.

For chunked blobs the blob digest itself cannot be checked without reading everything; the
chunk list is trusted to belong to the blob, as in every castore client.

Every check goes through `verify.Verifier`, the one place where bytes meet the digest that
names them.
"""

from __future__ import annotations

import bisect
import logging
import os
import queue
import tempfile
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from typing import IO

from .cancel import CancelScope
from .chunk_cache import ChunkCache
from .digest import B3Digest
from .errors import (
    BlobNotFound,
    Cancelled,
    CastoreError,
    DigestMismatch,
    InvalidChunkList,
    InvalidInput,
)
from .services import BlobService, ChunkMeta
from .verify import Verifier, verified

log = logging.getLogger(__name__)

SPOOL_THRESHOLD = 16 << 20

STREAM_REACH = 16
"""How far ahead of its position a whole-blob stream serves a request, in chunks.

The kernel sends several read-ahead requests at once and they reach the reader in any order;
a stream that gave up at the first request out of order fell back to one RPC per chunk.
Chunks it delivers before they are asked for wait in the reader (at most this many).
"""

RECENT_CHUNKS = 4
"""Chunks a reader keeps after use, for requests that cover a chunk in several pieces."""

ChunkFetcher = Callable[[ChunkMeta], bytes]
Pieces = Iterator[bytes | memoryview]


def fetch_verified(
    service: BlobService, meta: ChunkMeta, *, timeout: float | None = None, what: str = "chunk"
) -> bytes:
    """Read one chunk (or small blob) whole and return it only if size and digest match."""
    buf = bytearray()
    check = Verifier(meta.digest, meta.size, f"{what} {meta.digest}")
    for piece in service.read(meta.digest, timeout=timeout):
        check.update(piece)
        buf += piece
    check.finish()
    return bytes(buf)


def open_blob(
    service: BlobService,
    digest: B3Digest,
    size: int | None = None,
    *,
    timeout: float | None = None,
    fetch: ChunkFetcher | None = None,
    spool_threshold: int = SPOOL_THRESHOLD,
    cache: ChunkCache | None = None,
) -> ChunkedReader | WholeBlobReader:
    """Stat the blob and return the reader that fits its shape.

    `fetch` lets a caller put a cache in front of chunk downloads; it must return verified
    bytes (wrap `fetch_verified`). The filesystem does not call this directly: it goes through
    `blob_readers.BlobReaders`, which also skips the Stat for small blobs.
    """
    chunks = service.stat(digest, timeout=timeout)
    if chunks:
        if fetch is None:

            def fetch(meta: ChunkMeta) -> bytes:
                return fetch_verified(service, meta, timeout=timeout)

        def stream() -> Pieces:
            return service.read(digest, timeout=timeout)

        return ChunkedReader(digest, chunks, fetch, size, stream=stream, cache=cache)
    return WholeBlobReader(service, digest, size, timeout=timeout, spool_threshold=spool_threshold)


def check_range(offset: int, length: int) -> None:
    if offset < 0 or length < 0:
        raise InvalidInput("offset and length must not be negative")


class ChunkedReader:
    """Random access over a chunk list: binary search on cumulative offsets.

    Reads that start near the beginning and go forward, even with requests out of order by a
    few chunks, are served from one Read of the whole blob, cut at the chunk boundaries and
    verified chunk by chunk as the bytes arrive: one stream instead of one round trip per
    chunk. Any other access, and everything after a stream failed, fetches single chunks.
    """

    def __init__(
        self,
        digest: B3Digest,
        chunks: Sequence[ChunkMeta],
        fetch: ChunkFetcher,
        size: int | None = None,
        *,
        stream: Callable[[], Pieces] | None = None,
        cache: ChunkCache | None = None,
    ) -> None:
        self.digest = digest
        self.chunks = tuple(chunks)
        self._cache = cache
        self._fetch = fetch
        self._open_stream = stream
        self._starts = _chunk_starts(digest, self.chunks)
        self.size: int | None = self._starts[-1]
        if size is not None and size != self.size:
            raise InvalidChunkList(
                f"blob {digest}: chunks add up to {self.size} bytes, expected {size}"
            )
        self._lock = threading.Lock()
        # The last few chunks used (the kernel reads a chunk in several requests, not always in
        # order), and chunks the stream delivered ahead of their request. Few: each held chunk
        # pins a received message, whose memory a sequential read should reuse at once.
        self._recent: OrderedDict[int, bytes] = OrderedDict()
        self._early: dict[int, bytes] = {}
        self._streamed = False
        self._stream: StreamReadahead | None = None
        self._stream_next = 0
        self._stream_failed = False

    def chunk_range(self, offset: int, length: int) -> range:
        """Indices of the chunks that cover [offset, offset+length), clipped to the blob."""
        assert self.size is not None
        end = min(offset + length, self.size)
        if offset >= end:
            return range(0)
        first = bisect.bisect_right(self._starts, offset) - 1
        last = bisect.bisect_left(self._starts, end) - 1
        return range(first, last + 1)

    def read_at(self, offset: int, length: int) -> bytes:
        check_range(offset, length)
        parts = []
        with self._lock:
            for index in self.chunk_range(offset, length):
                data = self._chunk(index)
                start = self._starts[index]
                lo = max(offset - start, 0)
                hi = min(offset + length - start, len(data))
                parts.append(data[lo:hi] if (lo, hi) != (0, len(data)) else data)
        return bytes(parts[0]) if len(parts) == 1 else b"".join(parts)

    def _chunk(self, index: int) -> bytes:
        recent = self._recent.get(index)
        if recent is not None:
            self._recent.move_to_end(index)
            return recent
        data = self._early.pop(index, None)
        if data is not None:
            self._remember(index, data)
            return data
        meta = self.chunks[index]
        try:
            data = self._cache.peek(meta.digest, disk=True) if self._cache is not None else None
            if data is not None:
                self._skip_in_stream(index)
            else:
                data = self._from_stream(index)
            if data is None:
                data = self._fetch(meta)
        except BlobNotFound as exc:
            raise BlobNotFound(f"chunk {meta.digest} of blob {self.digest}: {exc}") from exc
        self._remember(index, data)
        return data

    def _remember(self, index: int, data: bytes) -> None:
        self._recent[index] = data
        if len(self._recent) > RECENT_CHUNKS:
            self._recent.popitem(last=False)

    def _from_stream(self, index: int) -> bytes | None:
        """Chunk `index` from the whole-blob stream, if the stream is (or can be) near it.

        A stream starts only near the blob's beginning, since it always starts there. Chunks
        it delivers before they are asked for are remembered for the request that wants them.
        """
        if self._open_stream is None or self._stream_failed:
            return None
        if self._stream is None:
            # A stream starts over at the beginning: for a first read near it, or a new pass.
            if index >= STREAM_REACH or (self._streamed and index != 0):
                return None
            self._stream = StreamReadahead(self._open_stream, self.digest, self.chunks)
            self._stream_next = 0
            self._streamed = True
        if not self._stream_next <= index < self._stream_next + STREAM_REACH:
            if index >= self._stream_next:
                log.debug(
                    "blob %s: chunk %d is far ahead of the stream (at %d); fetching singly",
                    self.digest,
                    index,
                    self._stream_next,
                )
                self._close_stream()
            return None
        while True:
            try:
                data = self._stream.next()
            except Cancelled:
                self._close_stream()
                raise
            except CastoreError as exc:
                # Single fetches from here on, each verified on its own: a broken or corrupt
                # stream costs round trips, and only a chunk that is itself bad fails a read.
                log.warning(
                    "blob %s: whole-blob stream failed at chunk %d (%s); reading single chunks",
                    self.digest,
                    self._stream_next,
                    exc,
                )
                self._stream_failed = True
                self._close_stream()
                return None
            except BaseException:
                self._close_stream()
                raise
            position = self._stream_next
            self._stream_next += 1
            if self._cache is not None:
                self._cache.put(self.chunks[position].digest, data, memory=False)
            if self._stream_next == len(self.chunks):
                self._close_stream()
            if position == index:
                return data
            self._early[position] = data
            if len(self._early) > STREAM_REACH:
                # Asked for by nobody so far behind: drop the oldest.
                del self._early[min(self._early)]

    def _skip_in_stream(self, index: int) -> None:
        """A chunk came from the cache: keep a running stream in step, or leave it be."""
        if self._stream is not None and index == self._stream_next:
            self._from_stream(index)

    def _close_stream(self) -> None:
        stream, self._stream = self._stream, None
        if stream is not None:
            stream.close()

    def close(self) -> None:
        with self._lock:
            self._close_stream()
            self._recent.clear()
            self._early.clear()


class StreamReadahead:
    """Pulls a whole-blob stream on a thread of its own, verified chunk by chunk, a few ahead.

    A filesystem reads in bursts (one kernel request at a time); without a reader of its own
    the stream would stall between requests and every request would wait for the network.
    `depth` verified chunks are kept ready; `close()` stops the thread and cancels the RPC.
    """

    def __init__(
        self,
        open_stream: Callable[[], Pieces],
        digest: B3Digest,
        chunks: Sequence[ChunkMeta],
        depth: int = 8,
    ) -> None:
        self._queue: queue.Queue[tuple[bytes | None, BaseException | None]] = queue.Queue(depth)
        self._stop = threading.Event()
        self._scope = CancelScope()
        self._thread = threading.Thread(
            target=self._run,
            args=(open_stream, digest, chunks),
            name="castore-readahead",
            daemon=True,
        )
        self._thread.start()

    def _run(
        self,
        open_stream: Callable[[], Pieces],
        digest: B3Digest,
        chunks: Sequence[ChunkMeta],
    ) -> None:
        with self._scope.bound():
            try:
                for data in _verified_chunks(open_stream(), digest, chunks):
                    if not self._offer((data, None)):
                        return
            except BaseException as exc:
                if not self._stop.is_set():
                    self._offer((None, exc))

    def _offer(self, item: tuple[bytes | None, BaseException | None]) -> bool:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def next(self) -> bytes:
        data, error = self._queue.get()
        if error is not None:
            raise error
        assert data is not None
        return data

    def close(self) -> None:
        self._stop.set()
        self._scope.cancel()


def _verified_chunks(
    pieces: Pieces, digest: B3Digest, chunks: Sequence[ChunkMeta]
) -> Iterator[bytes]:
    """Cut a whole-blob stream at the chunk boundaries; yield each chunk once it verifies."""
    buf = bytearray()
    index = 0
    try:
        for piece in pieces:
            if not buf and index < len(chunks) and len(piece) == chunks[index].size:
                yield _verify_chunk(bytes(piece), chunks[index], digest)
                index += 1
                continue
            buf += piece
            while index < len(chunks) and len(buf) >= chunks[index].size:
                size = chunks[index].size
                data = bytes(buf[:size])
                del buf[:size]
                yield _verify_chunk(data, chunks[index], digest)
                index += 1
            if index == len(chunks) and buf:
                raise DigestMismatch(f"blob {digest}: server sent more bytes than its chunks hold")
        if index != len(chunks):
            raise DigestMismatch(f"blob {digest}: stream ended inside chunk {index}")
    finally:
        close = getattr(pieces, "close", None)
        if close is not None:
            close()


def _verify_chunk(data: bytes, meta: ChunkMeta, blob: B3Digest) -> bytes:
    return verified(data, meta.digest, meta.size, f"chunk {meta.digest} of blob {blob}")


def _chunk_starts(digest: B3Digest, chunks: Sequence[ChunkMeta]) -> list[int]:
    starts = [0]
    for meta in chunks:
        if meta.size <= 0:
            raise InvalidChunkList(f"blob {digest}: chunk {meta.digest} has size {meta.size}")
        starts.append(starts[-1] + meta.size)
    return starts


class WholeBlobReader:
    """A blob that arrives as one stream: downloaded and verified whole on first read."""

    def __init__(
        self,
        service: BlobService,
        digest: B3Digest,
        size: int | None = None,
        *,
        timeout: float | None = None,
        spool_threshold: int = SPOOL_THRESHOLD,
    ) -> None:
        self.digest = digest
        self.size = size
        self._service = service
        self._timeout = timeout
        self._threshold = spool_threshold
        self._lock = threading.Lock()
        self._memory: bytes | None = None
        self._file: IO[bytes] | None = None

    def read_at(self, offset: int, length: int) -> bytes:
        check_range(offset, length)
        with self._lock:
            if self._memory is None and self._file is None:
                self._download()
        if self._memory is not None:
            return self._memory[offset : offset + length]
        assert self._file is not None
        return os.pread(self._file.fileno(), length, offset)

    def _download(self) -> None:
        check = Verifier(self.digest, self.size, f"blob {self.digest}")
        buf = bytearray()
        spool: IO[bytes] | None = None
        try:
            for piece in self._service.read(self.digest, timeout=self._timeout):
                check.update(piece)
                if spool is None:
                    buf += piece
                    if len(buf) > self._threshold:
                        spool = tempfile.TemporaryFile(prefix="castore-blob-")  # noqa: SIM115
                        spool.write(buf)
                        buf = bytearray()
                else:
                    spool.write(piece)
            check.finish()
        except BaseException:
            if spool is not None:
                spool.close()
            raise
        total = check.received
        self.size = total
        if spool is None:
            self._memory = bytes(buf)
        else:
            spool.flush()
            self._file = spool
            log.debug("blob %s (%d bytes) spooled to a temporary file", self.digest, total)

    def close(self) -> None:
        self._memory = None
        if self._file is not None:
            self._file.close()
            self._file = None
