"""Inode numbers for castore nodes: identical content gets the same inode, wherever it appears.

Content is immutable and addressed by digest, so an inode stands for *what* a node claims,
not where it is: every directory with the same digest and size is one inode, every file with
the same blob, size and executable bit is one, every symlink with the same target is one. The
size is part of the key because it is the node's claim, not the blob's: a store path that
names a blob with a wrong size must not change what honest paths to the same blob show (its
own reads fail verification instead). Inodes are never freed: the table grows with the
distinct content a mount has seen, not with its paths.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any

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


@dataclass(slots=True)
class DirectoryInode:
    """A directory; `children` stays None until its Directory object has been fetched."""

    digest: B3Digest
    size: int
    children: tuple[Child, ...] | None = None
    by_name: dict[bytes, Child] = field(default_factory=dict)

    @property
    def populated(self) -> bool:
        return self.children is not None


@dataclass(frozen=True, slots=True)
class Child:
    name: bytes
    ino: int
    node: Node


InodeData = FileInode | SymlinkInode | DirectoryInode


def inode_data(node: Node) -> InodeData:
    if isinstance(node, DirectoryNode):
        return DirectoryInode(node.digest, node.size)
    if isinstance(node, FileNode):
        return FileInode(node.digest, node.size, node.executable)
    return SymlinkInode(node.target)


class InodeTracker:
    """Allocates inode numbers from 2 upwards (1 is the root) and finds them by content.

    Thread-safe, since lookups race with each other across FUSE worker tasks only between
    awaits, but tests and tools may also use it from threads.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._data: dict[int, InodeData] = {}
        # One table per kind, so that the keys need no kind tag: this runs for every entry of
        # every directory listed.
        self._files: dict[tuple[B3Digest, int, bool], int] = {}
        self._directories: dict[tuple[B3Digest, int], int] = {}
        self._symlinks: dict[bytes, int] = {}
        self._next = ROOT_INODE + 1

    def put(self, node: Node) -> int:
        """The inode of `node`'s content, allocated on first sight."""
        table: dict[Any, int]
        key: Any
        if type(node) is FileNode:
            table, key = self._files, (node.digest, node.size, node.executable)
        elif type(node) is DirectoryNode:
            table, key = self._directories, (node.digest, node.size)
        else:
            assert isinstance(node, SymlinkNode)
            table, key = self._symlinks, node.target
        with self._lock:
            ino = table.get(key)
            if ino is None:
                ino = self._next
                self._next += 1
                table[key] = ino
                self._data[ino] = inode_data(node)
            return ino

    def get(self, ino: int) -> InodeData | None:
        return self._data.get(ino)

    def __len__(self) -> int:
        return len(self._data)


__all__ = [
    "ROOT_INODE",
    "Child",
    "DirectoryInode",
    "FileInode",
    "InodeData",
    "InodeTracker",
    "SymlinkInode",
    "inode_data",
]
