"""Deadlines through a real mount: what a server outage, a dead server and a slow one do.

The default deadline must ride out a server restart of more than 10 s without a single EIO; a
short `--timeout` must turn a dead server into EIO within it, for reads, lookups and listings,
while a stream that keeps delivering is never cut off, however long it takes in all.
"""

from __future__ import annotations

import errno
import os
import pathlib
import random
import stat
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from castore_client.digest import B3Digest
from castore_client.directory import Directory, DirectoryNode, FileNode
from castore_client.services import Services
from castore_client.stores import open_memory_store

from . import fixtures as fx
from .faulty_server import FaultyServer, wait_served
from .fuse_harness import (
    BLOB_A_NAME,
    COMPLICATED_NAME,
    HELLOWORLD_NAME,
    RANDOM_BLOB,
    RANDOM_NAME,
    ROOT_ENTRIES,
    WITH_KEEP_NAME,
    _Delegating,
    mount_process,
    path_info,
    populate_extras,
    populate_fixtures,
    require_fuse,
    store_hash,
    unix_listen_address,
)

pytestmark = pytest.mark.fuse

HELLO = B3Digest(fx.b3(fx.HELLOWORLD))
RANDOM = B3Digest(fx.b3(RANDOM_BLOB))

OUTAGE = 11.0
"""How long the server is away in the restart test: more than the 10 s the default deadline
must ride out."""

SHORT_DEADLINE = 2.0
MARGIN = 2.0
"""What an EIO may take beyond the deadline: the last attempt's own time and the hop back
through FUSE. One deadline, not two: the read path remembers a failure for the retry the
kernel makes after a failed read."""

GUARD = 90.0
"""No operation in these tests may take longer than this; it bounds every join."""

SLOW_BLOB = random.Random(4711).randbytes(2 << 20)
SLOW_PIECES = 32
SLOW_GAP = 0.15
"""The slow blob arrives in 32 pieces 0.15 s apart: 4.8 s in all, more than twice the short
deadline, and never more than a small part of it between two pieces."""
SLOW_NAME = f"{store_hash(9100)}-slow"

UNSEEN_DIR = Directory(
    files=(FileNode(b"inside", B3Digest(fx.b3(fx.BLOB_A)), len(fx.BLOB_A)),),
)
UNSEEN_DIR_NAME = f"{store_hash(9101)}-unseen-dir"
"""A directory the dead-server test lists first: no mount can have it cached."""


@pytest.fixture(scope="module", autouse=True)
def _fuse_available() -> None:
    require_fuse()


class SlowBlobService(_Delegating):
    """Serves the blob `digest` in many small pieces with a pause before each."""

    def __init__(self, inner: Any, digest: B3Digest) -> None:
        super().__init__(inner)
        self.digest = digest
        self.pieces_served = 0

    def read(self, digest: B3Digest, *, timeout: float | None = None) -> Iterator[bytes]:
        if digest != self.digest:
            return self.inner.read(digest, timeout=timeout)  # type: ignore[no-any-return]
        return self._slowly(b"".join(bytes(p) for p in self.inner.read(digest)))

    def _slowly(self, data: bytes) -> Iterator[bytes]:
        size = -(-len(data) // SLOW_PIECES)
        for start in range(0, len(data), size):
            time.sleep(SLOW_GAP)
            self.pieces_served += 1
            yield data[start : start + size]


@pytest.fixture
def store() -> Iterator[Services]:
    with open_memory_store() as s:
        populate_fixtures(s)
        populate_extras(s)
        digest = s.blobs.put([SLOW_BLOB])
        s.path_infos.put(path_info(FileNode(SLOW_NAME.encode(), digest, len(SLOW_BLOB))))
        s.directories.put([UNSEEN_DIR])
        s.path_infos.put(
            path_info(DirectoryNode(UNSEEN_DIR_NAME.encode(), UNSEEN_DIR.digest, UNSEEN_DIR.size()))
        )
        yield s


class Op(threading.Thread):
    """A filesystem call on a thread of its own: its result or errno, and when it ended."""

    def __init__(self, name: str, call: Callable[[], object]) -> None:
        super().__init__(daemon=True, name=name)
        self.call = call
        self.result: object = None
        self.errno: int | None = None
        self.started_at = 0.0
        self.ended_at = 0.0

    def run(self) -> None:
        self.started_at = time.monotonic()
        try:
            self.result = self.call()
        except OSError as exc:
            self.errno = exc.errno
        finally:
            self.ended_at = time.monotonic()

    @property
    def elapsed(self) -> float:
        return self.ended_at - self.started_at

    def outcome(self) -> str:
        return f"{self.name}: errno {self.errno}, {self.elapsed:.2f} s"


def run_all(ops: list[Op]) -> None:
    for op in ops:
        op.start()


def join_all(ops: list[Op]) -> None:
    deadline = time.monotonic() + GUARD
    for op in ops:
        op.join(max(deadline - time.monotonic(), 0))
    hung = [op.name for op in ops if op.is_alive()]
    assert not hung, f"still waiting after {GUARD} s: {hung}"


def test_default_deadline_rides_out_a_server_restart(
    store: Services, tmp_path: pathlib.Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """No --timeout. The server goes away for 11 s, once in the middle of a multi-chunk read
    and with more reads, a lookup and a listing started while it is gone; it comes back on
    the same address, and every one of them returns the right answer, none an EIO."""
    with (
        FaultyServer(store, unix_listen_address(tmp_path_factory)) as server,
        mount_process(server.address, "--list-root", tmp_path=tmp_path) as mount,
    ):
        root = mount.path
        assert (root / BLOB_A_NAME).read_bytes() == fx.BLOB_A
        for name in (HELLOWORLD_NAME, RANDOM_NAME, COMPLICATED_NAME):
            os.lstat(root / name)
        # The whole-blob stream of the multi-chunk file stops after its first chunk: the
        # server then goes away in the middle of that read.
        chunks = store.blobs.stat(RANDOM)
        assert len(chunks) >= 3
        server.faults.stall(chunks[1].digest)
        midway = Op("multi-chunk read", lambda: (root / RANDOM_NAME).read_bytes())
        midway.start()
        assert wait_served(server.faults, "stall read", timeout=10), server.faults.served
        server.stop()
        stopped_at = time.monotonic()
        during = [
            Op("small read", lambda: (root / HELLOWORLD_NAME).read_bytes()),
            Op("listing", lambda: sorted(os.listdir(root / COMPLICATED_NAME))),
            Op("lookup", lambda: stat.S_ISDIR(os.lstat(root / WITH_KEEP_NAME).st_mode)),
        ]
        run_all(during)
        time.sleep(OUTAGE)
        assert midway.is_alive(), midway.outcome()
        for op in during:
            assert op.is_alive(), f"ended while the server was away: {op.outcome()}"
        server.start()
        join_all([midway, *during])
        assert time.monotonic() - stopped_at >= OUTAGE

        outcomes = [op.outcome() for op in (midway, *during)]
        for op in (midway, *during):
            assert op.errno is None, outcomes
        assert midway.result == RANDOM_BLOB
        assert during[0].result == fx.HELLOWORLD
        assert during[1].result == [".keep", "aa", "keep"]
        assert during[2].result is True
        assert mount.alive(), mount.log()


def test_deadline_cuts_off_silence_not_progress(
    store: Services, tmp_path: pathlib.Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """--timeout 2. A blob that keeps arriving for more than twice as long is read whole and
    right; then, with the server gone for good, a read (small and multi-chunk), a lookup and a
    listing each fail with EIO within the deadline, not later."""
    slow = SlowBlobService(store.blobs, B3Digest(fx.b3(SLOW_BLOB)))
    services = Services(slow, store.directories, store.path_infos)
    flags = ("--list-root", "--timeout", str(SHORT_DEADLINE))
    with (
        FaultyServer(services, unix_listen_address(tmp_path_factory)) as server,
        mount_process(server.address, *flags, tmp_path=tmp_path) as mount,
    ):
        root = mount.path
        # No chunk list: the blob can only be read (and verified) as one stream.
        server.faults.chunk_list(slow.digest, [])
        started = time.monotonic()
        assert (root / SLOW_NAME).read_bytes() == SLOW_BLOB
        took = time.monotonic() - started
        assert slow.pieces_served == SLOW_PIECES
        assert took > 2 * SHORT_DEADLINE, f"the blob came too fast to show anything: {took}"

        for name in ROOT_ENTRIES:
            if name != WITH_KEEP_NAME:
                os.lstat(root / name)
        os.lstat(root / UNSEEN_DIR_NAME)
        server.stop()
        ops = [
            Op("small read", lambda: (root / HELLOWORLD_NAME).read_bytes()),
            Op("multi-chunk read", lambda: (root / RANDOM_NAME).read_bytes()),
            Op("lookup", lambda: os.lstat(root / WITH_KEEP_NAME)),
            Op("listing", lambda: os.listdir(root / UNSEEN_DIR_NAME)),
        ]
        run_all(ops)
        join_all(ops)
        outcomes = [op.outcome() for op in ops]
        for op in ops:
            assert op.errno == errno.EIO, outcomes
            assert op.elapsed <= SHORT_DEADLINE + MARGIN, outcomes
        assert mount.alive(), mount.log()
