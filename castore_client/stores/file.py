"""An embedded store on the local filesystem (`file:///abs/path`) that survives restarts.

Layout under the store's directory:

    chunks/<first 2 hex digits>/<64 hex digits>   one piece: a chunk, or a whole small blob
    meta.sqlite                                   chunk lists, directories, path infos (WAL)

Pieces are immutable and named by their digest, so they are written once, atomically (a
temporary file in the same directory, then a rename), and never locked. Everything that says
"this exists" for a chunked blob, a directory or a path info is a row in SQLite, written only
after what it refers to is in place, so a reader never sees a blob whose chunks are missing.
SQLite in WAL mode lets readers in several threads and processes run next to one writer; each
thread gets its own connection because the gRPC server calls in from a thread pool.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sqlite3
import struct
import tempfile
import threading
import weakref
from collections import deque
from collections.abc import Iterable, Iterator
from pathlib import Path

from ..codec import decode_directory, decode_path_info, encode_path_info
from ..digest import B3Digest
from ..directory import Directory, Node, SizeFormula
from ..errors import BlobNotFound, PathInfoNotFound, StoreClosed, UnsupportedStoreVersion
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

SCHEMA_VERSION = 1
BUSY_TIMEOUT_S = 60.0
LIST_PAGE = 256
READ_AHEAD_CHUNKS = 8
"""Chunk files a blob read asks the kernel to fetch before they are needed.

Each chunk is a file of its own, so the kernel's read-ahead stops at every chunk's end; from a
cold disk, reading them one by one costs a full disk round trip per chunk.
"""

_SCHEMA = """
CREATE TABLE IF NOT EXISTS blob_chunks (digest BLOB PRIMARY KEY, chunks BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS directories (digest BLOB PRIMARY KEY, encoded BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS path_infos (hash BLOB PRIMARY KEY, encoded BLOB NOT NULL);
"""

_CHUNK_RECORD = struct.Struct(">32sQ")


def pack_chunks(chunks: Iterable[ChunkMeta]) -> bytes:
    return b"".join(_CHUNK_RECORD.pack(meta.digest.raw, meta.size) for meta in chunks)


def unpack_chunks(packed: bytes) -> list[ChunkMeta]:
    return [ChunkMeta(B3Digest(raw), size) for raw, size in _CHUNK_RECORD.iter_unpack(packed)]


class _Connection(sqlite3.Connection):
    """A connection that can be weakly referenced (the base class cannot)."""


class Database:
    """The metadata database, with one connection per thread that uses it.

    A connection lives as long as its thread (thread pools such as trio's retire idle
    threads, and their connections go with them); `close` closes those still alive.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._local = threading.local()
        self._lock = threading.Lock()
        self._connections: weakref.WeakSet[_Connection] = weakref.WeakSet()
        self._closed = False
        self.connection().execute("PRAGMA journal_mode=WAL")
        with self.transaction() as conn:
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            if version > SCHEMA_VERSION:
                raise UnsupportedStoreVersion(
                    f"{path} has schema version {version}; this program knows up to "
                    f"{SCHEMA_VERSION}"
                )
            for statement in filter(str.strip, _SCHEMA.split(";")):
                conn.execute(statement)
            conn.execute(f"PRAGMA user_version={SCHEMA_VERSION}")

    def connection(self) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is not None and not self._closed:
            return conn
        with self._lock:
            if self._closed:
                raise StoreClosed(f"the store at {self.path.parent} is closed")
            new = sqlite3.connect(
                self.path,
                timeout=BUSY_TIMEOUT_S,
                isolation_level=None,
                check_same_thread=False,
                factory=_Connection,
            )
            new.execute("PRAGMA synchronous=NORMAL")
            self._connections.add(new)
        self._local.conn = new
        return new

    @contextlib.contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """A write transaction that takes the write lock up front, so it cannot deadlock."""
        conn = self.connection()
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield conn
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")

    def query_one(self, sql: str, params: tuple[object, ...]) -> tuple[object, ...] | None:
        row: tuple[object, ...] | None = self.connection().execute(sql, params).fetchone()
        return row

    def close(self) -> None:
        with self._lock:
            self._closed = True
            connections = list(self._connections)
            self._connections.clear()
        for conn in connections:
            conn.close()


class FileBlobService:
    def __init__(self, root: Path, db: Database, *, sync: bool = False) -> None:
        self.root = root
        self.chunk_dir = root / "chunks"
        self._db = db
        self._sync = sync

    def piece_path(self, digest: B3Digest) -> Path:
        name = digest.raw.hex()
        return self.chunk_dir / name[:2] / name

    def stat(self, digest: B3Digest, *, timeout: float | None = None) -> list[ChunkMeta]:
        chunks = self._chunk_list(digest)
        if chunks is not None:
            return chunks
        if self.piece_path(digest).is_file():
            return []
        raise BlobNotFound(f"blob {digest} not found")

    def read(self, digest: B3Digest, *, timeout: float | None = None) -> Iterator[bytes]:
        """Raises BlobNotFound on the call itself, not on the first `next()`.

        A blob stored whole (every small file) is a piece file of its own, and a chunked one
        never is: trying the file first spares most reads a database query, which after a
        cold start is a disk read of its own.
        """
        try:
            piece = self.piece_path(digest).read_bytes()
        except FileNotFoundError:
            chunks = self._chunk_list(digest)
            if chunks is None:
                raise BlobNotFound(f"blob {digest} not found") from None
            return self._read_chunks(digest, chunks)
        return split_piece(piece)

    def put(self, data: Iterable[bytes], *, timeout: float | None = None) -> B3Digest:
        blob = ingest_blob(data, self._write_piece)
        if blob.chunks:
            with self._db.transaction() as conn:
                conn.execute(
                    "INSERT OR REPLACE INTO blob_chunks (digest, chunks) VALUES (?, ?)",
                    (blob.digest.raw, pack_chunks(blob.chunks)),
                )
        return blob.digest

    def _chunk_list(self, digest: B3Digest) -> list[ChunkMeta] | None:
        row = self._db.query_one("SELECT chunks FROM blob_chunks WHERE digest = ?", (digest.raw,))
        if row is None:
            return None
        packed = row[0]
        assert isinstance(packed, bytes)
        return unpack_chunks(packed)

    def _read_chunks(self, digest: B3Digest, chunks: list[ChunkMeta]) -> Iterator[bytes]:
        ahead: deque[tuple[ChunkMeta, int | None]] = deque()
        upcoming = iter(chunks)
        try:
            while True:
                while len(ahead) < READ_AHEAD_CHUNKS and (meta := next(upcoming, None)):
                    ahead.append((meta, self._open_ahead(meta.digest)))
                if not ahead:
                    return
                meta, fd = ahead.popleft()
                if fd is None:
                    raise BlobNotFound(f"chunk {meta.digest} of blob {digest} is missing")
                with open(fd, "rb") as piece_file:
                    piece = piece_file.read()
                yield from split_piece(piece)
        finally:
            for _, fd in ahead:
                if fd is not None:
                    os.close(fd)

    def _open_ahead(self, digest: B3Digest) -> int | None:
        """An open chunk file whose bytes the kernel has started reading; None if missing."""
        try:
            fd = os.open(self.piece_path(digest), os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            return None
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_WILLNEED)
        return fd

    def _write_piece(self, digest: B3Digest, data: bytes) -> None:
        path = self.piece_path(digest)
        with contextlib.suppress(FileNotFoundError):
            # A size mismatch means a write torn by a crash: replace it.
            if path.stat().st_size == len(data):
                return
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
        try:
            with os.fdopen(fd, "wb") as out:
                out.write(data)
                if self._sync:
                    out.flush()
                    os.fsync(out.fileno())
            os.chmod(tmp, 0o444)
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise


class FileDirectoryService(DirectoryLookupService):
    def __init__(self, db: Database, formula: SizeFormula = SizeFormula.CURRENT) -> None:
        self.formula = formula
        self._db = db

    def put(self, directories: Iterable[Directory], *, timeout: float | None = None) -> B3Digest:
        root, accepted = validate_upload(directories, self.formula)
        with self._db.transaction() as conn:
            conn.executemany(
                "INSERT OR IGNORE INTO directories (digest, encoded) VALUES (?, ?)",
                ((d.digest.raw, d.encoded) for d in accepted),
            )
        log.debug("stored %d directories under root %s", len(accepted), root)
        return root

    def _lookup(self, digest: B3Digest) -> Directory | None:
        row = self._db.query_one("SELECT encoded FROM directories WHERE digest = ?", (digest.raw,))
        if row is None:
            return None
        encoded = row[0]
        assert isinstance(encoded, bytes)
        return decode_directory(encoded)


class FilePathInfoService:
    def __init__(
        self, db: Database, blobs: FileBlobService, directories: FileDirectoryService
    ) -> None:
        self._db = db
        self._blobs = blobs
        self._directories = directories

    def get_by_hash(self, digest: bytes, *, timeout: float | None = None) -> PathInfo:
        digest = check_store_hash(digest)
        row = self._db.query_one("SELECT encoded FROM path_infos WHERE hash = ?", (digest,))
        if row is None:
            raise PathInfoNotFound(f"no path info for hash {digest.hex()}")
        encoded = row[0]
        assert isinstance(encoded, bytes)
        return decode_path_info(encoded)

    def get(self, store_path: StorePath, *, timeout: float | None = None) -> PathInfo:
        return expect_store_path(self.get_by_hash(store_path.digest), store_path)

    def list(self, *, timeout: float | None = None) -> Iterator[PathInfo]:
        """Pages by key, so no cursor stays open across yields (or across threads)."""
        after = b""
        while True:
            rows = (
                self._db.connection()
                .execute(
                    "SELECT hash, encoded FROM path_infos WHERE hash > ? ORDER BY hash LIMIT ?",
                    (after, LIST_PAGE),
                )
                .fetchall()
            )
            for _, encoded in rows:
                yield decode_path_info(encoded)
            if len(rows) < LIST_PAGE:
                return
            after = rows[-1][0]

    def put(self, path_info: PathInfo, *, timeout: float | None = None) -> PathInfo:
        path_info.validate()
        key = path_info.store_path.digest
        with self._db.transaction() as conn:
            conn.execute(
                "INSERT OR REPLACE INTO path_infos (hash, encoded) VALUES (?, ?)",
                (key, encode_path_info(path_info)),
            )
        return path_info

    def calculate_nar(self, node: Node, *, timeout: float | None = None) -> tuple[int, bytes]:
        return nar_of(node, self._blobs, self._directories.get)


def open_file_store(
    path: Path | str, formula: SizeFormula = SizeFormula.CURRENT, *, sync: bool = False
) -> Services:
    """Open (creating if needed) the store in directory `path`.

    `sync` fsyncs every piece before it is renamed into place. Off by default: readers verify
    every piece against its digest anyway, and a piece left short by a crash (the usual way a
    crash tears a file) is rewritten by the next put of the same content.
    """
    root = Path(path)
    (root / "chunks").mkdir(parents=True, exist_ok=True)
    db = Database(root / "meta.sqlite")
    blobs = FileBlobService(root, db, sync=sync)
    directories = FileDirectoryService(db, formula)
    path_infos = FilePathInfoService(db, blobs, directories)
    log.debug("opened file store at %s", root)
    return Services(blobs, directories, path_infos, closers=[db.close])
