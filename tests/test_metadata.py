"""Bounded metadata: the kernel's FORGET, a directory budget, directories on disk, offline.

The trees here are built directly as castore objects, and every expected name and content
is computed by the test from the same recipe, never read back from the mount's code.
"""

from __future__ import annotations

import errno
import os
import pathlib
import time
from collections.abc import Iterator

import pytest
import trio

from castore_client.blob_readers import BlobReaders
from castore_client.codec import decode_named_directory
from castore_client.digest import B3Digest
from castore_client.directory import Directory, DirectoryNode, FileNode, SymlinkNode
from castore_client.directory_cache import DirectoryCache, directory_cost
from castore_client.disk_cache import DiskChunkCache
from castore_client.errors import DigestMismatch, ProtocolError
from castore_client.rpc.server import CastoreServer
from castore_client.services import DirectoryService, Services
from castore_client.stores import open_memory_store
from castore_fuse.fs_model import CastoreFilesystem
from castore_fuse.inodes import ROOT_INODE, DirectoryInode, FileInode, InodeTable
from castore_fuse.root_nodes import StaticRootNodes

from . import fixtures as fx
from .fuse_harness import (
    mount_process,
    path_info,
    require_fuse,
    store_hash,
    unix_listen_address,
    wait_until,
)

DIRS = 30
FILES = 40
WIDE = 3000
TREE = store_hash(1) + "-tree"
WIDE_NAME = store_hash(2) + "-wide"


def content(d: int, f: int) -> bytes:
    return b"directory %d, file %d\n" % (d, f) * (1 + f % 3)


def expected_tree() -> dict[str, bytes | str]:
    """Relative path -> file content, or the target of a symlink (as str)."""
    found: dict[str, bytes | str] = {}
    for d in range(DIRS):
        for f in range(FILES):
            found[f"d{d:03}/f{f:03}"] = content(d, f)
        found[f"d{d:03}/link"] = f"f{d % FILES:03}"
    return found


def populate(store: Services) -> None:
    """TREE: DIRS directories of FILES files and a symlink; WIDE_NAME: WIDE files in one."""
    subdirs, leaves = [], []
    for d in range(DIRS):
        files = []
        for f in range(FILES):
            data = content(d, f)
            files.append(FileNode(b"f%03d" % f, store.blobs.put([data]), len(data)))
        directory = Directory(
            files=tuple(files), symlinks=(SymlinkNode(b"link", b"f%03d" % (d % FILES)),)
        )
        leaves.append(directory)
        subdirs.append(DirectoryNode(b"d%03d" % d, directory.digest, directory.size()))
    root = Directory(directories=tuple(subdirs))
    store.directories.put([*leaves, root])  # a closure goes leaves first
    store.path_infos.put(path_info(DirectoryNode(TREE.encode(), root.digest, root.size())))
    wide = Directory(
        files=tuple(
            FileNode(b"w%05d" % n, store.blobs.put([b"wide %d\n" % n]), len(b"wide %d\n" % n))
            for n in range(WIDE)
        )
    )
    store.directories.put([wide])
    store.path_infos.put(path_info(DirectoryNode(WIDE_NAME.encode(), wide.digest, wide.size())))


def walk(root: pathlib.Path) -> dict[str, bytes | str]:
    """Every file's content and every symlink's target under `root`, each path once."""
    found: dict[str, bytes | str] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in filenames:
            path = pathlib.Path(dirpath, name)
            key = str(path.relative_to(root))
            assert key not in found, f"{key} listed twice"
            found[key] = os.readlink(path) if path.is_symlink() else path.read_bytes()
        dirnames.sort()
    return found


def require_root() -> None:
    if os.geteuid() != 0:
        if "CI" in os.environ:
            pytest.fail("dropping the kernel's caches needs root, and CI must run this")
        pytest.skip("needs root to drop the kernel's caches")


def drop_kernel_caches() -> None:
    """Unused dentries and inodes go, so the kernel sends FORGET for them."""
    pathlib.Path("/proc/sys/vm/drop_caches").write_text("2\n")


def inodes_held(mountpoint: pathlib.Path) -> int:
    """The mount reports the inodes it holds (plus the root) as statfs's f_files."""
    return os.statvfs(mountpoint).f_files


@pytest.fixture(scope="module")
def tree_store() -> Iterator[Services]:
    with open_memory_store() as store:
        populate(store)
        yield store


@pytest.fixture(scope="module")
def tree_server(
    tree_store: Services, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[CastoreServer]:
    with CastoreServer(tree_store, unix_listen_address(tmp_path_factory)) as server:
        yield server


# --------------------------------------------------------------------------------------------
# The model, without mounting


def model(store: Services, max_bytes: int) -> CastoreFilesystem:
    roots = {}
    for info in store.path_infos.list():
        assert info.node is not None
        roots[info.node.name] = info.node
    return CastoreFilesystem(
        BlobReaders(store.blobs),
        store.directories,
        StaticRootNodes(roots),
        listings=DirectoryCache(max_bytes),
    )


async def test_forget_drops_an_inode_and_a_new_lookup_gets_the_same_content(
    tree_store: Services,
) -> None:
    fs = model(tree_store, 1 << 20)
    tree, _ = await fs.lookup(ROOT_INODE, TREE.encode())
    fs.handed_out(tree)
    sub, _ = await fs.lookup(tree, b"d001")
    fs.handed_out(sub)
    file_ino, data = await fs.lookup(sub, b"f002")
    fs.handed_out(file_ino)
    fs.handed_out(file_ino)  # looked up twice: the kernel will forget 2
    link_ino, _ = await fs.lookup(sub, b"link")
    fs.handed_out(link_ino)
    held = len(fs.inodes)

    fs.forget(file_ino, 1)
    assert fs.inodes.get(file_ino) == data, "one lookup of two forgotten: still there"
    fs.forget(file_ino, 1)
    fs.forget(link_ino, 1)
    assert fs.inodes.get(file_ino) is None and fs.inodes.get(link_ino) is None
    assert len(fs.inodes) == held - 2

    again, again_data = await fs.lookup(sub, b"f002")
    assert again != file_ino, "a forgotten number is never given out again"
    assert again_data == FileInode(B3Digest(fx.b3(content(1, 2))), len(content(1, 2)), False)
    assert fs.readlink(link_again := (await fs.lookup(sub, b"link"))[0]) == b"f001"
    assert link_again != link_ino
    # The directories, still held, kept their numbers.
    assert (await fs.lookup(tree, b"d001"))[0] == sub
    assert (await fs.lookup(ROOT_INODE, TREE.encode()))[0] == tree


async def test_a_file_open_while_its_inode_is_forgotten_still_reads(tree_store: Services) -> None:
    fs = model(tree_store, 1 << 20)
    tree, _ = await fs.lookup(ROOT_INODE, TREE.encode())
    sub, _ = await fs.lookup(tree, b"d004")
    ino, _ = await fs.lookup(sub, b"f005")
    fs.handed_out(ino)
    fh = await fs.open(ino)
    fs.forget(ino, 1)
    assert await fs.read(fh, 0, 1 << 16) == content(4, 5)
    await fs.release(fh)


async def test_an_evicted_directory_mid_listing_resumes_at_the_same_offset(
    tree_store: Services,
) -> None:
    wide = Directory(
        files=tuple(
            FileNode(b"w%05d" % n, B3Digest(fx.b3(b"wide %d\n" % n)), len(b"wide %d\n" % n))
            for n in range(WIDE)
        )
    )
    # Room for the wide directory alone: entering the tree evicts it.
    fs = model(tree_store, directory_cost(wide) + 1)
    ino, _ = await fs.lookup(ROOT_INODE, WIDE_NAME.encode())
    fh = await fs.opendir(ino)
    names = []
    async for entry in fs.readdir(fh, 0):
        names.append(entry.name)
        if len(names) == 1000:
            break
    tree, _ = await fs.lookup(ROOT_INODE, TREE.encode())
    for d in range(5):
        await fs.lookup((await fs.lookup(tree, b"d%03d" % d))[0], b"f000")
    assert wide.digest not in fs.listings, "the test meant to evict the wide directory"
    names += [entry.name async for entry in fs.readdir(fh, len(names))]
    fs.releasedir(fh)
    assert names == [b"w%05d" % n for n in range(WIDE)]


def test_the_directory_cache_stays_within_its_budget() -> None:
    directories = [
        Directory(files=(FileNode(b"f%d" % n, B3Digest(fx.b3(b"%d" % n)), 1),)) for n in range(50)
    ]
    budget = 10 * directory_cost(directories[0])
    cache = DirectoryCache(budget)
    for directory in directories:
        cache.put(directory)
        assert cache.size <= budget
    assert len(cache) == 10 and cache.evictions == 40
    assert [d.digest in cache for d in directories] == [False] * 40 + [True] * 10


def test_directories_on_disk_come_back_verified_and_bad_ones_are_misses(
    tmp_path: pathlib.Path,
) -> None:
    disk = DiskChunkCache(tmp_path / "cache", 1 << 20)
    directory = Directory(
        files=(FileNode(b"a", B3Digest(fx.b3(b"a")), 1),),
        symlinks=(SymlinkNode(b"s", b"a"),),
    )
    DirectoryCache(1 << 20, disk).put(directory)
    fresh = DirectoryCache(1 << 20, disk)
    assert fresh.get(directory.digest) is None, "memory only unless disk is asked"
    assert fresh.get(directory.digest, disk=True) == directory
    name = directory.digest.raw.hex()
    (tmp_path / "cache" / name[:2] / name).write_bytes(b"rot")
    assert DirectoryCache(1 << 20, disk).get(directory.digest, disk=True) is None

    # Bytes that hash right but are no valid directory (names out of order) are refused too.
    invalid = fx.directory(
        files=[fx.file_node(b"b", fx.b3(b"b"), 1), fx.file_node(b"a", fx.b3(b"a"), 1)]
    )
    digest = B3Digest(fx.b3(invalid))
    disk.put(digest, invalid)
    assert DirectoryCache(1 << 20, disk).get(digest, disk=True) is None


# --------------------------------------------------------------------------------------------
# Mounted


def test_forget_on_a_real_mount(tree_server: CastoreServer, tmp_path: pathlib.Path) -> None:
    require_fuse()
    require_root()
    with mount_process(tree_server.address, tmp_path=tmp_path) as mount:
        root = mount.path / TREE
        kept = root / "d007" / "f008"
        with open(kept, "rb") as f:
            assert walk(root) == expected_tree()
            walked = inodes_held(mount.path)
            assert walked > DIRS * FILES
            kept_ino = os.fstat(f.fileno()).st_ino
            drop_kernel_caches()
            assert wait_until(lambda: inodes_held(mount.path) < walked // 10, 10.0), (
                f"still {inodes_held(mount.path)} inodes of {walked} after dropping caches"
            )
            # The open file, still referenced, keeps its number and its content.
            assert f.read() == content(7, 8)
            assert os.stat(kept).st_ino == kept_ino
        # Everything looks up again, right.
        assert walk(root) == expected_tree()
        assert mount.alive()


def test_a_walk_past_the_metadata_budget_sees_everything_once(
    tree_server: CastoreServer, tmp_path: pathlib.Path
) -> None:
    require_fuse()
    with mount_process(
        tree_server.address, "--metadata-cache-size", "16K", tmp_path=tmp_path
    ) as mount:
        root = mount.path / TREE
        assert walk(root) == expected_tree()
        assert walk(root) == expected_tree()
        # A listing of the wide directory, interrupted by walks that evict it, is whole.
        wide = mount.path / WIDE_NAME
        names = []
        with os.scandir(wide) as entries:
            for entry in entries:
                names.append(entry.name)
                if len(names) % 500 == 0:
                    for d in range(0, DIRS, 7):
                        os.listdir(root / f"d{d:03}")
        assert names == [f"w{n:05}" for n in range(WIDE)]
        assert (wide / "w02999").read_bytes() == b"wide 2999\n"


def test_offline_a_fresh_mount_serves_what_the_cache_holds(
    tree_store: Services, tmp_path: pathlib.Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    require_fuse()
    cache = tmp_path / "cache"
    flags = ("--cache-dir", str(cache), "--timeout", "2", "--connect-timeout", "2")
    read_before = {k: v for k, v in expected_tree().items() if not k.startswith("d029/")}
    with CastoreServer(tree_store, unix_listen_address(tmp_path_factory)) as server:
        address = server.address
        with mount_process(address, *flags, tmp_path=tmp_path, name="online") as mount:
            root = mount.path / TREE
            for d in range(DIRS - 1):
                os.listdir(root / f"d{d:03}")
            for key, value in read_before.items():
                if isinstance(value, bytes):
                    assert (root / key).read_bytes() == value
            os.listdir(root / "d029")  # listed, but its files never read
    # The server is gone now; a fresh mount starts from the cache alone.
    with mount_process(address, *flags, tmp_path=tmp_path, name="offline") as mount:
        root = mount.path / TREE
        found = {}
        for d in range(DIRS):
            for name in sorted(os.listdir(root / f"d{d:03}")):
                key = f"d{d:03}/{name}"
                path = root / key
                if path.is_symlink():
                    found[key] = os.readlink(path)
                elif key in read_before:
                    found[key] = path.read_bytes()
        assert found == read_before | {"d029/link": "f029"}
        started = time.monotonic()
        with pytest.raises(OSError) as info:
            (root / "d029" / "f000").read_bytes()
        assert info.value.errno == errno.EIO
        assert time.monotonic() - started < 30
        assert "serving what" in mount.log()
        assert mount.alive()


def test_offline_without_a_cache_still_refuses_to_start(
    tmp_path: pathlib.Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """Without --cache-dir there is nothing to serve: an unreachable server is an error."""
    require_fuse()
    from .fuse_harness import run_mount_expecting_error

    address = unix_listen_address(tmp_path_factory)
    (tmp_path / "mnt").mkdir()
    result = run_mount_expecting_error(
        "--store", str(address), "--connect-timeout", "1", str(tmp_path / "mnt")
    )
    assert result.returncode != 0
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr


def test_a_directory_is_checked_by_the_bytes_that_arrived_or_by_its_encoding() -> None:
    files = [fx.file_node(b"a", fx.b3(b"a"), 1)]
    links = [fx.symlink_node(b"s", b"a")]
    canonical = fx.directory(files=files, links=links)
    digest = B3Digest(fx.b3(canonical))
    directory = decode_named_directory(canonical, digest)
    assert directory.encoded == canonical and directory.digest == digest
    # The same directory with its fields in another order: other bytes, still the directory.
    reordered = fx.field_bytes(3, links[0]) + fx.field_bytes(2, files[0])
    assert reordered != canonical
    assert decode_named_directory(reordered, digest).encoded == canonical
    other = fx.directory(files=[fx.file_node(b"b", fx.b3(b"b"), 1)])
    with pytest.raises(DigestMismatch):
        decode_named_directory(other, digest)
    with pytest.raises(ProtocolError):
        decode_named_directory(b"\xff\xff\xff", digest)


def test_inode_numbers_are_never_given_out_twice() -> None:
    """Forgotten inodes make room for new ones, but a number, once forgotten, means nothing."""
    table = InodeTable()
    seen: dict[int, FileNode] = {}
    for n in range(2000):
        node = FileNode(b"f", B3Digest(n.to_bytes(32, "little")), n)
        ino = table.put(node)
        assert ino not in seen and ino != ROOT_INODE
        seen[ino] = node
        table.handed_out(ino)
        if n % 2:
            table.forget(ino, 1)
    assert len(table) == 1000
    for ino, node in seen.items():
        expected = None if node.size % 2 else FileInode(node.digest, node.size, False)
        assert table.get(ino) == expected
        assert table.lookups(ino) == (0 if node.size % 2 else 1)


async def test_a_closure_larger_than_the_budget_keeps_its_first_part(
    tree_store: Services,
) -> None:
    fetched = []

    class Counting:
        def __init__(self, inner: DirectoryService) -> None:
            self.inner = inner

        def get(self, digest: B3Digest, **kwargs: object) -> Directory:
            fetched.append(digest)
            return self.inner.get(digest)

        def get_recursive(self, digest: B3Digest, **kwargs: object) -> Iterator[Directory]:
            return self.inner.get_recursive(digest)

    fs = model(tree_store, 1 << 20)
    fs.directories = Counting(tree_store.directories)  # type: ignore[assignment]
    fs.prefetch_limit = 10  # the root and its first 9 subdirectories come in one Get
    tree, _ = await fs.lookup(ROOT_INODE, TREE.encode())
    found = {}
    for d in range(DIRS):
        sub, _ = await fs.lookup(tree, b"d%03d" % d)
        for f in range(FILES):
            found[f"d{d:03}/f{f:03}"] = (await fs.lookup(sub, b"f%03d" % f))[1]
    assert len(fetched) == DIRS - 9, "the first part of the closure was fetched again"
    assert all(
        data == FileInode(B3Digest(fx.b3(content(d, f))), len(content(d, f)), False)
        for (d, f), data in zip(
            ((d, f) for d in range(DIRS) for f in range(FILES)), found.values(), strict=True
        )
    )


async def test_a_walk_through_subdirectories_fetches_the_next_ones_ahead(
    tree_store: Services,
) -> None:
    fs = model(tree_store, 1 << 20)
    fs.prefetch_limit = 0  # no closure: every directory is its own Get
    tree, _ = await fs.lookup(ROOT_INODE, TREE.encode())
    await fs.opendir(tree)
    subdirs = [(await fs.lookup(tree, b"d%03d" % d))[1] for d in range(DIRS)]
    digests = [data.digest for data in subdirs if isinstance(data, DirectoryInode)]
    first, _ = await fs.lookup(tree, b"d000")
    await fs.opendir(first)
    assert [d in fs.listings for d in digests[:4]] == [True, False, False, False]
    second, _ = await fs.lookup(tree, b"d001")
    await fs.opendir(second)  # the second in a row: a walk
    with trio.fail_after(10):
        while not all(d in fs.listings for d in digests[2:10]):  # noqa: ASYNC110
            await trio.sleep(0.01)
    assert not any(d in fs.listings for d in digests[10:])


async def test_files_of_a_directory_that_came_with_a_closure_are_read_ahead(
    tree_store: Services,
) -> None:
    """The closure's directories are in memory before anything uses them; the first use
    still tells the read-ahead about their files (a tar over loopback took twice as long)."""
    fs = model(tree_store, 1 << 20)
    tree, _ = await fs.lookup(ROOT_INODE, TREE.encode())
    sub, _ = await fs.lookup(tree, b"d005")
    for f in (0, 1):
        ino, _ = await fs.lookup(sub, b"f%03d" % f)
        fh = await fs.open(ino)
        assert await fs.read(fh, 0, 1 << 16) == content(5, f)
        await fs.release(fh)
    ahead = B3Digest(fx.b3(content(5, 10)))
    with trio.fail_after(10):
        while not fs.readers.has(ahead):  # noqa: ASYNC110 - polling the background fetch
            await trio.sleep(0.01)
    fs.prefetcher.close()
