"""The model: a castore as a filesystem (lookups, listings, reads, attributes), no FUSE types.

`fuse_operations.py` adapts it to pyfuse3 and knows nothing of castore; this module knows
nothing of pyfuse3 or of any transport. Everything here is async (trio) and calls the blocking
services through `bridge.run_blocking`, so one slow request never holds up the others. File
contents come from one place, `castore_client.blob_readers.BlobReaders`. Errors that are the
filesystem's own (no such name, not a directory, listing refused) are `FsError`s carrying an
errno; everything a service raises propagates and becomes an errno in the adapter's single
mapping point (`errno_map.py`).

Concurrency: trio runs one task at a time, so the inode table and handle tables change only
between awaits; two tasks populating the same directory wait on one shared fetch.
"""

from __future__ import annotations

import errno
import itertools
import logging
from collections import deque
from collections.abc import AsyncGenerator, MutableMapping
from dataclasses import dataclass, field
from typing import NamedTuple, TypeVar

import trio

from castore_client.blob_readers import BlobReaders, OpenBlob
from castore_client.closure import fetch_closure
from castore_client.digest import B3Digest
from castore_client.directory import Directory, DirectoryNode, Node
from castore_client.directory_cache import DirectoryCache
from castore_client.services import DirectoryService

from .bridge import StreamPump, run_blocking
from .inodes import (
    ROOT_INODE,
    DirectoryInode,
    FileInode,
    InodeData,
    InodeTable,
    SymlinkInode,
    inode_data,
)
from .prefetch import SiblingPrefetcher
from .root_nodes import RootNodes

log = logging.getLogger(__name__)

ROOT_LISTING_BOUND = 16

ROOT_NAMES = 65_536
"""Store path names (and root directories) remembered; past this the oldest are asked again."""

DIRECTORIES_AHEAD = 8
"""Subdirectories fetched ahead of a walk (find, du, tar), all at once: a walk that enters the
subdirectories of a directory one after another finds the next ones fetched. Measured on a
store path of 5,000 directories of 200 files, a cold find waited for each directory in turn."""

WALK_POSITIONS = 200_000
"""Subdirectories whose place among their siblings is remembered; past this it starts over."""


@dataclass(slots=True, eq=False)
class _Subdirectories:
    """The subdirectories of one directory, in listing order, and the last one entered."""

    digests: tuple[B3Digest, ...]
    last: int = -2


class FsError(Exception):
    """A filesystem-level refusal with its errno (ENOENT, ENOTDIR, EPERM, ...)."""

    def __init__(self, errno_: int, message: str = "") -> None:
        super().__init__(message or errno.errorcode.get(errno_, str(errno_)))
        self.errno = errno_


class Entry(NamedTuple):
    """One directory entry as readdir hands it out; `next_id` resumes after it.

    A tuple carrying the node itself: a listing makes one per entry, and a frozen dataclass
    and an inode record for each cost a tenth of a cold find's time."""

    name: bytes
    ino: int
    node: Node
    next_id: int


@dataclass
class _RootListing:
    """An open listing of the root: a stream of root nodes, consumed as the kernel accepts.

    `pending` holds entries received but not yet acknowledged by the kernel (a readdir
    buffer that filled up), so they can be handed out again at the offset it asks for.
    """

    pump: StreamPump[Node]
    pending: deque[Entry] = field(default_factory=deque)
    received: int = 0


@dataclass
class _DirListing:
    ino: int


@dataclass
class _OpenFile:
    ino: int
    data: FileInode
    blob: OpenBlob


class CastoreFilesystem:
    def __init__(
        self,
        readers: BlobReaders,
        directories: DirectoryService,
        root_nodes: RootNodes,
        *,
        list_root: bool = False,
        show_xattr: bool = False,
        xattr_namespace: str = "tvix",
        prefetch_directories: int = 10_000,
        listings: DirectoryCache | None = None,
    ) -> None:
        self.readers = readers
        self.directories = directories
        self.root_nodes = root_nodes
        self.list_root = list_root
        self.show_xattr = show_xattr
        self.xattr_prefix = f"user.{xattr_namespace}.castore.".encode()
        self.inodes = InodeTable()
        self.listings = listings if listings is not None else DirectoryCache()
        self._root_names: dict[bytes, Node] = {}
        self._root_digests: dict[B3Digest, None] = {}
        self._fetching: dict[B3Digest, trio.Event] = {}
        self._handles = itertools.count(1)
        self._dirs: dict[int, _RootListing | _DirListing] = {}
        self._files: dict[int, _OpenFile] = {}
        self.prefetcher = SiblingPrefetcher(readers)
        self.prefetch_limit = prefetch_directories
        self._walk: dict[B3Digest, tuple[_Subdirectories, int]] = {}
        self._in_use: dict[B3Digest, None] = {}
        self._ahead = trio.CapacityLimiter(DIRECTORIES_AHEAD)

    # -- inodes and names -------------------------------------------------------------------

    def data(self, ino: int) -> InodeData | None:
        """The inode's data; None for the root. Unknown inodes are EBADF-like errors."""
        if ino == ROOT_INODE:
            return None
        data = self.inodes.get(ino)
        if data is None:
            raise FsError(errno.ENOENT, f"unknown inode {ino}")
        return data

    async def lookup(self, parent: int, name: bytes) -> tuple[int, InodeData]:
        """The entry's inode; the caller tells `handed_out` once the kernel has it."""
        if parent == ROOT_INODE:
            node = await self._root_node(name)
        else:
            node = (await self._populated(parent)).child(name)
        if node is None:
            raise FsError(errno.ENOENT)
        return self.inodes.put(node), inode_data(node)

    def handed_out(self, ino: int) -> None:
        """The kernel received an entry for `ino` (a lookup reply, a readdirplus entry)."""
        self.inodes.handed_out(ino)

    def forget(self, ino: int, count: int) -> None:
        self.inodes.forget(ino, count)

    async def _root_node(self, name: bytes) -> Node | None:
        node = self._root_names.get(name)
        if node is None:
            node = await run_blocking(self.root_nodes.get, name)
            if node is None:
                return None
            self._remember_root(node)
        return node

    def _remember_root(self, node: Node) -> None:
        _remember(self._root_names, node.name, node)
        if isinstance(node, DirectoryNode):
            _remember(self._root_digests, node.digest, None)

    async def _populated(self, ino: int) -> Directory:
        """The directory at `ino` with its entries, fetched once however many ask at once."""
        data = self.data(ino)
        if not isinstance(data, DirectoryInode):
            raise FsError(errno.ENOTDIR)
        digest = data.digest
        self._entered(digest)
        while True:
            directory = self.listings.get(digest)
            if directory is not None:
                if digest not in self._in_use:
                    self._first_use(digest, directory)
                return directory
            pending = self._fetching.get(digest)
            if pending is not None:
                await pending.wait()
                continue
            done = self._fetching[digest] = trio.Event()
            try:
                fetched, closure = await run_blocking(
                    self._load, digest, digest in self._root_digests
                )
                if closure is not None:
                    self.prefetcher.note_tree(digest, closure)
                self._first_use(digest, fetched)
                return fetched
            finally:
                del self._fetching[digest]
                done.set()

    def _load(
        self, digest: B3Digest, root: bool
    ) -> tuple[Directory, dict[B3Digest, Directory] | None]:
        """A directory, and the part of its closure that came with it (blocking, one hop).

        From the disk cache if it is there, else from the server; the first directory a walk
        enters below a root node is usually followed by the rest of that tree, so there one
        recursive Get replaces a round trip per directory (up to half the memory budget).
        """
        if root and self.prefetch_limit > 0 and self.listings.get(digest, disk=True) is None:
            closure = fetch_closure(
                self.directories, digest, self.prefetch_limit, self.listings.max_bytes // 2
            )
            if closure is not None:
                for member in closure.values():
                    self.listings.put(member)
                return closure[digest], closure
        return self.listings.load(digest, self.directories), None

    # -- reading ahead of a walk through directories -----------------------------------------

    def _first_use(self, digest: B3Digest, directory: Directory) -> None:
        """A directory is used for the first time since it was fetched (by this walk, ahead
        of it, or with a closure): the read-ahead of files and of subdirectories learn it."""
        if len(self._in_use) > WALK_POSITIONS:
            self._in_use.clear()
        self._in_use[digest] = None
        self._note_subdirectories(directory)
        self.prefetcher.note_directory(directory)

    def _note_subdirectories(self, directory: Directory) -> None:
        """Where each subdirectory stands among its siblings."""
        subdirectories = directory.directories
        if not subdirectories:
            return
        if len(self._walk) > WALK_POSITIONS:
            self._walk.clear()
        siblings = _Subdirectories(tuple(node.digest for node in subdirectories))
        for index, digest in enumerate(siblings.digests):
            self._walk.setdefault(digest, (siblings, index))

    def _entered(self, digest: B3Digest) -> None:
        """A directory is being used: if it follows the last sibling entered, read ahead."""
        position = self._walk.get(digest)
        if position is None:
            return
        siblings, index = position
        walking = siblings.last == index - 1
        siblings.last = index
        if not walking:
            return
        for ahead in siblings.digests[index + 1 : index + 1 + DIRECTORIES_AHEAD]:
            if ahead not in self._fetching and ahead not in self.listings:
                # Claimed here, so that a walk arriving there first waits for this fetch.
                self._fetching[ahead] = trio.Event()
                trio.lowlevel.spawn_system_task(self._fetch_ahead, ahead)

    async def _fetch_ahead(self, digest: B3Digest) -> None:
        """Fetch a directory the walk will want; a failure is only logged, since the walk
        fetches it again (and sees the error) if it does come."""
        try:
            async with self._ahead:
                await run_blocking(self._load, digest, False)
        except Exception as exc:
            log.debug("reading directory %s ahead failed: %s", digest, exc)
        finally:
            self._fetching.pop(digest).set()

    # -- directories -------------------------------------------------------------------------

    async def opendir(self, ino: int) -> int:
        fh = next(self._handles)
        if ino == ROOT_INODE:
            if not self.list_root:
                raise FsError(errno.EPERM, "listing the root is disabled (--list-root)")
            self._dirs[fh] = _RootListing(self._start_root_listing())
        else:
            await self._populated(ino)
            self._dirs[fh] = _DirListing(ino)
        return fh

    def _start_root_listing(self) -> StreamPump[Node]:
        return StreamPump(self.root_nodes.list, bound=ROOT_LISTING_BOUND)

    async def readdir(self, fh: int, start: int) -> AsyncGenerator[Entry]:
        """Entries from offset `start` on; the caller stops when the kernel's buffer is full."""
        listing = self._dirs.get(fh)
        if listing is None:
            raise FsError(errno.EBADF)
        if isinstance(listing, _DirListing):
            # Looked up again at every call: an evicted directory comes back in the same
            # order, so the offsets the kernel holds stay valid.
            ordered = (await self._populated(listing.ino)).ordered
            put = self.inodes.put
            for index in range(start, len(ordered)):
                node = ordered[index]
                yield Entry(node.name, put(node), node, index + 1)
            return
        async for entry in self._read_root_listing(listing, start):
            yield entry

    async def _read_root_listing(self, listing: _RootListing, start: int) -> AsyncGenerator[Entry]:
        while listing.pending and listing.pending[0].next_id <= start:
            listing.pending.popleft()
        first = listing.pending[0].next_id - 1 if listing.pending else listing.received
        if start < first:
            # A rewind (seekdir/rewinddir): start the stream over and skip ahead.
            listing.pump.close()
            listing.pump = self._start_root_listing()
            listing.pending.clear()
            listing.received = 0
        for entry in list(listing.pending):
            yield entry
        async for value, error in listing.pump.receive:
            if error is not None:
                raise error
            assert value is not None
            listing.received += 1
            if listing.received <= start:
                continue
            self._remember_root(value)
            entry = Entry(value.name, self.inodes.put(value), value, listing.received)
            listing.pending.append(entry)
            yield entry

    def releasedir(self, fh: int) -> None:
        listing = self._dirs.pop(fh, None)
        if isinstance(listing, _RootListing):
            listing.pump.close()

    # -- files and symlinks -------------------------------------------------------------------

    async def open(self, ino: int) -> int:
        data = self.data(ino)
        if isinstance(data, DirectoryInode) or data is None:
            raise FsError(errno.EISDIR)
        if not isinstance(data, FileInode):
            raise FsError(errno.EINVAL, "not a regular file")
        fh = next(self._handles)
        self._files[fh] = _OpenFile(ino, data, self.readers.open(data.digest, data.size))
        return fh

    async def read(self, fh: int, offset: int, size: int) -> bytes:
        """A cached small file is answered here; anything else costs one worker thread hop."""
        handle = self._files.get(fh)
        if handle is None:
            raise FsError(errno.EBADF)
        if offset >= handle.data.size:
            return b""
        whole = self.readers.cached(handle.data.digest, handle.data.size)
        if whole is not None:
            data = whole[offset : offset + size]
        else:
            data = await run_blocking(handle.blob.read_at, offset, size)
        if self.readers.is_small(handle.data.size):
            # Only now: fetching the neighbours first would make this read wait behind them.
            self.prefetcher.after_read(handle.data.digest)
        return data

    async def release(self, fh: int) -> None:
        handle = self._files.pop(fh, None)
        if handle is not None:
            handle.blob.close()  # never blocks

    def readlink(self, ino: int) -> bytes:
        data = self.data(ino)
        if not isinstance(data, SymlinkInode):
            raise FsError(errno.EINVAL, "not a symlink")
        return data.target

    # -- extended attributes ------------------------------------------------------------------

    def listxattr(self, ino: int) -> list[bytes]:
        if not self.show_xattr:
            raise FsError(errno.ENOSYS)
        name = self._xattr_name(self.data(ino))
        return [] if name is None else [name]

    def getxattr(self, ino: int, name: bytes) -> bytes:
        if not self.show_xattr:
            raise FsError(errno.ENOSYS)
        data = self.data(ino)
        if name != self._xattr_name(data) or not isinstance(data, DirectoryInode | FileInode):
            raise FsError(errno.ENODATA)
        return str(data.digest).encode()

    def _xattr_name(self, data: InodeData | None) -> bytes | None:
        if isinstance(data, DirectoryInode):
            return self.xattr_prefix + b"directory.digest"
        if isinstance(data, FileInode):
            return self.xattr_prefix + b"blob.digest"
        return None

    # -- lifecycle ----------------------------------------------------------------------------

    def close(self) -> None:
        for fh in list(self._dirs):
            self.releasedir(fh)
        for handle in self._files.values():
            handle.blob.close()
        self._files.clear()
        self.prefetcher.close()


K = TypeVar("K")
V = TypeVar("V")


def _remember(table: MutableMapping[K, V], key: K, value: V) -> None:
    """Insert into a bounded table, forgetting the oldest entry past ROOT_NAMES."""
    table[key] = value
    if len(table) > ROOT_NAMES:
        del table[next(iter(table))]
