"""The castore Directory model: typed nodes, canonical encoding, digest, size and validation.

A Directory's identity is the BLAKE3 of its canonical protobuf encoding, so this module writes
that encoding itself (a dozen lines) instead of trusting whatever bytes arrived: received
directories are always re-encoded before hashing.
"""

from __future__ import annotations

import bisect
import enum
import heapq
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from functools import cached_property

from .digest import B3Digest
from .errors import (
    DuplicateName,
    InvalidName,
    InvalidSymlinkTarget,
    SizeOverflow,
    UnsortedNames,
)

MAX_NAME_LEN = 255
MAX_SYMLINK_TARGET_LEN = 4095
U64_MAX = (1 << 64) - 1


@dataclass(frozen=True, slots=True)
class DirectoryNode:
    name: bytes
    digest: B3Digest
    size: int


@dataclass(frozen=True, slots=True)
class FileNode:
    name: bytes
    digest: B3Digest
    size: int
    executable: bool = False


@dataclass(frozen=True, slots=True)
class SymlinkNode:
    name: bytes
    target: bytes


Node = DirectoryNode | FileNode | SymlinkNode


class SizeFormula(enum.Enum):
    """How a Directory's `size` (the number its parent's DirectoryNode carries) is computed.

    Current tvix and every snix server count each entry twice and reject anything else; older
    tvix counted each entry once. The empty directory is 0 either way.
    """

    CURRENT = "current"
    LEGACY = "legacy"

    @property
    def per_entry(self) -> int:
        return 2 if self is SizeFormula.CURRENT else 1


def _name(node: Node) -> bytes:
    return node.name


@dataclass(frozen=True)
class Directory:
    directories: tuple[DirectoryNode, ...] = ()
    files: tuple[FileNode, ...] = ()
    symlinks: tuple[SymlinkNode, ...] = ()
    _sizes: dict[SizeFormula, int] = field(
        default_factory=dict, init=False, repr=False, compare=False
    )

    @classmethod
    def of(cls, nodes: Iterable[Node]) -> Directory:
        """Build a Directory from nodes in any order (sorted here; not validated)."""
        dirs: list[DirectoryNode] = []
        files: list[FileNode] = []
        links: list[SymlinkNode] = []
        for node in nodes:
            if isinstance(node, DirectoryNode):
                dirs.append(node)
            elif isinstance(node, FileNode):
                files.append(node)
            else:
                links.append(node)

        def by_name(n: Node) -> bytes:
            return n.name

        return cls(
            tuple(sorted(dirs, key=by_name)),
            tuple(sorted(files, key=by_name)),
            tuple(sorted(links, key=by_name)),
        )

    def entries(self) -> Iterator[Node]:
        """All children in one byte-wise name order, as readdir and NAR rendering want them."""
        return heapq.merge(self.directories, self.files, self.symlinks, key=lambda n: n.name)

    @cached_property
    def ordered(self) -> tuple[Node, ...]:
        """`entries()` kept: a listing resumes at any offset without merging from the start."""
        return tuple(self.entries())

    def child(self, name: bytes) -> Node | None:
        """The entry called `name`, by bisection (a dict per directory would double its memory)."""
        ordered = self.ordered
        index = bisect.bisect_left(ordered, name, key=_name)
        if index < len(ordered) and ordered[index].name == name:
            return ordered[index]
        return None

    def __len__(self) -> int:
        return len(self.directories) + len(self.files) + len(self.symlinks)

    @cached_property
    def encoded(self) -> bytes:
        """The canonical protobuf encoding: fields in number order, proto3 defaults omitted."""
        return _encode_directory(self)

    @cached_property
    def digest(self) -> B3Digest:
        return B3Digest.of(self.encoded)

    def size(self, formula: SizeFormula = SizeFormula.CURRENT) -> int:
        """The size a parent's DirectoryNode must announce for this directory."""
        cached = self._sizes.get(formula)
        if cached is None:
            cached = _compute_size(self, formula)
            self._sizes[formula] = cached
        return cached

    def validate(self, formula: SizeFormula = SizeFormula.CURRENT) -> None:
        """Raise a DirectoryValidationError subclass naming the first rule this breaks."""
        for kind, nodes in (
            ("directories", self.directories),
            ("files", self.files),
            ("symlinks", self.symlinks),
        ):
            previous: bytes | None = None
            for node in nodes:
                validate_name(node.name)
                if not isinstance(node, SymlinkNode) and not 0 <= node.size <= U64_MAX:
                    raise SizeOverflow(f"{node.name!r}: size {node.size} is not a u64")
                if previous is not None:
                    if node.name == previous:
                        raise DuplicateName(f"{node.name!r} appears twice in {kind}")
                    if node.name < previous:
                        raise UnsortedNames(f"{kind} not sorted: {node.name!r} after {previous!r}")
                previous = node.name
        for link in self.symlinks:
            validate_symlink_target(link.target, link.name)
        if len({n.name for n in self.entries()}) != len(self):
            seen: set[bytes] = set()
            for node in self.entries():
                if node.name in seen:
                    raise DuplicateName(f"{node.name!r} names more than one kind of entry")
                seen.add(node.name)
        self.size(formula)


def validate_name(name: bytes) -> None:
    """A name is one path component: non-empty, not `.`/`..`, no `/` or NUL, <= 255 bytes."""
    if not name:
        raise InvalidName("empty name")
    if name in (b".", b".."):
        raise InvalidName(f"{name!r} is not allowed as a name")
    if len(name) > MAX_NAME_LEN:
        raise InvalidName(f"name of {len(name)} bytes exceeds {MAX_NAME_LEN}: {name[:32]!r}...")
    if b"/" in name or b"\0" in name:
        raise InvalidName(f"{name!r} contains '/' or NUL")


def validate_symlink_target(target: bytes, name: bytes = b"") -> None:
    if not target:
        raise InvalidSymlinkTarget(f"symlink {name!r} has an empty target")
    if len(target) > MAX_SYMLINK_TARGET_LEN:
        raise InvalidSymlinkTarget(f"symlink {name!r}: target of {len(target)} bytes is too long")
    if b"\0" in target:
        raise InvalidSymlinkTarget(f"symlink {name!r}: target contains NUL")


def _compute_size(directory: Directory, formula: SizeFormula) -> int:
    total = formula.per_entry * len(directory)
    for child in directory.directories:
        total += child.size
        if total > U64_MAX:
            raise SizeOverflow(f"directory size overflows u64 at {child.name!r}")
    if total > U64_MAX:
        raise SizeOverflow("directory size overflows u64")
    return total


_ONE_BYTE = tuple(bytes([n]) for n in range(0x80))


def varint(value: int) -> bytes:
    if value < 0x80:
        return _ONE_BYTE[value]
    out = bytearray()
    while value > 0x7F:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


# Field tags (field number << 3 | wire type) of the node messages: 1-4 fit in one byte.
_NAME = b"\x0a"  # 1, length-delimited
_DIGEST_32 = b"\x12\x20"  # 2, length-delimited, always 32 bytes long
_TARGET = b"\x12"  # 2, length-delimited
_SIZE = b"\x18"  # 3, varint
_EXECUTABLE = b"\x20\x01"  # 4, varint, true
_DIRECTORIES, _FILES, _SYMLINKS = b"\x0a", b"\x12", b"\x1a"  # Directory's fields 1-3

# These run for every node of every directory fetched (each is hashed to check its digest),
# hence parts joined once instead of a bytearray grown field by field.


def _with_name(parts: list[bytes], name: bytes) -> None:
    if name:
        parts += (_NAME, varint(len(name)), name)


def _encode_directory_node(node: DirectoryNode) -> bytes:
    parts: list[bytes] = []
    _with_name(parts, node.name)
    parts += (_DIGEST_32, node.digest.raw)
    if node.size:
        parts += (_SIZE, varint(node.size))
    return b"".join(parts)


def _encode_file_node(node: FileNode) -> bytes:
    parts: list[bytes] = []
    _with_name(parts, node.name)
    parts += (_DIGEST_32, node.digest.raw)
    if node.size:
        parts += (_SIZE, varint(node.size))
    if node.executable:
        parts.append(_EXECUTABLE)
    return b"".join(parts)


def _encode_symlink_node(node: SymlinkNode) -> bytes:
    parts: list[bytes] = []
    _with_name(parts, node.name)
    if node.target:
        parts += (_TARGET, varint(len(node.target)), node.target)
    return b"".join(parts)


def _encode_directory(directory: Directory) -> bytes:
    parts: list[bytes] = []
    for tag, bodies in (
        (_DIRECTORIES, map(_encode_directory_node, directory.directories)),
        (_FILES, map(_encode_file_node, directory.files)),
        (_SYMLINKS, map(_encode_symlink_node, directory.symlinks)),
    ):
        for body in bodies:
            parts += (tag, varint(len(body)), body)
    return b"".join(parts)


EMPTY_DIRECTORY = Directory()
