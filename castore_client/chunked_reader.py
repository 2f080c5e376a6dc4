"""Seekable readers over blobs that never hand out a byte before it has been verified.

A blob without a chunk list can only be verified whole, so it is downloaded and hashed
completely first and then served from what was kept (`spool`: memory while small, an unlinked
file past that), so that a large blob never sits in RAM.

A chunk list comes from the server's Stat, and each chunk can be checked against its own
digest; but only all chunks together, hashed in order, show that the list belongs to the blob
(a server could answer Stat(X) with Y's chunks). So a list is proven before any byte read
through it is handed out: the first read streams the whole blob (or, where the stream fails,
fetches the rest chunk by chunk), checks every chunk and the whole, and keeps the bytes. A list
proven once (`proven=True`, which `blob_readers` remembers) is read lazily: a read touches only
the chunks that cover it, each verified on arrival.

Every check goes through `verify.Verifier`, the one place where bytes meet the digest that
names them.
"""

from __future__ import annotations

import bisect
import logging
import queue
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence

from .cancel import CancelScope
from .chunk_cache import ChunkCache
from .digest import B3Digest
from .errors import (
    BlobNotFound,
    Cancelled,
    CastoreError,
    CorruptData,
    DigestMismatch,
    InvalidChunkList,
    InvalidInput,
    TooLarge,
)
from .pipeline import OrderedWorker
from .services import BlobService, ChunkMeta
from .spool import DEFAULT_SPOOL, KeptBlob, Spool
from .verify import Verifier, verified

log = logging.getLogger(__name__)

MAX_CHUNK = 4 << 20
"""The largest chunk a chunk list may announce: real servers cut at 512 KiB or less, and a
chunk is held whole while it is verified, so a larger claim is refused outright."""

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
    spool: Spool = DEFAULT_SPOOL,
    cache: ChunkCache | None = None,
    proven: Callable[[list[ChunkMeta]], bool] = lambda chunks: False,
    on_proven: Callable[[list[ChunkMeta]], None] = lambda chunks: None,
) -> ChunkedReader | WholeBlobReader:
    """Stat the blob and return the reader that fits its shape.

    `fetch` lets a caller put a cache in front of chunk downloads; it must return verified
    bytes (wrap `fetch_verified`). `proven` says whether a chunk list was proven before, and
    `on_proven` hears of each list proven now. The filesystem does not call this directly: it
    goes through `blob_readers.BlobReaders`, which also skips the Stat for small blobs.
    """
    chunks = service.stat(digest, timeout=timeout)
    if len(chunks) == 1:
        # A blob of one chunk is that chunk; anything else is a list that cannot be right.
        only = chunks[0]
        if only.digest != digest or (size is not None and only.size != size):
            raise InvalidChunkList(
                f"blob {digest}: a chunk list of one chunk ({only.digest}, {only.size} bytes) "
                "that is not the blob itself"
            )
        chunks = []
    if chunks:
        if fetch is None:

            def fetch(meta: ChunkMeta) -> bytes:
                return fetch_verified(service, meta, timeout=timeout)

        def stream() -> Pieces:
            return service.read(digest, timeout=timeout)

        return ChunkedReader(
            digest,
            chunks,
            fetch,
            size,
            stream=stream,
            cache=cache,
            spool=spool,
            proven=proven(chunks),
            on_proven=lambda: on_proven(chunks),
        )
    return WholeBlobReader(service, digest, size, timeout=timeout, spool=spool)


def check_range(offset: int, length: int) -> None:
    if offset < 0 or length < 0:
        raise InvalidInput("offset and length must not be negative")


class ChunkedReader:
    """Random access over a chunk list: binary search on cumulative offsets.

    An unproven list is proven at the first read (see the module's docstring) and the blob
    then served from what the proof kept; if the spool had no room for it, or the list was
    proven before, reads go to the chunks themselves. Then reads that start near the
    beginning and go forward, even with requests out of order by a few chunks, are served from
    one Read of the whole blob, cut at the chunk boundaries and verified chunk by chunk as the
    bytes arrive: one stream instead of one round trip per chunk. Any other access, and
    everything after a stream failed, fetches single chunks.
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
        spool: Spool = DEFAULT_SPOOL,
        proven: bool = False,
        on_proven: Callable[[], None] = lambda: None,
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
        self._spool = spool
        self.proven = proven
        self._on_proven = on_proven
        self._kept: KeptBlob | None = None
        self._disproof: CorruptData | None = None

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
            if not self.proven:
                self._prove_once()
            if self._kept is not None:
                assert self.size is not None
                return self._kept.read(offset, max(min(length, self.size - offset), 0))
            for index in self.chunk_range(offset, length):
                data = self._chunk(index)
                start = self._starts[index]
                lo = max(offset - start, 0)
                hi = min(offset + length - start, len(data))
                parts.append(data[lo:hi] if (lo, hi) != (0, len(data)) else data)
        return bytes(parts[0]) if len(parts) == 1 else b"".join(parts)

    def _prove_once(self) -> None:
        """Prove the list, or fail again as the last try did if the bytes were wrong: a lying
        server is not asked again (and again downloaded from) for every retry of a read."""
        if self._disproof is not None:
            raise self._disproof
        try:
            self._prove()
        except CorruptData as exc:
            self._disproof = exc
            raise

    def _prove(self) -> None:
        """Read the whole blob once, checking each chunk and all of them against the blob.

        The stream is cut on this thread, checked and hashed on a second and kept on a third
        (hashing and file writes release the GIL): measured on 256 MiB over a unix socket,
        proving all on one thread ran at 390 MB/s, the raw stream at 700.
        """
        whole = Verifier(self.digest, self.size, f"blob {self.digest}")
        kept = KeptBlob(self._spool)
        try:
            taken = self._prove_from_stream(whole, kept)
            for index in range(taken, len(self.chunks)):
                meta = self.chunks[index]
                try:
                    data = self._fetch(meta)
                except BlobNotFound as exc:
                    raise BlobNotFound(f"chunk {meta.digest} of blob {self.digest}: {exc}") from exc
                self._take(index, data, whole, kept)
            try:
                whole.finish()
            except DigestMismatch as exc:
                log.error("blob %s: its chunk list does not add up (%s)", self.digest, exc)
                raise InvalidChunkList(
                    f"blob {self.digest}: the chunks its Stat named are not this blob ({exc})"
                ) from None
        except BaseException:
            kept.close()
            raise
        kept.finish()
        self.proven = True
        self._on_proven()
        if not kept.dropped:
            self._kept = kept

    def _prove_from_stream(self, whole: Verifier, kept: KeptBlob) -> int:
        """How many chunks, from the first, the whole-blob stream delivered sound."""
        if self._open_stream is None:
            return 0
        taken = 0

        def keep(item: tuple[int, bytes]) -> None:
            self._keep(*item, kept)

        def check(item: tuple[int, bytes]) -> None:
            nonlocal taken
            index, data = item
            _verify_chunk(data, self.chunks[index], self.digest)
            whole.update(data)
            taken += 1
            keeper.submit(item)

        failure: CastoreError | None = None
        with (
            OrderedWorker(keep, depth=4, name="castore-keep") as keeper,
            OrderedWorker(check, depth=4, name="castore-prove") as worker,
        ):
            try:
                for item in enumerate(_cut_chunks(self._open_stream(), self.digest, self.chunks)):
                    worker.submit(item)
            except Cancelled:
                raise
            except CastoreError as exc:
                failure = exc
            try:
                worker.finish()
            except Cancelled:
                raise
            except CastoreError as exc:
                failure = failure or exc
            keeper.finish()
        if failure is not None:
            log.warning(
                "blob %s: whole-blob stream failed at chunk %d (%s); reading the rest chunk by "
                "chunk",
                self.digest,
                taken,
                failure,
            )
        return taken

    def _take(self, index: int, data: bytes, whole: Verifier, kept: KeptBlob) -> None:
        whole.update(data)
        self._keep(index, data, kept)

    def _keep(self, index: int, data: bytes, kept: KeptBlob) -> None:
        if self._cache is not None:
            self._cache.put(self.chunks[index].digest, data, memory=False)
        kept.write(data)

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
            if self._kept is not None:
                self._kept.close()
                self._kept = None


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
    for index, data in enumerate(_cut_chunks(pieces, digest, chunks)):
        yield _verify_chunk(data, chunks[index], digest)


def _cut_chunks(pieces: Pieces, digest: B3Digest, chunks: Sequence[ChunkMeta]) -> Iterator[bytes]:
    """Cut a whole-blob stream at the chunk boundaries, unverified (the caller verifies)."""
    buf = bytearray()
    index = 0
    try:
        for piece in pieces:
            if not buf and index < len(chunks) and len(piece) == chunks[index].size:
                yield bytes(piece)
                index += 1
                continue
            buf += piece
            while index < len(chunks) and len(buf) >= chunks[index].size:
                size = chunks[index].size
                data = bytes(buf[:size])
                del buf[:size]
                yield data
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
        if meta.size > MAX_CHUNK:
            raise InvalidChunkList(
                f"blob {digest}: chunk {meta.digest} claims {meta.size} bytes, more than the "
                f"{MAX_CHUNK} a chunk may have"
            )
        starts.append(starts[-1] + meta.size)
    return starts


class WholeBlobReader:
    """A blob that arrives as one stream: downloaded and verified whole on first read, then
    served from what was kept. A blob larger than the spool has room for cannot be verified
    here, and its reads fail (TooLarge) rather than hand out unverified bytes."""

    def __init__(
        self,
        service: BlobService,
        digest: B3Digest,
        size: int | None = None,
        *,
        timeout: float | None = None,
        spool: Spool = DEFAULT_SPOOL,
    ) -> None:
        self.digest = digest
        self.size = size
        self._service = service
        self._timeout = timeout
        self._spool = spool
        self._lock = threading.Lock()
        self._kept: KeptBlob | None = None
        self._failed: CorruptData | None = None

    def read_at(self, offset: int, length: int) -> bytes:
        check_range(offset, length)
        with self._lock:
            if self._failed is not None:
                raise self._failed  # the bytes were wrong; do not download them again
            if self._kept is None:
                try:
                    self._kept = self._download()
                except CorruptData as exc:
                    self._failed = exc
                    raise
            kept = self._kept
        return kept.read(offset, max(min(length, kept.size - offset), 0))

    def _download(self) -> KeptBlob:
        check = Verifier(self.digest, self.size, f"blob {self.digest}")
        kept = KeptBlob(self._spool)
        try:
            for piece in self._service.read(self.digest, timeout=self._timeout):
                check.update(piece)
                if not kept.write(piece):
                    raise TooLarge(
                        f"blob {self.digest}: more than the {self._spool.limit} bytes this "
                        "client may hold to verify a blob"
                    )
            check.finish()
            kept.finish()
            if kept.dropped:
                raise TooLarge(f"blob {self.digest}: cannot keep it to verify it")
        except BaseException:
            kept.close()
            raise
        self.size = check.received
        return kept

    def close(self) -> None:
        with self._lock:
            kept, self._kept = self._kept, None
        if kept is not None:
            kept.close()
