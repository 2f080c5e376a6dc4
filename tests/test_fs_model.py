"""The filesystem model without mounting: fast checks of lookups, listings, reads and inodes."""

from __future__ import annotations

import base64
import errno
import stat
from typing import Any

import pytest
import trio

from castore_client.blob_readers import BlobReaders
from castore_client.digest import B3Digest
from castore_client.directory import Directory, DirectoryNode, FileNode, SymlinkNode
from castore_client.errors import BlobNotFound, DirectoryNotFound
from castore_client.services import Services
from castore_fuse.fs_model import CastoreFilesystem, Entry, FsError
from castore_fuse.fuse_operations import CastoreOperations
from castore_fuse.inodes import ROOT_INODE, DirectoryInode, FileInode
from castore_fuse.root_nodes import StaticRootNodes

from . import fixtures as fx

EMPTY = B3Digest(fx.b3(b""))
KEEP = Directory(files=(FileNode(b".keep", EMPTY, 0),))
COMPLICATED = Directory.of(
    [
        DirectoryNode(b"keep", KEEP.digest, KEEP.size()),
        FileNode(b".keep", EMPTY, 0),
        SymlinkNode(b"aa", b"/nix/store/somewhereelse"),
    ]
)


def build(store: Services, **kwargs: Any) -> CastoreFilesystem:
    store.blobs.put([b""])
    a = store.blobs.put([fx.BLOB_A])
    store.directories.put([KEEP, COMPLICATED])
    roots = {
        b"a": FileNode(b"a", a, len(fx.BLOB_A)),
        b"a2": FileNode(b"a2", a, len(fx.BLOB_A)),
        b"a-exec": FileNode(b"a-exec", a, len(fx.BLOB_A), executable=True),
        b"dir": DirectoryNode(b"dir", COMPLICATED.digest, COMPLICATED.size()),
        b"keep": DirectoryNode(b"keep", KEEP.digest, KEEP.size()),
        b"link": SymlinkNode(b"link", b"a"),
        b"link2": SymlinkNode(b"link2", b"a"),
        b"nodir": DirectoryNode(b"nodir", B3Digest(fx.b3(b"absent")), 2),
        b"noblob": FileNode(b"noblob", B3Digest(fx.b3(b"absent")), 5),
    }
    return CastoreFilesystem(
        BlobReaders(store.blobs), store.directories, StaticRootNodes(roots), **kwargs
    )


async def listing(fs: CastoreFilesystem, ino: int, start: int = 0) -> list[Entry]:
    fh = await fs.opendir(ino)
    try:
        return [entry async for entry in fs.readdir(fh, start)]
    finally:
        fs.releasedir(fh)


async def test_lookup_in_root_and_below(memory_store: Services) -> None:
    fs = build(memory_store)
    ino, data = await fs.lookup(ROOT_INODE, b"dir")
    assert isinstance(data, DirectoryInode) and data.digest not in fs.listings
    child, child_data = await fs.lookup(ino, b"keep")
    assert isinstance(child_data, DirectoryInode)
    _, keep_file = await fs.lookup(child, b".keep")
    assert keep_file == FileInode(EMPTY, 0, False)
    with pytest.raises(FsError) as info:
        await fs.lookup(ino, b"nope")
    assert info.value.errno == errno.ENOENT
    with pytest.raises(FsError) as info:
        await fs.lookup(ROOT_INODE, b"nope")
    assert info.value.errno == errno.ENOENT


async def test_identical_content_shares_inodes(memory_store: Services) -> None:
    fs = build(memory_store)
    dir_ino, _ = await fs.lookup(ROOT_INODE, b"dir")
    nested_keep, _ = await fs.lookup(dir_ino, b"keep")
    root_keep, _ = await fs.lookup(ROOT_INODE, b"keep")
    assert nested_keep == root_keep
    assert (await fs.lookup(ROOT_INODE, b"a"))[0] == (await fs.lookup(ROOT_INODE, b"a2"))[0]
    assert (await fs.lookup(ROOT_INODE, b"link"))[0] == (await fs.lookup(ROOT_INODE, b"link2"))[0]
    # The same blob with another mode must not share an inode, or one of them gets wrong bits.
    assert (await fs.lookup(ROOT_INODE, b"a"))[0] != (await fs.lookup(ROOT_INODE, b"a-exec"))[0]


async def test_readdir_order_and_resume(memory_store: Services) -> None:
    fs = build(memory_store)
    ino, _ = await fs.lookup(ROOT_INODE, b"dir")
    entries = await listing(fs, ino)
    assert [e.name for e in entries] == [b".keep", b"aa", b"keep"]
    assert [e.next_id for e in entries] == [1, 2, 3]
    assert [type(e.node) for e in entries] == [FileNode, SymlinkNode, DirectoryNode]
    assert [e.name for e in await listing(fs, ino, start=2)] == [b"keep"]
    assert await listing(fs, ino, start=3) == []


async def test_root_listing_is_refused_unless_enabled(memory_store: Services) -> None:
    with pytest.raises(FsError) as info:
        await build(memory_store).opendir(ROOT_INODE)
    assert info.value.errno == errno.EPERM


async def test_root_listing_streams_and_resumes(memory_store: Services) -> None:
    fs = build(memory_store, list_root=True)
    names = sorted(
        [b"a", b"a2", b"a-exec", b"dir", b"keep", b"link", b"link2", b"nodir", b"noblob"]
    )
    fh = await fs.opendir(ROOT_INODE)
    got = []
    start = 0
    while True:  # take two entries per call, as a kernel with a tiny buffer would
        batch = []
        async for entry in fs.readdir(fh, start):
            batch.append(entry)
            if len(batch) == 2:
                break
        if not batch:
            break
        got.extend(batch)
        start = batch[-1].next_id
    fs.releasedir(fh)
    assert [e.name for e in got] == names


async def test_root_listing_rewinds(memory_store: Services) -> None:
    fs = build(memory_store, list_root=True)
    fh = await fs.opendir(ROOT_INODE)
    first = [e.name async for e in fs.readdir(fh, 0)]
    again = [e.name async for e in fs.readdir(fh, 0)]
    fs.releasedir(fh)
    assert first == again and len(first) == 9


async def test_read_and_readlink(memory_store: Services) -> None:
    fs = build(memory_store)
    ino, _ = await fs.lookup(ROOT_INODE, b"a")
    fh = await fs.open(ino)
    assert await fs.read(fh, 0, 100) == fx.BLOB_A
    assert await fs.read(fh, 1, 100) == fx.BLOB_A[1:]
    await fs.release(fh)
    link, _ = await fs.lookup(ROOT_INODE, b"link")
    assert fs.readlink(link) == b"a"


async def test_cached_small_read_takes_no_thread_hop_and_a_cold_one_takes_one(
    memory_store: Services, monkeypatch: pytest.MonkeyPatch
) -> None:
    from castore_fuse import fs_model

    hops: list[object] = []
    real = fs_model.run_blocking

    async def counted(fn: Any, *args: object) -> Any:
        hops.append(fn)
        return await real(fn, *args)

    monkeypatch.setattr(fs_model, "run_blocking", counted)
    fs = build(memory_store)
    ino, _ = await fs.lookup(ROOT_INODE, b"a")
    hops.clear()
    fh = await fs.open(ino)
    assert await fs.read(fh, 0, 100) == fx.BLOB_A
    assert len(hops) == 1  # cold: one hop, which also makes the reader
    assert await fs.read(fh, 1, 100) == fx.BLOB_A[1:]
    await fs.release(fh)
    fh = await fs.open(ino)
    assert await fs.read(fh, 0, 100) == fx.BLOB_A
    await fs.release(fh)
    assert len(hops) == 1  # cached: answered on the event loop


async def test_missing_objects_surface_as_store_errors(memory_store: Services) -> None:
    fs = build(memory_store)
    nodir, _ = await fs.lookup(ROOT_INODE, b"nodir")
    with pytest.raises(DirectoryNotFound):
        await fs.lookup(nodir, b"x")
    noblob, _ = await fs.lookup(ROOT_INODE, b"noblob")
    fh = await fs.open(noblob)  # opening costs no round trip; the first read finds out
    with pytest.raises(BlobNotFound):
        await fs.read(fh, 0, 10)


async def test_xattrs(memory_store: Services) -> None:
    fs = build(memory_store, show_xattr=True)
    d, _ = await fs.lookup(ROOT_INODE, b"dir")
    assert fs.listxattr(d) == [b"user.tvix.castore.directory.digest"]
    assert fs.getxattr(d, b"user.tvix.castore.directory.digest") == str(COMPLICATED.digest).encode()
    f, _ = await fs.lookup(ROOT_INODE, b"a")
    expected = b"blake3-" + base64.b64encode(fx.b3(fx.BLOB_A))
    assert fs.getxattr(f, b"user.tvix.castore.blob.digest") == expected
    with pytest.raises(FsError) as info:
        fs.getxattr(f, b"user.tvix.castore.directory.digest")
    assert info.value.errno == errno.ENODATA
    with pytest.raises(FsError) as info:
        build(memory_store).listxattr(f)
    assert info.value.errno == errno.ENOSYS


async def test_snix_xattr_names(memory_store: Services) -> None:
    fs = build(memory_store, show_xattr=True, xattr_namespace="snix")
    f, _ = await fs.lookup(ROOT_INODE, b"a")
    assert fs.listxattr(f) == [b"user.snix.castore.blob.digest"]


async def test_adapter_attributes(memory_store: Services) -> None:
    fs = build(memory_store)
    ops = CastoreOperations(fs)
    cases = {
        b"a": (stat.S_IFREG | 0o444, len(fx.BLOB_A)),
        b"a-exec": (stat.S_IFREG | 0o555, len(fx.BLOB_A)),
        b"dir": (stat.S_IFDIR | 0o555, COMPLICATED.size()),
        b"link": (stat.S_IFLNK | 0o444, 1),
    }
    for name, (mode, size) in cases.items():
        attr = await ops.lookup(ROOT_INODE, name)
        assert (attr.st_mode, attr.st_size, attr.st_uid, attr.st_gid) == (mode, size, 0, 0)
        assert attr.st_mtime_ns == attr.st_ctime_ns == attr.st_atime_ns == 0


async def test_adapter_maps_errors_and_survives(memory_store: Services) -> None:
    import pyfuse3

    fs = build(memory_store)
    ops = CastoreOperations(fs)
    nodir = await ops.lookup(ROOT_INODE, b"nodir")
    with pytest.raises(pyfuse3.FUSEError) as info:
        await ops.lookup(nodir.st_ino, b"x")
    assert info.value.errno == errno.EIO
    with pytest.raises(pyfuse3.FUSEError) as info:
        await ops.mkdir(ROOT_INODE, b"x", 0o755, None)
    assert info.value.errno == errno.EROFS
    with pytest.raises(pyfuse3.FUSEError) as info:
        await ops.getattr(999_999)
    assert info.value.errno == errno.ENOENT
    assert (await ops.lookup(ROOT_INODE, b"a")).st_size == len(fx.BLOB_A)


async def test_concurrent_lookups_fetch_a_directory_once(memory_store: Services) -> None:
    calls = 0
    real_get = memory_store.directories.get
    real_get_recursive = memory_store.directories.get_recursive

    def counting_get(digest, **kwargs):  # type: ignore[no-untyped-def]
        nonlocal calls
        calls += 1
        return real_get(digest, **kwargs)

    def counting_get_recursive(digest, **kwargs):  # type: ignore[no-untyped-def]
        nonlocal calls
        calls += 1
        return real_get_recursive(digest, **kwargs)

    memory_store.directories.get = counting_get  # type: ignore[method-assign]
    memory_store.directories.get_recursive = counting_get_recursive  # type: ignore[method-assign]
    fs = build(memory_store)
    ino, _ = await fs.lookup(ROOT_INODE, b"dir")
    async with trio.open_nursery() as nursery:
        for name in (b".keep", b"aa", b"keep"):
            nursery.start_soon(fs.lookup, ino, name)
    assert calls == 1


async def test_a_root_directory_prefetches_its_closure(memory_store: Services) -> None:
    fs = build(memory_store)
    fetched = []
    real_get = memory_store.directories.get

    def counting_get(digest, **kwargs):  # type: ignore[no-untyped-def]
        fetched.append(digest)
        return real_get(digest, **kwargs)

    memory_store.directories.get = counting_get  # type: ignore[method-assign]
    ino, _ = await fs.lookup(ROOT_INODE, b"dir")
    keep, _ = await fs.lookup(ino, b"keep")
    await fs.lookup(keep, b".keep")
    assert fetched == []  # both came with the one recursive Get


async def test_a_broken_closure_falls_back_to_single_gets(memory_store: Services) -> None:
    fs = build(memory_store)
    # A closure whose child is missing (stored behind the store's back, since a Put would
    # refuse it): the parent still lists, only the child is an error.
    missing = DirectoryNode(b"gone", B3Digest(fx.b3(b"not stored")), 2)
    parent = Directory.of([missing, FileNode(b"f", EMPTY, 0)])
    memory_store.directories._directories[parent.digest] = parent  # type: ignore[attr-defined]
    fs.root_nodes.nodes[b"broken"] = DirectoryNode(b"broken", parent.digest, parent.size())  # type: ignore[attr-defined]
    ino, _ = await fs.lookup(ROOT_INODE, b"broken")
    assert [e.name for e in await listing(fs, ino)] == [b"f", b"gone"]
    gone, _ = await fs.lookup(ino, b"gone")
    with pytest.raises(DirectoryNotFound):
        await fs.lookup(gone, b"x")
