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
packed key (kind, digest, size, flag: about 80 bytes), one dict entry and 24 bytes of arrays:
about 170 bytes in all, measured with tracemalloc over 1,000,000 inodes. Two dicts and a
dict of counts took 240, node objects with digest objects about 1 KiB.
"""

from __future__ import annotations

import struct
from array import array
from dataclasses import dataclass

from castore_client.digest import B3Digest
from castore_client.directory import DirectoryNode, FileNode, Node, SymlinkNode

ROOT_INODE = 1
FIRST_INODE = ROOT_INODE + 1
SLOT_MASK = (1 << 32) - 1


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
    """Inode numbers for content, found by content, with the kernel's lookup counts.

    Each inode lives in a slot: its packed key in a list, its count and the slot's generation
    in arrays, and one dict finds the slot by key. A forgotten inode's slot is reused with the
    next generation, and the number is made of both (2 + slot + generation << 32), so a number
    never comes back. Used from the trio thread only: every change happens between awaits.
    """

    def __init__(self) -> None:
        self._keys: list[bytes | None] = []
        self._counts = array("Q")
        self._generations = array("Q")
        self._slots: dict[bytes, int] = {}
        self._free = array("Q")

    def _ino(self, slot: int) -> int:
        return FIRST_INODE + (self._generations[slot] << 32 | slot)

    def _slot(self, ino: int) -> int | None:
        """The slot of a live inode number, or None for one that is gone (or never was)."""
        number = ino - FIRST_INODE
        slot = number & SLOT_MASK
        if (
            number < 0
            or slot >= len(self._keys)
            or self._keys[slot] is None
            or self._generations[slot] != number >> 32
        ):
            return None
        return slot

    def put(self, node: Node) -> int:
        """The inode of `node`'s content, allocated on first sight with a lookup count of 0.

        An inode nobody hands to the kernel stays at 0 and costs its memory until it is; call
        `handed_out` once the kernel has the entry."""
        key = _key(node)
        slot = self._slots.get(key)
        if slot is None:
            if self._free:
                slot = self._free.pop()
                self._keys[slot] = key
                self._counts[slot] = 0
            else:
                slot = len(self._keys)
                if slot > SLOT_MASK:
                    raise OverflowError("more than 2**32 inodes held at once")
                self._keys.append(key)
                self._counts.append(0)
                self._generations.append(0)
            self._slots[key] = slot
        return self._ino(slot)

    def handed_out(self, ino: int) -> None:
        """The kernel received an entry for `ino`: its lookup count goes up by one."""
        slot = self._slot(ino)
        if slot is not None:
            self._counts[slot] += 1

    def forget(self, ino: int, count: int) -> None:
        """The kernel forgot `count` lookups of `ino`; at none left, the inode goes."""
        slot = self._slot(ino)
        if slot is None:
            return
        left = self._counts[slot] - min(count, self._counts[slot])
        self._counts[slot] = left
        if left:
            return
        key = self._keys[slot]
        assert key is not None
        del self._slots[key]
        self._keys[slot] = None
        self._generations[slot] += 1
        self._free.append(slot)

    def lookups(self, ino: int) -> int:
        """The lookup count the kernel holds on `ino` (0 for an inode not in the table)."""
        slot = self._slot(ino)
        return 0 if slot is None else self._counts[slot]

    def get(self, ino: int) -> InodeData | None:
        slot = self._slot(ino)
        if slot is None:
            return None
        key = self._keys[slot]
        assert key is not None
        return _data(key)

    def __len__(self) -> int:
        return len(self._slots)


__all__ = [
    "ROOT_INODE",
    "DirectoryInode",
    "FileInode",
    "InodeData",
    "InodeTable",
    "SymlinkInode",
    "inode_data",
]
