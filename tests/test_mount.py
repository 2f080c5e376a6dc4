"""The filesystem as a user meets it: `castore mount` run for real, behaviours B1-B30.

Each test names the behaviour of spec/behaviours.md it checks. Mounts that only read share a
module-scoped mount per configuration; tests that signal the mount, or need a server that
misbehaves, get their own. Expected values come from tests.fixtures and the harness.
"""

from __future__ import annotations

import contextlib
import errno
import itertools
import os
import pathlib
import random
import signal
import stat
import subprocess
import threading
from collections.abc import Callable, Iterator

import pytest

from castore_client.address import parse_address
from castore_client.digest import B3Digest
from castore_client.directory import Directory, DirectoryNode, FileNode, SymlinkNode
from castore_client.rpc.namespace import Namespace
from castore_client.rpc.server import CastoreServer
from castore_client.services import Services
from castore_client.stores import open_memory_store

from . import fixtures as fx
from .conftest import require_tool
from .fuse_harness import (
    BLOB_A_NAME,
    BLOB_B_NAME,
    COMPLICATED_NAME,
    DANGLING_NAME,
    DANGLING_TARGET,
    HELLOWORLD_NAME,
    INVALID_DIRECTORY_ROOTS,
    RANDOM_BLOB,
    RANDOM_NAME,
    ROOT_ENTRIES,
    SOMEWHERE_ELSE,
    SYMLINK_NAME,
    SYMLINK_NAME2,
    TCP_LISTEN_ADDRESS,
    WITH_KEEP_NAME,
    XATTR_BLOB,
    XATTR_DIRECTORY,
    CorruptingBlobService,
    CountingPathInfoService,
    InvalidDirectoryService,
    Mount,
    digest_text,
    invalid_directories,
    is_mounted,
    mount_process,
    mounted,
    path_info,
    populate_extras,
    populate_fixtures,
    populate_invalid_directories,
    populate_missing_blob,
    populate_missing_directory,
    put_blob,
    require_fuse,
    run_mount_expecting_error,
    start_mount,
    store_hash,
    unix_listen_address,
    wait_until,
    wait_until_settled,
)

pytestmark = pytest.mark.fuse

EMPTY_DIGEST = B3Digest(fx.b3(fx.EMPTY))
BLOB_A_DIGEST = B3Digest(fx.b3(fx.BLOB_A))


def errno_of(fn: Callable[[], object]) -> int | None:
    """The errno the call fails with; None if it succeeds."""
    try:
        fn()
    except OSError as exc:
        return exc.errno
    return None


def no_write_bits(st: os.stat_result) -> bool:
    return st.st_mode & 0o222 == 0


# --------------------------------------------------------------------------------------------
# Shared servers and mounts


@pytest.fixture(scope="module", autouse=True)
def _fuse_available() -> None:
    require_fuse()


@pytest.fixture(scope="module")
def fixture_store() -> Iterator[Services]:
    with open_memory_store() as store:
        populate_fixtures(store)
        populate_extras(store)
        yield store


@pytest.fixture(scope="module")
def unix_server(
    fixture_store: Services, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[CastoreServer]:
    with CastoreServer(fixture_store, unix_listen_address(tmp_path_factory)) as server:
        yield server


@pytest.fixture(scope="module")
def tcp_server(fixture_store: Services) -> Iterator[CastoreServer]:
    with CastoreServer(fixture_store, parse_address(TCP_LISTEN_ADDRESS)) as server:
        yield server


@pytest.fixture(scope="module")
def listing_mount(
    unix_server: CastoreServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Mount]:
    """--list-root --show-xattr, over a unix socket."""
    with mount_process(
        unix_server.address,
        "--list-root",
        "--show-xattr",
        tmp_path=tmp_path_factory.mktemp("listing"),
    ) as mount:
        yield mount


@pytest.fixture(scope="module")
def plain_mount(
    tcp_server: CastoreServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Mount]:
    """No flags, over TCP on 127.0.0.1."""
    with mount_process(tcp_server.address, tmp_path=tmp_path_factory.mktemp("plain")) as mount:
        yield mount


@pytest.fixture(scope="module")
def snix_mount(
    fixture_store: Services, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Mount]:
    """--protocol snix against a server that only speaks the snix namespace."""
    address = unix_listen_address(tmp_path_factory)
    flags = ("--protocol", "snix", "--list-root", "--show-xattr")
    with (
        CastoreServer(fixture_store, address, namespaces=(Namespace.SNIX,)) as server,
        mount_process(server.address, *flags, tmp_path=tmp_path_factory.mktemp("snix")) as mount,
    ):
        yield mount


@pytest.fixture(scope="module")
def digest_root_mount(
    unix_server: CastoreServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Mount]:
    """The root is DIRECTORY_COMPLICATED itself (--root-digest)."""
    with mount_process(
        unix_server.address,
        "--root-digest",
        digest_text(fx.COMPLICATED_DIGEST),
        "--list-root",
        tmp_path=tmp_path_factory.mktemp("digestroot"),
    ) as mount:
        yield mount


@pytest.fixture
def fresh_mount(unix_server: CastoreServer, tmp_path: pathlib.Path) -> Iterator[pathlib.Path]:
    """A mount nothing has walked yet."""
    with mounted(unix_server.address, tmp_path=tmp_path) as path:
        yield path


def own_server(services: Services, tmp_path_factory: pytest.TempPathFactory) -> CastoreServer:
    return CastoreServer(services, unix_listen_address(tmp_path_factory))


@contextlib.contextmanager
def serve_and_mount(
    services: Services,
    *flags: str,
    tmp_path: pathlib.Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Mount]:
    """A server of its own over `services`, and a mount of it."""
    with (
        own_server(services, tmp_path_factory) as server,
        mount_process(server.address, *flags, tmp_path=tmp_path) as mount,
    ):
        yield mount


# --------------------------------------------------------------------------------------------
# B1-B3: mounting, and listing the root


def test_b01_mount_and_unmount_empty_store(
    tmp_path: pathlib.Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    with open_memory_store() as store, own_server(store, tmp_path_factory) as server:
        mount = start_mount(server.address, tmp_path=tmp_path)
        try:
            mount.wait_mounted()
            assert wait_until(lambda: "ready" in mount.log(), 10), mount.log()
            assert stat.S_ISDIR(os.stat(mount.path).st_mode)
            mount.signal(signal.SIGTERM)
            assert mount.wait_exit() == 0, mount.log()
            assert not is_mounted(mount.path)
        finally:
            mount.stop()


def test_b02_root_listing_refused_with_eperm(plain_mount: Mount) -> None:
    assert errno_of(lambda: os.listdir(plain_mount.path)) == errno.EPERM
    # Lookups of names in the root still work.
    assert (plain_mount.path / BLOB_A_NAME).exists()


def test_b03_root_listing_streams_root_nodes(listing_mount: Mount) -> None:
    with os.scandir(listing_mount.path) as it:
        entries = list(it)
    assert sorted(e.name for e in entries) == sorted(ROOT_ENTRIES)
    for entry in entries:
        kind, size = ROOT_ENTRIES[entry.name]
        st = os.lstat(entry.path)
        assert entry.is_file(follow_symlinks=False) == (kind == "file"), entry.name
        assert entry.is_dir(follow_symlinks=False) == (kind == "dir"), entry.name
        assert entry.is_symlink() == (kind == "symlink"), entry.name
        assert st.st_size == size, entry.name
        assert no_write_bits(st), entry.name


def test_b03_root_listing_first_entry_stats_as_file(
    tmp_path: pathlib.Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """The reference's setup: only BLOB_A in the root."""
    with open_memory_store() as store:
        put_blob(store, fx.BLOB_A)
        store.path_infos.put(
            path_info(FileNode(BLOB_A_NAME.encode(), BLOB_A_DIGEST, len(fx.BLOB_A)))
        )
        with serve_and_mount(
            store, "--list-root", tmp_path=tmp_path, tmp_path_factory=tmp_path_factory
        ) as mount:
            with os.scandir(mount.path) as it:
                entry = next(it)
            assert entry.name == BLOB_A_NAME
            st = entry.stat()
            assert stat.S_ISREG(st.st_mode)
            assert no_write_bits(st)
            assert st.st_size == len(fx.BLOB_A)


def test_b03_root_digest_lists_that_directory(digest_root_mount: Mount) -> None:
    assert os.listdir(digest_root_mount.path) == [".keep", "aa", "keep"]


# --------------------------------------------------------------------------------------------
# B4-B9: files, symlinks and directories in the root


def test_b04_stat_file_in_root(plain_mount: Mount) -> None:
    path = plain_mount.path / BLOB_A_NAME
    st = os.stat(path)
    assert stat.S_ISREG(st.st_mode)
    assert no_write_bits(st)
    assert st.st_size == len(fx.BLOB_A)
    assert not os.access(path, os.W_OK)


def test_b05_read_small_file_in_root(plain_mount: Mount) -> None:
    assert (plain_mount.path / BLOB_A_NAME).read_bytes() == fx.BLOB_A
    assert (plain_mount.path / HELLOWORLD_NAME).read_bytes() == fx.HELLOWORLD


def test_b05_read_over_snix_protocol(snix_mount: Mount) -> None:
    assert (snix_mount.path / HELLOWORLD_NAME).read_bytes() == fx.HELLOWORLD
    assert (snix_mount.path / COMPLICATED_NAME / "keep" / ".keep").read_bytes() == b""


def test_b06_read_large_file_in_root(plain_mount: Mount) -> None:
    path = plain_mount.path / BLOB_B_NAME
    st = os.stat(path)
    assert stat.S_ISREG(st.st_mode)
    assert no_write_bits(st)
    assert st.st_size == len(fx.BLOB_B)
    data = path.read_bytes()
    assert len(data) == len(fx.BLOB_B)
    assert data == fx.BLOB_B


def test_b07_readlink_of_root_symlinks(plain_mount: Mount) -> None:
    assert os.readlink(plain_mount.path / SYMLINK_NAME) == BLOB_A_NAME
    assert os.readlink(plain_mount.path / SYMLINK_NAME2) == SOMEWHERE_ELSE.decode()


def test_b07_dangling_symlink(plain_mount: Mount) -> None:
    path = plain_mount.path / DANGLING_NAME
    assert os.readlink(path) == DANGLING_TARGET.decode()
    assert errno_of(lambda: os.stat(path)) == errno.ENOENT
    assert stat.S_ISLNK(os.lstat(path).st_mode)
    assert errno_of(path.read_bytes) == errno.ENOENT


def test_b08_stat_and_read_through_symlink(plain_mount: Mount) -> None:
    link = plain_mount.path / SYMLINK_NAME
    st = os.stat(link)
    assert stat.S_ISREG(st.st_mode)
    assert st.st_size == len(fx.BLOB_A)
    assert st.st_ino == os.stat(plain_mount.path / BLOB_A_NAME).st_ino
    assert link.read_bytes() == fx.BLOB_A


def test_b09_directory_in_root_is_read_only_directory(plain_mount: Mount) -> None:
    for name in (WITH_KEEP_NAME, COMPLICATED_NAME):
        st = os.stat(plain_mount.path / name)
        assert stat.S_ISDIR(st.st_mode), name
        assert no_write_bits(st), name


# --------------------------------------------------------------------------------------------
# B10: xattrs


@pytest.mark.parametrize(
    ("relpath", "attr", "raw_digest"),
    [
        (WITH_KEEP_NAME, XATTR_DIRECTORY, fx.WITH_KEEP_DIGEST),
        (COMPLICATED_NAME, XATTR_DIRECTORY, fx.COMPLICATED_DIGEST),
        (f"{COMPLICATED_NAME}/keep", XATTR_DIRECTORY, fx.WITH_KEEP_DIGEST),
        (BLOB_A_NAME, XATTR_BLOB, fx.b3(fx.BLOB_A)),
        (HELLOWORLD_NAME, XATTR_BLOB, fx.b3(fx.HELLOWORLD)),
        (f"{COMPLICATED_NAME}/.keep", XATTR_BLOB, fx.b3(fx.EMPTY)),
    ],
    ids=["dir", "dir-complicated", "dir-nested", "file", "file-exec", "file-nested"],
)
@pytest.mark.parametrize("namespace", ["tvix", "snix"])
def test_b10_xattr_exposes_digest(
    request: pytest.FixtureRequest, namespace: str, relpath: str, attr: str, raw_digest: bytes
) -> None:
    mount: Mount = request.getfixturevalue("listing_mount" if namespace == "tvix" else "snix_mount")
    path = mount.path / relpath
    name = attr.format(ns=namespace)
    assert os.listxattr(path) == [name]
    assert os.getxattr(path, name) == digest_text(raw_digest).encode()
    assert errno_of(lambda: os.getxattr(path, "user.cheesecake")) == errno.ENODATA
    other = "snix" if namespace == "tvix" else "tvix"
    assert errno_of(lambda: os.getxattr(path, attr.format(ns=other))) == errno.ENODATA


def test_b10_no_xattrs_without_show_xattr(plain_mount: Mount) -> None:
    for relpath, attr in ((WITH_KEEP_NAME, XATTR_DIRECTORY), (BLOB_A_NAME, XATTR_BLOB)):
        path = plain_mount.path / relpath
        try:
            names = os.listxattr(path)
        except OSError as exc:
            assert exc.errno in (errno.ENOTSUP, errno.EOPNOTSUPP), exc
        else:
            assert names == []
        assert errno_of(lambda p=path, a=attr: os.getxattr(p, a.format(ns="tvix"))) in (
            errno.ENODATA,
            errno.ENOTSUP,
            errno.EOPNOTSUPP,
        )


# --------------------------------------------------------------------------------------------
# B11-B14: inside directories


def test_b11_file_inside_directory(plain_mount: Mount) -> None:
    path = plain_mount.path / WITH_KEEP_NAME / ".keep"
    st = os.stat(path)
    assert stat.S_ISREG(st.st_mode)
    assert no_write_bits(st)
    assert st.st_size == 0
    assert path.read_bytes() == b""


def test_b12_file_two_directories_deep(fresh_mount: pathlib.Path) -> None:
    path = fresh_mount / COMPLICATED_NAME / "keep" / ".keep"
    st = os.stat(path)
    assert stat.S_ISREG(st.st_mode)
    assert no_write_bits(st)
    assert path.read_bytes() == b""


def test_b12_root_digest_file_two_deep(digest_root_mount: Mount) -> None:
    path = digest_root_mount.path / "keep" / ".keep"
    assert stat.S_ISREG(os.stat(path).st_mode)
    assert path.read_bytes() == b""


def test_b13_readdir_order_types_and_sizes(plain_mount: Mount) -> None:
    with os.scandir(plain_mount.path / COMPLICATED_NAME) as it:
        entries = list(it)
    assert [e.name for e in entries] == [".keep", "aa", "keep"]
    keep_file, link, keep_dir = entries
    assert keep_file.is_file(follow_symlinks=False)
    assert link.is_symlink()
    assert keep_dir.is_dir(follow_symlinks=False)
    assert keep_file.stat(follow_symlinks=False).st_size == 0
    assert link.stat(follow_symlinks=False).st_size == len(SOMEWHERE_ELSE)
    assert keep_dir.stat(follow_symlinks=False).st_size == fx.WITH_KEEP_SIZE
    assert os.readlink(link.path) == SOMEWHERE_ELSE.decode()


def test_b14_readdir_deep_without_touching_parent(fresh_mount: pathlib.Path) -> None:
    with os.scandir(fresh_mount / COMPLICATED_NAME / "keep") as it:
        entries = list(it)
    assert [e.name for e in entries] == [".keep"]
    assert entries[0].is_file(follow_symlinks=False)
    assert entries[0].stat(follow_symlinks=False).st_size == 0


# --------------------------------------------------------------------------------------------
# B15-B19: attributes, inode numbers, exact names


def test_b15_attributes(plain_mount: Mount) -> None:
    root = plain_mount.path
    expected = {
        BLOB_A_NAME: (stat.S_IFREG | 0o444, len(fx.BLOB_A)),
        HELLOWORLD_NAME: (stat.S_IFREG | 0o555, len(fx.HELLOWORLD)),
        WITH_KEEP_NAME: (stat.S_IFDIR | 0o555, fx.WITH_KEEP_SIZE),
        COMPLICATED_NAME: (stat.S_IFDIR | 0o555, fx.COMPLICATED_SIZE),
        SYMLINK_NAME: (stat.S_IFLNK | 0o444, len(BLOB_A_NAME)),
        f"{COMPLICATED_NAME}/keep": (stat.S_IFDIR | 0o555, fx.WITH_KEEP_SIZE),
        f"{COMPLICATED_NAME}/.keep": (stat.S_IFREG | 0o444, 0),
        f"{COMPLICATED_NAME}/aa": (stat.S_IFLNK | 0o444, len(SOMEWHERE_ELSE)),
    }
    for relpath, (mode, size) in expected.items():
        st = os.lstat(root / relpath)
        assert (oct(st.st_mode), st.st_size) == (oct(mode), size), relpath
        assert (st.st_uid, st.st_gid) == (0, 0), relpath
        assert (st.st_atime_ns, st.st_mtime_ns, st.st_ctime_ns) == (0, 0, 0), relpath


def test_b15_directory_size_stays_node_size_once_populated(fresh_mount: pathlib.Path) -> None:
    """Sizes stay the DirectoryNode's once the children are known (a fresh lookup after)."""
    assert os.listdir(fresh_mount / COMPLICATED_NAME / "keep") == [".keep"]
    # DIRECTORY_WITH_KEEP is now populated, and this lookup is the first under this name.
    assert os.stat(fresh_mount / WITH_KEEP_NAME).st_size == fx.WITH_KEEP_SIZE
    assert os.stat(fresh_mount / COMPLICATED_NAME).st_size == fx.COMPLICATED_SIZE


def test_b15_root_attributes(plain_mount: Mount) -> None:
    st = os.stat(plain_mount.path)
    assert oct(st.st_mode) == oct(stat.S_IFDIR | 0o555)
    assert (st.st_uid, st.st_gid) == (0, 0)
    assert (st.st_atime_ns, st.st_mtime_ns, st.st_ctime_ns) == (0, 0, 0)


def test_b15_root_digest_root_attributes(digest_root_mount: Mount) -> None:
    assert oct(os.stat(digest_root_mount.path).st_mode) == oct(stat.S_IFDIR | 0o555)


def test_b16_identical_directories_share_inode(plain_mount: Mount) -> None:
    root = plain_mount.path
    a = os.stat(root / WITH_KEEP_NAME).st_ino
    b = os.stat(root / COMPLICATED_NAME / "keep").st_ino
    assert a == b
    assert a != os.stat(root / COMPLICATED_NAME).st_ino


def test_b17_identical_files_share_inode(plain_mount: Mount) -> None:
    root = plain_mount.path
    a = os.stat(root / COMPLICATED_NAME / ".keep").st_ino
    b = os.stat(root / COMPLICATED_NAME / "keep" / ".keep").st_ino
    c = os.stat(root / WITH_KEEP_NAME / ".keep").st_ino
    assert a == b == c
    assert a != os.stat(root / BLOB_A_NAME).st_ino


def test_b18_identical_symlinks_share_inode(plain_mount: Mount) -> None:
    root = plain_mount.path
    a = os.lstat(root / COMPLICATED_NAME / "aa").st_ino
    b = os.lstat(root / SYMLINK_NAME2).st_ino
    assert a == b
    assert a != os.lstat(root / SYMLINK_NAME).st_ino


def test_b19_root_names_match_exactly(plain_mount: Mount) -> None:
    root = plain_mount.path
    wrong_name = "00000000000000000000000000000000-tes"
    assert errno_of(lambda: os.stat(root / wrong_name)) == errno.ENOENT
    assert errno_of(lambda: os.stat(root / "0000000000000000000000000000000-test")) == errno.ENOENT
    assert stat.S_ISREG(os.stat(root / BLOB_A_NAME).st_mode)
    # The hash alone matches now, and a lookup by hash must not be enough.
    for name in (
        wrong_name,
        BLOB_A_NAME + "x",
        BLOB_A_NAME.upper(),
        "00000000000000000000000000000000",
    ):
        assert errno_of(lambda n=name: os.stat(root / n)) == errno.ENOENT, name


def test_b19_root_digest_names(digest_root_mount: Mount) -> None:
    root = digest_root_mount.path
    for name in (BLOB_A_NAME, "kee", "keep2", ".kee"):
        assert errno_of(lambda n=name: os.stat(root / n)) == errno.ENOENT, name
    assert stat.S_ISDIR(os.stat(root / "keep").st_mode)


# --------------------------------------------------------------------------------------------
# B20, B24: read-only


def test_b20_create_file_fails_with_erofs(plain_mount: Mount) -> None:
    root = plain_mount.path
    for path in (root / "new-file", root / BLOB_A_NAME, root / WITH_KEEP_NAME / "new-file"):
        assert errno_of(lambda p=path: open(p, "w").close()) == errno.EROFS, path
    assert not (root / "new-file").exists()


def _write_ops(root: pathlib.Path) -> dict[str, Callable[[], object]]:
    file = root / BLOB_A_NAME
    directory = root / WITH_KEEP_NAME
    return {
        "mkdir": lambda: os.mkdir(root / "newdir"),
        "mkdir-in-dir": lambda: os.mkdir(directory / "newdir"),
        "unlink": lambda: os.unlink(file),
        "unlink-in-dir": lambda: os.unlink(directory / ".keep"),
        "rmdir": lambda: os.rmdir(directory),
        "rename": lambda: os.rename(file, root / "renamed"),
        "rename-in-dir": lambda: os.rename(directory / ".keep", directory / "moved"),
        "chmod": lambda: os.chmod(file, 0o644),
        "chown": lambda: os.chown(file, 1, 1),
        "utime": lambda: os.utime(file, (1, 1)),
        "truncate": lambda: os.truncate(file, 0),
        "setxattr": lambda: os.setxattr(file, "user.test", b"1"),
        "setxattr-castore": lambda: os.setxattr(directory, XATTR_DIRECTORY.format(ns="tvix"), b"x"),
        "removexattr": lambda: os.removexattr(file, XATTR_BLOB.format(ns="tvix")),
        "open-wronly": lambda: os.close(os.open(file, os.O_WRONLY)),
        "open-rdwr": lambda: os.close(os.open(file, os.O_RDWR)),
        "open-append": lambda: os.close(os.open(file, os.O_WRONLY | os.O_APPEND)),
        "open-trunc": lambda: os.close(os.open(file, os.O_RDONLY | os.O_TRUNC)),
        "create": lambda: os.close(os.open(root / "created", os.O_CREAT | os.O_WRONLY, 0o644)),
        "symlink": lambda: os.symlink("target", root / "newlink"),
        "link": lambda: os.link(file, root / "hardlink"),
        "mknod": lambda: os.mknod(root / "fifo", stat.S_IFIFO | 0o644),
    }


WRITE_OPS = list(_write_ops(pathlib.Path("/")))


@pytest.mark.parametrize("op", WRITE_OPS)
def test_b24_write_operations_fail_with_erofs(listing_mount: Mount, op: str) -> None:
    root = listing_mount.path
    assert errno_of(_write_ops(root)[op]) == errno.EROFS
    assert listing_mount.alive(), listing_mount.log()
    assert (root / BLOB_A_NAME).read_bytes() == fx.BLOB_A
    assert os.listxattr(root / BLOB_A_NAME) == [XATTR_BLOB.format(ns="tvix")]
    assert sorted(os.listdir(root)) == sorted(ROOT_ENTRIES)


def test_b24_write_to_read_only_descriptor_fails(listing_mount: Mount) -> None:
    """There is no writable descriptor to be had (see above); writing to a read-only one fails."""
    fd = os.open(listing_mount.path / BLOB_A_NAME, os.O_RDONLY)
    try:
        assert errno_of(lambda: os.write(fd, b"x")) in (errno.EBADF, errno.EROFS)
        assert os.pread(fd, 10, 0) == fx.BLOB_A
    finally:
        os.close(fd)
    assert listing_mount.alive(), listing_mount.log()


# --------------------------------------------------------------------------------------------
# B21, B22: objects missing on the server


def test_b21_missing_directory_is_eio(
    tmp_path: pathlib.Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    with open_memory_store() as store:
        populate_missing_directory(store)
        with serve_and_mount(store, tmp_path=tmp_path, tmp_path_factory=tmp_path_factory) as mount:
            path = mount.path / WITH_KEEP_NAME
            assert stat.S_ISDIR(os.stat(path).st_mode)
            assert errno_of(lambda: os.listdir(path)) == errno.EIO
            assert errno_of(lambda: os.stat(path / ".keep")) == errno.EIO
            assert stat.S_ISDIR(os.stat(path).st_mode)
            assert mount.alive(), mount.log()


def test_b22_missing_blob_is_eio(
    tmp_path: pathlib.Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    with open_memory_store() as store:
        populate_missing_blob(store)
        with serve_and_mount(store, tmp_path=tmp_path, tmp_path_factory=tmp_path_factory) as mount:
            path = mount.path / BLOB_A_NAME
            st = os.stat(path)
            assert stat.S_ISREG(st.st_mode)
            assert st.st_size == len(fx.BLOB_A)
            assert errno_of(path.read_bytes) == errno.EIO
            assert os.stat(path).st_size == len(fx.BLOB_A)
            assert mount.alive(), mount.log()


# --------------------------------------------------------------------------------------------
# B23, B25: big listings

HUGE_ROOT = 20_000
LONG_TARGET = b"t" * 4000  # large messages, so that gRPC flow control cannot buffer them all


def test_b23_root_listing_is_streamed(
    tmp_path: pathlib.Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    names = [f"{store_hash(i)}-p{i}" for i in range(HUGE_ROOT)]
    with open_memory_store() as store:
        for name in names:
            store.path_infos.put(path_info(SymlinkNode(name.encode(), LONG_TARGET)))
        counting = CountingPathInfoService(store.path_infos)
        services = Services(store.blobs, store.directories, counting)
        with serve_and_mount(
            services, "--list-root", tmp_path=tmp_path, tmp_path_factory=tmp_path_factory
        ) as mount:

            def produced() -> int:
                return sum(listing.produced for listing in counting.listings)

            # Read a few entries and keep the directory open: the producer must stall.
            with os.scandir(mount.path) as it:
                first = list(itertools.islice(it, 5))
                assert len(first) == 5
                assert counting.listings, "opening the root did not list the PathInfoService"
                stalled_at = wait_until_settled(produced)
                assert stalled_at < HUGE_ROOT // 2
            # Closing it stops the producer.
            for listing in counting.listings:
                assert listing.ended.wait(30), (
                    f"the listing is still open after closedir ({listing.produced} produced)"
                )
                assert not listing.exhausted
            assert produced() < HUGE_ROOT // 2

            early = len(counting.listings)
            listed = os.listdir(mount.path)
            assert len(listed) == HUGE_ROOT
            assert set(listed) == set(names)
            assert any(listing.exhausted for listing in counting.listings[early:])
            assert mount.alive(), mount.log()


BIG_NAME = "bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb-big"
BIG_COUNT = 100_000


def test_b25_readdir_of_100000_entries(
    tmp_path: pathlib.Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    names = [f"f{i:06d}" for i in range(BIG_COUNT)]
    big = Directory(files=tuple(FileNode(name.encode(), EMPTY_DIGEST, 0) for name in names))
    with open_memory_store() as store:
        put_blob(store, fx.EMPTY)
        store.directories.put([big])
        store.path_infos.put(path_info(DirectoryNode(BIG_NAME.encode(), big.digest, 2 * BIG_COUNT)))
        with serve_and_mount(store, tmp_path=tmp_path, tmp_path_factory=tmp_path_factory) as mount:
            root = mount.path
            path = root / BIG_NAME
            listed = os.listdir(path)
            assert len(listed) == BIG_COUNT
            assert sorted(listed) == names

            find = subprocess.run(
                [require_tool("find"), str(path), "-mindepth", "1"],
                capture_output=True,
                text=True,
                check=True,
            )
            found = find.stdout.splitlines()
            assert len(found) == BIG_COUNT
            assert {line.rsplit("/", 1)[1] for line in found} == set(names)

            ls = subprocess.run(
                [require_tool("ls"), "-1", "-A", "-U", str(path)],
                capture_output=True,
                text=True,
                check=True,
            )
            assert sorted(ls.stdout.splitlines()) == names


# --------------------------------------------------------------------------------------------
# B26-B28: what is read is what was stored


def pread_exact(fd: int, size: int, offset: int) -> bytes:
    """pread until `size` bytes or end of file."""
    out = bytearray()
    while len(out) < size:
        piece = os.pread(fd, size - len(out), offset + len(out))
        if not piece:
            break
        out += piece
    return bytes(out)


def random_reads(boundaries: list[int], size: int) -> list[tuple[int, int]]:
    rng = random.Random(26)
    reads = [(0, 1), (0, size), (size - 1, 10), (size, 10), (size + 4096, 10), (1, 131072)]
    for b in boundaries:
        reads += [(b - 1, 2), (b - 5000, 10000), (b, 1), (b - 1, 1), (b + 1, 65536)]
    reads.append((boundaries[0] - 3, boundaries[2] - boundaries[0] + 7))  # three chunks
    reads += [(rng.randrange(size), rng.randrange(1, 300_000)) for _ in range(150)]
    reads += [(rng.randrange(size), rng.randrange(1, 100)) for _ in range(100)]
    return reads


@pytest.mark.parametrize("direct", [False, True], ids=["cached", "o_direct"])
def test_b26_reads_at_arbitrary_offsets(
    listing_mount: Mount, fixture_store: Services, direct: bool
) -> None:
    chunks = fixture_store.blobs.stat(B3Digest(fx.b3(RANDOM_BLOB)))
    boundaries = list(itertools.accumulate(chunk.size for chunk in chunks))[:-1]
    assert len(boundaries) >= 3
    flags = os.O_RDONLY | (os.O_DIRECT if direct else 0)
    fd = os.open(listing_mount.path / RANDOM_NAME, flags)
    try:
        for offset, size in random_reads(boundaries, len(RANDOM_BLOB)):
            got = pread_exact(fd, size, offset)
            assert got == RANDOM_BLOB[offset : offset + size], (offset, size)
    finally:
        os.close(fd)


def test_b27_corrupt_blob_or_chunk_is_eio(
    tmp_path: pathlib.Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    hello = B3Digest(fx.b3(fx.HELLOWORLD))
    blob_b = B3Digest(fx.b3(fx.BLOB_B))
    with open_memory_store() as store:
        populate_fixtures(store)
        populate_extras(store)
        chunks = store.blobs.stat(blob_b)
        assert len(chunks) >= 2
        bad_chunk = chunks[1]
        blobs = CorruptingBlobService(store.blobs, {hello, bad_chunk.digest})
        services = Services(blobs, store.directories, store.path_infos)
        with serve_and_mount(
            services, tmp_path=tmp_path, tmp_path_factory=tmp_path_factory
        ) as mount:
            root = mount.path

            # A corrupt blob, read whole, twice: nothing corrupt may have been cached.
            for _ in range(2):
                assert errno_of((root / HELLOWORLD_NAME).read_bytes) == errno.EIO
            assert blobs.served_corrupt >= 1
            assert wait_until(lambda: digest_text(hello.raw) in mount.log(), 10), mount.log()

            # A corrupt chunk: reading it is EIO, whatever else is read around it.
            served = blobs.served_corrupt
            assert errno_of((root / BLOB_B_NAME).read_bytes) == errno.EIO
            fd = os.open(root / BLOB_B_NAME, os.O_RDONLY | os.O_DIRECT)
            try:
                inside = chunks[0].size + bad_chunk.size // 2
                for _ in range(2):
                    assert errno_of(lambda: os.pread(fd, 100, inside)) == errno.EIO
                # Bytes outside the bad chunk may be served, but only the right ones.
                for offset, size in ((0, 4096), (chunks[0].size - 10, 10)):
                    try:
                        got = os.pread(fd, size, offset)
                    except OSError as exc:
                        assert exc.errno == errno.EIO
                    else:
                        assert got == fx.BLOB_B[offset : offset + size]
            finally:
                os.close(fd)
            assert blobs.served_corrupt > served
            # Small blobs are fetched whole, larger ones chunk by chunk: the log names
            # whichever digest the corrupt bytes failed against.
            named = (digest_text(bad_chunk.digest.raw), digest_text(blob_b.raw))
            assert wait_until(lambda: any(t in mount.log() for t in named), 10), mount.log()

            # Everything else is still served.
            assert (root / BLOB_A_NAME).read_bytes() == fx.BLOB_A
            assert (root / RANDOM_NAME).read_bytes() == RANDOM_BLOB
            assert (root / COMPLICATED_NAME / "keep" / ".keep").read_bytes() == b""
            assert mount.alive(), mount.log()


@pytest.fixture(scope="module")
def invalid_dirs_mount(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mount]:
    with open_memory_store() as store:
        populate_fixtures(store)
        served = populate_invalid_directories(store)
        directories = InvalidDirectoryService(store.directories, served)
        services = Services(store.blobs, directories, store.path_infos)
        with serve_and_mount(
            services,
            "--list-root",
            tmp_path=tmp_path_factory.mktemp("invalid"),
            tmp_path_factory=tmp_path_factory,
        ) as mount:
            yield mount


@pytest.mark.parametrize("case", sorted(INVALID_DIRECTORY_ROOTS))
def test_b28_invalid_directory_is_eio(invalid_dirs_mount: Mount, case: str) -> None:
    root = invalid_dirs_mount.path
    _digest, _served, child = invalid_directories()[case]
    path = root / INVALID_DIRECTORY_ROOTS[case]
    assert stat.S_ISDIR(os.stat(path).st_mode)
    for _ in range(2):
        assert errno_of(lambda: os.listdir(path)) == errno.EIO
        assert errno_of(lambda: os.stat(path / child)) == errno.EIO

    assert set(INVALID_DIRECTORY_ROOTS.values()) <= set(os.listdir(root))
    assert (root / BLOB_A_NAME).read_bytes() == fx.BLOB_A
    assert os.listdir(root / COMPLICATED_NAME) == [".keep", "aa", "keep"]
    assert (root / COMPLICATED_NAME / "keep" / ".keep").read_bytes() == b""
    assert invalid_dirs_mount.alive(), invalid_dirs_mount.log()


# --------------------------------------------------------------------------------------------
# B29: stopping


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_b29_signal_unmounts_cleanly(
    unix_server: CastoreServer, tmp_path: pathlib.Path, sig: signal.Signals
) -> None:
    mount = start_mount(unix_server.address, tmp_path=tmp_path)
    try:
        mount.wait_mounted()
        assert (mount.path / BLOB_A_NAME).read_bytes() == fx.BLOB_A
        mount.signal(sig)
        assert mount.wait_exit() == 0, mount.log()
        assert not is_mounted(mount.path)
        assert os.listdir(mount.path) == []
        assert "Traceback" not in mount.log()
    finally:
        mount.stop()


class ReadLoop(threading.Thread):
    """Reads a file from the mount over and over, dropping its cached pages each time."""

    def __init__(self, path: pathlib.Path, expected: bytes) -> None:
        super().__init__(daemon=True)
        self.path = path
        self.expected = expected
        self.reads = 0
        self.wrong = 0
        self.error: OSError | None = None

    def run(self) -> None:
        try:
            while True:
                fd = os.open(self.path, os.O_RDONLY)
                try:
                    data = pread_exact(fd, len(self.expected) + 1, 0)
                    os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
                finally:
                    os.close(fd)
                if data != self.expected:
                    self.wrong += 1
                self.reads += 1
        except OSError as exc:  # the mount went away under us: expected
            self.error = exc


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_b29_signal_during_reads_unmounts_cleanly(
    unix_server: CastoreServer, tmp_path: pathlib.Path, sig: signal.Signals
) -> None:
    mount = start_mount(unix_server.address, tmp_path=tmp_path)
    try:
        mount.wait_mounted()
        reader = ReadLoop(mount.path / RANDOM_NAME, RANDOM_BLOB)
        reader.start()
        assert wait_until(lambda: reader.reads >= 2 or not reader.is_alive(), 60)
        assert reader.error is None, reader.error
        mount.signal(sig)
        assert mount.wait_exit(timeout=5) == 0, mount.log()  # unmounted within 5 s
        reader.join(30)
        assert not reader.is_alive(), "a read hangs after the filesystem exited"
        assert reader.wrong == 0
        assert not is_mounted(mount.path)
        assert os.listdir(mount.path) == []
    finally:
        mount.stop()


def test_b29_sigkill_leaves_no_stale_mount(
    unix_server: CastoreServer, tmp_path: pathlib.Path
) -> None:
    mount = start_mount(unix_server.address, tmp_path=tmp_path)
    try:
        mount.wait_mounted()
        assert (mount.path / BLOB_A_NAME).read_bytes() == fx.BLOB_A
        mount.signal(signal.SIGKILL)
        assert mount.wait_exit() == -signal.SIGKILL
        # fusermount3 (auto_unmount) removes the mount once it sees the FUSE fd close; on a
        # loaded machine that can take a few seconds.
        assert wait_until(lambda: not is_mounted(mount.path), 30), "stale mount after SIGKILL"
        assert os.listdir(mount.path) == []  # no ENOTCONN
    finally:
        mount.stop()


# --------------------------------------------------------------------------------------------
# B30: statfs


def test_b30_statfs(plain_mount: Mount) -> None:
    st = os.statvfs(plain_mount.path)
    assert st.f_bsize > 0
    df = subprocess.run(
        [require_tool("df"), str(plain_mount.path)], capture_output=True, text=True, check=False
    )
    assert df.returncode == 0, df.stderr
    assert str(plain_mount.path) in df.stdout


# --------------------------------------------------------------------------------------------
# Command-line errors: one line on stderr, a non-zero status, no traceback


def assert_one_line_error(result: subprocess.CompletedProcess[str], *mentions: str) -> None:
    assert result.returncode != 0, result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    for text in mentions:
        assert text in lines[0], lines[0]


QUICK_GIVE_UP = ("--connect-timeout", "2", "--timeout", "2")


def test_cli_missing_mountpoint(unix_server: CastoreServer, tmp_path: pathlib.Path) -> None:
    missing = tmp_path / "does-not-exist"
    result = run_mount_expecting_error("--store", str(unix_server.address), str(missing))
    assert_one_line_error(result, str(missing))


def test_cli_mountpoint_is_a_file(unix_server: CastoreServer, tmp_path: pathlib.Path) -> None:
    file = tmp_path / "a-file"
    file.write_bytes(b"")
    result = run_mount_expecting_error("--store", str(unix_server.address), str(file))
    assert_one_line_error(result, str(file))


def test_cli_busy_mountpoint(unix_server: CastoreServer, tmp_path: pathlib.Path) -> None:
    with mount_process(unix_server.address, tmp_path=tmp_path) as mount:
        result = run_mount_expecting_error(
            "--store", str(unix_server.address), str(mount.path), timeout=30
        )
        assert_one_line_error(result, str(mount.path))
        assert mount.alive()
        assert (mount.path / BLOB_A_NAME).read_bytes() == fx.BLOB_A


@pytest.mark.parametrize("address", ["not-an-address", "grpc+unix://host/x", "grpc+http://h"])
def test_cli_bad_address(tmp_path: pathlib.Path, address: str) -> None:
    result = run_mount_expecting_error("--store", address, str(tmp_path))
    assert_one_line_error(result, address)
    assert not is_mounted(tmp_path)


def test_cli_unreachable_unix_server(tmp_path: pathlib.Path) -> None:
    socket_path = tmp_path / "nobody-listens.sock"
    mountpoint = tmp_path / "mnt"
    mountpoint.mkdir()
    result = run_mount_expecting_error(
        "--store", f"grpc+unix://{socket_path}", *QUICK_GIVE_UP, str(mountpoint)
    )
    assert_one_line_error(result, str(socket_path))
    assert not is_mounted(mountpoint)


def test_cli_unreachable_tcp_server(tmp_path: pathlib.Path) -> None:
    import socket

    with socket.socket() as s:  # a port that was free a moment ago, and nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mountpoint = tmp_path / "mnt"
    mountpoint.mkdir()
    address = f"grpc+http://127.0.0.1:{port}"
    result = run_mount_expecting_error("--store", address, *QUICK_GIVE_UP, str(mountpoint))
    assert_one_line_error(result, f"127.0.0.1:{port}")
    assert not is_mounted(mountpoint)


# --------------------------------------------------------------------------------------------
# The disk cache: what one mount verified, the next mount finds without the server.


def test_disk_cache_serves_a_later_mount(
    tmp_path: pathlib.Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    cache_dir = tmp_path / "cache"
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    with open_memory_store() as store:
        populate_fixtures(store)
        populate_extras(store)
        with serve_and_mount(
            store,
            "--cache-dir",
            str(cache_dir),
            tmp_path=tmp_path / "a",
            tmp_path_factory=tmp_path_factory,
        ) as mount:
            assert (mount.path / RANDOM_NAME).read_bytes() == RANDOM_BLOB
            assert (mount.path / HELLOWORLD_NAME).read_bytes() == fx.HELLOWORLD
        cached = [p for p in cache_dir.glob("*/*") if not p.name.startswith(".")]
        assert cached
        # The server now corrupts everything it sends: only the cache can give right bytes.
        every = {B3Digest(fx.b3(fx.HELLOWORLD))} | {
            c.digest for c in store.blobs.stat(B3Digest(fx.b3(RANDOM_BLOB)))
        }
        blobs = CorruptingBlobService(store.blobs, every)
        with serve_and_mount(
            Services(blobs, store.directories, store.path_infos),
            "--cache-dir",
            str(cache_dir),
            tmp_path=tmp_path / "b",
            tmp_path_factory=tmp_path_factory,
        ) as mount:
            assert (mount.path / HELLOWORLD_NAME).read_bytes() == fx.HELLOWORLD
            assert (mount.path / RANDOM_NAME).read_bytes()[:1000] == RANDOM_BLOB[:1000]
