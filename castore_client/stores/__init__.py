"""Embedded stores: the three castore services without a server, in memory or on disk.

    store = open_memory_store()              # or open_file_store(Path("/var/lib/castore"))
    digest = store.blobs.put([b"hello"])
    store.close()

Both implement `services.BlobService`, `DirectoryService` and `PathInfoService` exactly, apply
the same validation as the gRPC server, and split blobs with the same FastCDC parameters as
real servers, so clients meet chunked blobs in tests too. An opened store is a
`services.Services`, the same type a gRPC client is, so whatever takes one takes the other.
"""

from __future__ import annotations

from ..address import Address
from ..directory import SizeFormula
from ..errors import InvalidAddress
from ..services import Services
from .file import FileBlobService, FileDirectoryService, FilePathInfoService, open_file_store
from .memory import (
    MemoryBlobService,
    MemoryDirectoryService,
    MemoryPathInfoService,
    open_memory_store,
)


def open_embedded_store(address: Address, formula: SizeFormula = SizeFormula.CURRENT) -> Services:
    """The store a `memory://` or `file:///abs/path` address names."""
    if address.scheme == "memory":
        return open_memory_store(formula)
    if address.scheme == "file" and address.path:
        return open_file_store(address.path, formula)
    raise InvalidAddress(f"{address} is not an embedded store (memory:// or file:///ABS/PATH)")


__all__ = [
    "FileBlobService",
    "FileDirectoryService",
    "FilePathInfoService",
    "MemoryBlobService",
    "MemoryDirectoryService",
    "MemoryPathInfoService",
    "open_embedded_store",
    "open_file_store",
    "open_memory_store",
]
