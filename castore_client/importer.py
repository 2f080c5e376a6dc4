"""Importing local files, directories and symlinks into a store, named as Nix names them.

One walk over the tree does everything that needs the bytes: it feeds the NAR hash (which
names the store path), hashes each file's blob, and queues the blob for uploader threads.
Small files wait in memory; a large file is read a second time only if the store does not
have its blob yet, so the NAR is computed in a single pass and unchanged content is never
sent twice. Uploads start once the walk is done (or once 256 MiB are queued): if the store
already has the resulting store path, nothing at all is sent or even asked about. The
PathInfo is registered last: a failed import leaves only unreferenced blobs and directories
behind, never a half-registered store path.
"""

from __future__ import annotations

import logging
import os
import stat
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field

from .digest import B3Digest, hasher
from .directory import Directory, DirectoryNode, FileNode, Node, SymlinkNode, validate_name
from .errors import BlobNotFound, CastoreError, ImportFailed, PathInfoNotFound
from .nar import NarHasher
from .pathinfo import ContentAddress, HashType, NarInfo, PathInfo
from .services import Services
from .storepath import StorePath
from .text import printable

log = logging.getLogger(__name__)

READ_PIECE = 1 << 20
IN_MEMORY_LIMIT = 8 << 20
MAX_BYTES_IN_FLIGHT = 64 << 20
MAX_DEFERRED_BYTES = 256 << 20


@dataclass
class ImportResult:
    store_path: StorePath
    node: Node
    nar_size: int
    nar_sha256: bytes
    blobs_uploaded: int = 0
    blobs_skipped: int = 0
    bytes_uploaded: int = 0


@dataclass
class Progress:
    """Callbacks for a progress display; every one is optional and called from the walk."""

    on_bytes: Callable[[int], None] = lambda n: None
    on_file: Callable[[], None] = lambda: None
    on_upload: Callable[[int], None] = lambda n: None
    """A large file the store lacked was sent (after its first read was counted)."""


@dataclass
class _Counters:
    lock: threading.Lock = field(default_factory=threading.Lock)
    uploaded: int = 0
    skipped: int = 0
    bytes: int = 0


class _Uploader:
    """Stat, then Put if missing, on a few threads; bytes in flight are bounded."""

    def __init__(self, services: Services, workers: int, progress: Progress) -> None:
        self.blobs = services.blobs
        self.progress = progress
        self.pool = ThreadPoolExecutor(workers, thread_name_prefix="castore-import")
        self.futures: list[Future[None]] = []
        self.budget = threading.BoundedSemaphore(MAX_BYTES_IN_FLIGHT // READ_PIECE)
        self.counters = _Counters()
        self.seen: set[B3Digest] = set()
        self.started = False
        self.deferred: list[tuple[B3Digest, int, bytes | None, bytes]] = []
        self.deferred_bytes = 0

    def submit(self, digest: B3Digest, size: int, data: bytes | None, path: bytes) -> None:
        """Queue a blob; nothing is sent until `start()` or until too much is queued."""
        if digest in self.seen:
            return
        self.seen.add(digest)
        if not self.started:
            self.deferred.append((digest, size, data, path))
            self.deferred_bytes += len(data) if data is not None else 0
            if self.deferred_bytes > MAX_DEFERRED_BYTES:
                self.start()
            return
        self._send(digest, size, data, path)

    def start(self) -> None:
        self.started = True
        deferred, self.deferred = self.deferred, []
        for item in deferred:
            self._send(*item)

    def discard(self) -> int:
        """Drop what was queued: the store already has all of it. Returns how many."""
        count = len(self.deferred)
        self.deferred = []
        return count

    def _send(self, digest: B3Digest, size: int, data: bytes | None, path: bytes) -> None:
        tokens = max(
            1, min(len(data) if data is not None else 0, MAX_BYTES_IN_FLIGHT) // READ_PIECE
        )
        for _ in range(tokens):
            self.budget.acquire()
        future = self.pool.submit(self._upload, digest, size, data, path, tokens)
        self.futures.append(future)
        if len(self.futures) > 1024:
            self._reap()

    def _upload(
        self, digest: B3Digest, size: int, data: bytes | None, path: bytes, tokens: int
    ) -> None:
        try:
            try:
                self.blobs.stat(digest)
            except BlobNotFound:
                pass
            else:
                with self.counters.lock:
                    self.counters.skipped += 1
                return
            pieces = [data] if data is not None else _read_again(path, digest, size)
            got = self.blobs.put(pieces)
            if got != digest:
                raise ImportFailed(f"{_show(path)}: changed while being imported")
            with self.counters.lock:
                self.counters.uploaded += 1
                self.counters.bytes += size
            if data is None:
                self.progress.on_upload(size)
        finally:
            for _ in range(tokens):
                self.budget.release()

    def _reap(self) -> None:
        pending = []
        for future in self.futures:
            if future.done():
                future.result()
            else:
                pending.append(future)
        self.futures = pending

    def finish(self) -> None:
        try:
            for future in self.futures:
                future.result()
        finally:
            self.pool.shutdown(wait=True, cancel_futures=True)


def _read_again(path: bytes, digest: B3Digest, size: int):  # type: ignore[no-untyped-def]
    """A large file's pieces for upload; the digest check after Put catches any change."""
    try:
        with open(path, "rb") as f:
            while piece := f.read(READ_PIECE):
                yield piece
    except OSError as exc:
        raise ImportFailed(f"{_show(path)}: {exc.strerror}") from None


def import_path(
    path: str | bytes | os.PathLike[str] | os.PathLike[bytes],
    services: Services,
    *,
    progress: Progress | None = None,
    workers: int = 8,
) -> ImportResult:
    """Upload `path` and register it as the store path `nix-store --add` would create."""
    given = os.fsencode(path)
    source = os.path.abspath(given)
    store_name = _store_name(given, source)
    walker = _Walker(services, progress or Progress(), workers)
    try:
        node = walker.node(source, b"")
    except BaseException:
        walker.uploader.pool.shutdown(wait=True, cancel_futures=True)
        raise
    nar_size, nar_sha256 = walker.nar.finish()
    store_path = StorePath.for_source(store_name, nar_sha256)
    root = _renamed(node, str(store_path).encode())
    counters = walker.uploader.counters
    if not walker.uploader.started and _already_registered(services, store_path, root):
        # A registered store path is complete by construction (its PathInfo is written
        # last), so content that hashes to it needs nothing sent.
        counters.skipped += walker.uploader.discard()
        walker.uploader.pool.shutdown(wait=True)
        log.debug("%s is already in the store", store_path.absolute)
    else:
        try:
            walker.uploader.start()
            walker.uploader.finish()
        except BaseException:
            walker.uploader.pool.shutdown(wait=True, cancel_futures=True)
            raise
        if walker.directories:
            services.directories.put(walker.directories)
        narinfo = NarInfo(
            nar_size=nar_size,
            nar_sha256=nar_sha256,
            ca=ContentAddress(HashType.NAR_SHA256, nar_sha256),
        )
        services.path_infos.put(PathInfo(node=root, narinfo=narinfo))
    log.debug(
        "%s: %d blobs uploaded (%d bytes), %d already present",
        store_path.absolute,
        counters.uploaded,
        counters.bytes,
        counters.skipped,
    )
    return ImportResult(
        store_path, root, nar_size, nar_sha256, counters.uploaded, counters.skipped, counters.bytes
    )


class _Walker:
    def __init__(self, services: Services, progress: Progress, workers: int) -> None:
        self.nar = NarHasher()
        self.uploader = _Uploader(services, workers, progress)
        self.progress = progress
        self.directories: list[Directory] = []
        self._known: set[B3Digest] = set()

    def node(self, path: bytes, name: bytes) -> Node:
        try:
            st = os.lstat(path)
        except OSError as exc:
            raise ImportFailed(f"{_show(path)}: {exc.strerror}") from None
        if stat.S_ISLNK(st.st_mode):
            return self.symlink(path, name)
        if stat.S_ISDIR(st.st_mode):
            return self.directory(path, name)
        if stat.S_ISREG(st.st_mode):
            return self.file(path, name)
        kind = _kind(st.st_mode)
        raise ImportFailed(f"{_show(path)}: is a {kind}; only files, directories and symlinks")

    def symlink(self, path: bytes, name: bytes) -> SymlinkNode:
        try:
            target = os.readlink(path)
        except OSError as exc:
            raise ImportFailed(f"{_show(path)}: {exc.strerror}") from None
        self.nar.symlink(target)
        return SymlinkNode(name, target)

    def directory(self, path: bytes, name: bytes) -> DirectoryNode:
        try:
            names = sorted(os.listdir(path))
        except OSError as exc:
            raise ImportFailed(f"{_show(path)}: {exc.strerror}") from None
        self.nar.begin_directory()
        children = []
        for child in names:
            validate_name(child)
            self.nar.entry(child)
            children.append(self.node(os.path.join(path, child), child))
        self.nar.end_directory()
        directory = Directory.of(children)
        directory.validate()
        if directory.digest not in self._known:
            self._known.add(directory.digest)
            self.directories.append(directory)
        return DirectoryNode(name, directory.digest, directory.size())

    def file(self, path: bytes, name: bytes) -> FileNode:
        try:
            # Non-blocking and not following links: a path swapped for a fifo or a symlink
            # since lstat() must fail here, not hang or import something else.
            fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW)
        except OSError as exc:
            raise ImportFailed(f"{_show(path)}: {exc.strerror}") from None
        with open(fd, "rb") as f:
            st = os.fstat(f.fileno())
            if not stat.S_ISREG(st.st_mode):
                raise ImportFailed(f"{_show(path)}: changed while being imported")
            executable = bool(st.st_mode & stat.S_IXUSR)
            size = st.st_size
            self.nar.regular(size, executable)
            blob = hasher()
            kept = bytearray() if size <= IN_MEMORY_LIMIT else None
            total = 0
            try:
                while piece := f.read(READ_PIECE):
                    total += len(piece)
                    if total > size:
                        break
                    self.nar.data(piece)
                    blob.update(piece)
                    if kept is not None:
                        kept += piece
                    self.progress.on_bytes(len(piece))
            except OSError as exc:
                raise ImportFailed(f"{_show(path)}: {exc.strerror}") from None
            if total != size:
                raise ImportFailed(f"{_show(path)}: changed size while being imported")
            self.nar.end_regular()
        digest = B3Digest(blob.digest())
        self.uploader.submit(digest, size, bytes(kept) if kept is not None else None, path)
        self.progress.on_file()
        return FileNode(name, digest, size, executable)


def nix_name(path: bytes) -> bytes:
    """The name `nix-store --add PATH` gives the store path: what follows the last slash of
    PATH as typed, after dropping one trailing slash.

    The contents are those of the path made absolute with `.` and `..` resolved textually,
    but the name is not taken from that: `src/tree/.` is named `.` (not `tree`), `src/tree/..`
    is named `..`, `src/tree/` is `tree` and `src/tree//` has an empty name (what nix-store
    2.8 does with each).
    """
    if len(path) > 1 and path.endswith(b"/"):
        path = path[:-1]
    return path.rpartition(b"/")[2]


def _store_name(given: bytes, source: bytes) -> str:
    """The store path name for the path the user gave; ImportFailed if it cannot be one."""
    name = nix_name(given)
    try:
        store_name = name.decode("ascii")
    except UnicodeDecodeError:
        raise ImportFailed(
            f"{_show(given)}: {_show(name)} cannot be a store path name (ASCII only)"
        ) from None
    try:
        StorePath(bytes(20), store_name)
    except CastoreError as exc:
        hint = ""
        if store_name in ("", ".", ".."):
            # nix-store --add names these as typed too, and store paths may not be so named.
            hint = f"; give the directory by its own name: {_show(source)}"
        raise ImportFailed(
            f"{_show(given)}: nix-store --add names it {store_name!r}, and {exc}{hint}"
        ) from None
    return store_name


def _already_registered(services: Services, store_path: StorePath, root: Node) -> bool:
    try:
        existing = services.path_infos.get(store_path)
    except PathInfoNotFound:
        return False
    return existing.node == root


def _renamed(node: Node, name: bytes) -> Node:
    if isinstance(node, DirectoryNode):
        return DirectoryNode(name, node.digest, node.size)
    if isinstance(node, FileNode):
        return FileNode(name, node.digest, node.size, node.executable)
    return SymlinkNode(name, node.target)


def _kind(mode: int) -> str:
    if stat.S_ISSOCK(mode):
        return "socket"
    if stat.S_ISFIFO(mode):
        return "fifo"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "device node"
    return "special file"


def _show(path: bytes) -> str:
    return printable(path)


def tree_totals(path: str | bytes) -> tuple[int, int]:
    """(files, bytes) below `path`, for a progress bar's totals; errors are left to the import."""
    files = size = 0
    stack = [os.fsencode(path)]
    while stack:
        current = stack.pop()
        try:
            st = os.lstat(current)
        except OSError:
            continue
        if stat.S_ISDIR(st.st_mode):
            try:
                stack.extend(os.path.join(current, n) for n in os.listdir(current))
            except OSError:
                continue
        elif stat.S_ISREG(st.st_mode):
            files += 1
            size += st.st_size
    return files, size
