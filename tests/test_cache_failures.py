"""A disk cache that fails never fails a read: full, read-only, things in the way, races.

The failures are real: a tiny tmpfs that fills up, a read-only bind mount, a file where a shard
directory should be, a FIFO, a socket or a symlink where a chunk should be, several processes
writing at once. Every wait is bounded, so a cache that blocks fails the test instead of
hanging it.
"""

from __future__ import annotations

import contextlib
import logging
import os
import pathlib
import socket
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator

import pytest

from castore_client.chunk_cache import ChunkCache
from castore_client.digest import B3Digest
from castore_client.disk_cache import CacheDirUnusable, DiskChunkCache
from castore_client.errors import CastoreError
from castore_client.rpc.server import CastoreServer
from castore_client.stores import open_memory_store

from . import fixtures as fx
from .fuse_harness import (
    BLOB_B_NAME,
    HELLOWORLD_NAME,
    RANDOM_BLOB,
    RANDOM_NAME,
    REPO_ROOT,
    mount_process,
    populate_extras,
    populate_fixtures,
    require_fuse,
    unix_listen_address,
)

BOUND = 10.0
"""Seconds any single cache operation may take before the test calls it stuck."""


def chunk(n: int, size: int = 1000) -> tuple[B3Digest, bytes]:
    data = bytes([n % 256]) * size + n.to_bytes(4, "little")
    return B3Digest(fx.b3(data)), data


def entry_path(root: pathlib.Path, digest: B3Digest) -> pathlib.Path:
    name = digest.raw.hex()
    return root / name[:2] / name


def on_disk(root: pathlib.Path) -> int:
    """What the chunk files in the shard directories add up to, counted by the test."""
    return sum(
        p.stat().st_size
        for p in root.glob("[0-9a-f][0-9a-f]/*")
        if len(p.name) == 64 and p.is_file() and not p.is_symlink()
    )


def counter(root: pathlib.Path) -> int:
    return int((root / ".size").read_text())


def leftovers(root: pathlib.Path) -> list[pathlib.Path]:
    return list(root.rglob(".tmp-*"))


# --------------------------------------------------------------------------------------------
# Real failing filesystems


def require_root() -> None:
    if os.geteuid() != 0:
        if "CI" in os.environ:
            pytest.fail("the cache failure tests mount filesystems and need root in CI")
        pytest.skip("mounting a tmpfs or a bind mount needs root")


def _umount(path: pathlib.Path) -> None:
    if subprocess.run(["umount", str(path)], check=False, capture_output=True).returncode:
        subprocess.run(["umount", "-l", str(path)], check=False, capture_output=True)


@contextlib.contextmanager
def tiny_tmpfs(path: pathlib.Path, size: str = "256k") -> Iterator[pathlib.Path]:
    require_root()
    path.mkdir(parents=True, exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], check=True)
    try:
        yield path
    finally:
        _umount(path)


@contextlib.contextmanager
def read_only_view(source: pathlib.Path, path: pathlib.Path) -> Iterator[pathlib.Path]:
    """`source` seen through a read-only bind mount at `path` (root ignores mode bits)."""
    require_root()
    path.mkdir(parents=True, exist_ok=True)
    subprocess.run(["mount", "--bind", str(source), str(path)], check=True)
    try:
        subprocess.run(["mount", "-o", "remount,bind,ro", str(path)], check=True)
        yield path
    finally:
        _umount(path)


def fill(directory: pathlib.Path) -> None:
    """Write until the filesystem has no room left, not even for a small file."""
    fd = os.open(directory / "filler", os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        with contextlib.suppress(OSError):
            while True:
                os.write(fd, b"\0" * 4096)
        with contextlib.suppress(OSError):
            while True:
                os.write(fd, b"\0")
    finally:
        os.close(fd)


def within(seconds: float, fn: Callable[[], object], unblock: Callable[[], None]) -> object:
    """`fn()`'s result if it returns within `seconds`; else `unblock` frees it and the test
    fails."""
    result: list[object] = []
    errors: list[BaseException] = []

    def run() -> None:
        try:
            result.append(fn())
        except BaseException as exc:
            errors.append(exc)

    worker = threading.Thread(target=run, daemon=True)
    worker.start()
    worker.join(seconds)
    if worker.is_alive():
        unblock()
        worker.join(BOUND)
        pytest.fail(f"the cache blocked for more than {seconds} s")
    if errors:
        raise errors[0]
    return result[0]


def warnings_from_cache(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [
        r
        for r in caplog.records
        if r.name == "castore_client.disk_cache" and r.levelno >= logging.WARNING
    ]


# --------------------------------------------------------------------------------------------
# A full filesystem


def test_full_filesystem_reads_come_from_the_fetch(
    tmp_path: pathlib.Path, caplog: pytest.LogCaptureFixture
) -> None:
    with tiny_tmpfs(tmp_path / "cache") as root:
        # The limit is far beyond what the filesystem holds: only ENOSPC can stop a write.
        disk = DiskChunkCache(root, 64 << 20)
        memory = ChunkCache(1, disk)  # nothing fits in memory, so every read asks the disk
        chunks = [chunk(n, 20_000) for n in range(40)]
        with caplog.at_level(logging.DEBUG, logger="castore_client.disk_cache"):
            for digest, data in chunks:
                assert memory.get(digest, lambda data=data: data) == data
        cached = [d for d, _ in chunks if entry_path(root, d).exists()]
        assert 0 < len(cached) < len(chunks), "the tmpfs never filled up: nothing was tested"
        for digest, data in chunks:  # what made it to disk is served, the rest fetched again
            fetched: list[B3Digest] = []
            got = memory.get(digest, lambda d=digest, b=data, f=fetched: f.append(d) or b)
            assert got == data
            assert fetched == ([] if digest in cached else [digest])
        assert counter(root) == on_disk(root) == disk.total_bytes()
        assert not leftovers(root)
    messages = [r.getMessage() for r in warnings_from_cache(caplog)]
    assert len(messages) == 1 and "No space left" in messages[0], messages  # rate-limited


def test_no_room_even_for_the_counter(tmp_path: pathlib.Path) -> None:
    with tiny_tmpfs(tmp_path / "cache") as root:
        disk = DiskChunkCache(root, 64 << 20)
        disk.put(*chunk(1))
        fill(root)
        for n in range(2, 6):
            disk.put(*chunk(n))  # must not raise
            assert disk.get(chunk(n)[0]) is None
        assert disk.get(chunk(1)[0]) == chunk(1)[1]
        assert not leftovers(root)
        if (root / ".size").exists():
            assert counter(root) == on_disk(root)


# --------------------------------------------------------------------------------------------
# A read-only filesystem


def test_read_only_cache_serves_hits_and_fetches_misses(
    tmp_path: pathlib.Path, caplog: pytest.LogCaptureFixture
) -> None:
    source = tmp_path / "cache"
    writer = DiskChunkCache(source, 1 << 20)
    for n in range(5):
        writer.put(*chunk(n))
    rotten, _ = chunk(4)
    entry_path(source, rotten).write_bytes(b"rot" * 100)
    with read_only_view(source, tmp_path / "ro") as root:
        disk = DiskChunkCache(root, 1 << 20)  # an existing read-only directory is fine
        memory = ChunkCache(1, disk)
        with caplog.at_level(logging.DEBUG, logger="castore_client.disk_cache"):
            for n in range(4):  # hits: no fetch at all
                digest, data = chunk(n)
                assert memory.get(digest, lambda: pytest.fail("a hit was fetched")) == data
            for n in range(4, 12):  # the rotten one and misses: fetched, nothing raised
                digest, data = chunk(n)
                assert memory.get(digest, lambda data=data: data) == data
                assert disk.get(digest) is None
        assert not entry_path(source, chunk(11)[0]).exists()
        assert entry_path(source, rotten).exists()  # could not be removed, and said so
    messages = [r.getMessage() for r in warnings_from_cache(caplog)]
    assert any("EROFS" in m or "Read-only" in m for m in messages), messages
    assert len(messages) <= 3, messages


@contextlib.contextmanager
def immutable(path: pathlib.Path) -> Iterator[pathlib.Path]:
    """`path` with the immutable attribute: EPERM for every change, root included."""
    require_root()
    if subprocess.run(["chattr", "+i", str(path)], check=False, capture_output=True).returncode:
        pytest.skip(f"chattr +i is not supported on {path}")
    try:
        yield path
    finally:
        subprocess.run(["chattr", "-i", str(path)], check=False, capture_output=True)


def test_shard_that_cannot_be_written_to(
    tmp_path: pathlib.Path, caplog: pytest.LogCaptureFixture
) -> None:
    disk = DiskChunkCache(tmp_path, 1 << 20)
    memory = ChunkCache(1, disk)
    digest, data = chunk(1)
    disk.put(digest, data)
    rotten, rotten_data = chunk(72)  # the same shard as chunk 1
    assert rotten.raw.hex()[:2] == digest.raw.hex()[:2]
    disk.put(rotten, rotten_data)
    entry_path(tmp_path, rotten).write_bytes(b"rot")
    other, other_data = chunk(136)
    assert other.raw.hex()[:2] == digest.raw.hex()[:2]
    with (
        immutable(entry_path(tmp_path, digest).parent),
        caplog.at_level(logging.DEBUG, logger="castore_client.disk_cache"),
    ):
        assert memory.get(digest, lambda: pytest.fail("a hit was fetched")) == data
        assert memory.get(rotten, lambda: rotten_data) == rotten_data
        assert memory.get(other, lambda: other_data) == other_data
        assert disk.get(other) is None
    messages = [r.getMessage() for r in warnings_from_cache(caplog)]
    assert any("Operation not permitted" in m for m in messages), messages


def test_start_on_a_directory_that_cannot_be_created(tmp_path: pathlib.Path) -> None:
    (tmp_path / "empty").mkdir()
    with (
        read_only_view(tmp_path / "empty", tmp_path / "ro") as root,
        pytest.raises(CacheDirUnusable) as raised,
    ):
        DiskChunkCache(root / "cache", 1 << 20)
    assert isinstance(raised.value, CastoreError) and isinstance(raised.value, OSError)
    assert raised.value.strerror


def test_start_on_a_file(tmp_path: pathlib.Path) -> None:
    (tmp_path / "cache").write_text("not a directory")
    with pytest.raises(CacheDirUnusable) as raised:
        DiskChunkCache(tmp_path / "cache", 1 << 20)
    assert raised.value.strerror == "exists and is not a directory"


# --------------------------------------------------------------------------------------------
# Things in the way


def test_shard_directory_replaced_by_a_file(tmp_path: pathlib.Path) -> None:
    disk = DiskChunkCache(tmp_path, 1 << 20)
    digest, data = chunk(1)
    disk.put(digest, data)
    shard = entry_path(tmp_path, digest).parent
    for child in shard.iterdir():
        child.unlink()
    shard.rmdir()
    shard.write_bytes(b"in the way")
    assert disk.get(digest) is None
    disk.put(digest, data)  # must not raise EEXIST or ENOTDIR
    assert disk.get(digest) == data
    assert shard.is_dir()
    assert counter(tmp_path) == on_disk(tmp_path) == len(data)


def test_shard_directory_replaced_by_a_symlink(tmp_path: pathlib.Path) -> None:
    root, elsewhere = tmp_path / "cache", tmp_path / "elsewhere"
    elsewhere.mkdir()
    disk = DiskChunkCache(root, 1 << 20)
    digest, data = chunk(1)
    shard = entry_path(root, digest).parent
    shard.symlink_to(elsewhere)
    disk.put(digest, data)
    assert list(elsewhere.iterdir()) == []  # nothing written through the link
    assert not shard.is_symlink() and disk.get(digest) == data


def test_fifo_in_place_of_a_chunk_is_a_miss_without_blocking(tmp_path: pathlib.Path) -> None:
    disk = DiskChunkCache(tmp_path, 1 << 20)
    memory = ChunkCache(1, disk)
    digest, data = chunk(1)
    path = entry_path(tmp_path, digest)
    path.parent.mkdir()
    os.mkfifo(path)

    def unblock() -> None:
        # A writer that comes and goes gives a blocked reader its end of file.
        with contextlib.suppress(OSError):
            os.close(os.open(path, os.O_WRONLY | os.O_NONBLOCK))

    assert within(BOUND / 2, lambda: disk.get(digest), unblock) is None
    assert not path.exists()  # the FIFO went
    os.mkfifo(path)
    assert within(BOUND / 2, lambda: memory.get(digest, lambda: data), unblock) == data
    assert path.is_file() and path.read_bytes() == data
    assert counter(tmp_path) == on_disk(tmp_path) == len(data)


def test_socket_in_place_of_a_chunk_is_removed(tmp_path: pathlib.Path) -> None:
    disk = DiskChunkCache(tmp_path, 1 << 20)
    digest, data = chunk(1)
    path = entry_path(tmp_path, digest)
    path.parent.mkdir()
    old = os.getcwd()
    os.chdir(path.parent)  # a socket path is limited to 107 bytes; the name is 64
    try:
        with socket.socket(socket.AF_UNIX) as listener:
            listener.bind(path.name)
    finally:
        os.chdir(old)
    assert disk.get(digest) is None
    assert not os.path.lexists(path)
    disk.put(digest, data)
    assert disk.get(digest) == data


@pytest.mark.parametrize("target", ["regular file", "fifo"])
def test_symlink_in_place_of_a_chunk_does_not_redirect(tmp_path: pathlib.Path, target: str) -> None:
    root = tmp_path / "cache"
    disk = DiskChunkCache(root, 1 << 20)
    digest, data = chunk(1)
    outside = tmp_path / "outside"
    if target == "fifo":
        os.mkfifo(outside)
    else:
        outside.write_bytes(data)  # even the right bytes must not be read through a link
    path = entry_path(root, digest)
    path.parent.mkdir()
    path.symlink_to(outside)

    def unblock() -> None:
        with contextlib.suppress(OSError):
            os.close(os.open(outside, os.O_WRONLY | os.O_NONBLOCK))

    assert within(BOUND / 2, lambda: disk.get(digest), unblock) is None
    assert not os.path.lexists(path)
    assert outside.exists()  # the link went, not what it pointed to
    disk.put(digest, data)
    assert path.is_file() and not path.is_symlink() and disk.get(digest) == data


def test_put_replaces_what_is_not_a_regular_file(tmp_path: pathlib.Path) -> None:
    disk = DiskChunkCache(tmp_path, 1 << 20)
    digest, data = chunk(1)
    path = entry_path(tmp_path, digest)
    path.parent.mkdir()
    os.mkfifo(path)
    within(BOUND / 2, lambda: disk.put(digest, data), lambda: None)
    assert path.is_file() and path.read_bytes() == data
    assert counter(tmp_path) == on_disk(tmp_path) == len(data)


def test_other_names_in_the_root_are_not_the_cache(tmp_path: pathlib.Path) -> None:
    """The blob readers' `.spool` lives in the same root: it is neither counted nor evicted."""
    spool = tmp_path / ".spool"
    spool.mkdir()
    (spool / "castore-blob-x").write_bytes(b"s" * 5000)
    (tmp_path / "zz").mkdir()
    (tmp_path / "zz" / "zz").write_bytes(b"z" * 5000)
    os.utime(spool / "castore-blob-x", (0, 0))  # older than every chunk
    disk = DiskChunkCache(tmp_path, 10_000)
    for n in range(30):
        disk.put(*chunk(n))
        assert disk.total_bytes() <= 10_000
        assert counter(tmp_path) == on_disk(tmp_path)
    assert (spool / "castore-blob-x").read_bytes() == b"s" * 5000
    assert (tmp_path / "zz" / "zz").exists()


def test_temporary_file_of_a_dead_writer_is_cleared(tmp_path: pathlib.Path) -> None:
    disk = DiskChunkCache(tmp_path, 10_000)
    digest, data = chunk(1)
    disk.put(digest, data)
    stale = entry_path(tmp_path, digest).parent / ".tmp-deadbeef"
    stale.write_bytes(b"half a chunk")
    for n in range(2, 30):  # enough to evict, which counts (and clears) under the lock
        disk.put(*chunk(n))
    assert not stale.exists()


# --------------------------------------------------------------------------------------------
# The counter


def test_removing_a_corrupt_file_is_counted(tmp_path: pathlib.Path) -> None:
    disk = DiskChunkCache(tmp_path, 1 << 20)
    for n in range(10):
        disk.put(*chunk(n))
    for n in range(0, 10, 3):
        path = entry_path(tmp_path, chunk(n)[0])
        path.write_bytes(b"rot")
        assert disk.get(chunk(n)[0]) is None
        assert not path.exists()
    assert counter(tmp_path) == on_disk(tmp_path) == 6 * 1004


WORKER = """
import sys
sys.path.insert(0, {root!r})
from castore_client.disk_cache import DiskChunkCache
from castore_client.digest import B3Digest
cache = DiskChunkCache({dir!r}, {limit})
chunks = [bytes([n % 256]) * {size} + n.to_bytes(4, "little") for n in range({count})]
for round in range(2):
    for data in chunks:
        digest = B3Digest.of(data)
        if cache.get(digest) is None:
            cache.put(digest, data)
"""


@pytest.mark.parametrize("limit", [1 << 30, 60_000], ids=["no eviction", "eviction"])
def test_counter_is_exact_with_several_processes(tmp_path: pathlib.Path, limit: int) -> None:
    """Every process puts the same chunks in the same order, so they collide all the time;
    between the rounds a few files rot, and their removal must be counted too."""
    cache = tmp_path / "cache"
    DiskChunkCache(cache, limit)
    script = WORKER.format(root=str(REPO_ROOT), dir=str(cache), limit=limit, size=997, count=150)

    def run_workers() -> None:
        procs = [subprocess.Popen([sys.executable, "-c", script]) for _ in range(4)]
        try:
            assert [p.wait(60) for p in procs] == [0, 0, 0, 0]
        finally:
            for p in procs:
                if p.poll() is None:
                    p.kill()
                    p.wait()

    run_workers()
    assert 0 < on_disk(cache) <= limit
    assert counter(cache) == on_disk(cache)
    for path in sorted(cache.glob("[0-9a-f][0-9a-f]/*"))[::7]:
        path.write_bytes(b"rot")
    run_workers()
    assert 0 < on_disk(cache) <= limit
    assert counter(cache) == on_disk(cache)
    assert not leftovers(cache)


# --------------------------------------------------------------------------------------------
# Through a real mount


@contextlib.contextmanager
def fixture_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[CastoreServer]:
    with open_memory_store() as store:
        populate_fixtures(store)
        populate_extras(store)
        with CastoreServer(store, unix_listen_address(tmp_path_factory)) as server:
            yield server


def read_all(mount: pathlib.Path) -> None:
    assert (mount / HELLOWORLD_NAME).read_bytes() == fx.HELLOWORLD
    assert (mount / BLOB_B_NAME).read_bytes() == fx.BLOB_B
    assert (mount / RANDOM_NAME).read_bytes() == RANDOM_BLOB


@pytest.mark.fuse
@pytest.mark.parametrize("when", ["fills up while reading", "full from the start"])
def test_mount_with_cache_on_a_tiny_tmpfs(
    tmp_path: pathlib.Path, tmp_path_factory: pytest.TempPathFactory, when: str
) -> None:
    require_fuse()
    with tiny_tmpfs(tmp_path / "cache") as cache:
        if when == "full from the start":
            fill(cache)
        flags = ("--cache-dir", str(cache), "--cache-size", "1G")
        with (
            fixture_server(tmp_path_factory) as server,
            mount_process(server.address, *flags, tmp_path=tmp_path) as mount,
        ):
            read_all(mount.path)
            assert mount.alive()
            assert "Traceback" not in mount.log()
        assert not leftovers(cache)
        if when == "fills up while reading":
            assert counter(cache) == on_disk(cache) > 0


@pytest.mark.fuse
def test_mount_with_cache_on_a_read_only_bind_mount(
    tmp_path: pathlib.Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    require_fuse()
    source = tmp_path / "cache"
    with fixture_server(tmp_path_factory) as server:
        with mount_process(
            server.address, "--cache-dir", str(source), tmp_path=tmp_path, name="first"
        ) as mount:
            assert (mount.path / HELLOWORLD_NAME).read_bytes() == fx.HELLOWORLD
        assert entry_path(source, B3Digest(fx.b3(fx.HELLOWORLD))).is_file()
        with (
            read_only_view(source, tmp_path / "ro") as cache,
            mount_process(
                server.address, "--cache-dir", str(cache), tmp_path=tmp_path, name="second"
            ) as mount,
        ):
            read_all(mount.path)  # one hit, and misses that cannot be written
            assert mount.alive()
            assert "Traceback" not in mount.log()
