"""Verified chunks on local disk, shared by every mount (and process) on the host.

Files are named by digest and written atomically (temporary file, then rename), so a reader
sees a whole chunk or none. Bytes are verified against their digest on the way in and again
on the way out, since a disk can rot and another process could have written the file; a file
that fails is deleted and treated as a miss.

The size limit holds across processes: the running total lives in a small file next to the
chunks, and everything that adds or removes a chunk (and the check whether it is there
already) happens under one exclusive lock, evicting least recently used chunks (by mtime,
which a hit refreshes) before a new one is added. The total counts exactly the regular files
with a chunk's name in a shard directory (two hex digits); eviction counts the same files,
so the two agree. Anything else in the root (the `.spool` of blob readers, say) is not ours.

The cache is only ever a shortcut. Whatever goes wrong with its filesystem (full, read-only,
a file where a directory should be, a FIFO or a symlink where a chunk should be) is logged,
at most once a minute for each kind of failure, and the caller carries on as if there were no
cache: `put` never raises `OSError` and `get` answers a miss. Files are opened so that
nothing but a regular file is ever read: a FIFO cannot block a read, a symlink cannot
redirect one.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import logging
import os
import pathlib
import re
import secrets
import stat
import threading
import time
from collections.abc import Iterator

from .digest import B3Digest
from .errors import CacheDirUnusable, DigestMismatch
from .units import parse_size  # noqa: F401 - moved there; kept importable from here
from .verify import verified

log = logging.getLogger(__name__)

EVICT_TO = 0.9

COMPLAIN_EVERY = 60.0
"""Seconds between two warnings about the same kind of failure; repeats go to debug."""

_READ = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOCTTY
_DIRECTORY = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_CREATE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
_SHARD = re.compile(r"[0-9a-f]{2}")
_CHUNK = re.compile(r"[0-9a-f]{64}")
_TEMPORARY = ".tmp-"
_SIZE = ".size"
_LOCK = ".lock"
_REFS = ".refs"


def _ref_name(key: bytes) -> str:
    return B3Digest.of(key).raw.hex()


class _Complaints:
    """A failing cache fails on every read; one warning a minute per kind says it as well."""

    def __init__(self, every: float = COMPLAIN_EVERY) -> None:
        self.every = every
        self._lock = threading.Lock()
        self._last: dict[str, float] = {}
        self._quiet: dict[str, int] = {}

    def __call__(self, kind: str, message: str) -> None:
        now = time.monotonic()
        with self._lock:
            last = self._last.get(kind)
            loud = last is None or now - last >= self.every
            if loud:
                self._last[kind] = now
                repeats = self._quiet.pop(kind, 0)
            else:
                self._quiet[kind] = self._quiet.get(kind, 0) + 1
        if not loud:
            log.debug("disk cache: %s", message)
        elif repeats:
            log.warning("disk cache: %s (%d more like it since the last warning)", message, repeats)
        else:
            log.warning("disk cache: %s", message)


def _kind(exc: OSError) -> str:
    return errno.errorcode.get(exc.errno or 0, type(exc).__name__)


def _describe(st: os.stat_result) -> str:
    for test, what in (
        (stat.S_ISDIR, "a directory"),
        (stat.S_ISLNK, "a symlink"),
        (stat.S_ISFIFO, "a FIFO"),
        (stat.S_ISSOCK, "a socket"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
    ):
        if test(st.st_mode):
            return what
    return "not a regular file"


def _read_fd(fd: int, size: int) -> bytes:
    parts = []
    left = size
    while left > 0:
        piece = os.read(fd, min(left, 1 << 20))
        if not piece:
            break
        parts.append(piece)
        left -= len(piece)
    return b"".join(parts)


def _write_new(dir_fd: int, name: str, data: bytes) -> None:
    """`name` in `dir_fd` holds `data` whole, or is left as it was."""
    temporary = f"{_TEMPORARY}{secrets.token_hex(8)}"
    fd = os.open(temporary, _CREATE, 0o600, dir_fd=dir_fd)
    try:
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
        finally:
            os.close(fd)
        os.replace(temporary, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temporary, dir_fd=dir_fd)
        raise


class DiskChunkCache:
    def __init__(self, directory: str | os.PathLike[str], max_bytes: int) -> None:
        """A directory that exists is enough, even read-only (its chunks are still served);
        one that cannot be created or listed means there is no cache, and says why."""
        self.root = pathlib.Path(directory)
        self.max_bytes = max_bytes
        self._complain = _Complaints()
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            os.listdir(self.root)
        except OSError as exc:
            reason = exc.strerror or str(exc)
            if exc.errno == errno.EEXIST:
                reason = "exists and is not a directory"
            raise CacheDirUnusable(exc.errno or 0, reason, str(self.root)) from None

    # ----------------------------------------------------------------------------------------
    # Reading

    def get(self, digest: B3Digest) -> bytes | None:
        """The verified bytes, or None for a miss, whatever state the cache is in."""
        name = digest.raw.hex()
        try:
            return self._load(name, digest)
        except OSError as exc:
            self._complain(f"read {_kind(exc)}", f"cannot read {self._where(name)}: {exc}")
            return None

    def _load(self, name: str, digest: B3Digest) -> bytes | None:
        try:
            shard = os.open(self.root / name[:2], _DIRECTORY)
        except FileNotFoundError:
            return None
        except OSError as exc:
            if exc.errno not in (errno.ELOOP, errno.ENOTDIR):
                raise
            self._complain("shard in the way", f"{self.root / name[:2]} is not a directory")
            return None
        try:
            try:
                fd = os.open(name, _READ, dir_fd=shard)
            except FileNotFoundError:
                return None
            except OSError as exc:
                # ELOOP: a symlink; ENXIO: a socket (or a device without its driver).
                if exc.errno not in (errno.ELOOP, errno.ENXIO):
                    raise
                with contextlib.suppress(FileNotFoundError):
                    self._discard(name, os.stat(name, dir_fd=shard, follow_symlinks=False))
                return None
            try:
                st = os.fstat(fd)
                if not stat.S_ISREG(st.st_mode):
                    self._discard(name, st)
                    return None
                if st.st_size > self.max_bytes:
                    # Perhaps from a mount with a larger limit, so it is left where it is.
                    self._complain("too large", f"{self._where(name)} is larger than the cache")
                    return None
                data = _read_fd(fd, st.st_size)
                try:
                    verified(data, digest, None, f"disk cache entry {digest}")
                except DigestMismatch as exc:
                    self._complain("corrupt", f"{exc}; removing it")
                    self._discard(name, st)
                    return None
                with contextlib.suppress(OSError):
                    os.utime(fd)
                return data
            finally:
                os.close(fd)
        finally:
            os.close(shard)

    def _discard(self, name: str, seen: os.stat_result) -> None:
        """Remove what was found under `name`, unless it was replaced since.

        The total is counted again rather than lowered by the file's size: a file that is
        found bad may have changed size since it was counted (a crash can leave it empty),
        and finding one is rare enough to afford a count.
        """
        if not stat.S_ISREG(seen.st_mode):
            self._complain(
                "not a regular file", f"{self._where(name)} is {_describe(seen)}; removing it"
            )
        try:
            with self._locked() as root:
                shard = os.open(name[:2], _DIRECTORY, dir_fd=root)
                try:
                    try:
                        st = os.stat(name, dir_fd=shard, follow_symlinks=False)
                    except FileNotFoundError:
                        return
                    if (st.st_dev, st.st_ino) != (seen.st_dev, seen.st_ino):
                        return
                    os.unlink(name, dir_fd=shard)
                    if stat.S_ISREG(st.st_mode):
                        self._store_total(root, self._scan_total(root))
                finally:
                    os.close(shard)
        except OSError as exc:
            self._complain(f"remove {_kind(exc)}", f"cannot remove {self._where(name)}: {exc}")

    # ----------------------------------------------------------------------------------------
    # Writing

    def put(self, digest: B3Digest, data: bytes) -> None:
        """Insert bytes the caller has verified; never exceeds the size limit, never raises
        for the cache's own failures (the bytes are then simply not cached)."""
        if len(data) > self.max_bytes:
            return
        name = digest.raw.hex()
        with contextlib.suppress(OSError):
            # Only a shortcut past the lock for the common case; the answer that counts is
            # the one taken under it.
            if stat.S_ISREG(os.stat(self.root / name[:2] / name, follow_symlinks=False).st_mode):
                return
        try:
            with self._locked() as root:
                shard = self._shard(root, name[:2])
                try:
                    self._insert(root, shard, name, data)
                finally:
                    os.close(shard)
        except OSError as exc:
            self._complain(f"write {_kind(exc)}", f"cannot add {self._where(name)}: {exc}")

    def _insert(self, root: int, shard: int, name: str, data: bytes) -> None:
        try:
            st = os.stat(name, dir_fd=shard, follow_symlinks=False)
        except FileNotFoundError:
            pass
        else:
            if stat.S_ISREG(st.st_mode):
                return
            self._complain(
                "not a regular file", f"{self._where(name)} is {_describe(st)}; replacing it"
            )
            os.unlink(name, dir_fd=shard)
        total = self._read_total(root)
        if total + len(data) > self.max_bytes:
            total = self._evict(root, self.max_bytes * EVICT_TO - len(data))
        _write_new(shard, name, data)
        self._store_total(root, total + len(data))

    def _shard(self, root: int, prefix: str) -> int:
        """The shard directory, a real one: whatever else is in its place goes.

        Something in its place means the chunks that were counted in it are gone, so the
        total is counted again.
        """
        try:
            return os.open(prefix, _DIRECTORY, dir_fd=root)
        except FileNotFoundError:
            os.mkdir(prefix, dir_fd=root)
            return os.open(prefix, _DIRECTORY, dir_fd=root)
        except OSError as exc:
            if exc.errno not in (errno.ELOOP, errno.ENOTDIR):
                raise
        self._complain("shard in the way", f"{self.root / prefix} is not a directory; replacing it")
        os.unlink(prefix, dir_fd=root)
        os.mkdir(prefix, dir_fd=root)
        self._store_total(root, self._scan_total(root))
        return os.open(prefix, _DIRECTORY, dir_fd=root)

    @contextlib.contextmanager
    def _locked(self) -> Iterator[int]:
        """The root directory, held under the exclusive lock of every process using it."""
        root = os.open(self.root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            lock = os.open(
                _LOCK, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o666, dir_fd=root
            )
            try:
                fcntl.flock(lock, fcntl.LOCK_EX)
                yield root
            finally:
                os.close(lock)
        finally:
            os.close(root)

    # ----------------------------------------------------------------------------------------
    # Accounting (all under the lock)

    def _read_total(self, root: int) -> int:
        try:
            fd = os.open(_SIZE, _READ, dir_fd=root)
        except FileNotFoundError:
            return self._scan_total(root)
        except OSError as exc:
            if exc.errno not in (errno.ELOOP, errno.ENXIO):
                raise
            return self._scan_total(root)
        try:
            st = os.fstat(fd)
            small = stat.S_ISREG(st.st_mode) and st.st_size <= 32
            text = _read_fd(fd, st.st_size) if small else b""
        finally:
            os.close(fd)
        if not text.isdigit():
            return self._scan_total(root)
        return int(text)

    def _store_total(self, root: int, total: int) -> None:
        """Write the total; if that fails, remove the stale one so the next reader counts."""
        try:
            _write_new(root, _SIZE, str(max(total, 0)).encode())
        except OSError as exc:
            self._complain(f"write {_kind(exc)}", f"cannot update {self.root / _SIZE}: {exc}")
            with contextlib.suppress(OSError):
                os.unlink(_SIZE, dir_fd=root)

    def _entries(self, root: int, *, locked: bool) -> list[tuple[float, int, str, str]]:
        """(mtime, size, shard, name) of every chunk counted in the total.

        Under the lock nobody is writing, so a temporary file found then was left by a
        process that died: it goes. (`.spool` and other names are never looked into.)
        """
        found = []
        for prefix in os.listdir(root):
            if locked and prefix.startswith(_TEMPORARY):
                with contextlib.suppress(OSError):
                    os.unlink(prefix, dir_fd=root)
            if not _SHARD.fullmatch(prefix):
                continue
            try:
                shard = os.open(prefix, _DIRECTORY, dir_fd=root)
            except OSError:
                continue
            try:
                with os.scandir(shard) as entries:
                    for entry in entries:
                        if entry.name.startswith(_TEMPORARY):
                            if locked:
                                with contextlib.suppress(OSError):
                                    os.unlink(entry.name, dir_fd=shard)
                            continue
                        if not (_CHUNK.fullmatch(entry.name) and entry.name.startswith(prefix)):
                            continue
                        with contextlib.suppress(FileNotFoundError):
                            st = entry.stat(follow_symlinks=False)
                            if stat.S_ISREG(st.st_mode):
                                found.append((st.st_mtime, st.st_size, prefix, entry.name))
            finally:
                os.close(shard)
        return found

    def _scan_total(self, root: int) -> int:
        return sum(size for _, size, _, _ in self._entries(root, locked=True))

    def _evict(self, root: int, target: float) -> int:
        """Delete least recently used chunks until at most `target` bytes remain; the total
        written is the one counted, whatever it was before."""
        entries = sorted(self._entries(root, locked=True))
        total = sum(size for _, size, _, _ in entries)
        shards: dict[str, int] = {}
        try:
            for _, size, prefix, name in entries:
                if total <= target:
                    break
                if prefix not in shards:
                    shards[prefix] = os.open(prefix, _DIRECTORY, dir_fd=root)
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(name, dir_fd=shards[prefix])
                total -= size
        finally:
            for fd in shards.values():
                os.close(fd)
            self._store_total(root, total)
        log.debug("disk cache: evicted down to %d bytes", total)
        return max(total, 0)

    # ----------------------------------------------------------------------------------------
    # Names: a name standing for a digest (a store path's root node, say)

    def put_ref(self, key: bytes, digest: B3Digest) -> None:
        """Remember that `key` stands for `digest` (whose bytes the caller `put` too).

        Names are not content: nothing can check them but whoever answered the name, so
        they are kept apart from the chunks, in `.refs`, 32 bytes each and never evicted.
        """
        try:
            root = os.open(self.root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
            try:
                with contextlib.suppress(FileExistsError):
                    os.mkdir(_REFS, dir_fd=root)
                refs = os.open(_REFS, _DIRECTORY, dir_fd=root)
            finally:
                os.close(root)
            try:
                _write_new(refs, _ref_name(key), digest.raw)
            finally:
                os.close(refs)
        except OSError as exc:
            self._complain(f"write {_kind(exc)}", f"cannot add to {self.root / _REFS}: {exc}")

    def get_ref(self, key: bytes) -> B3Digest | None:
        """The digest `key` was last said to stand for, or None."""
        path = self.root / _REFS / _ref_name(key)
        try:
            fd = os.open(path, _READ)
        except FileNotFoundError:
            return None
        except OSError as exc:
            self._complain(f"read {_kind(exc)}", f"cannot read {path}: {exc}")
            return None
        try:
            st = os.fstat(fd)
            data = _read_fd(fd, 33) if stat.S_ISREG(st.st_mode) else b""
        except OSError as exc:
            self._complain(f"read {_kind(exc)}", f"cannot read {path}: {exc}")
            return None
        finally:
            os.close(fd)
        return B3Digest(data) if len(data) == 32 else None

    def total_bytes(self) -> int:
        """What the chunks on disk add up to, counted now (the `.size` file is not asked)."""
        root = os.open(self.root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            return sum(size for _, size, _, _ in self._entries(root, locked=False))
        finally:
            os.close(root)

    def _where(self, name: str) -> str:
        return str(self.root / name[:2] / name)
