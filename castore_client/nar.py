"""NAR (Nix ARchive) rendering, byte for byte what `nix-store --dump` writes.

The NAR hash is what Nix signs and what a store path of imported content is derived from, so
one wrong byte makes every path we compute disagree with Nix. All renderers therefore go
through one encoder (`NarEncoder`), which also refuses walks that would produce a NAR Nix
could not read back (unsorted names, contents that disagree with the announced length).

Rendering is streaming: file contents pass through piece by piece, and directories are walked
with an explicit stack, so neither a large file nor a deep tree has to fit in memory or in
Python's recursion limit.
"""

from __future__ import annotations

import hashlib
import os
import stat
from collections.abc import Callable, Iterable, Iterator

from .digest import B3Digest
from .directory import (
    Directory,
    DirectoryNode,
    FileNode,
    Node,
    SymlinkNode,
    validate_name,
    validate_symlink_target,
)
from .errors import CorruptData, InvalidInput, NarOutOfOrder, UnsortedNames

NAR_MAGIC = b"nix-archive-1"
LOCAL_READ_SIZE = 1 << 20

ReadBlob = Callable[[B3Digest], Iterable[bytes]]
GetDirectory = Callable[[B3Digest], Directory]


def _token(value: bytes) -> bytes:
    return len(value).to_bytes(8, "little") + value + _padding(len(value))


def _padding(length: int) -> bytes:
    return b"\0" * (-length % 8)


_MAGIC = _token(NAR_MAGIC)
_OPEN = _token(b"(")
_CLOSE = _token(b")")
_REGULAR = _OPEN + _token(b"type") + _token(b"regular")
_EXECUTABLE = _token(b"executable") + _token(b"")
_CONTENTS = _token(b"contents")
_SYMLINK = _OPEN + _token(b"type") + _token(b"symlink") + _token(b"target")
_DIRECTORY = _OPEN + _token(b"type") + _token(b"directory")
_ENTRY = _token(b"entry") + _OPEN + _token(b"name")
_NODE = _token(b"node")


class _Frame:
    """An open directory: the last entry name, to enforce strictly ascending order."""

    __slots__ = ("last_name",)

    def __init__(self) -> None:
        self.last_name: bytes | None = None


class NarEncoder:
    """Turns a depth-first walk, told as events, into NAR bytes.

    Each method returns the bytes that event contributes (the caller streams or hashes them).
    A regular file is `regular(size)`, then `data()` for its pieces, then `end_regular()`; a
    directory is `begin_directory()`, then for each child `entry(name)` followed by the child's
    events, then `end_directory()`. Calls out of this order raise NarOutOfOrder; names out of
    order raise UnsortedNames; contents that disagree with `size` raise CorruptData.
    """

    def __init__(self) -> None:
        self._started = False
        self._done = False
        self._expect_node = True
        self._frames: list[_Frame] = []
        self._remaining: int | None = None
        self._declared = 0

    @property
    def done(self) -> bool:
        return self._done

    def regular(self, size: int, executable: bool = False) -> bytes:
        prefix = self._begin_node("regular")
        if not 0 <= size < 1 << 64:
            raise InvalidInput(f"{self._where()}: file size {size} is not a u64")
        self._remaining = self._declared = size
        head = _REGULAR + (_EXECUTABLE if executable else b"") + _CONTENTS
        return prefix + head + size.to_bytes(8, "little")

    def data(self, piece: bytes) -> bytes:
        if self._remaining is None:
            raise NarOutOfOrder("data() outside a regular file")
        if len(piece) > self._remaining:
            raise CorruptData(
                f"{self._where()}: contents exceed the announced {self._declared} bytes"
            )
        self._remaining -= len(piece)
        return piece

    def end_regular(self) -> bytes:
        if self._remaining is None:
            raise NarOutOfOrder("end_regular() outside a regular file")
        if self._remaining:
            got = self._declared - self._remaining
            raise CorruptData(
                f"{self._where()}: contents are {got} bytes, but {self._declared} were announced"
            )
        self._remaining = None
        return _padding(self._declared) + self._end_node()

    def symlink(self, target: bytes) -> bytes:
        prefix = self._begin_node("symlink")
        validate_symlink_target(target, self._where().encode("utf-8", "surrogateescape"))
        return prefix + _SYMLINK + _token(target) + self._end_node()

    def begin_directory(self) -> bytes:
        prefix = self._begin_node("directory")
        self._frames.append(_Frame())
        return prefix + _DIRECTORY

    def entry(self, name: bytes) -> bytes:
        if not self._frames or self._expect_node or self._remaining is not None:
            raise NarOutOfOrder("entry() only directly inside a directory")
        frame = self._frames[-1]
        validate_name(name)
        if frame.last_name is not None and name <= frame.last_name:
            raise UnsortedNames(
                f"{self._where(directory_only=True)}: entry {name!r} does not sort after "
                f"{frame.last_name!r}"
            )
        frame.last_name = name
        self._expect_node = True
        return _ENTRY + _token(name) + _NODE

    def end_directory(self) -> bytes:
        if not self._frames or self._expect_node or self._remaining is not None:
            raise NarOutOfOrder("end_directory() without an open directory")
        self._frames.pop()
        return self._end_node()

    def _begin_node(self, kind: str) -> bytes:
        if not self._expect_node or self._remaining is not None:
            raise NarOutOfOrder(f"a {kind} node is not expected here")
        self._expect_node = False
        if self._started:
            return b""
        self._started = True
        return _MAGIC

    def _end_node(self) -> bytes:
        if self._frames:
            return _CLOSE + _CLOSE
        self._done = True
        return _CLOSE

    def _where(self, directory_only: bool = False) -> str:
        """The path, inside the NAR, of the node being written (or of its directory)."""
        frames = self._frames[:-1] if directory_only else self._frames
        names = [f.last_name for f in frames if f.last_name is not None]
        return "/".join(n.decode("utf-8", "backslashreplace") for n in names) or "<root>"


class NarHasher(NarEncoder):
    """A NarEncoder that keeps only the NAR's size and SHA-256.

    An importer walking a local tree (and uploading each file's bytes as it reads them) feeds
    the same walk in here, so the NAR hash costs no second pass over the data.
    """

    def __init__(self) -> None:
        super().__init__()
        self._sha256 = hashlib.sha256()
        self._size = 0

    def regular(self, size: int, executable: bool = False) -> bytes:
        return self._absorb(super().regular(size, executable))

    def data(self, piece: bytes) -> bytes:
        return self._absorb(super().data(piece))

    def end_regular(self) -> bytes:
        return self._absorb(super().end_regular())

    def symlink(self, target: bytes) -> bytes:
        return self._absorb(super().symlink(target))

    def begin_directory(self) -> bytes:
        return self._absorb(super().begin_directory())

    def entry(self, name: bytes) -> bytes:
        return self._absorb(super().entry(name))

    def end_directory(self) -> bytes:
        return self._absorb(super().end_directory())

    def finish(self) -> tuple[int, bytes]:
        """The NAR's size and SHA-256; only once the root node is complete."""
        if not self.done:
            raise NarOutOfOrder("the NAR is not complete yet")
        return self._size, self._sha256.digest()

    def _absorb(self, out: bytes) -> bytes:
        self._sha256.update(out)
        self._size += len(out)
        return out


def render_nar(node: Node, read_blob: ReadBlob, get_directory: GetDirectory) -> Iterator[bytes]:
    """Stream the NAR of a castore node; the node's own name is not part of a NAR."""
    encoder = NarEncoder()
    stack: list[Iterator[Node]] = []
    yield from _castore_node(encoder, node, read_blob, get_directory, stack)
    while stack:
        child = next(stack[-1], None)
        if child is None:
            stack.pop()
            yield encoder.end_directory()
            continue
        yield encoder.entry(child.name)
        yield from _castore_node(encoder, child, read_blob, get_directory, stack)


def _castore_node(
    encoder: NarEncoder,
    node: Node,
    read_blob: ReadBlob,
    get_directory: GetDirectory,
    stack: list[Iterator[Node]],
) -> Iterator[bytes]:
    if isinstance(node, FileNode):
        yield encoder.regular(node.size, node.executable)
        for piece in read_blob(node.digest):
            if piece:
                yield encoder.data(piece)
        yield encoder.end_regular()
    elif isinstance(node, SymlinkNode):
        yield encoder.symlink(node.target)
    elif isinstance(node, DirectoryNode):
        yield encoder.begin_directory()
        stack.append(get_directory(node.digest).entries())
    else:
        raise InvalidInput(f"not a castore node: {node!r}")


def nar_size_and_sha256(
    node: Node, read_blob: ReadBlob, get_directory: GetDirectory
) -> tuple[int, bytes]:
    return _size_and_sha256(render_nar(node, read_blob, get_directory))


def render_local_nar(path: str | bytes | os.PathLike[str] | os.PathLike[bytes]) -> Iterator[bytes]:
    """Stream the NAR of a local file, symlink or directory, as `nix-store --dump` would.

    Only the owner's execute bit makes a file executable, as in Nix. Other file types (fifos,
    sockets, devices) have no NAR form and raise InvalidInput.
    """
    encoder = NarEncoder()
    stack: list[tuple[bytes, Iterator[bytes]]] = []
    yield from _local_node(encoder, os.fsencode(path), stack)
    while stack:
        directory, names = stack[-1]
        name = next(names, None)
        if name is None:
            stack.pop()
            yield encoder.end_directory()
            continue
        yield encoder.entry(name)
        yield from _local_node(encoder, os.path.join(directory, name), stack)


def _local_node(
    encoder: NarEncoder, path: bytes, stack: list[tuple[bytes, Iterator[bytes]]]
) -> Iterator[bytes]:
    mode = os.lstat(path).st_mode
    if stat.S_ISREG(mode):
        yield from _local_file(encoder, path)
    elif stat.S_ISLNK(mode):
        yield encoder.symlink(os.readlink(path))
    elif stat.S_ISDIR(mode):
        yield encoder.begin_directory()
        stack.append((path, iter(sorted(os.listdir(path)))))
    else:
        raise InvalidInput(f"{os.fsdecode(path)!r}: a NAR cannot hold this type of file")


def _local_file(encoder: NarEncoder, path: bytes) -> Iterator[bytes]:
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise InvalidInput(f"{os.fsdecode(path)!r} stopped being a regular file")
        yield encoder.regular(st.st_size, bool(st.st_mode & stat.S_IXUSR))
        while piece := os.read(fd, LOCAL_READ_SIZE):
            yield encoder.data(piece)
        yield encoder.end_regular()
    finally:
        os.close(fd)


def local_nar_sha256(
    path: str | bytes | os.PathLike[str] | os.PathLike[bytes],
) -> tuple[int, bytes]:
    return _size_and_sha256(render_local_nar(path))


def _size_and_sha256(pieces: Iterable[bytes]) -> tuple[int, bytes]:
    sha256 = hashlib.sha256()
    size = 0
    for piece in pieces:
        sha256.update(piece)
        size += len(piece)
    return size, sha256.digest()
