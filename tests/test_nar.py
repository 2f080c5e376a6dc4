from __future__ import annotations

import hashlib
import os
import stat
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from castore_client.digest import B3Digest
from castore_client.directory import Directory, DirectoryNode, FileNode, Node, SymlinkNode
from castore_client.errors import CorruptData, InvalidInput, InvalidName, UnsortedNames
from castore_client.nar import (
    NarEncoder,
    NarHasher,
    local_nar_sha256,
    nar_size_and_sha256,
    render_local_nar,
    render_nar,
)

from .conftest import require_tool

MIB = 1 << 20

# Hand-written NARs: every token is a u64-LE length, the bytes, and zero padding to 8.
HAND_FILE_HI = (
    b"\x0d\0\0\0\0\0\0\0nix-archive-1\0\0\0"
    b"\x01\0\0\0\0\0\0\0(\0\0\0\0\0\0\0"
    b"\x04\0\0\0\0\0\0\0type\0\0\0\0"
    b"\x07\0\0\0\0\0\0\0regular\0"
    b"\x08\0\0\0\0\0\0\0contents"
    b"\x02\0\0\0\0\0\0\0hi\0\0\0\0\0\0"
    b"\x01\0\0\0\0\0\0\0)\0\0\0\0\0\0\0"
)
HAND_EXECUTABLE_EMPTY = (
    b"\x0d\0\0\0\0\0\0\0nix-archive-1\0\0\0"
    b"\x01\0\0\0\0\0\0\0(\0\0\0\0\0\0\0"
    b"\x04\0\0\0\0\0\0\0type\0\0\0\0"
    b"\x07\0\0\0\0\0\0\0regular\0"
    b"\x0a\0\0\0\0\0\0\0executable\0\0\0\0\0\0"
    b"\0\0\0\0\0\0\0\0"
    b"\x08\0\0\0\0\0\0\0contents"
    b"\0\0\0\0\0\0\0\0"
    b"\x01\0\0\0\0\0\0\0)\0\0\0\0\0\0\0"
)
HAND_DIR_WITH_SYMLINK = (
    b"\x0d\0\0\0\0\0\0\0nix-archive-1\0\0\0"
    b"\x01\0\0\0\0\0\0\0(\0\0\0\0\0\0\0"
    b"\x04\0\0\0\0\0\0\0type\0\0\0\0"
    b"\x09\0\0\0\0\0\0\0directory\0\0\0\0\0\0\0"
    b"\x05\0\0\0\0\0\0\0entry\0\0\0"
    b"\x01\0\0\0\0\0\0\0(\0\0\0\0\0\0\0"
    b"\x04\0\0\0\0\0\0\0name\0\0\0\0"
    b"\x01\0\0\0\0\0\0\0l\0\0\0\0\0\0\0"
    b"\x04\0\0\0\0\0\0\0node\0\0\0\0"
    b"\x01\0\0\0\0\0\0\0(\0\0\0\0\0\0\0"
    b"\x04\0\0\0\0\0\0\0type\0\0\0\0"
    b"\x07\0\0\0\0\0\0\0symlink\0"
    b"\x06\0\0\0\0\0\0\0target\0\0"
    b"\x09\0\0\0\0\0\0\0/dev/null\0\0\0\0\0\0\0"
    b"\x01\0\0\0\0\0\0\0)\0\0\0\0\0\0\0"
    b"\x01\0\0\0\0\0\0\0)\0\0\0\0\0\0\0"
    b"\x01\0\0\0\0\0\0\0)\0\0\0\0\0\0\0"
)
CLOSE_TOKEN = b"\x01\0\0\0\0\0\0\0)\0\0\0\0\0\0\0"


def nix_dump(path: Path | bytes) -> bytes:
    tool = require_tool("nix-store")
    return subprocess.run(
        [os.fsencode(tool), b"--dump", os.fsencode(path)], check=True, capture_output=True
    ).stdout


def write(path: bytes, data: bytes, mode: int = 0o644) -> None:
    with open(path, "wb") as f:
        f.write(data)
    os.chmod(path, mode)


def make_tree(root: Path) -> Path:
    """Every kind of node, plus names whose byte order differs from any kind-wise order."""
    r = os.fsencode(root)
    os.mkdir(r)
    write(r + b"/plain", b"hello\n")
    write(r + b"/seven", b"1234567")
    write(r + b"/eight", b"12345678")
    write(r + b"/nine", b"123456789")
    write(r + b"/empty", b"")
    write(r + b"/tool", b"#!/bin/sh\nexit 0\n", 0o755)
    write(r + b"/owner-exec-only", b"x", 0o744)
    write(r + b"/group-exec-only", b"x", 0o654)  # Nix looks at the owner's bit alone
    write(r + b"/big", bytes(range(256)) * (3 * MIB // 256) + b"tail")
    write(r + b"/\xff\xfe-not-utf8", b"latin-1 bytes in the name\n")
    write(r + b"/caf\xc3\xa9", b"utf-8 name\n")
    write(r + b"/with space", b"")
    os.symlink(b"plain", r + b"/link-relative")
    os.symlink(b"/nix/store/does-not-exist", r + b"/link-absolute")
    os.symlink(b"\xff-dangling", r + b"/link-to-non-utf8")
    os.mkdir(r + b"/hollow")
    os.makedirs(r + b"/sub/deeper/deepest")
    write(r + b"/sub/deeper/deepest/leaf", b"leaf")
    write(r + b"/sub/deeper/x", b"x" * 1000, 0o700)
    os.symlink(b"../..", r + b"/sub/deeper/up")
    # A directory "a", a file "a-b", a symlink "a.b", and "B", "a0", "ab": byte order
    # interleaves the kinds.
    os.mkdir(r + b"/a")
    write(r + b"/a/inner", b"in a")
    write(r + b"/a-b", b"file a-b")
    os.symlink(b"a", r + b"/a.b")
    write(r + b"/B", b"upper")
    os.mkdir(r + b"/a0")
    os.symlink(b"B", r + b"/ab")
    return root


def ingest(
    path: bytes, blobs: dict[B3Digest, bytes], dirs: dict[B3Digest, Directory], name: bytes = b""
) -> Node:
    """A test-only castore importer, so render_nar can be checked against the same tree."""
    st = os.lstat(path)
    if stat.S_ISLNK(st.st_mode):
        return SymlinkNode(name, os.readlink(path))
    if stat.S_ISREG(st.st_mode):
        with open(path, "rb") as f:
            data = f.read()
        digest = B3Digest.of(data)
        blobs[digest] = data
        return FileNode(name, digest, len(data), bool(st.st_mode & stat.S_IXUSR))
    children = [ingest(path + b"/" + n, blobs, dirs, n) for n in os.listdir(path)]
    directory = Directory.of(children)
    dirs[directory.digest] = directory
    return DirectoryNode(name, directory.digest, directory.size())


def piecewise_reader(blobs: dict[B3Digest, bytes], piece: int = 1000):
    """A blob reader that hands out small pieces and empty ones, as a network stream may."""

    def read_blob(digest: B3Digest) -> Iterator[bytes]:
        data = blobs[digest]
        yield b""
        for i in range(0, len(data), piece):
            yield data[i : i + piece]
            if i % (7 * piece) == 0:
                yield b""

    return read_blob


def castore_nar(node: Node, blobs: dict[B3Digest, bytes], dirs: dict[B3Digest, Directory]):
    return b"".join(render_nar(node, piecewise_reader(blobs), dirs.__getitem__))


def test_hand_written_file() -> None:
    blobs = {B3Digest.of(b"hi"): b"hi"}
    node = FileNode(b"", B3Digest.of(b"hi"), 2)
    assert castore_nar(node, blobs, {}) == HAND_FILE_HI


def test_hand_written_executable_empty_file() -> None:
    node = FileNode(b"", B3Digest.of(b""), 0, executable=True)
    assert castore_nar(node, {B3Digest.of(b""): b""}, {}) == HAND_EXECUTABLE_EMPTY


def test_hand_written_directory_with_symlink() -> None:
    directory = Directory.of([SymlinkNode(b"l", b"/dev/null")])
    node = DirectoryNode(b"", directory.digest, directory.size())
    assert castore_nar(node, {}, {directory.digest: directory}) == HAND_DIR_WITH_SYMLINK


def test_hand_written_local(tmp_path: Path) -> None:
    (tmp_path / "f").write_bytes(b"hi")
    (tmp_path / "f").chmod(0o644)
    assert b"".join(render_local_nar(tmp_path / "f")) == HAND_FILE_HI
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "l").symlink_to("/dev/null")
    assert b"".join(render_local_nar(tmp_path / "d")) == HAND_DIR_WITH_SYMLINK


def test_root_name_is_ignored() -> None:
    blobs = {B3Digest.of(b"hi"): b"hi"}
    named = FileNode(b"aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa-whatever", B3Digest.of(b"hi"), 2)
    assert castore_nar(named, blobs, {}) == HAND_FILE_HI


def test_local_nar_matches_nix_dump(tmp_path: Path) -> None:
    tree = make_tree(tmp_path / "tree")
    expected = nix_dump(tree)
    assert b"".join(render_local_nar(tree)) == expected
    assert b"".join(render_local_nar(os.fsencode(tree))) == expected
    assert local_nar_sha256(tree) == (len(expected), hashlib.sha256(expected).digest())


def test_castore_nar_matches_nix_dump(tmp_path: Path) -> None:
    tree = make_tree(tmp_path / "tree")
    expected = nix_dump(tree)
    blobs: dict[B3Digest, bytes] = {}
    dirs: dict[B3Digest, Directory] = {}
    root = ingest(os.fsencode(tree), blobs, dirs)
    assert castore_nar(root, blobs, dirs) == expected
    size, sha256 = nar_size_and_sha256(root, piecewise_reader(blobs), dirs.__getitem__)
    assert (size, sha256) == (len(expected), hashlib.sha256(expected).digest())


def test_castore_nar_equals_local_nar(tmp_path: Path) -> None:
    tree = make_tree(tmp_path / "tree")
    blobs: dict[B3Digest, bytes] = {}
    dirs: dict[B3Digest, Directory] = {}
    root = ingest(os.fsencode(tree), blobs, dirs)
    assert castore_nar(root, blobs, dirs) == b"".join(render_local_nar(tree))


@pytest.mark.parametrize("kind", ["file", "executable", "empty", "symlink", "empty-dir"])
def test_single_roots_match_nix_dump(tmp_path: Path, kind: str) -> None:
    target = tmp_path / "root"
    if kind == "file":
        target.write_bytes(b"some content that is not a multiple of eight")
        target.chmod(0o644)
    elif kind == "executable":
        target.write_bytes(b"#!/bin/sh\n")
        target.chmod(0o755)
    elif kind == "empty":
        target.write_bytes(b"")
        target.chmod(0o600)
    elif kind == "symlink":
        target.symlink_to("somewhere/else")
    else:
        target.mkdir()
    expected = nix_dump(target)
    assert b"".join(render_local_nar(target)) == expected
    blobs: dict[B3Digest, bytes] = {}
    dirs: dict[B3Digest, Directory] = {}
    root = ingest(os.fsencode(target), blobs, dirs)
    assert castore_nar(root, blobs, dirs) == expected


def test_blob_shorter_than_file_node_size() -> None:
    blobs = {B3Digest.of(b"abcd"): b"abcd"}
    node = FileNode(b"", B3Digest.of(b"abcd"), 5)
    with pytest.raises(CorruptData, match="4 bytes, but 5"):
        castore_nar(node, blobs, {})


def test_blob_longer_than_file_node_size_stops_before_the_excess() -> None:
    data = b"abcdef"
    node = FileNode(b"", B3Digest.of(data), 5)
    out: list[bytes] = []
    with pytest.raises(CorruptData, match="exceed"):
        for piece in render_nar(node, lambda d: [data[:3], data[3:]], {}.__getitem__):
            out.append(piece)
    assert b"def" not in b"".join(out)


def test_size_mismatch_names_the_file_inside_the_tree() -> None:
    inner = Directory.of([FileNode(b"bad", B3Digest.of(b"xy"), 3)])
    outer = Directory.of([DirectoryNode(b"sub", inner.digest, inner.size())])
    dirs = {inner.digest: inner, outer.digest: outer}
    root = DirectoryNode(b"", outer.digest, outer.size())
    with pytest.raises(CorruptData, match="sub/bad"):
        castore_nar(root, {B3Digest.of(b"xy"): b"xy"}, dirs)


def test_render_nar_streams_file_pieces() -> None:
    piece = 64 * 1024
    data = os.urandom(40 * piece)
    node = FileNode(b"", B3Digest.of(data), len(data))
    pieces = list(render_nar(node, piecewise_reader({node.digest: data}, piece), {}.__getitem__))
    assert max(len(p) for p in pieces) <= piece
    assert b"".join(pieces).find(data) > 0


def test_render_nar_is_lazy() -> None:
    pulled: list[int] = []

    def read_blob(digest: B3Digest) -> Iterator[bytes]:
        for i in range(1000):
            pulled.append(i)
            yield b"x" * 1024

    node = FileNode(b"", B3Digest.of(b"irrelevant"), 1000 * 1024)
    stream = render_nar(node, read_blob, {}.__getitem__)
    next(stream)
    next(stream)
    assert len(pulled) <= 1


def test_render_local_nar_reads_in_mib_pieces(tmp_path: Path) -> None:
    big = tmp_path / "big"
    big.write_bytes(os.urandom(3 * MIB + 5))
    pieces = list(render_local_nar(big))
    assert max(len(p) for p in pieces) <= MIB


def test_deep_tree_does_not_hit_the_recursion_limit() -> None:
    depth = 5000
    dirs: dict[B3Digest, Directory] = {}
    child = Directory()
    dirs[child.digest] = child
    for _ in range(depth):
        parent = Directory.of([DirectoryNode(b"d", child.digest, child.size())])
        dirs[parent.digest] = parent
        child = parent
    root = DirectoryNode(b"", child.digest, child.size())
    nar = castore_nar(root, {}, dirs)
    # The innermost directory closes once, then each level closes its entry and itself.
    assert nar.endswith(CLOSE_TOKEN * (1 + 2 * depth))
    assert nar.count(b"\x05\0\0\0\0\0\0\0entry\0\0\0") == depth


def test_unsorted_directory_is_refused() -> None:
    a = FileNode(b"a", B3Digest.of(b""), 0)
    b = FileNode(b"b", B3Digest.of(b""), 0)
    bad = Directory(files=(b, a))
    root = DirectoryNode(b"", bad.digest, 0)
    with pytest.raises(UnsortedNames):
        castore_nar(root, {B3Digest.of(b""): b""}, {bad.digest: bad})


def test_fifo_is_refused(tmp_path: Path) -> None:
    (tmp_path / "d").mkdir()
    os.mkfifo(tmp_path / "d" / "pipe")
    with pytest.raises(InvalidInput, match="pipe"):
        b"".join(render_local_nar(tmp_path / "d"))


def drive_hasher(hasher: NarEncoder) -> bytes:
    """The walk of a small tree (see `small_tree`), told by hand as NarEncoder events."""
    out = [hasher.begin_directory()]
    out.append(hasher.entry(b"a"))
    out += [hasher.regular(3, executable=True), hasher.data(b"ab"), hasher.data(b"c")]
    out.append(hasher.end_regular())
    out += [hasher.entry(b"b"), hasher.symlink(b"a")]
    out += [hasher.entry(b"c"), hasher.begin_directory()]
    out += [hasher.entry(b"d"), hasher.regular(0), hasher.end_regular()]
    out += [hasher.entry(b"e"), hasher.begin_directory(), hasher.end_directory()]
    out.append(hasher.end_directory())
    out.append(hasher.end_directory())
    return b"".join(out)


def small_tree(root: Path) -> Path:
    root.mkdir()
    (root / "a").write_bytes(b"abc")
    (root / "a").chmod(0o755)
    (root / "b").symlink_to("a")
    (root / "c").mkdir()
    (root / "c" / "d").write_bytes(b"")
    (root / "c" / "e").mkdir()
    return root


def test_nar_hasher_matches_nix_dump(tmp_path: Path) -> None:
    expected = nix_dump(small_tree(tmp_path / "t"))
    hasher = NarHasher()
    assert drive_hasher(hasher) == expected
    assert hasher.done
    assert hasher.finish() == (len(expected), hashlib.sha256(expected).digest())


def test_nar_hasher_refuses_misuse() -> None:
    hasher = NarHasher()
    with pytest.raises(RuntimeError):
        hasher.finish()
    with pytest.raises(RuntimeError):
        hasher.entry(b"x")
    hasher.begin_directory()
    hasher.entry(b"m")
    hasher.regular(2)
    with pytest.raises(CorruptData):
        hasher.data(b"abc")
    hasher.data(b"a")
    with pytest.raises(CorruptData):
        hasher.end_regular()
    hasher.data(b"b")
    hasher.end_regular()
    for name in (b"m", b"a"):
        with pytest.raises(UnsortedNames):
            hasher.entry(name)
    for name in (b"x/y", b"..", b"", b"n\0"):
        with pytest.raises(InvalidName):
            hasher.entry(name)
    with pytest.raises(RuntimeError):
        hasher.regular(0)
    hasher.end_directory()
    assert hasher.done
    with pytest.raises(RuntimeError):
        hasher.begin_directory()
