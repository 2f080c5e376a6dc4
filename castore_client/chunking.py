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

    Memory stays below `batch` bytes of buffer plus the chunks returned by one `feed` call;
    the input is copied on arrival, so callers may reuse their buffers.
    """

    def __init__(
        self,
        min_size: int = CHUNK_MIN,
        avg_size: int = CHUNK_AVG,
        max_size: int = CHUNK_MAX,
        *,
        batch: int = DEFAULT_BATCH,
    ) -> None:
        self.min_size = min_size
        self.avg_size = avg_size
        self.max_size = max_size
        self._window = window_size(max_size)
        # A scan must be able to finish at least one chunk, or feeding would never make progress.
        self._batch = max(batch, 2 * self._window)
        self._buf = bytearray()
        self._finished = False

    def feed(self, data: BytesLike) -> list[bytes]:
        """Add bytes; returns the chunks they completed, in order."""
        if self._finished:
            raise ValueError("feed() after finish()")
        out: list[bytes] = []
        with memoryview(data) as view, view.cast("B") as flat:
            pos = 0
            while pos < len(flat):
                take = self._batch - len(self._buf)
                self._buf += flat[pos : pos + take]
                pos += take
                if len(self._buf) >= self._batch:
                    out.extend(self._scan(final=False))
        return out

    def finish(self) -> list[bytes]:
        """The remaining chunks, cut as if the stream ended here."""
        if self._finished:
            return []
        self._finished = True
        return self._scan(final=True)

    def _scan(self, *, final: bool) -> list[bytes]:
        out: list[bytes] = []
        buf = self._buf
        limit = len(buf) if final else len(buf) - self._window
        consumed = 0
        with memoryview(buf) as view:
            chunks = fastcdc(view, self.min_size, self.avg_size, self.max_size)
            try:
                for chunk in chunks:
                    if chunk.offset > limit:
                        break
                    end = chunk.offset + chunk.length
                    out.append(bytes(view[chunk.offset : end]))
                    consumed = end
            finally:
                # The generator holds views of the buffer, which must be gone before it shrinks.
                chunks.close()
                del chunks
        # Deleting a prefix only moves the bytearray's start, so this does not copy the tail.
        del buf[:consumed]
        return out


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
