"""Streaming FastCDC: the cut points real castore servers use, over a stream of any pieces.

Real castore servers split blobs with FastCDC (min/avg/max 128/256/512 KiB), and ours must cut
at exactly the same places so that chunk digests, and hence deduplication, agree with theirs.
The scan itself is in C (`_fastcdc.c`): it is the hot loop of every upload, and it runs without
the GIL, so receiving and hashing go on meanwhile. It carries its rolling hash from one piece
to the next, so a chunk may span pieces without their being joined first.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from . import _fastcdc  # type: ignore[attr-defined]
from .errors import InvalidInput

log = logging.getLogger(__name__)

CHUNK_MIN = 128 * 1024
CHUNK_AVG = 256 * 1024
CHUNK_MAX = 512 * 1024

DEFAULT_BATCH = 4 << 20
"""The largest slice of one piece fed at once, so that a huge piece yields chunks as it goes."""

BytesLike = bytes | bytearray | memoryview


@dataclass(frozen=True, slots=True)
class CutRule:
    """FastCDC's parameters as the scan uses them, derived as the fastcdc package derives them.

    Hashing starts at `min_size`; up to `center_size` a cut needs `mask_s`'s bits clear (harder),
    then `mask_l`'s (easier), which pulls chunk sizes towards the average. With castore's sizes
    the centre lies below the minimum, so only the easier mask is ever used.
    """

    min_size: int
    center_size: int
    max_size: int
    mask_s: int
    mask_l: int

    @classmethod
    def for_sizes(cls, min_size: int, avg_size: int, max_size: int) -> CutRule:
        if not (64 <= min_size <= avg_size <= max_size <= 1 << 30 and avg_size >= 256):
            raise InvalidInput(
                f"chunk sizes must satisfy 64 <= min <= avg <= max <= 1 GiB and avg >= 256, "
                f"not {min_size}/{avg_size}/{max_size}"
            )
        offset = min(min_size + (min_size + 1) // 2, avg_size)
        center = min(avg_size - offset, max_size)
        bits = round(math.log2(avg_size))
        return cls(min_size, center, max_size, (1 << (bits + 1)) - 1, (1 << (bits - 1)) - 1)


def _immutable(data: BytesLike) -> memoryview:
    """A flat view of `data` that no caller can change later: copied unless backed by bytes."""
    view = memoryview(data)
    if view.readonly and isinstance(view.obj, bytes) and view.c_contiguous:
        return view.cast("B") if view.format != "B" or view.ndim != 1 else view
    return memoryview(bytes(view))


class Chunker:
    """Cuts a byte stream fed in pieces of any size into FastCDC chunks.

    Pieces are kept as views until the chunk they belong to is cut, so every byte is copied
    once, into its chunk. Pieces not backed by `bytes` are copied on arrival, so callers may
    reuse their buffers. At most one unfinished chunk (< max_size bytes) is held.
    """

    def __init__(
        self,
        min_size: int = CHUNK_MIN,
        avg_size: int = CHUNK_AVG,
        max_size: int = CHUNK_MAX,
    ) -> None:
        rule = CutRule.for_sizes(min_size, avg_size, max_size)
        self._rule = (rule.min_size, rule.center_size, rule.max_size, rule.mask_s, rule.mask_l)
        self._pending: list[memoryview] = []
        self._position = 0
        self._pattern = 0
        self._finished = False

    def feed(self, data: BytesLike) -> list[bytes]:
        """Add bytes; returns the chunks they completed, in order."""
        if self._finished:
            raise InvalidInput("feed() after finish()")
        piece = _immutable(data)
        out: list[bytes] = []
        start = 0
        while start < len(piece):
            end, self._pattern, cut = _fastcdc.scan(
                piece, start, self._position, self._pattern, *self._rule
            )
            self._pending.append(piece[start:end])
            start = end
            if cut:
                out.append(self._take())
            else:
                self._position += len(self._pending[-1])
        return out

    def finish(self) -> list[bytes]:
        """The remaining chunk, cut as if the stream ended here."""
        if self._finished:
            return []
        self._finished = True
        return [self._take()] if self._pending else []

    def _take(self) -> bytes:
        parts, self._pending = self._pending, []
        self._position = 0
        self._pattern = 0
        return bytes(parts[0]) if len(parts) == 1 else b"".join(parts)


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
