"""Inode numbers for castore nodes: identical content gets the same inode, wherever it appears.

Content is immutable and addressed by digest, so an inode stands for *what* a node claims,
not where it is: every directory with the same digest and size is one inode, every file with
the same blob, size and executable bit is one, every symlink with the same target is one. The
size is part of the key because it is the node's claim, not the blob's: a store path that
names a blob with a wrong size must not change what honest paths to the same blob show (its
own reads fail verification instead).

The table holds what the kernel holds. Each entry handed to the kernel (a lookup reply, an
entry of a readdirplus reply) adds one to the inode's lookup count and each FORGET takes the
kernel's count off again, as the FUSE protocol defines them; an inode whose count reaches zero
is dropped, and the same content met again later gets a new number. Numbers are never reused,
so a number the kernel still holds always means the same content.

Memory is what limits a walk of millions of files, since the kernel keeps an inode for every
entry a readdirplus handed it until memory pressure makes it forget. An inode costs one
packed key (kind, digest, size, flag: about 80 bytes) and two dict slots, about 190 bytes in
all (measured with tracemalloc over 1,000,000 inodes); the count is stored only where it is
not 1, which is rare. Node objects with digest objects were about 1 KiB per inode.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from castore_client.digest import B3Digest
from castore_client.directory import DirectoryNode, FileNode, Node, SymlinkNode

ROOT_INODE = 1


@dataclass(frozen=True, slots=True)
class FileInode:
    digest: B3Digest
    size: int
    executable: bool


@dataclass(frozen=True, slots=True)
class SymlinkInode:
    target: bytes


@dataclass(frozen=True, slots=True)
class DirectoryInode:
    """A directory; its entries live in the listing cache (`listings.py`), keyed by digest."""

    digest: B3Digest
    size: int


InodeData = FileInode | SymlinkInode | DirectoryInode

_FILE, _EXECUTABLE, _DIRECTORY, _SYMLINK = b"f", b"x", b"d", b"l"
_SIZED = struct.Struct("<32sQ")


def _key(node: Node) -> bytes:
    if type(node) is FileNode:
        kind = _EXECUTABLE if node.executable else _FILE
        return kind + _SIZED.pack(node.digest.raw, node.size)
    if type(node) is DirectoryNode:
        return _DIRECTORY + _SIZED.pack(node.digest.raw, node.size)
    assert isinstance(node, SymlinkNode)
    return _SYMLINK + node.target


def _data(key: bytes) -> InodeData:
    kind = key[:1]
    if kind == _SYMLINK:
        return SymlinkInode(key[1:])
    raw, size = _SIZED.unpack_from(key, 1)
    if kind == _DIRECTORY:
        return DirectoryInode(B3Digest(raw), size)
    return FileInode(B3Digest(raw), size, kind == _EXECUTABLE)


def inode_data(node: Node) -> InodeData:
    """What `get` answers for `node`'s inode, built from the node (sharing its digest)."""
    if type(node) is FileNode:
        return FileInode(node.digest, node.size, node.executable)
    if type(node) is DirectoryNode:
        return DirectoryInode(node.digest, node.size)
    assert isinstance(node, SymlinkNode)
    return SymlinkInode(node.target)


class InodeTable:
    """Inode numbers from 2 upwards (1 is the root), found by content, with lookup counts.

    Used from the trio thread only: every change happens between two awaits.
    """

    def __init__(self) -> None:
        self._keys: dict[int, bytes] = {}
        self._inos: dict[bytes, int] = {}
        self._counts: dict[int, int] = {}
        self._next = ROOT_INODE + 1

    def put(self, node: Node) -> int:
        """The inode of `node`'s content, allocated on first sight with a lookup count of 0.

        An inode nobody hands to the kernel stays at 0 and costs its memory until it is; call
        `handed_out` once the kernel has the entry."""
        key = _key(node)
        ino = self._inos.get(key)
        if ino is None:
            ino = self._next
            self._next += 1
            self._inos[key] = ino
            self._keys[ino] = key
            self._counts[ino] = 0
        return ino

    def handed_out(self, ino: int) -> None:
        """The kernel received an entry for `ino`: its lookup count goes up by one."""
        if ino in self._keys:
            count = self._counts.pop(ino, 1) + 1
            if count != 1:
                self._counts[ino] = count

    def forget(self, ino: int, count: int) -> None:
        """The kernel forgot `count` lookups of `ino`; at none left, the inode goes."""
        if ino not in self._keys:
            return
        left = self._counts.pop(ino, 1) - count
        if left > 0:
            if left != 1:
                self._counts[ino] = left
            return
        del self._inos[self._keys.pop(ino)]

    def lookups(self, ino: int) -> int:
        """The lookup count the kernel holds on `ino` (0 for an inode not in the table)."""
        return self._counts.get(ino, 1) if ino in self._keys else 0

    def get(self, ino: int) -> InodeData | None:
        key = self._keys.get(ino)
        return None if key is None else _data(key)

    def __len__(self) -> int:
        return len(self._keys)


__all__ = [
    "ROOT_INODE",
    "DirectoryInode",
    "FileInode",
    "InodeData",
    "InodeTable",
    "SymlinkInode",
    "inode_data",
]
