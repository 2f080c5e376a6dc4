"""Never hang, never lie: a real mount against a server that misbehaves on purpose.

Each test switches faults on in `tests.faulty_server` while a fresh `castore mount` runs
against it, and checks what a user would see: the affected file or directory gives EIO (not
wrong bytes, not a hang), the mount's log names the digest that failed, everything else keeps
working, and once the fault is switched off the same path reads correctly, which proves that
nothing corrupt was cached on the way.
"""

from __future__ import annotations

import errno
import os
import pathlib
import stat
import threading
import time
from collections.abc import Callable, Iterator

import pytest

from castore_client.digest import B3Digest
from castore_client.directory import (
    MAX_NAME_LEN,
    Directory,
    DirectoryNode,
    FileNode,
    SymlinkNode,
    validate_name,
)
from castore_client.services import Services
from castore_client.storepath import StorePath
from castore_client.stores import open_memory_store

from . import fixtures as fx
from .faulty_server import BAD_CHUNK_LISTS, Faults, FaultyServer, bad_chunk_list, wait_served
from .fuse_harness import (
    BLOB_A_NAME,
    BLOB_B_NAME,
    COMPLICATED_NAME,
    HELLOWORLD_NAME,
    RANDOM_BLOB,
    RANDOM_NAME,
    ROOT_ENTRIES,
    WITH_KEEP_NAME,
    Mount,
    digest_text,
    mount_process,
    path_info,
    populate_extras,
    populate_fixtures,
    require_fuse,
    store_hash,
    unix_listen_address,
    wait_until,
)

pytestmark = pytest.mark.fuse

HELLO = B3Digest(fx.b3(fx.HELLOWORLD))
BLOB_B = B3Digest(fx.b3(fx.BLOB_B))
RANDOM = B3Digest(fx.b3(RANDOM_BLOB))
COMPLICATED = B3Digest(fx.COMPLICATED_DIGEST)
EMPTY = B3Digest(fx.b3(fx.EMPTY))

STALL_TIMEOUT = 2.0
STALL_ATTEMPTS = 1
"""How many deadlines a stalled read or listing may take in all. Today it is two: the kernel
asks again after a failed buffered read (two FUSE reads), and a directory's closure prefetch
is followed by a single Get. With a memo of the last failure per handle and no fallback after
Unavailable, this could be 1."""
LOG_WAIT = 3.0  # the mount logs before it answers, so the line is there at once


# --------------------------------------------------------------------------------------------
# Fixtures: one faulty server per module, a fresh mount per test


@pytest.fixture(scope="module", autouse=True)
def _fuse_available() -> None:
    require_fuse()


@pytest.fixture(scope="module")
def store() -> Iterator[Services]:
    with open_memory_store() as s:
        populate_fixtures(s)
        populate_extras(s)
        yield s


@pytest.fixture(scope="module")
def server(store: Services, tmp_path_factory: pytest.TempPathFactory) -> Iterator[FaultyServer]:
    with FaultyServer(store, unix_listen_address(tmp_path_factory)) as srv:
        yield srv


@pytest.fixture
def faults(server: FaultyServer) -> Iterator[Faults]:
    server.faults.clear()
    server.faults.served.clear()
    try:
        yield server.faults
    finally:
        server.faults.clear()


@pytest.fixture
def mount(server: FaultyServer, faults: Faults, tmp_path: pathlib.Path) -> Iterator[Mount]:
    """A mount nothing has read yet, so that no cache hides a fault."""
    with mount_process(server.address, "--list-root", tmp_path=tmp_path) as m:
        yield m


@pytest.fixture(scope="module")
def shared_mount(server: FaultyServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mount]:
    """One mount for the tests whose every case uses objects of its own, never read before."""
    with mount_process(
        server.address, "--list-root", tmp_path=tmp_path_factory.mktemp("shared")
    ) as m:
        yield m


@pytest.fixture
def deadline_mount(server: FaultyServer, faults: Faults, tmp_path: pathlib.Path) -> Iterator[Mount]:
    """As `mount`, with a deadline on every remote call."""
    flags = ("--list-root", "--timeout", str(STALL_TIMEOUT))
    with mount_process(server.address, *flags, tmp_path=tmp_path) as m:
        yield m


def read(path: pathlib.Path) -> bytes:
    return path.read_bytes()


def errno_of(fn: Callable[[], object]) -> int | None:
    """The errno the call fails with; None if it succeeds."""
    try:
        fn()
    except OSError as exc:
        return exc.errno
    return None


def logged(mount: Mount, *digests: B3Digest) -> bool:
    """Whether the mount's log names one of `digests` (any of them: a chunk or its blob)."""
    texts = [digest_text(d.raw) for d in digests]
    return wait_until(lambda: any(t in mount.log() for t in texts), LOG_WAIT)


def assert_rest_works(root: pathlib.Path, *, besides: str | None = None) -> None:
    """Everything not affected by the fault still reads correctly."""
    expected = {
        BLOB_A_NAME: fx.BLOB_A,
        HELLOWORLD_NAME: fx.HELLOWORLD,
        BLOB_B_NAME: fx.BLOB_B,
        RANDOM_NAME: RANDOM_BLOB,
    }
    for name, data in expected.items():
        if name != besides:
            assert read(root / name) == data, name
    if besides != COMPLICATED_NAME:
        assert sorted(os.listdir(root / COMPLICATED_NAME)) == [".keep", "aa", "keep"]
        assert read(root / COMPLICATED_NAME / "keep" / ".keep") == b""
    assert os.listdir(root / WITH_KEEP_NAME) == [".keep"]


# --------------------------------------------------------------------------------------------
# Blobs: flipped bytes, truncated streams, dropped connections


BLOB_FAULTS: dict[str, tuple[str, B3Digest, Callable[[Faults, B3Digest], None], str]] = {
    # case: (root name, digest, switch on, what `served` counts)
    "flip_small": (HELLOWORLD_NAME, HELLO, lambda f, d: f.flip(d), "flip"),
    "truncate": (BLOB_B_NAME, BLOB_B, lambda f, d: f.truncate(d, 100_000), "truncate read"),
    "truncate_to_nothing": (HELLOWORLD_NAME, HELLO, lambda f, d: f.truncate(d, 0), "truncate read"),
    "drop_at_start": (HELLOWORLD_NAME, HELLO, lambda f, d: f.drop(d), "drop read"),
    "drop_midway": (BLOB_B_NAME, BLOB_B, lambda f, d: f.drop(d, 500_000), "drop read"),
}


@pytest.mark.parametrize("case", sorted(BLOB_FAULTS))
def test_blob_fault_is_eio_and_not_cached(
    mount: Mount, faults: Faults, store: Services, case: str
) -> None:
    name, digest, switch_on, counter = BLOB_FAULTS[case]
    path = mount.path / name
    switch_on(faults, digest)
    for _ in range(2):
        assert errno_of(lambda: read(path)) == errno.EIO
    assert faults.served[counter] >= 1, faults.served
    assert os.stat(path).st_size == ROOT_ENTRIES[name][1]
    # A blob read chunk by chunk fails against a chunk's digest: either is named.
    assert logged(mount, digest, *(c.digest for c in store.blobs.stat(digest))), mount.log()
    assert_rest_works(mount.path, besides=name)

    faults.clear(digest)
    assert read(path) == _content(name)
    assert mount.alive(), mount.log()


def _content(name: str) -> bytes:
    return {
        BLOB_A_NAME: fx.BLOB_A,
        HELLOWORLD_NAME: fx.HELLOWORLD,
        BLOB_B_NAME: fx.BLOB_B,
        RANDOM_NAME: RANDOM_BLOB,
    }[name]


def test_corrupt_whole_blob_stream_gives_way_to_single_chunks(mount: Mount, faults: Faults) -> None:
    """A chunked blob whose whole-blob stream carries a flipped byte while its chunks are sound:
    the stream fails its chunk's check and is dropped, and the chunks, fetched and verified one
    by one, serve the right bytes. The log names the blob."""
    faults.flip(RANDOM)
    assert read(mount.path / RANDOM_NAME) == RANDOM_BLOB
    assert faults.served["flip"] >= 1, faults.served
    assert logged(mount, RANDOM), mount.log()
    assert mount.alive(), mount.log()


def test_dropped_whole_blob_stream_resumes_chunk_by_chunk(mount: Mount, faults: Faults) -> None:
    """A chunked blob whose whole-blob stream breaks is finished from single chunks, each
    verified: the connection drop costs round trips, not an error, and no wrong byte."""
    faults.drop(RANDOM, 1 << 20)
    assert read(mount.path / RANDOM_NAME) == RANDOM_BLOB
    assert faults.served["drop read"] >= 1, faults.served
    assert mount.alive(), mount.log()


CHUNK_FAULTS: dict[str, tuple[Callable[[Faults, B3Digest], None], str]] = {
    "flip": (lambda f, d: f.flip(d), "flip"),
    "truncate": (lambda f, d: f.truncate(d, 1000), "truncate read"),
    "drop": (lambda f, d: f.drop(d, 1000), "drop read"),
}


@pytest.mark.parametrize("case", sorted(CHUNK_FAULTS))
def test_chunk_fault_is_eio_for_that_file_only(
    mount: Mount, faults: Faults, store: Services, case: str
) -> None:
    switch_on, counter = CHUNK_FAULTS[case]
    chunks = store.blobs.stat(RANDOM)
    assert len(chunks) >= 3
    bad = chunks[1]
    start = chunks[0].size
    path = mount.path / RANDOM_NAME
    switch_on(faults, bad.digest)

    # Read whole, and read inside the bad chunk: EIO, whichever way the client fetches it.
    assert errno_of(lambda: read(path)) == errno.EIO
    fd = os.open(path, os.O_RDONLY | os.O_DIRECT)
    try:
        for _ in range(2):
            assert errno_of(lambda: os.pread(fd, 4096, start + bad.size // 2)) == errno.EIO
        # The chunks around it are sound, but the chunk list cannot be proven to be this
        # blob's without the bad one: nothing read through it is served.
        assert errno_of(lambda: os.pread(fd, 4096, 0)) == errno.EIO
        after = start + bad.size
        assert errno_of(lambda: os.pread(fd, 4096, after)) == errno.EIO
    finally:
        os.close(fd)
    assert faults.served[counter] >= 1, faults.served
    assert logged(mount, bad.digest, RANDOM), mount.log()
    assert_rest_works(mount.path, besides=RANDOM_NAME)

    faults.clear(bad.digest)
    assert read(path) == RANDOM_BLOB
    assert mount.alive(), mount.log()


def test_disk_cache_holds_only_verified_chunks(
    server: FaultyServer, faults: Faults, store: Services, tmp_path: pathlib.Path
) -> None:
    """With --cache-dir, whatever failed verification never reaches the disk: every cached
    file hashes to its name, and a later mount sharing the cache reads everything right."""
    cache = tmp_path / "cache"
    chunks = store.blobs.stat(RANDOM)
    faults.flip(HELLO)
    faults.flip(chunks[1].digest)
    faults.truncate(chunks[2].digest, 10)
    faults.drop(BLOB_B, 300_000)
    flags = ("--list-root", "--cache-dir", str(cache))
    with mount_process(server.address, *flags, tmp_path=tmp_path, name="first") as mount:
        for name in (HELLOWORLD_NAME, RANDOM_NAME, BLOB_B_NAME):
            assert errno_of(lambda: read(mount.path / name)) == errno.EIO  # noqa: B023
        assert read(mount.path / BLOB_A_NAME) == fx.BLOB_A
    # Chunks and directories, by digest; `.refs` holds names, which are no content.
    cached = [
        p
        for p in cache.rglob("*")
        if p.is_file() and not any(part.startswith(".") for part in p.relative_to(cache).parts)
    ]
    assert cached, "nothing was cached at all: the test checks nothing"
    for path in cached:
        assert fx.b3(path.read_bytes()).hex() == path.name, path

    faults.clear()
    with mount_process(server.address, *flags, tmp_path=tmp_path, name="second") as mount:
        for name in (HELLOWORLD_NAME, RANDOM_NAME, BLOB_B_NAME, BLOB_A_NAME):
            assert read(mount.path / name) == _content(name)


# --------------------------------------------------------------------------------------------
# Chunk lists that do not add up


@pytest.mark.parametrize("kind", BAD_CHUNK_LISTS)
def test_chunk_list_that_does_not_add_up_is_eio(
    mount: Mount, faults: Faults, store: Services, kind: str
) -> None:
    chunks = store.blobs.stat(RANDOM)
    faults.chunk_list(RANDOM, bad_chunk_list(chunks, kind))
    path = mount.path / RANDOM_NAME
    for _ in range(2):
        assert errno_of(lambda: read(path)) == errno.EIO
    fd = os.open(path, os.O_RDONLY | os.O_DIRECT)
    try:
        # Wherever it is read: no byte may come from a chunk list that is wrong.
        offset = chunks[0].size + chunks[1].size // 2
        try:
            got = os.pread(fd, 4096, offset)
        except OSError as exc:
            assert exc.errno == errno.EIO
        else:
            assert got == RANDOM_BLOB[offset : offset + 4096]
    finally:
        os.close(fd)
    assert faults.served["chunk list"] >= 1, faults.served
    assert logged(mount, RANDOM, *(c.digest for c in chunks)), mount.log()
    assert_rest_works(mount.path, besides=RANDOM_NAME)

    faults.clear(RANDOM)
    assert read(path) == RANDOM_BLOB
    assert mount.alive(), mount.log()


# --------------------------------------------------------------------------------------------
# Directories: not the one asked for, or invalid


def test_mismatching_directory_is_eio_and_not_cached(
    mount: Mount, faults: Faults, store: Services
) -> None:
    """The server answers with a valid directory, but not the one asked for."""
    other = store.directories.get(B3Digest(fx.WITH_KEEP_DIGEST))
    faults.serve_directory(COMPLICATED, other)
    path = mount.path / COMPLICATED_NAME
    assert stat.S_ISDIR(os.stat(path).st_mode)
    for _ in range(2):
        assert errno_of(lambda: os.listdir(path)) == errno.EIO
        assert errno_of(lambda: os.stat(path / ".keep")) == errno.EIO
    assert faults.served["directory"] >= 1
    assert logged(mount, COMPLICATED), mount.log()
    assert_rest_works(mount.path, besides=COMPLICATED_NAME)

    faults.clear(COMPLICATED)
    assert sorted(os.listdir(path)) == [".keep", "aa", "keep"]
    assert read(path / "keep" / ".keep") == b""
    assert mount.alive(), mount.log()


def test_dropped_directory_is_eio_and_not_cached(mount: Mount, faults: Faults) -> None:
    faults.drop(COMPLICATED)
    path = mount.path / COMPLICATED_NAME
    for _ in range(2):
        assert errno_of(lambda: os.listdir(path)) == errno.EIO
    assert faults.served["drop get directory"] >= 1
    assert logged(mount, COMPLICATED), mount.log()
    assert_rest_works(mount.path, besides=COMPLICATED_NAME)

    faults.clear(COMPLICATED)
    assert sorted(os.listdir(path)) == [".keep", "aa", "keep"]
    assert mount.alive(), mount.log()


def test_truncated_closure_falls_back_to_single_directories(mount: Mount, faults: Faults) -> None:
    """A recursive Get that stops early is refused as a whole; each directory is then fetched
    alone, so the tree is served correctly, just with more round trips."""
    faults.truncate_closure(COMPLICATED)
    path = mount.path / COMPLICATED_NAME
    assert sorted(os.listdir(path)) == [".keep", "aa", "keep"]
    assert os.listdir(path / "keep") == [".keep"]
    assert read(path / "keep" / ".keep") == b""
    assert faults.served["truncate closure"] >= 1
    assert mount.alive(), mount.log()


def _invalid_directories() -> dict[str, Directory]:
    """Directories that break one rule each, served for their own digests."""
    empty = B3Digest(fx.b3(fx.EMPTY))

    def files(*names: bytes) -> Directory:
        return Directory(files=tuple(FileNode(n, empty, 0) for n in names))

    return {
        "dotdot": files(b"..", b"x"),
        "dot": files(b"."),
        "slash": files(b"a/b"),
        "nul": files(b"a\0b"),
        "empty_name": files(b""),
        "too_long": files(b"x" * (MAX_NAME_LEN + 1)),
        "unsorted": files(b"b", b"a"),
        "duplicate": files(b"a", b"a"),
        "duplicate_across_kinds": Directory(
            files=(FileNode(b"a", empty, 0),), symlinks=(SymlinkNode(b"a", b"t"),)
        ),
        "empty_symlink_target": Directory(symlinks=(SymlinkNode(b"l", b""),)),
        "nul_symlink_target": Directory(symlinks=(SymlinkNode(b"l", b"a\0b"),)),
        "size_overflow": Directory(
            directories=(
                DirectoryNode(b"a", B3Digest(fx.WITH_KEEP_DIGEST), (1 << 64) - 1),
                DirectoryNode(b"b", B3Digest(fx.WITH_KEEP_DIGEST), (1 << 64) - 1),
            )
        ),
    }


INVALID = _invalid_directories()


@pytest.mark.parametrize("case", sorted(INVALID))
def test_invalid_directory_is_eio_beside_valid_siblings(
    shared_mount: Mount, faults: Faults, case: str
) -> None:
    """A valid parent holds an invalid directory, a valid one and a file: only the invalid
    one fails, every time, and its digest is logged."""
    bad = INVALID[case]
    with pytest.raises(Exception):  # noqa: B017 - the case must really be invalid
        bad.validate()
    parent = Directory(
        directories=(
            DirectoryNode(b"bad", bad.digest, 2 * len(bad)),
            DirectoryNode(b"good", B3Digest(fx.WITH_KEEP_DIGEST), fx.WITH_KEEP_SIZE),
        ),
        files=(FileNode(b"file", HELLO, len(fx.HELLOWORLD)),),
    )
    parent.validate()
    faults.add_directory(bad)
    faults.add_directory(parent)
    name = f"{store_hash(5000 + sorted(INVALID).index(case))}-parent-of-invalid"
    faults.add_path_info(path_info(DirectoryNode(name.encode(), parent.digest, parent.size())))

    mount = shared_mount
    root = mount.path / name
    assert sorted(os.listdir(root)) == ["bad", "file", "good"]
    for _ in range(2):
        assert errno_of(lambda: os.listdir(root / "bad")) == errno.EIO
    assert os.listdir(root / "good") == [".keep"]
    assert read(root / "good" / ".keep") == b""
    assert read(root / "file") == fx.HELLOWORLD
    assert logged(mount, bad.digest), mount.log()
    assert_rest_works(mount.path)
    assert mount.alive(), mount.log()


# --------------------------------------------------------------------------------------------
# Names from the server never reach the kernel unchecked


def _bad_root_names() -> list[bytes]:
    h = store_hash(7000)
    return [
        b"..",
        b".",
        b"",
        b"a/b",
        f"{h}-a/b".encode(),
        f"{h}-nul\0name".encode(),
        b"/etc/passwd",
        b"not-a-store-path",
        f"{h}-bad name".encode(),
        f"{h}-caf\u00e9".encode(),
        f"{h}-{'x' * 300}".encode(),
        f"{store_hash(7001)}-.".encode(),
        f"{'e' * 32}-not-nixbase32".encode(),
    ]


def test_invalid_root_names_never_reach_the_kernel(mount: Mount, faults: Faults) -> None:
    good = f"{store_hash(7100)}-good-extra"
    faults.add_path_info(path_info(SymlinkNode(good.encode(), b"somewhere")))
    for name in _bad_root_names():
        faults.add_path_info(path_info(SymlinkNode(name, b"somewhere")))

    listed = os.listdir(mount.path)
    assert faults.served["path info"] >= 1
    assert good in listed
    assert set(ROOT_ENTRIES) <= set(listed)
    assert len(listed) == len(set(listed)) == len(ROOT_ENTRIES) + 1
    for entry in listed:
        validate_name(entry.encode())
        StorePath.parse(entry)
    for bad in _bad_root_names():
        if b"/" in bad or b"\0" in bad or bad in (b"", b".", b".."):
            continue  # the kernel would never ask for these
        target = mount.path / os.fsdecode(bad)
        assert errno_of(lambda: os.lstat(target)) == errno.ENOENT, bad  # noqa: B023
    assert os.readlink(mount.path / good) == "somewhere"
    assert mount.alive(), mount.log()


def test_root_node_named_for_another_path_is_absent(shared_mount: Mount, faults: Faults) -> None:
    """Asked for `H-asked`, the server answers with the node `H-other`: not that path."""
    mount = shared_mount
    h = store_hash(7200)
    faults.add_path_info(path_info(SymlinkNode(f"{h}-other".encode(), b"somewhere")))
    assert errno_of(lambda: os.lstat(mount.path / f"{h}-asked")) == errno.ENOENT
    assert faults.served["path info"] >= 1
    assert os.readlink(mount.path / f"{h}-other") == "somewhere"


# --------------------------------------------------------------------------------------------
# Stalls: EIO after the deadline, while everything else goes on


STALLS: dict[str, tuple[B3Digest, Callable[[pathlib.Path], object], str]] = {
    # case: (stalled digest, what the stalled reader does, what `served` counts)
    "read": (HELLO, lambda root: read(root / HELLOWORLD_NAME), "stall read"),
    "stat": (RANDOM, lambda root: read(root / RANDOM_NAME), "stall stat"),
    "directory": (
        COMPLICATED,
        lambda root: os.listdir(root / COMPLICATED_NAME),
        "stall get directory",
    ),
}


@pytest.mark.parametrize("case", sorted(STALLS))
def test_stall_is_eio_after_the_deadline_and_blocks_nothing_else(
    deadline_mount: Mount, faults: Faults, case: str
) -> None:
    digest, stalled_op, counter = STALLS[case]
    root = deadline_mount.path
    faults.stall(digest)
    outcome: dict[str, object] = {}

    def stalled() -> None:
        started = time.monotonic()
        outcome["errno"] = errno_of(lambda: stalled_op(root))
        outcome["elapsed"] = time.monotonic() - started

    thread = threading.Thread(target=stalled, daemon=True)
    thread.start()
    try:
        assert wait_served(faults, counter, timeout=STALL_TIMEOUT * 2), faults.served
        # Meanwhile, other files and directories are served, each well within the deadline.
        for name, data in ((BLOB_A_NAME, fx.BLOB_A), (BLOB_B_NAME, fx.BLOB_B)):
            started = time.monotonic()
            assert read(root / name) == data
            assert time.monotonic() - started < STALL_TIMEOUT
        assert os.listdir(root / WITH_KEEP_NAME) == [".keep"]
        assert thread.is_alive(), "the stalled call ended before the others were served"
        thread.join(STALL_TIMEOUT * 10)
        assert not thread.is_alive(), "the stalled call is still waiting"
    finally:
        faults.release()
        thread.join(30)
    assert outcome["errno"] == errno.EIO, outcome
    elapsed = outcome["elapsed"]
    assert isinstance(elapsed, float)
    # About the deadline: not before it, and no more than STALL_ATTEMPTS of it.
    assert STALL_TIMEOUT * 0.9 <= elapsed <= STALL_TIMEOUT * STALL_ATTEMPTS + 1.5, elapsed
    assert logged(deadline_mount, digest), deadline_mount.log()

    faults.clear(digest)
    result = stalled_op(root)
    if case == "directory":
        assert sorted(result) == [".keep", "aa", "keep"]  # type: ignore[call-overload]
    assert deadline_mount.alive(), deadline_mount.log()


# --------------------------------------------------------------------------------------------
# The whole server goes away, and comes back


def test_server_gone_is_eio_and_its_return_is_noticed(
    store: Services,
    tmp_path: pathlib.Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    with (
        FaultyServer(store, unix_listen_address(tmp_path_factory)) as server,
        mount_process(
            server.address, "--list-root", "--timeout", str(STALL_TIMEOUT), tmp_path=tmp_path
        ) as mount,
    ):
        root = mount.path
        assert read(root / BLOB_A_NAME) == fx.BLOB_A
        for name in ROOT_ENTRIES:
            os.lstat(root / name)  # the names are known; their contents are not fetched yet
        server.stop()

        started = time.monotonic()
        assert errno_of(lambda: read(root / HELLOWORLD_NAME)) == errno.EIO
        assert errno_of(lambda: os.listdir(root / COMPLICATED_NAME)) == errno.EIO
        assert time.monotonic() - started < 4 * STALL_TIMEOUT + 2
        assert logged(mount, HELLO, COMPLICATED), mount.log()
        # What was already read is still there, and so are the names.
        assert read(root / BLOB_A_NAME) == fx.BLOB_A
        assert stat.S_ISDIR(os.lstat(root / COMPLICATED_NAME).st_mode)
        assert mount.alive(), mount.log()

        server.start()
        assert wait_until(lambda: _reads(root / HELLOWORLD_NAME) == fx.HELLOWORLD, 30)
        assert sorted(os.listdir(root / COMPLICATED_NAME)) == [".keep", "aa", "keep"]
        assert_rest_works(root)
        assert mount.alive(), mount.log()


def _reads(path: pathlib.Path) -> bytes | None:
    try:
        return read(path)
    except OSError:
        return None


def test_faults_of_one_kind_do_not_leak(faults: Faults) -> None:
    """The switchboard itself: clear() turns every fault off and releases every stall."""
    event = faults.stall(HELLO)
    faults.flip(HELLO)
    faults.truncate(BLOB_B, 1)
    faults.drop(RANDOM)
    faults.chunk_list(RANDOM, [])
    faults.serve_directory(COMPLICATED, Directory())
    faults.clear()
    assert event.is_set()
    assert not (faults.flipped or faults.truncated or faults.dropped or faults.chunk_lists)
    assert not (faults.directories or faults.stalls)
