"""SIGTERM and SIGINT end a real mount within 5 s, also while its reads wait on the server.

The reads are really waiting when the signal comes: on a server that stalls them (a small
file, a multi-chunk file in the middle of its stream, a directory), or on one that is gone
while a long --timeout keeps the calls retrying. The process must exit, the mount must be
gone, and the waiting system calls must come back (with an error) rather than hang.
"""

from __future__ import annotations

import os
import pathlib
import signal
import threading
import time
from collections.abc import Callable, Iterator

import pytest

from castore_client.digest import B3Digest
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
    is_mounted,
    mount_process,
    populate_extras,
    populate_fixtures,
    require_fuse,
    unix_listen_address,
    wait_until,
)

pytestmark = pytest.mark.fuse

UNMOUNT_WITHIN = 5.0
LONG_DEADLINE = "60"
"""Long enough that nothing in these tests times out by itself before the signal's 5 s."""

HELLO = B3Digest(fx.b3(fx.HELLOWORLD))
COMPLICATED = B3Digest(fx.COMPLICATED_DIGEST)


@pytest.fixture(scope="module", autouse=True)
def _fuse_available() -> None:
    require_fuse()


@pytest.fixture(scope="module")
def store() -> Iterator[Services]:
    with open_memory_store() as s:
        populate_fixtures(s)
        populate_extras(s)
        yield s


class Waiting(threading.Thread):
    """A filesystem call that is expected to block; `error` is how it ended."""

    def __init__(self, call: Callable[[], object]) -> None:
        super().__init__(daemon=True)
        self.call = call
        self.error: OSError | None = None
        self.returned = False

    def run(self) -> None:
        try:
            self.call()
            self.returned = True
        except OSError as exc:
            self.error = exc


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
@pytest.mark.parametrize("server_state", ["stalled", "stopped"])
def test_signal_unmounts_within_5s_while_reads_wait(
    store: Services,
    tmp_path: pathlib.Path,
    tmp_path_factory: pytest.TempPathFactory,
    sig: signal.Signals,
    server_state: str,
) -> None:
    flags = ["--list-root"]
    if server_state == "stopped":
        flags += ["--timeout", LONG_DEADLINE]
    with (
        FaultyServer(store, unix_listen_address(tmp_path_factory)) as server,
        mount_process(server.address, *flags, tmp_path=tmp_path) as mount,
    ):
        root = mount.path
        assert (root / BLOB_A_NAME).read_bytes() == fx.BLOB_A
        for name in (HELLOWORLD_NAME, RANDOM_NAME, COMPLICATED_NAME):
            os.lstat(root / name)
        chunks = store.blobs.stat(B3Digest(fx.b3(RANDOM_BLOB)))
        faults = server.faults
        if server_state == "stalled":
            for digest in (HELLO, chunks[1].digest, COMPLICATED):
                faults.stall(digest)
        else:
            server.stop()
        waiting = [
            Waiting(lambda: (root / HELLOWORLD_NAME).read_bytes()),
            Waiting(lambda: (root / RANDOM_NAME).read_bytes()),
            Waiting(lambda: os.listdir(root / COMPLICATED_NAME)),
        ]
        for thread in waiting:
            thread.start()
        if server_state == "stalled":
            for what, count in (("stall read", 2), ("stall get directory", 1)):
                assert wait_served(faults, what, count, timeout=10), faults.served
        else:
            time.sleep(1.0)  # retrying by now, and for the next minute
        assert all(thread.is_alive() for thread in waiting), "a call ended before the signal"

        signalled = time.monotonic()
        mount.signal(sig)
        assert mount.wait_exit(timeout=UNMOUNT_WITHIN) == 0, mount.log()
        assert wait_until(
            lambda: not is_mounted(root), UNMOUNT_WITHIN - (time.monotonic() - signalled)
        ), "still mounted 5 s after the signal"
        for thread in waiting:
            thread.join(UNMOUNT_WITHIN)
            assert not thread.is_alive(), "a system call still hangs after the unmount"
            assert not thread.returned
        assert "Traceback" not in mount.log(), mount.log()
