"""An embedded store in process memory: for tests, and for a throwaway server (`memory://`).

It stores exactly what the file store stores (chunks cut the same way, directories validated
the same way), so tests written against it exercise the same shapes a real server produces.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterable, Iterator

from ..digest import B3Digest
from ..directory import Directory, Node, SizeFormula
from ..errors import BlobNotFound, PathInfoNotFound
from ..pathinfo import PathInfo, expect_store_path
from ..services import ChunkMeta, Services
from ..storepath import StorePath, check_store_hash
from .common import (
    DirectoryLookupService,
    ingest_blob,
    nar_of,
    split_piece,
    validate_upload,
)

log = logging.getLogger(__name__)


class MemoryBlobService:
    """Blobs as pieces (chunks, or whole small blobs) keyed by digest, plus chunk lists."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._pieces: dict[B3Digest, bytes] = {}
        self._chunk_lists: dict[B3Digest, tuple[ChunkMeta, ...]] = {}

    def stat(self, digest: B3Digest, *, timeout: float | None = None) -> list[ChunkMeta]:
        with self._lock:
            chunks = self._chunk_lists.get(digest)
            if chunks is not None:
                return list(chunks)
            if digest in self._pieces:
                return []
        raise BlobNotFound(f"blob {digest} not found")

    def read(self, digest: B3Digest, *, timeout: float | None = None) -> Iterator[bytes]:
        """Raises BlobNotFound on the call itself, not on the first `next()`."""
        with self._lock:
            chunks = self._chunk_lists.get(digest)
            if chunks is None:
                piece = self._pieces.get(digest)
                if piece is None:
                    raise BlobNotFound(f"blob {digest} not found")
                return split_piece(piece)
            # Pieces are never removed, so the chunks listed are there for as long as we read.
            pieces = [self._pieces[meta.digest] for meta in chunks]
        return (part for piece in pieces for part in split_piece(piece))

    def put(self, data: Iterable[bytes], *, timeout: float | None = None) -> B3Digest:
        blob = ingest_blob(data, self._write_piece)
        if blob.chunks:
            with self._lock:
                self._chunk_lists[blob.digest] = blob.chunks
        return blob.digest

    def _write_piece(self, digest: B3Digest, data: bytes) -> None:
        with self._lock:
            self._pieces.setdefault(digest, data)


class MemoryDirectoryService(DirectoryLookupService):
    def __init__(self, formula: SizeFormula = SizeFormula.CURRENT) -> None:
        self.formula = formula
        self._lock = threading.Lock()
        self._directories: dict[B3Digest, Directory] = {}

    def put(self, directories: Iterable[Directory], *, timeout: float | None = None) -> B3Digest:
        root, accepted = validate_upload(directories, self.formula)
        with self._lock:
            for directory in accepted:
                self._directories.setdefault(directory.digest, directory)
        log.debug("stored %d directories under root %s", len(accepted), root)
        return root

    def _lookup(self, digest: B3Digest) -> Directory | None:
        with self._lock:
            return self._directories.get(digest)


class MemoryPathInfoService:
    """PathInfos keyed by the 20-byte hash of their store path, as the wire protocol asks."""

    def __init__(self, blobs: MemoryBlobService, directories: MemoryDirectoryService) -> None:
        self._blobs = blobs
        self._directories = directories
        self._lock = threading.Lock()
        self._path_infos: dict[bytes, PathInfo] = {}

    def get_by_hash(self, digest: bytes, *, timeout: float | None = None) -> PathInfo:
        digest = check_store_hash(digest)
        with self._lock:
            path_info = self._path_infos.get(digest)
        if path_info is None:
            raise PathInfoNotFound(f"no path info for hash {digest.hex()}")
        return path_info

    def get(self, store_path: StorePath, *, timeout: float | None = None) -> PathInfo:
        return expect_store_path(self.get_by_hash(store_path.digest), store_path)

    def list(self, *, timeout: float | None = None) -> Iterator[PathInfo]:
        with self._lock:
            snapshot = list(self._path_infos.values())
        return iter(snapshot)

    def put(self, path_info: PathInfo, *, timeout: float | None = None) -> PathInfo:
        path_info.validate()
        with self._lock:
            self._path_infos[path_info.store_path.digest] = path_info
        return path_info

    def calculate_nar(self, node: Node, *, timeout: float | None = None) -> tuple[int, bytes]:
        return nar_of(node, self._blobs, self._directories.get)


def open_memory_store(formula: SizeFormula = SizeFormula.CURRENT) -> Services:
    """A fresh, empty store that lives as long as the returned object."""
    blobs = MemoryBlobService()
    directories = MemoryDirectoryService(formula)
    return Services(blobs, directories, MemoryPathInfoService(blobs, directories))
