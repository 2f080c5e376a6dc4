"""A castore server that misbehaves on request: faults switched on and off per digest at run time.

`FaultyServices` wraps an embedded store's three services; `FaultyServer` serves them over
gRPC with our own `CastoreServer`, and can also be stopped and started again on the same
address (a server that goes away and comes back). The faults, all in one `Faults` switchboard:

  flip(digest)                  serve one flipped byte in a blob or chunk
  truncate(digest, after)       end a Read stream (cleanly) after `after` bytes
  drop(digest, after=0)         end a Read stream (or Stat, or Get) with UNAVAILABLE
  chunk_list(digest, chunks)    answer Stat with this chunk list (see `bad_chunk_list`), or
                                with another blob's (a Stat that lies)
  substitute(digest, other)     answer Read of `digest` with the bytes of `other` (a Read that
                                lies consistently, with a chunk list that lies the same way)
  zeros(digest, size)           answer Read of `digest` with `size` zero bytes, made as sent
  serve_directory(digest, dir)  answer Get for `digest` with `dir` (invalid or not its own)
  add_directory(dir)            serve a Directory the store does not hold (a parent of an
                                invalid one, which the store would refuse to take)
  truncate_closure(digest)      a recursive Get of `digest` sends the root only
  stall(digest)                 block every call about `digest` until released
  add_path_info(path_info)      serve a PathInfo the store would refuse (say, a bad name)

Faults on a chunk also apply when the whole blob is read (the blob is then served chunk by
chunk through the faulty path), so they show however a client asks. `served` counts how
often each fault was actually served, so a test can tell a fault that did not fire from one
that was handled.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import os
import pathlib
import threading
import time
from collections import Counter
from collections.abc import Iterable, Iterator
from typing import Any

from castore_client import nixbase32
from castore_client.address import Address
from castore_client.digest import B3Digest
from castore_client.directory import Directory
from castore_client.errors import Unavailable
from castore_client.pathinfo import PathInfo
from castore_client.rpc.server import CastoreServer
from castore_client.services import BlobService, ChunkMeta, DirectoryService, PathInfoService
from castore_client.services import Services as _Services
from castore_client.storepath import ENCODED_DIGEST_LEN

from .fuse_harness import CorruptingBlobService, InvalidDirectoryService, _Delegating

log = logging.getLogger(__name__)

MAX_STALL = 60.0
"""A stalled call gives up after this long even if nobody releases it, so no test can hang."""


class Faults:
    """The switchboard: which faults are on, for which digests. Thread-safe enough for tests
    (each switch is one dict or set operation under the GIL)."""

    def __init__(self) -> None:
        self.flipped: set[B3Digest] = set()
        self.truncated: dict[B3Digest, int] = {}
        self.dropped: dict[B3Digest, int] = {}
        self.chunk_lists: dict[B3Digest, list[ChunkMeta]] = {}
        self.directories: dict[B3Digest, Directory] = {}
        self.extra_directories: dict[B3Digest, Directory] = {}
        self.truncated_closures: set[B3Digest] = set()
        self.stalls: dict[B3Digest, threading.Event] = {}
        self.extra_path_infos: dict[bytes, PathInfo] = {}
        self.substitutes: dict[B3Digest, B3Digest] = {}
        self.zero_streams: dict[B3Digest, int] = {}
        self.served: Counter[str] = Counter()
        self._lock = threading.Lock()

    # -- switching -----------------------------------------------------------------------------

    def flip(self, digest: B3Digest) -> None:
        self.flipped.add(digest)

    def truncate(self, digest: B3Digest, after: int) -> None:
        self.truncated[digest] = after

    def drop(self, digest: B3Digest, after: int = 0) -> None:
        self.dropped[digest] = after

    def chunk_list(self, digest: B3Digest, chunks: Iterable[ChunkMeta]) -> None:
        self.chunk_lists[digest] = list(chunks)

    def substitute(self, digest: B3Digest, other: B3Digest) -> None:
        self.substitutes[digest] = other

    def zeros(self, digest: B3Digest, size: int) -> None:
        self.zero_streams[digest] = size

    def serve_directory(self, digest: B3Digest, directory: Directory) -> None:
        self.directories[digest] = directory

    def add_directory(self, directory: Directory) -> B3Digest:
        self.extra_directories[directory.digest] = directory
        return directory.digest

    def truncate_closure(self, digest: B3Digest) -> None:
        self.truncated_closures.add(digest)

    def stall(self, digest: B3Digest) -> threading.Event:
        """Stall calls about `digest`; set (or `release`) the returned event to let them go."""
        event = self.stalls.get(digest)
        if event is None or event.is_set():
            event = self.stalls[digest] = threading.Event()
        return event

    def release(self, digest: B3Digest | None = None) -> None:
        """Let the calls stalled on `digest` (or on anything) go on, and stall no more."""
        for key in list(self.stalls) if digest is None else [digest]:
            event = self.stalls.pop(key, None)
            if event is not None:
                event.set()

    def add_path_info(self, path_info: PathInfo) -> None:
        """Serve this PathInfo in listings, and for the hash its root node's name starts with."""
        assert path_info.node is not None
        self.extra_path_infos[path_info.node.name] = path_info

    def clear(self, digest: B3Digest | None = None) -> None:
        """Switch off every fault about `digest` (or all of them); releases its stalls."""
        if digest is None:
            self.release()
            for table in (
                self.flipped,
                self.truncated,
                self.dropped,
                self.chunk_lists,
                self.directories,
                self.extra_directories,
                self.truncated_closures,
                self.extra_path_infos,
                self.substitutes,
                self.zero_streams,
            ):
                table.clear()
            return
        self.release(digest)
        self.flipped.discard(digest)
        self.truncated_closures.discard(digest)
        for mapping in (
            self.truncated,
            self.dropped,
            self.chunk_lists,
            self.directories,
            self.substitutes,
            self.zero_streams,
        ):
            mapping.pop(digest, None)  # type: ignore[attr-defined]

    # -- serving --------------------------------------------------------------------------------

    def count(self, what: str) -> None:
        with self._lock:
            self.served[what] += 1

    def wait_if_stalled(self, digest: B3Digest, what: str) -> None:
        event = self.stalls.get(digest)
        if event is None:
            return
        self.count(f"stall {what}")
        log.info("stalling %s %s", what, digest)
        if not event.wait(MAX_STALL):
            log.warning("%s %s stalled for %s s and nobody released it", what, digest, MAX_STALL)

    def raise_if_dropped(self, digest: B3Digest, what: str) -> None:
        if self.dropped.get(digest) == 0:
            self.count(f"drop {what}")
            raise Unavailable(f"fault injected: dropping {what} {digest}")

    def affects(self, digest: B3Digest) -> bool:
        return (
            digest in self.flipped
            or digest in self.truncated
            or digest in self.dropped
            or digest in self.stalls
        )


def bad_chunk_list(chunks: list[ChunkMeta], kind: str) -> list[ChunkMeta]:
    """A chunk list that does not add up to the blob, by `kind`:

    short: the last chunk is missing        long: the last chunk appears twice
    zero: an empty chunk is inserted         swapped: two sizes swapped (the total is right)
    """
    assert len(chunks) >= 2, "needs a blob of at least two chunks"
    if kind == "short":
        return chunks[:-1]
    if kind == "long":
        return [*chunks, chunks[-1]]
    if kind == "zero":
        return [chunks[0], ChunkMeta(chunks[0].digest, 0), *chunks[1:]]
    if kind == "swapped":
        a, b = next(
            (i, j)
            for i, j in itertools.combinations(range(len(chunks)), 2)
            if chunks[i].size != chunks[j].size
        )
        out = list(chunks)
        out[a] = ChunkMeta(chunks[a].digest, chunks[b].size)
        out[b] = ChunkMeta(chunks[b].digest, chunks[a].size)
        return out
    raise ValueError(f"unknown kind of bad chunk list {kind!r}")


BAD_CHUNK_LISTS = ("short", "long", "zero", "swapped")


class FaultyBlobService(CorruptingBlobService):
    """Stat and Read with the faults of `faults` applied; flipping is the harness's."""

    def __init__(self, inner: BlobService, faults: Faults) -> None:
        super().__init__(inner, ())
        self.faults = faults
        self.corrupt = faults.flipped  # shared: switched at run time

    def stat(self, digest: B3Digest, *, timeout: float | None = None) -> list[ChunkMeta]:
        self.faults.wait_if_stalled(digest, "stat")
        self.faults.raise_if_dropped(digest, "stat")
        replacement = self.faults.chunk_lists.get(digest)
        if replacement is not None:
            self.faults.count("chunk list")
            return list(replacement)
        return self.inner.stat(digest, timeout=timeout)

    def read(self, digest: B3Digest, *, timeout: float | None = None) -> Iterator[bytes]:
        faults = self.faults
        other = faults.substitutes.get(digest)
        if other is not None:
            faults.count("substitute")
            return self.read(other, timeout=timeout)
        zeros = faults.zero_streams.get(digest)
        if zeros is not None:
            faults.count("zeros")
            return _zeros(zeros)
        if not (faults.flipped or faults.truncated or faults.dropped or faults.stalls):
            return self.inner.read(digest, timeout=timeout)
        if faults.affects(digest):
            return self._faulty(digest, timeout)
        chunks = self.inner.stat(digest, timeout=timeout)
        if any(faults.affects(chunk.digest) for chunk in chunks):
            return itertools.chain.from_iterable(
                self.read(chunk.digest, timeout=timeout) for chunk in chunks
            )
        return self.inner.read(digest, timeout=timeout)

    def _faulty(self, digest: B3Digest, timeout: float | None) -> Iterator[bytes]:
        faults = self.faults
        faults.wait_if_stalled(digest, "read")
        faults.raise_if_dropped(digest, "read")
        pieces: Iterator[Any] = self.inner.read(digest, timeout=timeout)
        if digest in faults.flipped:
            faults.count("flip")
            pieces = self._flipped(pieces)
        limit = faults.truncated.get(digest)
        drop_after = faults.dropped.get(digest)
        sent = 0
        for piece in pieces:
            data = bytes(piece)
            for cut, what in ((limit, "truncate"), (drop_after, "drop")):
                if cut is not None and sent + len(data) >= cut:
                    if data[: cut - sent]:
                        yield data[: cut - sent]
                    faults.count(f"{what} read")
                    if what == "drop":
                        raise Unavailable(f"fault injected: connection dropped in {digest}")
                    return
            sent += len(data)
            yield data


def _zeros(size: int, piece: int = 1 << 20) -> Iterator[bytes]:
    block = bytes(piece)
    for start in range(0, size, piece):
        yield block[: min(piece, size - start)]


class FaultyDirectoryService(InvalidDirectoryService):
    """Get answers replaced (the harness's), extra directories, stalls, drops, short closures."""

    def __init__(self, inner: DirectoryService, faults: Faults) -> None:
        super().__init__(inner, {})
        self.faults = faults
        self.replacements = faults.directories  # shared: switched at run time

    def get(self, digest: B3Digest, *, timeout: float | None = None) -> Directory:
        self.faults.wait_if_stalled(digest, "get directory")
        self.faults.raise_if_dropped(digest, "get directory")
        if digest in self.replacements:
            self.faults.count("directory")
        extra = self.faults.extra_directories.get(digest)
        if extra is not None and digest not in self.replacements:
            return extra
        return super().get(digest, timeout=timeout)

    def get_recursive(
        self, digest: B3Digest, *, timeout: float | None = None
    ) -> Iterator[Directory]:
        closure = super().get_recursive(digest, timeout=timeout)
        if digest in self.faults.truncated_closures:
            self.faults.count("truncate closure")
            return itertools.islice(closure, 1)
        return closure


class FaultyPathInfoService(_Delegating):
    """The store's PathInfos plus `faults.extra_path_infos`, which the store would refuse."""

    def __init__(self, inner: PathInfoService, faults: Faults) -> None:
        super().__init__(inner)
        self.faults = faults

    def get_by_hash(self, digest: bytes, *, timeout: float | None = None) -> PathInfo:
        for name, path_info in list(self.faults.extra_path_infos.items()):
            if _hash_part(name) == digest:
                self.faults.count("path info")
                return path_info
        return self.inner.get_by_hash(digest, timeout=timeout)

    def list(self, *, timeout: float | None = None) -> Iterator[PathInfo]:
        extras = list(self.faults.extra_path_infos.values())
        if extras:
            self.faults.count("path info")
        return itertools.chain(extras, self.inner.list(timeout=timeout))


def _hash_part(name: bytes) -> bytes | None:
    try:
        return nixbase32.decode(name[:ENCODED_DIGEST_LEN].decode("ascii"))
    except (UnicodeDecodeError, ValueError):
        return None


class FaultyServices(_Services):
    """An embedded store's services behind one `Faults` switchboard."""

    def __init__(self, store: Any, faults: Faults | None = None) -> None:
        self.faults = faults if faults is not None else Faults()
        super().__init__(
            FaultyBlobService(store.blobs, self.faults),
            FaultyDirectoryService(store.directories, self.faults),
            FaultyPathInfoService(store.path_infos, self.faults),
        )


class FaultyServer:
    """`CastoreServer` over FaultyServices; `stop()` and `start()` take it away and back."""

    def __init__(self, store: Any, listen: Address, faults: Faults | None = None) -> None:
        self.services = FaultyServices(store, faults)
        self.faults = self.services.faults
        self._listen = listen
        self._server: CastoreServer | None = None
        self.address = listen
        self.start()

    def start(self) -> None:
        assert self._server is None, "already serving"
        if self._listen.scheme == "grpc+unix":
            with contextlib.suppress(FileNotFoundError):
                os.unlink(pathlib.Path(self._listen.path or ""))
        self._server = CastoreServer(self.services, self._listen)
        if self._listen.scheme != "grpc+unix":
            # Come back on the same port, where the clients look for us.
            self._listen = self._server.address
        self.address = self._server.address

    def stop(self) -> None:
        """The whole server goes away: open calls end, new connections are refused."""
        server, self._server = self._server, None
        if server is not None:
            self.faults.release()
            server.stop(0)

    @property
    def running(self) -> bool:
        return self._server is not None

    def close(self) -> None:
        self.faults.clear()
        self.stop()

    def __enter__(self) -> FaultyServer:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def wait_served(faults: Faults, what: str, at_least: int = 1, timeout: float = 10) -> bool:
    """Whether fault `what` has been served `at_least` times within `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while faults.served[what] < at_least:
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.02)
    return True
