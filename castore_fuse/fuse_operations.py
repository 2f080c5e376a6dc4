"""The pyfuse3 adapter: turns kernel requests into calls on the model, `CastoreFilesystem`.

A protocol adapter only: what a castore looks like as a filesystem is decided in
`fs_model.py`. Every handler goes through `fuse_errors`, because pyfuse3 lets only FUSEError
through and any other exception would end the mount.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import logging
import os
import stat
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from typing import Any, ParamSpec, TypeVar

import pyfuse3
import trio

from castore_client.directory import DirectoryNode, FileNode, Node, SymlinkNode

from .errno_map import errno_for
from .fs_model import CastoreFilesystem
from .inodes import ROOT_INODE, DirectoryInode, FileInode, InodeData, SymlinkInode

log = logging.getLogger(__name__)

P = ParamSpec("P")
R = TypeVar("R")

# Content never changes, so the kernel may cache names and attributes for as long as it likes.
FOREVER = float(2**31)

ATTRIBUTES_KEPT = 16_384
"""Built attributes kept for reuse; the kernel caches them itself, so only repeated lookups
gain, and a walk of millions must not keep one per inode."""


def fuse_errors(
    handler: Callable[P, Coroutine[Any, Any, R]],
) -> Callable[P, Coroutine[Any, Any, R]]:
    @functools.wraps(handler)
    async def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return await handler(*args, **kwargs)
        except (pyfuse3.FUSEError, trio.Cancelled):
            raise
        except BaseException as exc:  # noqa: BLE001 - the mount must survive anything
            if isinstance(exc, KeyboardInterrupt | SystemExit):
                raise
            raise pyfuse3.FUSEError(errno_for(exc, handler.__name__)) from None

    return wrapper


class CastoreOperations(pyfuse3.Operations):
    supports_dot_lookup = False
    enable_writeback_cache = False
    enable_acl = False

    def __init__(self, fs: CastoreFilesystem) -> None:
        super().__init__()
        self.fs = fs
        # An inode's attributes never change; lookups and getattrs of the same inodes (a
        # build stat'ing its headers) reuse them.
        self._attributes: dict[int, pyfuse3.EntryAttributes] = {}

    def attributes(self, ino: int, data: InodeData | Node | None) -> pyfuse3.EntryAttributes:
        """`data` is what the model says of the inode, or the node it stands for."""
        attr = self._attributes.get(ino)
        if attr is None:
            if len(self._attributes) >= ATTRIBUTES_KEPT:
                self._attributes.clear()
            attr = self._attributes[ino] = _new_attributes()
            _fill(attr, ino, data)
        return attr

    @fuse_errors
    async def lookup(
        self, parent_inode: int, name: bytes, ctx: pyfuse3.RequestContext | None = None
    ) -> pyfuse3.EntryAttributes:
        ino, data = await self.fs.lookup(parent_inode, name)
        attr = self.attributes(ino, data)
        self.fs.handed_out(ino)
        return attr

    @fuse_errors
    async def getattr(
        self, inode: int, ctx: pyfuse3.RequestContext | None = None
    ) -> pyfuse3.EntryAttributes:
        return self.attributes(inode, self.fs.data(inode))

    @fuse_errors
    async def readlink(self, inode: int, ctx: pyfuse3.RequestContext | None = None) -> bytes:
        return self.fs.readlink(inode)

    @fuse_errors
    async def opendir(self, inode: int, ctx: pyfuse3.RequestContext | None = None) -> int:
        return await self.fs.opendir(inode)

    @fuse_errors
    async def readdir(self, fh: int, start_id: int, token: Any) -> None:
        # readdir_reply copies the attributes into the reply, so one object serves every
        # entry of the call, refilled: a cold find of 1,000,000 files spent 1.2 us per entry
        # making a new one.
        attr = _new_attributes()
        async with contextlib.aclosing(self.fs.readdir(fh, start_id)) as entries:
            async for entry in entries:
                _fill(attr, entry.ino, entry.node)
                if not pyfuse3.readdir_reply(token, entry.name, attr, entry.next_id):
                    break
                # readdirplus: the kernel counts a lookup for every entry it was given.
                self.fs.handed_out(entry.ino)

    @fuse_errors
    async def releasedir(self, fh: int) -> None:
        self.fs.releasedir(fh)

    @fuse_errors
    async def open(
        self, inode: int, flags: int, ctx: pyfuse3.RequestContext | None = None
    ) -> pyfuse3.FileInfo:
        if flags & (os.O_WRONLY | os.O_RDWR | os.O_TRUNC | os.O_APPEND | os.O_CREAT):
            raise pyfuse3.FUSEError(errno.EROFS)
        fh = await self.fs.open(inode)
        return pyfuse3.FileInfo(fh=fh, keep_cache=True)

    @fuse_errors
    async def read(self, fh: int, off: int, size: int) -> bytes:
        return await self.fs.read(fh, off, size)

    @fuse_errors
    async def release(self, fh: int) -> None:
        await self.fs.release(fh)

    @fuse_errors
    async def getxattr(
        self, inode: int, name: bytes, ctx: pyfuse3.RequestContext | None = None
    ) -> bytes:
        return self.fs.getxattr(inode, name)

    @fuse_errors
    async def listxattr(
        self, inode: int, ctx: pyfuse3.RequestContext | None = None
    ) -> Sequence[bytes]:
        return self.fs.listxattr(inode)

    @fuse_errors
    async def statfs(self, ctx: pyfuse3.RequestContext | None = None) -> pyfuse3.StatvfsData:
        data = pyfuse3.StatvfsData()
        data.f_bsize = 512 * 1024
        data.f_frsize = 4096
        data.f_blocks = data.f_bfree = data.f_bavail = 0
        data.f_files = len(self.fs.inodes) + 1
        data.f_ffree = data.f_favail = 0
        data.f_namemax = 255
        return data

    async def forget(self, inode_list: Sequence[tuple[int, int]]) -> None:
        """FORGET and BATCH_FORGET: the kernel dropped `count` lookups of each inode."""
        for ino, count in inode_list:
            self.fs.forget(ino, count)
            self._attributes.pop(ino, None)

    @fuse_errors
    async def access(
        self, inode: int, mode: int, ctx: pyfuse3.RequestContext | None = None
    ) -> bool:
        if mode & os.W_OK:
            return False
        self.fs.data(inode)
        return True

    async def flush(self, fh: int) -> None:
        """ENOSYS: the kernel then stops sending FLUSH on every close (one request per file)."""
        raise pyfuse3.FUSEError(errno.ENOSYS)


def _new_attributes() -> pyfuse3.EntryAttributes:
    """A new EntryAttributes is zeroed, with one link (owner root, times 0, as wanted); this
    sets what is the same for every inode."""
    attr = pyfuse3.EntryAttributes()
    attr.entry_timeout = FOREVER
    attr.attr_timeout = FOREVER
    attr.st_blksize = 512 * 1024
    return attr


def _fill(attr: pyfuse3.EntryAttributes, ino: int, data: InodeData | Node | None) -> None:
    """What differs between inodes; `data` is the model's, or the node it stands for."""
    attr.st_ino = ino
    blocks = 0
    if data is None:
        attr.st_mode = stat.S_IFDIR | 0o555
        attr.st_size = 0
    elif isinstance(data, DirectoryInode | DirectoryNode):
        attr.st_mode = stat.S_IFDIR | 0o555
        attr.st_size = data.size
    elif isinstance(data, FileInode | FileNode):
        attr.st_mode = stat.S_IFREG | (0o555 if data.executable else 0o444)
        attr.st_size = data.size
        blocks = (data.size + 511) // 512
    else:
        assert isinstance(data, SymlinkInode | SymlinkNode)
        attr.st_mode = stat.S_IFLNK | 0o444
        attr.st_size = len(data.target)
    attr.st_blocks = blocks


def _erofs(name: str) -> Callable[..., Awaitable[Any]]:
    async def handler(self: CastoreOperations, *args: Any) -> Any:
        raise pyfuse3.FUSEError(errno.EROFS)

    handler.__name__ = name
    return handler


for _name in (
    "setattr",
    "mknod",
    "mkdir",
    "unlink",
    "rmdir",
    "symlink",
    "rename",
    "link",
    "write",
    "create",
    "setxattr",
    "removexattr",
):
    setattr(CastoreOperations, _name, _erofs(_name))

assert ROOT_INODE == pyfuse3.ROOT_INODE
