"""Verified chunks on local disk, shared by every mount (and process) on the host.

Files are named by digest and written atomically (temporary file, then rename), so a reader
sees a whole chunk or none. Bytes are verified against their digest on the way in and again
on the way out, since a disk can rot and another process could have written the file; a file
that fails is deleted and treated as a miss.

The size limit holds across processes: the running total lives in a small file next to the
chunks and every insertion updates it under an exclusive lock, evicting least recently used
chunks (by mtime, which a hit refreshes) before the new one is added.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import pathlib
import tempfile
from collections.abc import Iterator

from .digest import B3Digest
from .errors import DigestMismatch, InvalidSize
from .verify import verified

log = logging.getLogger(__name__)

EVICT_TO = 0.9


def parse_size(text: str) -> int:
    """`512M`, `2G`, `1.5T`, `100000` (bytes); binary units."""
    units = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
    cleaned = text.strip().upper().removesuffix("B").removesuffix("I")
    number, unit = (
        (cleaned[:-1], cleaned[-1]) if cleaned[-1:] in ("K", "M", "G", "T") else (cleaned, "")
    )
    try:
        value = float(number)
    except ValueError:
        raise InvalidSize(f"{text!r} is not a size; use e.g. 512M or 2G") from None
    if value <= 0:
        raise InvalidSize(f"{text!r}: a size must be positive")
    return int(value * units[unit])


class DiskChunkCache:
    def __init__(self, directory: str | os.PathLike[str], max_bytes: int) -> None:
        self.root = pathlib.Path(directory)
        self.max_bytes = max_bytes
        self.root.mkdir(parents=True, exist_ok=True)
        self._lock_path = self.root / ".lock"
        self._size_path = self.root / ".size"

    def _path(self, digest: B3Digest) -> pathlib.Path:
        name = digest.raw.hex()
        return self.root / name[:2] / name

    def get(self, digest: B3Digest) -> bytes | None:
        path = self._path(digest)
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            return None
        except OSError as exc:
            log.warning("disk cache: cannot read %s: %s", path, exc)
            return None
        try:
            verified(data, digest, None, f"disk cache entry {digest}")
        except DigestMismatch as exc:
            log.warning("%s; removing it", exc)
            self._remove(path)
            return None
        with contextlib.suppress(OSError):
            os.utime(path)
        return data

    def put(self, digest: B3Digest, data: bytes) -> None:
        """Insert bytes the caller has verified; never exceeds the size limit."""
        if len(data) > self.max_bytes:
            return
        path = self._path(digest)
        if path.exists():
            return
        path.parent.mkdir(exist_ok=True)
        with self._locked():
            total = self._read_total()
            if total + len(data) > self.max_bytes:
                total = self._evict(self.max_bytes * EVICT_TO - len(data))
            fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
            try:
                with os.fdopen(fd, "wb") as f:
                    f.write(data)
                os.replace(tmp, path)
            except BaseException:
                with contextlib.suppress(OSError):
                    os.unlink(tmp)
                raise
            self._write_total(total + len(data))

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        with open(self._lock_path, "a+") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def _read_total(self) -> int:
        try:
            return int(self._size_path.read_text() or 0)
        except (FileNotFoundError, ValueError):
            return self._scan_total()

    def _write_total(self, total: int) -> None:
        tmp = self._size_path.with_suffix(".tmp")
        tmp.write_text(str(total))
        os.replace(tmp, self._size_path)

    def _entries(self) -> list[tuple[float, int, pathlib.Path]]:
        found = []
        for sub in self.root.iterdir():
            if not sub.is_dir():
                continue
            for entry in os.scandir(sub):
                if entry.name.startswith(".tmp-"):
                    continue
                with contextlib.suppress(FileNotFoundError):
                    st = entry.stat()
                    found.append((st.st_mtime, st.st_size, pathlib.Path(entry.path)))
        return found

    def _scan_total(self) -> int:
        return sum(size for _, size, _ in self._entries())

    def _evict(self, target: float) -> int:
        """Delete least recently used chunks until at most `target` bytes remain."""
        entries = sorted(self._entries())
        total = sum(size for _, size, _ in entries)
        for _, size, path in entries:
            if total <= target:
                break
            self._remove(path)
            total -= size
        log.debug("disk cache: evicted down to %d bytes", total)
        return max(total, 0)

    def _remove(self, path: pathlib.Path) -> None:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()

    def total_bytes(self) -> int:
        return self._scan_total()
