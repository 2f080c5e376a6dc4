"""The embedded stores (memory and file) against the rules of spec sections 3 and 5-7.

Expected values are computed here independently of the code under test: digests with the
blake3 package, chunk boundaries with fastcdc over the whole blob, Directory encodings, sizes
and NARs written out by hand.
"""

from __future__ import annotations

import gc
import hashlib
import inspect
import os
import random
import re
import sqlite3
import subprocess
import sys
import threading
import tracemalloc
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import blake3
import pytest
from fastcdc import fastcdc
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from castore_client import services
from castore_client.chunked_reader import open_blob
from castore_client.digest import B3Digest
from castore_client.directory import (
    Directory,
    DirectoryNode,
    FileNode,
    SizeFormula,
    SymlinkNode,
)
from castore_client.errors import (
    BlobNotFound,
    DanglingReference,
    DirectoryNotFound,
    DirectoryValidationError,
    InvalidInput,
    InvalidName,
    InvalidPathInfo,
    InvalidStorePath,
    PathInfoNotFound,
    RootCountError,
    SizeMismatch,
    UnsortedNames,
)
from castore_client.pathinfo import NarInfo, PathInfo
from castore_client.services import Services
from castore_client.storepath import StorePath
from castore_client.stores import (
    FileBlobService,
    FileDirectoryService,
    FilePathInfoService,
    MemoryBlobService,
    MemoryDirectoryService,
    MemoryPathInfoService,
    open_file_store,
    open_memory_store,
)

KIB = 1024
MIB = 1024 * KIB
REPO = Path(__file__).resolve().parents[1]


def b3(data: bytes) -> B3Digest:
    return B3Digest(blake3.blake3(data).digest())


def fastcdc_chunks(data: bytes) -> list[services.ChunkMeta]:
    """The chunk list a real server announces: fastcdc over the whole blob, 128/256/512 KiB."""
    return [
        services.ChunkMeta(b3(data[c.offset : c.offset + c.length]), c.length)
        for c in fastcdc(data, 128 * KIB, 256 * KIB, 512 * KIB)
    ]


# --- fixtures from behaviours.md -------------------------------------------------------------

BLOB_A = b"\x00\x01"
BLOB_B = bytes(range(255)) * 4096
EMPTY = b""
EMPTY_DIGEST = b3(b"")

DIRECTORY_WITH_KEEP = Directory(files=(FileNode(b".keep", EMPTY_DIGEST, 0),))
# 2 per entry (current formula) plus the sizes of child directories.
WITH_KEEP_SIZE = 2
DIRECTORY_COMPLICATED = Directory(
    directories=(DirectoryNode(b"keep", DIRECTORY_WITH_KEEP.digest, WITH_KEEP_SIZE),),
    files=(FileNode(b".keep", EMPTY_DIGEST, 0),),
    symlinks=(SymlinkNode(b"aa", b"/nix/store/somewhereelse"),),
)
COMPLICATED_SIZE = 2 * 3 + WITH_KEEP_SIZE


def _field(number: int, payload: bytes) -> bytes:
    assert len(payload) < 128
    return bytes([number << 3 | 2, len(payload)]) + payload


def test_fixture_encodings_by_hand() -> None:
    """Pin the fixtures' digests to hand-written protobuf bytes, not to Directory.encoded."""
    keep_file = _field(1, b".keep") + _field(2, EMPTY_DIGEST.raw)
    with_keep = _field(2, keep_file)
    assert DIRECTORY_WITH_KEEP.digest == b3(with_keep)
    keep_dir = _field(1, b"keep") + _field(2, b3(with_keep).raw) + bytes([3 << 3, 2])
    link = _field(1, b"aa") + _field(2, b"/nix/store/somewhereelse")
    complicated = _field(1, keep_dir) + _field(2, keep_file) + _field(3, link)
    assert DIRECTORY_COMPLICATED.digest == b3(complicated)


# --- store fixtures ----------------------------------------------------------------------------


class Stores:
    """Opens stores of one kind; file stores opened again see the same directory."""

    def __init__(self, kind: str, path: Path) -> None:
        self.kind = kind
        self.path = path
        self.opened: list[Services] = []

    def open(self, formula: SizeFormula = SizeFormula.CURRENT) -> Services:
        store = (
            open_memory_store(formula)
            if self.kind == "memory"
            else open_file_store(self.path, formula)
        )
        self.opened.append(store)
        return store

    def drop_directory(self, store: Services, digest: B3Digest) -> None:
        """Simulate a store that lost a directory (no public API can do that)."""
        if self.kind == "memory":
            assert isinstance(store.directories, MemoryDirectoryService)
            del store.directories._directories[digest]
            return
        with sqlite3.connect(self.path / "meta.sqlite") as conn:
            conn.execute("DELETE FROM directories WHERE digest = ?", (digest.raw,))
        conn.close()

    def close_all(self) -> None:
        for store in self.opened:
            store.close()


@pytest.fixture(params=["memory", "file"])
def stores(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Stores]:
    factory = Stores(request.param, tmp_path / "store")
    yield factory
    factory.close_all()


@pytest.fixture
def store(stores: Stores) -> Services:
    return stores.open()


def read_all(store: Services, digest: B3Digest) -> bytes:
    pieces = list(store.blobs.read(digest))
    assert all(0 < len(p) <= 1 * MIB for p in pieces)
    return b"".join(pieces)


# --- the Protocols -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("protocol", "implementations"),
    [
        (services.BlobService, (MemoryBlobService, FileBlobService)),
        (services.DirectoryService, (MemoryDirectoryService, FileDirectoryService)),
        (services.PathInfoService, (MemoryPathInfoService, FilePathInfoService)),
    ],
)
def test_signatures_match_protocol(protocol: type, implementations: tuple[type, ...]) -> None:
    methods = [n for n, v in vars(protocol).items() if inspect.isfunction(v) and n[0] != "_"]
    assert methods
    for cls in implementations:
        for name in methods:
            want = inspect.signature(getattr(protocol, name)).parameters
            have = inspect.signature(getattr(cls, name)).parameters
            assert [(p.name, p.kind, p.default) for p in have.values()] == [
                (p.name, p.kind, p.default) for p in want.values()
            ], f"{cls.__name__}.{name}"


# --- blobs -------------------------------------------------------------------------------------


def test_small_blob_is_stored_whole(store: Services) -> None:
    digest = store.blobs.put([BLOB_A], timeout=5.0)
    assert digest == b3(BLOB_A)
    assert store.blobs.stat(digest, timeout=5.0) == []
    assert read_all(store, digest) == BLOB_A


def test_large_blob_is_chunked_like_a_real_server(store: Services) -> None:
    digest = store.blobs.put([BLOB_B])
    assert digest == b3(BLOB_B)
    expected = fastcdc_chunks(BLOB_B)
    assert len(expected) >= 2
    assert store.blobs.stat(digest) == expected
    assert sum(c.size for c in expected) == len(BLOB_B)
    assert read_all(store, digest) == BLOB_B


def test_chunk_digests_are_readable_blobs(store: Services) -> None:
    store.blobs.put([BLOB_B])
    offset = 0
    for meta in fastcdc_chunks(BLOB_B):
        assert store.blobs.stat(meta.digest) == []
        pieces = list(store.blobs.read(meta.digest))
        assert len(pieces) == 1, "a chunk is at most 512 KiB, so it comes as one piece"
        assert pieces[0] == BLOB_B[offset : offset + meta.size]
        offset += meta.size


def test_empty_blob(store: Services) -> None:
    with pytest.raises(BlobNotFound):
        store.blobs.stat(EMPTY_DIGEST)
    assert store.blobs.put([]) == EMPTY_DIGEST
    assert store.blobs.put([b"", b""]) == EMPTY_DIGEST
    assert store.blobs.stat(EMPTY_DIGEST) == []
    assert list(store.blobs.read(EMPTY_DIGEST)) == []
    assert open_blob(store.blobs, EMPTY_DIGEST, 0).read_at(0, 10) == b""


def test_unknown_blob(store: Services) -> None:
    unknown = b3(b"not stored")
    with pytest.raises(BlobNotFound):
        store.blobs.stat(unknown)
    with pytest.raises(BlobNotFound):
        store.blobs.read(unknown)  # documented: raised by the call, before any next()
    with pytest.raises(BlobNotFound):
        open_blob(store.blobs, unknown).read_at(0, 1)


def test_pieces_do_not_change_the_result(store: Services) -> None:
    rng = random.Random(1)
    pieces, pos = [], 0
    while pos < len(BLOB_B):
        n = rng.choice([1, 7, 4096, 100_000, 600_000])
        pieces.append(BLOB_B[pos : pos + n])
        pos += n
    assert store.blobs.put(iter(pieces)) == b3(BLOB_B)
    assert store.blobs.put([BLOB_B]) == b3(BLOB_B)
    assert store.blobs.stat(b3(BLOB_B)) == fastcdc_chunks(BLOB_B)


def test_open_read_at_offsets(store: Services) -> None:
    data = random.Random(2).randbytes(3 * MIB + 17)
    digest = store.blobs.put([data])
    reader = open_blob(store.blobs, digest, len(data))
    rng = random.Random(3)
    for _ in range(50):
        offset = rng.randrange(len(data) + 10)
        length = rng.randrange(2 * MIB)
        assert reader.read_at(offset, length) == data[offset : offset + length]
    reader.close()
    small = open_blob(store.blobs, store.blobs.put([BLOB_A]))
    assert small.read_at(1, 5) == BLOB_A[1:]


def test_blob_is_recorded_only_after_all_chunks(store: Services) -> None:
    data = random.Random(4).randbytes(2 * MIB)
    digest = b3(data)

    def pieces() -> Iterator[bytes]:
        yield data[: 1 * MIB]
        yield data[1 * MIB :]
        # Everything has been sent, but the put has not finished: nothing may be visible yet.
        with pytest.raises(BlobNotFound):
            store.blobs.stat(digest)

    assert store.blobs.put(pieces()) == digest
    assert store.blobs.stat(digest) == fastcdc_chunks(data)


def test_failed_put_records_no_blob(store: Services) -> None:
    data = random.Random(5).randbytes(2 * MIB)

    def pieces() -> Iterator[bytes]:
        yield data
        raise ConnectionError("client went away")

    with pytest.raises(ConnectionError):
        store.blobs.put(pieces())
    with pytest.raises(BlobNotFound):
        store.blobs.stat(b3(data))


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    seed=st.integers(0, 2**32),
    size=st.integers(0, 3 * MIB),
    cuts=st.lists(st.integers(0, 3 * MIB), max_size=20),
)
def test_any_blob_round_trips(seed: int, size: int, cuts: list[int]) -> None:
    data = random.Random(seed).randbytes(size)
    bounds = [0, *sorted(c for c in cuts if c < size), size]
    store = open_memory_store()
    digest = store.blobs.put(data[a:b] for a, b in zip(bounds, bounds[1:], strict=False))
    assert digest == b3(data)
    expected = fastcdc_chunks(data)
    assert store.blobs.stat(digest) == (expected if len(expected) >= 2 else [])
    assert b"".join(store.blobs.read(digest)) == data


def _random_pieces(total: int, piece: int) -> Iterator[bytes]:
    rng = random.Random(6)
    for _ in range(total // piece):
        yield rng.randbytes(piece)


def test_file_store_put_does_not_hold_the_blob(tmp_path: Path) -> None:
    store = open_file_store(tmp_path / "store")
    tracemalloc.start()
    try:
        digest = store.blobs.put(_random_pieces(64 * MIB, 1 * MIB))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 16 * MIB, f"peak {peak / MIB:.1f} MiB"
    expected = blake3.blake3()
    for piece in _random_pieces(64 * MIB, 1 * MIB):
        expected.update(piece)
    assert digest == B3Digest(expected.digest())
    assert sum(c.size for c in store.blobs.stat(digest)) == 64 * MIB
    store.close()


def test_file_store_read_stops_at_a_missing_chunk(tmp_path: Path) -> None:
    """Chunk files are opened ahead of the read; a missing one fails only where it is due."""
    data = random.Random(8).randbytes(6 * MIB)
    with open_file_store(tmp_path / "store") as store:
        digest = store.blobs.put([data])
        chunks = store.blobs.stat(digest)
        assert len(chunks) > 4
        missing = chunks[3]
        store.blobs.piece_path(missing.digest).unlink()
        got = bytearray()
        with pytest.raises(BlobNotFound, match=re.escape(str(missing.digest))):
            for piece in store.blobs.read(digest):
                got += piece
        assert bytes(got) == data[: sum(c.size for c in chunks[:3])]


def test_put_and_get_directories(store: Services) -> None:
    root = store.directories.put([DIRECTORY_WITH_KEEP, DIRECTORY_COMPLICATED], timeout=5.0)
    assert root == DIRECTORY_COMPLICATED.digest
    got = store.directories.get(root, timeout=5.0)
    assert got == DIRECTORY_COMPLICATED
    assert got.encoded == DIRECTORY_COMPLICATED.encoded
    assert store.directories.get(DIRECTORY_WITH_KEEP.digest) == DIRECTORY_WITH_KEEP
    assert list(store.directories.get_recursive(root)) == [
        DIRECTORY_COMPLICATED,
        DIRECTORY_WITH_KEEP,
    ]


def test_empty_directory(store: Services) -> None:
    assert store.directories.put([Directory()]) == EMPTY_DIGEST
    assert store.directories.get(EMPTY_DIGEST) == Directory()


def test_unknown_directory(store: Services) -> None:
    with pytest.raises(DirectoryNotFound):
        store.directories.get(DIRECTORY_WITH_KEEP.digest)
    closure = store.directories.get_recursive(DIRECTORY_WITH_KEEP.digest)
    with pytest.raises(DirectoryNotFound):
        next(closure)  # documented: raised on the first next(), before anything is yielded


def test_same_directory_twice_in_a_put(store: Services) -> None:
    root = store.directories.put([DIRECTORY_WITH_KEEP, DIRECTORY_WITH_KEEP, DIRECTORY_COMPLICATED])
    assert root == DIRECTORY_COMPLICATED.digest


def dnode(name: bytes, directory: Directory, size: int) -> DirectoryNode:
    return DirectoryNode(name, directory.digest, size)


def test_recursive_get_is_bfs_in_name_order_without_duplicates(store: Services) -> None:
    leaf_z = Directory(files=(FileNode(b"f", b3(BLOB_A), 2),))  # size 2
    leaf_w = Directory(symlinks=(SymlinkNode(b"s", b"target"),))  # size 2
    x = Directory(directories=(dnode(b"z", leaf_z, 2),))  # size 2 + 2 = 4
    y = Directory(directories=(dnode(b"m", leaf_w, 2), dnode(b"z", leaf_z, 2)))  # 4 + 4 = 8
    # Named so that name order differs from the order the directories were built in.
    root = Directory(directories=(dnode(b"a", y, 8), dnode(b"b", x, 4), dnode(b"c", leaf_z, 2)))
    assert store.directories.put([leaf_z, leaf_w, x, y, root]) == root.digest
    assert list(store.directories.get_recursive(root.digest)) == [root, y, x, leaf_z, leaf_w]
    assert list(store.directories.get_recursive(x.digest)) == [x, leaf_z]


def test_recursive_get_missing_child(stores: Stores) -> None:
    store = stores.open()
    store.directories.put([DIRECTORY_WITH_KEEP, DIRECTORY_COMPLICATED])
    stores.drop_directory(store, DIRECTORY_WITH_KEEP.digest)
    closure = store.directories.get_recursive(DIRECTORY_COMPLICATED.digest)
    assert next(closure) == DIRECTORY_COMPLICATED
    with pytest.raises(DirectoryNotFound, match=re.escape(str(DIRECTORY_WITH_KEEP.digest))):
        next(closure)


OTHER_LEAF = Directory(symlinks=(SymlinkNode(b"x", b"y"),))


@pytest.mark.parametrize(
    ("stream", "error"),
    [
        pytest.param([DIRECTORY_COMPLICATED], DanglingReference, id="dangling"),
        pytest.param(
            [
                DIRECTORY_WITH_KEEP,
                Directory(directories=(dnode(b"keep", DIRECTORY_WITH_KEEP, 1),)),
            ],
            SizeMismatch,
            id="wrong-size",
        ),
        pytest.param([DIRECTORY_WITH_KEEP, OTHER_LEAF], RootCountError, id="two-roots"),
        pytest.param(
            [DIRECTORY_WITH_KEEP, DIRECTORY_COMPLICATED, DIRECTORY_WITH_KEEP],
            RootCountError,
            id="root-not-last",
        ),
        pytest.param([], RootCountError, id="empty"),
        pytest.param(
            [DIRECTORY_WITH_KEEP, Directory(files=(FileNode(b"..", EMPTY_DIGEST, 0),))],
            InvalidName,
            id="dotdot",
        ),
        pytest.param(
            [DIRECTORY_WITH_KEEP, Directory(files=(FileNode(b"a/b", EMPTY_DIGEST, 0),))],
            InvalidName,
            id="slash",
        ),
        pytest.param(
            [
                DIRECTORY_WITH_KEEP,
                Directory(files=(FileNode(b"b", EMPTY_DIGEST, 0), FileNode(b"a", EMPTY_DIGEST, 0))),
            ],
            UnsortedNames,
            id="unsorted",
        ),
    ],
)
def test_rejected_put_stores_nothing(
    store: Services, stream: list[Directory], error: type[Exception]
) -> None:
    with pytest.raises(error):
        store.directories.put(iter(stream))
    for directory in stream:
        with pytest.raises(DirectoryNotFound):
            store.directories.get(directory.digest)


def test_invalid_name_is_a_validation_error(store: Services) -> None:
    with pytest.raises(DirectoryValidationError):
        store.directories.put([Directory(symlinks=(SymlinkNode(b"", b"t"),))])


def test_legacy_size_formula(stores: Stores) -> None:
    legacy = stores.open(SizeFormula.LEGACY)
    parent = Directory(directories=(dnode(b"keep", DIRECTORY_WITH_KEEP, 1),))
    assert legacy.directories.put([DIRECTORY_WITH_KEEP, parent]) == parent.digest
    with pytest.raises(SizeMismatch):
        legacy.directories.put([DIRECTORY_WITH_KEEP, DIRECTORY_COMPLICATED])


# --- path infos --------------------------------------------------------------------------------

TEST_PATH = StorePath(bytes(20), "test")
assert str(TEST_PATH) == "00000000000000000000000000000000-test"
OTHER_PATH = StorePath(bytes([1] * 20), "other")


def make_path_info(path: StorePath, nar_size: int = 1234, sha: bytes = bytes(32)) -> PathInfo:
    node = DirectoryNode(str(path).encode(), DIRECTORY_COMPLICATED.digest, COMPLICATED_SIZE)
    return PathInfo(node=node, narinfo=NarInfo(nar_size=nar_size, nar_sha256=sha))


def test_path_info_put_get_list(store: Services) -> None:
    first = make_path_info(TEST_PATH)
    assert store.path_infos.put(first, timeout=5.0) == first
    assert store.path_infos.get_by_hash(bytes(20), timeout=5.0) == first
    assert store.path_infos.get(TEST_PATH, timeout=5.0) == first
    second = make_path_info(OTHER_PATH)
    store.path_infos.put(second)
    assert sorted(store.path_infos.list(timeout=5.0), key=lambda p: p.store_path.digest) == [
        first,
        second,
    ]


def test_path_info_put_replaces(store: Services) -> None:
    store.path_infos.put(make_path_info(TEST_PATH, nar_size=1))
    replacement = make_path_info(TEST_PATH, nar_size=2)
    store.path_infos.put(replacement)
    assert store.path_infos.get(TEST_PATH) == replacement
    assert list(store.path_infos.list()) == [replacement]


def test_path_info_name_must_match(store: Services) -> None:
    store.path_infos.put(make_path_info(TEST_PATH))
    with pytest.raises(PathInfoNotFound):
        store.path_infos.get(StorePath(bytes(20), "tes"))
    with pytest.raises(PathInfoNotFound):
        store.path_infos.get(StorePath(bytes(20), "test2"))


def test_path_info_not_found(store: Services) -> None:
    with pytest.raises(PathInfoNotFound):
        store.path_infos.get_by_hash(bytes(20))
    with pytest.raises(PathInfoNotFound):
        store.path_infos.get(TEST_PATH)
    assert list(store.path_infos.list()) == []


@pytest.mark.parametrize("length", [0, 19, 21, 32])
def test_path_info_hash_length(store: Services, length: int) -> None:
    with pytest.raises(InvalidStorePath) as info:
        store.path_infos.get_by_hash(bytes(length))
    assert isinstance(info.value, InvalidInput)


def test_path_info_hash_types(store: Services) -> None:
    store.path_infos.put(make_path_info(TEST_PATH))
    by_bytearray = store.path_infos.get_by_hash(bytearray(20))  # type: ignore[arg-type]
    assert by_bytearray == make_path_info(TEST_PATH)
    with pytest.raises(InvalidStorePath):
        store.path_infos.get_by_hash("0" * 20)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "bad",
    [
        pytest.param(PathInfo(node=make_path_info(TEST_PATH).node, narinfo=None), id="no-narinfo"),
        pytest.param(make_path_info(TEST_PATH, sha=bytes(31)), id="short-sha"),
        pytest.param(PathInfo(node=None, narinfo=NarInfo(1, bytes(32))), id="no-node"),
        pytest.param(
            PathInfo(
                node=FileNode(b"not-a-store-path", EMPTY_DIGEST, 0),
                narinfo=NarInfo(1, bytes(32)),
            ),
            id="bad-name",
        ),
        pytest.param(
            PathInfo(
                node=make_path_info(TEST_PATH).node,
                references=(bytes(20),),
                narinfo=NarInfo(1, bytes(32)),
            ),
            id="reference-without-name",
        ),
    ],
)
def test_invalid_path_info_is_rejected(store: Services, bad: PathInfo) -> None:
    with pytest.raises(InvalidPathInfo):
        store.path_infos.put(bad)
    assert list(store.path_infos.list()) == []


def nar_token(value: bytes) -> bytes:
    return len(value).to_bytes(8, "little") + value + bytes(-len(value) % 8)


def nar_tokens(*values: bytes) -> bytes:
    return b"".join(nar_token(v) for v in values)


def nar_regular(contents: bytes, executable: bool = False) -> bytes:
    flag = nar_tokens(b"executable", b"") if executable else b""
    return nar_tokens(b"(", b"type", b"regular") + flag + nar_tokens(b"contents", contents, b")")


def nar_entry(name: bytes, node: bytes) -> bytes:
    return nar_tokens(b"entry", b"(", b"name", name, b"node") + node + nar_token(b")")


MAGIC = nar_token(b"nix-archive-1")
NAR_WITH_KEEP = (
    nar_tokens(b"(", b"type", b"directory")
    + nar_entry(b".keep", nar_regular(b""))
    + nar_token(b")")
)
NAR_COMPLICATED = (
    nar_tokens(b"(", b"type", b"directory")
    + nar_entry(b".keep", nar_regular(b""))
    + nar_entry(
        b"aa", nar_tokens(b"(", b"type", b"symlink", b"target", b"/nix/store/somewhereelse", b")")
    )
    + nar_entry(b"keep", NAR_WITH_KEEP)
    + nar_token(b")")
)


def expect(nar: bytes) -> tuple[int, bytes]:
    return len(nar), hashlib.sha256(nar).digest()


def test_calculate_nar(store: Services) -> None:
    for blob in (EMPTY, BLOB_A, BLOB_B):
        store.blobs.put([blob])
    store.directories.put([DIRECTORY_WITH_KEEP, DIRECTORY_COMPLICATED])
    nar = store.path_infos.calculate_nar
    assert nar(FileNode(b"", b3(BLOB_A), 2), timeout=5.0) == expect(MAGIC + nar_regular(BLOB_A))
    assert nar(FileNode(b"", b3(BLOB_A), 2, executable=True)) == expect(
        MAGIC + nar_regular(BLOB_A, executable=True)
    )
    assert nar(FileNode(b"", b3(BLOB_B), len(BLOB_B))) == expect(MAGIC + nar_regular(BLOB_B))
    assert nar(SymlinkNode(b"", b"/nix/store/x")) == expect(
        MAGIC + nar_tokens(b"(", b"type", b"symlink", b"target", b"/nix/store/x", b")")
    )
    complicated = DirectoryNode(b"", DIRECTORY_COMPLICATED.digest, COMPLICATED_SIZE)
    assert nar(complicated) == expect(MAGIC + NAR_COMPLICATED)


def test_calculate_nar_missing_objects(store: Services) -> None:
    with pytest.raises(BlobNotFound):
        store.path_infos.calculate_nar(FileNode(b"", b3(BLOB_A), 2))
    with pytest.raises(DirectoryNotFound):
        store.path_infos.calculate_nar(DirectoryNode(b"", DIRECTORY_WITH_KEEP.digest, 2))


# --- persistence and concurrency (file store) -------------------------------------------------


def fill(store: Services) -> None:
    for blob in (EMPTY, BLOB_A, BLOB_B):
        store.blobs.put([blob])
    store.directories.put([DIRECTORY_WITH_KEEP, DIRECTORY_COMPLICATED])
    store.path_infos.put(make_path_info(TEST_PATH))


def check_filled(store: Services) -> None:
    assert read_all(store, b3(BLOB_A)) == BLOB_A
    assert read_all(store, b3(BLOB_B)) == BLOB_B
    assert store.blobs.stat(b3(BLOB_B)) == fastcdc_chunks(BLOB_B)
    assert store.blobs.stat(EMPTY_DIGEST) == []
    assert list(store.directories.get_recursive(DIRECTORY_COMPLICATED.digest)) == [
        DIRECTORY_COMPLICATED,
        DIRECTORY_WITH_KEEP,
    ]
    assert store.path_infos.get(TEST_PATH) == make_path_info(TEST_PATH)
    assert list(store.path_infos.list()) == [make_path_info(TEST_PATH)]


def test_file_store_survives_reopen(tmp_path: Path) -> None:
    first = open_file_store(tmp_path / "store")
    fill(first)
    first.close()
    with pytest.raises(RuntimeError):
        first.blobs.stat(b3(BLOB_A))
    with open_file_store(str(tmp_path / "store")) as second:
        check_filled(second)
    layout = tmp_path / "store" / "chunks"
    hex_a = b3(BLOB_A).raw.hex()
    assert (layout / hex_a[:2] / hex_a).read_bytes() == BLOB_A
    for meta in fastcdc_chunks(BLOB_B):
        assert (layout / meta.digest.raw.hex()[:2] / meta.digest.raw.hex()).is_file()
    assert (tmp_path / "store" / "meta.sqlite").is_file()
    journal = sqlite3.connect(tmp_path / "store" / "meta.sqlite")
    assert journal.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    journal.close()


def test_file_store_lists_many_path_infos(tmp_path: Path) -> None:
    """More than one page of the keyset-paginated listing."""
    with open_file_store(tmp_path / "store") as store:
        paths = [StorePath(i.to_bytes(20, "big"), f"p{i}") for i in range(600)]
        for path in paths:
            store.path_infos.put(make_path_info(path))
        listed = [p.store_path for p in store.path_infos.list()]
        assert sorted(listed, key=lambda p: p.digest) == paths


def test_file_store_concurrent_readers(tmp_path: Path) -> None:
    store = open_file_store(tmp_path / "store")
    fill(store)
    big = random.Random(7).randbytes(3 * MIB)
    big_digest = store.blobs.put([big])
    errors: list[BaseException] = []
    stop = threading.Event()

    def reader(seed: int) -> int:
        rng = random.Random(seed)
        done = 0
        while not stop.is_set() and done < 30:
            r = open_blob(store.blobs, big_digest, len(big))
            offset = rng.randrange(len(big))
            length = rng.randrange(1, 700 * KIB)
            assert r.read_at(offset, length) == big[offset : offset + length]
            check_filled(store)
            done += 1
        return done

    def writer() -> None:
        rng = random.Random(99)
        for _ in range(10):
            data = rng.randbytes(rng.randrange(1, 2 * MIB))
            assert store.blobs.put([data]) == b3(data)

    with ThreadPoolExecutor(max_workers=9) as pool:
        futures: list[Future[object]] = [pool.submit(reader, seed) for seed in range(8)]
        futures.append(pool.submit(writer))
        for future in futures:
            try:
                future.result(timeout=100)
            except BaseException as exc:  # noqa: BLE001 - collected and re-raised below
                errors.append(exc)
                stop.set()
    store.close()
    if errors:
        raise errors[0]


def test_file_store_connections_end_with_their_threads(tmp_path: Path) -> None:
    """Thread pools retire idle threads; their SQLite connections must not pile up."""
    store = open_file_store(tmp_path / "store")
    fill(store)
    assert isinstance(store.blobs, FileBlobService)
    for _ in range(20):
        thread = threading.Thread(target=check_filled, args=(store,))
        thread.start()
        thread.join()
    gc.collect()
    assert len(store.blobs._db._connections) <= 2
    store.close()


WRITER_SCRIPT = """
import random, sys
from castore_client.stores import open_file_store
from castore_client.directory import Directory, SymlinkNode
store = open_file_store(sys.argv[1])
rng = random.Random(int(sys.argv[2]))
for i in range(15):
    store.blobs.put([rng.randbytes(rng.randrange(1, 1_500_000))])
    store.directories.put([Directory(symlinks=(SymlinkNode(b"n", f"{sys.argv[2]}-{i}".encode()),))])
store.close()
"""


def test_file_store_several_processes(tmp_path: Path) -> None:
    path = tmp_path / "store"
    open_file_store(path).close()
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    procs = [
        subprocess.Popen([sys.executable, "-c", WRITER_SCRIPT, str(path), str(seed)], env=env)
        for seed in (1, 2, 3)
    ]
    assert [p.wait(timeout=100) for p in procs] == [0, 0, 0]
    with open_file_store(path) as store:
        for seed in (1, 2, 3):
            rng = random.Random(seed)
            for i in range(15):
                data = rng.randbytes(rng.randrange(1, 1_500_000))
                assert read_all(store, b3(data)) == data
                leaf = Directory(symlinks=(SymlinkNode(b"n", f"{seed}-{i}".encode()),))
                assert store.directories.get(leaf.digest) == leaf


def test_stores_are_independent() -> None:
    one, two = open_memory_store(), open_memory_store()
    one.blobs.put([BLOB_A])
    with pytest.raises(BlobNotFound):
        two.blobs.stat(b3(BLOB_A))
