"""Logic the memory and file stores share, so that both follow the spec in exactly one way."""

from __future__ import annotations

import abc
import logging
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from functools import partial

from ..chunked_reader import open_blob
from ..chunking import chunk_stream
from ..closure import UploadValidator
from ..digest import B3Digest, BackgroundHasher
from ..directory import Directory, Node, SizeFormula
from ..errors import DirectoryNotFound
from ..nar import GetDirectory, nar_size_and_sha256
from ..pipeline import OrderedWorker
from ..services import BlobService, ChunkMeta

log = logging.getLogger(__name__)

READ_PIECE = 1 << 20
"""The largest piece `BlobService.read` yields, well under gRPC's 4 MiB message limit."""

PieceWriter = Callable[[B3Digest, bytes], None]
DirectoryLookup = Callable[[B3Digest], Directory | None]


@dataclass(frozen=True, slots=True)
class IngestedBlob:
    """The outcome of splitting one blob: its digest and, if it has two or more, its chunks."""

    digest: B3Digest
    size: int
    chunks: tuple[ChunkMeta, ...] = field(default=())


def ingest_blob(data: Iterable[bytes], write_piece: PieceWriter) -> IngestedBlob:
    """Hash a blob while cutting it into chunks, handing each chunk to `write_piece` as it is cut.

    A blob of one chunk is that chunk, so its single piece is already stored under the blob
    digest; an empty blob has no chunks and is stored as an empty piece. Chunking holds the
    GIL, hashing and writing do not: the whole-blob hash and the hash-and-store of each chunk
    run on two helper threads, so all three overlap.
    """
    size = 0
    chunks: list[ChunkMeta] = []

    def store(chunk: bytes) -> None:
        digest = B3Digest.of(chunk)
        write_piece(digest, chunk)
        chunks.append(ChunkMeta(digest, len(chunk)))

    with BackgroundHasher() as whole, OrderedWorker(store, name="chunk-store") as storing:

        def hashed() -> Iterator[bytes]:
            nonlocal size
            for piece in data:
                whole.update(piece)
                size += len(piece)
                yield piece

        for chunk in chunk_stream(hashed()):
            storing.submit(chunk)
        storing.finish()
        digest = whole.digest()
    if not chunks:
        write_piece(digest, b"")
    log.debug("ingested blob %s: %d bytes, %d chunks", digest, size, len(chunks))
    return IngestedBlob(digest, size, tuple(chunks) if len(chunks) >= 2 else ())


def split_piece(data: bytes) -> Iterator[bytes]:
    """A stored piece as `read` yields it: nothing for an empty piece, else <= 1 MiB slices."""
    if len(data) <= READ_PIECE:
        if data:
            yield data
        return
    view = memoryview(data)
    for pos in range(0, len(data), READ_PIECE):
        yield bytes(view[pos : pos + READ_PIECE])


def read_blob_bytes(blobs: BlobService, digest: B3Digest) -> Iterator[bytes]:
    """The verified bytes of a blob, in pieces (for NAR rendering, which checks the length)."""
    reader = open_blob(blobs, digest)
    try:
        pos = 0
        while piece := reader.read_at(pos, READ_PIECE):
            pos += len(piece)
            yield piece
    finally:
        reader.close()


def validate_upload(
    directories: Iterable[Directory], formula: SizeFormula
) -> tuple[B3Digest, list[Directory]]:
    """Check a whole leaves-first Put stream; returns its root and the distinct directories.

    Nothing may be stored before this returns, so that a rejected Put leaves no trace.
    """
    validator = UploadValidator(formula)
    accepted: dict[B3Digest, Directory] = {}
    for directory in directories:
        digest = validator.add(directory)
        accepted.setdefault(digest, directory)
    root = validator.finish()
    return root, list(accepted.values())


def walk_closure(root: B3Digest, lookup: DirectoryLookup) -> Iterator[Directory]:
    """Breadth-first from `root`, children in name order, each directory once.

    A generator, so an unknown root raises DirectoryNotFound on the first `next()`: the gRPC
    server relies on that to answer an unknown root with an empty stream.
    """
    seen = {root}
    queue: deque[tuple[B3Digest, B3Digest | None]] = deque([(root, None)])
    while queue:
        digest, parent = queue.popleft()
        directory = lookup(digest)
        if directory is None:
            if parent is None:
                raise DirectoryNotFound(f"directory {digest} not found")
            raise DirectoryNotFound(f"directory {digest}, a child of {parent}, not found")
        yield directory
        for child in directory.directories:
            if child.digest not in seen:
                seen.add(child.digest)
                queue.append((child.digest, digest))


def nar_of(node: Node, blobs: BlobService, get_directory: GetDirectory) -> tuple[int, bytes]:
    """(size, sha256) of the NAR of `node`, reading only verified blob bytes."""
    return nar_size_and_sha256(node, partial(read_blob_bytes, blobs), get_directory)


class DirectoryLookupService(abc.ABC):
    """get and get_recursive for stores that can look one directory up by digest."""

    @abc.abstractmethod
    def _lookup(self, digest: B3Digest) -> Directory | None: ...

    def get(self, digest: B3Digest, *, timeout: float | None = None) -> Directory:
        directory = self._lookup(digest)
        if directory is None:
            raise DirectoryNotFound(f"directory {digest} not found")
        return directory

    def get_recursive(
        self, digest: B3Digest, *, timeout: float | None = None
    ) -> Iterator[Directory]:
        """Raises DirectoryNotFound for an unknown root on the first `next()`."""
        return walk_closure(digest, self._lookup)
