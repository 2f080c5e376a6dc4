"""Streaming FastCDC: the same cut points as chunking a whole blob at once, in bounded memory.

Real castore servers split blobs with FastCDC (min/avg/max 128/256/512 KiB), and ours must cut
at exactly the same places so that chunk digests, and hence deduplication, agree with theirs.
The `fastcdc` package only chunks a buffer it is given whole, but each of its cut points depends
only on the window of `max(64 KiB, max_size)` bytes starting at the previous cut. So a chunk
whose window lies entirely inside the bytes received so far is final; everything from the first
chunk whose window is still incomplete waits for more data (or for the end of the stream).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator

from fastcdc import fastcdc  # type: ignore[import-untyped]

log = logging.getLogger(__name__)

CHUNK_MIN = 128 * 1024
CHUNK_AVG = 256 * 1024
CHUNK_MAX = 512 * 1024

DEFAULT_BATCH = 4 << 20
"""Bytes buffered before a scan: large enough that re-scanning the unfinished tail is cheap."""

BytesLike = bytes | bytearray | memoryview


def window_size(max_size: int) -> int:
    """How far past a cut point fastcdc looks to find the next one (its `read_size`)."""
    return max(64 * 1024, max_size)


class Chunker:
    """Cuts a byte stream fed in pieces of any size into FastCDC chunks.

    Each cut is found by asking fastcdc for the first chunk of exactly one window, so every
    byte is scanned once; the buffer holds at most one window plus the piece being fed. The
    input is copied on arrival, so callers may reuse their buffers.
    """

    def __init__(
        self,
        min_size: int = CHUNK_MIN,
        avg_size: int = CHUNK_AVG,
        max_size: int = CHUNK_MAX,
    ) -> None:
        self.min_size = min_size
        self.avg_size = avg_size
        self.max_size = max_size
        self._window = window_size(max_size)
        self._buf = bytearray()
        self._finished = False

    def feed(self, data: BytesLike) -> list[bytes]:
        """Add bytes; returns the chunks they completed, in order."""
        if self._finished:
            raise ValueError("feed() after finish()")
        self._buf += data
        out: list[bytes] = []
        start = 0
        buf = self._buf
        with memoryview(buf) as view:
            while len(buf) - start >= self._window:
                cut = self._first_cut(view[start : start + self._window])
                out.append(bytes(view[start : start + cut]))
                start += cut
        # Deleting a prefix only moves the bytearray's start, so this does not copy the tail.
        del buf[:start]
        return out

    def finish(self) -> list[bytes]:
        """The remaining chunks, cut as if the stream ended here."""
        if self._finished:
            return []
        self._finished = True
        buf = self._buf
        out: list[bytes] = []
        with memoryview(buf) as view:
            start = 0
            while start < len(buf):
                cut = self._first_cut(view[start : start + self._window])
                out.append(bytes(view[start : start + cut]))
                start += cut
        buf.clear()
        return out

    def _first_cut(self, window: memoryview) -> int:
        chunks = fastcdc(window, self.min_size, self.avg_size, self.max_size)
        try:
            return int(next(chunks).length)
        finally:
            # The generator holds views of the buffer, which must be gone before it resizes.
            chunks.close()
            del chunks


def chunk_stream(
    pieces: Iterable[BytesLike],
    min_size: int = CHUNK_MIN,
    avg_size: int = CHUNK_AVG,
    max_size: int = CHUNK_MAX,
) -> Iterator[bytes]:
    """Chunks of the concatenation of `pieces`, yielded as soon as each is final.

    Large pieces are fed in slices so that at most one batch of chunks is held at a time.
    """
    chunker = Chunker(min_size, avg_size, max_size)
    step = DEFAULT_BATCH
    for piece in pieces:
        if len(piece) <= step:
            yield from chunker.feed(piece)
            continue
        with memoryview(piece) as view, view.cast("B") as flat:
            for pos in range(0, len(flat), step):
                yield from chunker.feed(flat[pos : pos + step])
    yield from chunker.finish()
