"""A server that lies on purpose: no byte handed out that is not the named content.

The server here is our own fault-injecting one (`tests.faulty_server`), playing a store whose
writers or operator are hostile: a Stat that answers with another blob's chunk list, a Read
that lies the same way, store paths whose nodes claim wrong sizes for honest blobs, and chunk
claims meant to exhaust memory. Each test reads through a real `castore mount` and checks
what a user would see: EIO for the lying path, the right bytes everywhere else.
"""

from __future__ import annotations

import errno
import os
import pathlib
import random
from collections.abc import Callable, Iterator

import pytest

from castore_client.digest import B3Digest
from castore_client.directory import FileNode
from castore_client.services import ChunkMeta, Services
from castore_client.stores import open_memory_store

from . import fixtures as fx
from .faulty_server import Faults, FaultyServer
from .fuse_harness import (
    HELLOWORLD_NAME,
    RANDOM_BLOB,
    RANDOM_NAME,
    Mount,
    digest_text,
    file_root,
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

RANDOM = B3Digest(fx.b3(RANDOM_BLOB))
HELLO = B3Digest(fx.b3(fx.HELLOWORLD))
OTHER_BLOB = random.Random(4111).randbytes(len(RANDOM_BLOB))
"""Another multi-chunk blob of exactly the same size, whose chunk list a lying Stat hands out."""
OTHER = B3Digest(fx.b3(OTHER_BLOB))
OTHER_NAME = f"{store_hash(4111)}-other"
RSS_LIMIT_MIB = 300


@pytest.fixture(scope="module", autouse=True)
def _fuse_available() -> None:
    require_fuse()


@pytest.fixture(scope="module")
def store() -> Iterator[Services]:
    with open_memory_store() as s:
        populate_fixtures(s)
        populate_extras(s)
        assert s.blobs.put([OTHER_BLOB]) == OTHER
        s.path_infos.put(path_info(file_root(OTHER_NAME, OTHER_BLOB)))
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
    with mount_process(server.address, "--list-root", tmp_path=tmp_path) as m:
        yield m


def errno_of(fn: Callable[[], object]) -> int | None:
    try:
        fn()
    except OSError as exc:
        return exc.errno
    return None


def direct_pread(path: pathlib.Path, offset: int, size: int = 4096) -> bytes:
    """One read that the kernel sends to the filesystem as is (no page cache)."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECT)
    try:
        return os.pread(fd, size, offset)
    finally:
        os.close(fd)


def logged(mount: Mount, *digests: B3Digest) -> bool:
    """Whether the mount's log names every one of `digests`."""
    texts = [digest_text(d.raw) for d in digests]
    return wait_until(lambda: all(t in mount.log() for t in texts), 3.0)


def peak_rss_mib(pid: int) -> float:
    for line in pathlib.Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise AssertionError(f"no VmHWM for process {pid}")


@pytest.mark.parametrize("read_lies_too", [False, True], ids=["honest-read", "lying-read"])
def test_stat_with_another_blobs_chunk_list_is_eio(
    mount: Mount, faults: Faults, store: Services, read_lies_too: bool
) -> None:
    other_chunks = store.blobs.stat(OTHER)
    assert len(other_chunks) >= 2 and sum(c.size for c in other_chunks) == len(RANDOM_BLOB)
    faults.chunk_list(RANDOM, other_chunks)
    if read_lies_too:
        faults.substitute(RANDOM, OTHER)
    path = mount.path / RANDOM_NAME

    assert errno_of(path.read_bytes) == errno.EIO
    for offset in (0, len(RANDOM_BLOB) // 2, len(RANDOM_BLOB) - 4096):
        assert errno_of(lambda offset=offset: direct_pread(path, offset)) == errno.EIO
    assert faults.served["chunk list"] >= 1, faults.served
    assert logged(mount, RANDOM, OTHER), mount.log()
    # The blob whose chunks were handed out reads as itself, under its own name.
    assert (mount.path / OTHER_NAME).read_bytes() == OTHER_BLOB

    faults.clear()
    # Nothing of the lie was kept: the same mount reads the honest answer.
    assert direct_pread(path, 1 << 20, 8192) == RANDOM_BLOB[1 << 20 : (1 << 20) + 8192]
    assert path.read_bytes() == RANDOM_BLOB
    assert mount.alive(), mount.log()


def poisoning_paths(faults: Faults) -> tuple[str, str]:
    """Two new store paths naming the honest HELLOWORLD blob with sizes it does not have."""
    empty_claim = f"{store_hash(7001)}-claims-empty"
    short_claim = f"{store_hash(7002)}-claims-five"
    faults.add_path_info(path_info(FileNode(empty_claim.encode(), HELLO, 0)))
    faults.add_path_info(path_info(FileNode(short_claim.encode(), HELLO, 5)))
    return empty_claim, short_claim


@pytest.mark.parametrize("honest_first", [False, True], ids=["poison-first", "honest-first"])
def test_wrong_size_claims_are_eio_and_change_no_other_path(
    mount: Mount, faults: Faults, honest_first: bool
) -> None:
    empty_claim, short_claim = poisoning_paths(faults)
    honest = mount.path / HELLOWORLD_NAME

    def check_honest() -> None:
        assert honest.stat().st_size == len(fx.HELLOWORLD)
        assert honest.read_bytes() == fx.HELLOWORLD

    if honest_first:
        check_honest()
    # Each node keeps its own claim as its size, and reading it fails verification.
    assert (mount.path / empty_claim).stat().st_size == 0
    assert errno_of((mount.path / empty_claim).read_bytes) == errno.EIO
    assert (mount.path / short_claim).stat().st_size == 5
    assert errno_of((mount.path / short_claim).read_bytes) == errno.EIO
    check_honest()
    assert (mount.path / short_claim).stat().st_ino != honest.stat().st_ino
    assert logged(mount, HELLO), mount.log()
    assert mount.alive(), mount.log()


HUGE = 4 << 30


@pytest.mark.parametrize(
    "claim",
    ["one-chunk", "two-chunks", "no-chunks"],
)
def test_huge_claims_fail_without_growing_the_mount(
    server: FaultyServer, faults: Faults, tmp_path: pathlib.Path, claim: str
) -> None:
    """A node and a Stat that claim 4 GiB, and a Read that streams zeros for as long as asked:
    the read fails (a chunk over the limit is refused; a blob verified whole may take only the
    spool's room), and the mount's memory stays bounded."""
    digest = B3Digest(fx.b3(b"a blob nobody has"))
    name = f"{store_hash(7100)}-huge"
    faults.add_path_info(path_info(FileNode(name.encode(), digest, HUGE)))
    faults.zeros(digest, HUGE)
    if claim == "one-chunk":
        faults.chunk_list(digest, [ChunkMeta(digest, HUGE)])
    elif claim == "two-chunks":
        filler = B3Digest(fx.b3(b"filler"))
        faults.chunk_list(digest, [ChunkMeta(digest, HUGE - 10), ChunkMeta(filler, 10)])
        faults.zeros(filler, 10)
    else:
        faults.chunk_list(digest, [])
    cache = tmp_path / "cache"
    with mount_process(
        server.address,
        "--cache-dir",
        str(cache),
        "--cache-size",
        "64M",
        tmp_path=tmp_path,
    ) as m:
        path = m.path / name
        assert path.stat().st_size == HUGE
        assert errno_of(lambda: direct_pread(path, 0)) == errno.EIO
        assert errno_of(lambda: direct_pread(path, HUGE // 2)) == errno.EIO
        assert peak_rss_mib(m.proc.pid) < RSS_LIMIT_MIB
        assert (m.path / HELLOWORLD_NAME).read_bytes() == fx.HELLOWORLD
        assert logged(m, digest), m.log()
        assert m.alive(), m.log()
