"""What the mount makes of its addresses: several servers with failover, and the mount table.

`--store A,B` lists two servers of the same store; the mount must come up (the address list
once went into `fsname=` whole, and libfuse split it at the comma), show where it comes from
in the mount table, and go on reading from B once A is gone. A mount point that is already
mounted is refused as busy, whatever that mount does with listings.
"""

from __future__ import annotations

import contextlib
import os
import pathlib
import signal
import subprocess
import urllib.parse
from collections.abc import Iterator

import pytest

from castore_client.address import parse_address
from castore_client.rpc.server import CastoreServer
from castore_client.services import Services
from castore_client.stores import open_memory_store

from . import fixtures as fx
from .faulty_server import FaultyServer
from .fuse_harness import (
    BLOB_A_NAME,
    BLOB_B_NAME,
    COMPLICATED_NAME,
    HELLOWORLD_NAME,
    RANDOM_BLOB,
    RANDOM_NAME,
    is_mounted,
    mount_process,
    populate_extras,
    populate_fixtures,
    require_fuse,
    run_mount_expecting_error,
    unix_listen_address,
)

pytestmark = pytest.mark.fuse


@pytest.fixture(scope="module", autouse=True)
def _fuse_available() -> None:
    require_fuse()


@pytest.fixture(scope="module")
def store() -> Iterator[Services]:
    with open_memory_store() as s:
        populate_fixtures(s)
        populate_extras(s)
        yield s


def mount_source(mountpoint: pathlib.Path) -> str:
    """The source column of the mount at `mountpoint` in /proc/self/mountinfo, unescaped."""
    target = os.path.realpath(mountpoint)
    with open("/proc/self/mountinfo", encoding="utf-8", errors="surrogateescape") as f:
        for line in f:
            before, _, after = line.rstrip("\n").partition(" - ")
            if _unescape(before.split(" ")[4]) == target:
                return _unescape(after.split(" ")[1])
    raise AssertionError(f"{target} is not in the mount table")


def _unescape(field: str) -> str:
    return field.encode("latin-1", "surrogateescape").decode("unicode_escape")


def test_two_servers_mount_and_reads_fail_over_to_the_second(
    store: Services, tmp_path: pathlib.Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    # Characters a mount option cannot carry as they are, in the first server's path.
    odd = tmp_path_factory.mktemp("sock") / "a b\\c"
    odd.mkdir()
    first_address = parse_address(f"grpc+unix://{odd}/first.sock")
    second_address = unix_listen_address(tmp_path_factory)
    with (
        FaultyServer(store, first_address) as first,
        FaultyServer(store, second_address) as second,
    ):
        addresses = f"{first.address},{second.address}"
        with mount_process(addresses, "--list-root", tmp_path=tmp_path) as mount:
            root = mount.path
            source = mount_source(root)
            assert "," not in source and " " not in source and "\\" not in source, source
            assert urllib.parse.unquote(source) == f"castore:{first.address}(+1)", source

            assert (root / BLOB_A_NAME).read_bytes() == fx.BLOB_A
            first.stop()
            # Nothing of these was fetched before: only the second server can serve them.
            assert (root / HELLOWORLD_NAME).read_bytes() == fx.HELLOWORLD
            assert (root / RANDOM_NAME).read_bytes() == RANDOM_BLOB
            assert sorted(os.listdir(root / COMPLICATED_NAME)) == [".keep", "aa", "keep"]
            assert (root / BLOB_B_NAME).read_bytes() == fx.BLOB_B
            assert second.running
            assert mount.alive(), mount.log()
            assert "switching to server 2" in mount.log(), mount.log()


def test_a_mounted_mount_point_is_busy_even_if_it_refuses_listings(
    store: Services, tmp_path: pathlib.Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """Without --list-root the first mount answers a listing of its root with EPERM; the
    second mount must still say the mount point is busy, not "Operation not permitted"."""
    with (
        CastoreServer(store, unix_listen_address(tmp_path_factory)) as server,
        mount_process(server.address, tmp_path=tmp_path) as mount,
    ):
        result = run_mount_expecting_error("--store", str(server.address), str(mount.path))
        assert_one_line_error(result)
        assert "busy" in result.stderr, result.stderr
        assert "not permitted" not in result.stderr, result.stderr
        assert mount.alive()
        assert (mount.path / BLOB_A_NAME).read_bytes() == fx.BLOB_A


@contextlib.contextmanager
def fuse_connections() -> Iterator[pathlib.Path]:
    """/sys/fs/fuse/connections, mounted for the block if it was not."""
    path = pathlib.Path("/sys/fs/fuse/connections")
    mounted_here = not is_mounted(path)
    if mounted_here:
        done = subprocess.run(["mount", "-t", "fusectl", "none", str(path)], check=False)
        if done.returncode != 0:
            pytest.skip("cannot mount fusectl to abort a FUSE connection")
    try:
        yield path
    finally:
        if mounted_here:
            subprocess.run(["umount", str(path)], check=False)


def test_a_dead_mount_point_is_named_dead_not_busy(
    store: Services, tmp_path: pathlib.Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """A FUSE mount whose connection was aborted still stats from the kernel's cache; the
    error must still say it is dead and how to clear it."""
    with (
        CastoreServer(store, unix_listen_address(tmp_path_factory)) as server,
        mount_process(server.address, tmp_path=tmp_path) as mount,
        fuse_connections() as connections,
    ):
        device = os.stat(mount.path).st_dev
        mount.signal(signal.SIGSTOP)  # keeps the FUSE fd open, so nothing unmounts it
        try:
            (connections / str(os.minor(device)) / "abort").write_text("1")
            result = run_mount_expecting_error("--store", str(server.address), str(mount.path))
        finally:
            mount.signal(signal.SIGCONT)
        assert_one_line_error(result)
        assert "dead mount" in result.stderr, result.stderr
        assert f"fusermount3 -u {mount.path}" in result.stderr, result.stderr


def assert_one_line_error(result: subprocess.CompletedProcess[str]) -> None:
    assert result.returncode != 0, result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
