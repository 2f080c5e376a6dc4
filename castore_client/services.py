"""The service interfaces, as the filesystem and the CLI see them.

Each has a gRPC client implementation (`castore_client.rpc`) and embedded ones
(`castore_client.stores`), so nothing above this layer knows which it talks to; `Services`
holds one of each, whichever they are. The methods
block; the FUSE layer calls them from worker threads through its trio bridge. Every method that
talks to a server takes an optional `timeout` in seconds (None: the implementation's default).

Errors are the ones in `castore_client.errors`: a missing object raises the matching NotFound
subclass, never returns None, so that "absent" cannot be confused with "empty".
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol, runtime_checkable

from .digest import B3Digest

if TYPE_CHECKING:
    from .directory import Directory, Node
    from .pathinfo import PathInfo
    from .storepath import StorePath


@dataclass(frozen=True, slots=True)
class ChunkMeta:
    """One chunk of a blob as Stat announces it: read it with `BlobService.read(digest)`."""

    digest: B3Digest
    size: int


@runtime_checkable
class BlobReader(Protocol):
    """A seekable, read-only view of one blob whose bytes are verified before they are returned."""

    size: int | None

    def read_at(self, offset: int, length: int) -> bytes: ...

    def close(self) -> None: ...


class BlobService(Protocol):
    def stat(self, digest: B3Digest, *, timeout: float | None = None) -> list[ChunkMeta]:
        """The blob's chunk list; empty when the blob is stored as one piece.

        Raises BlobNotFound when the store does not have it.
        """
        ...

    def read(
        self, digest: B3Digest, *, timeout: float | None = None
    ) -> Iterator[bytes | memoryview]:
        """The raw, *unverified* bytes of a blob or of a chunk, in pieces of any size.

        Pieces may be read-only memoryviews, so that bulk data is not copied on its way.

        Only the readers in `castore_client.chunked_reader` should call this: they verify.
        Raises BlobNotFound (possibly on the first `next()`).
        """
        ...

    def put(self, data: Iterable[bytes], *, timeout: float | None = None) -> B3Digest:
        """Upload a blob from pieces of any size; returns its digest, checked against ours."""
        ...


class DirectoryService(Protocol):
    def get(self, digest: B3Digest, *, timeout: float | None = None) -> Directory:
        """One validated Directory whose digest is `digest`. Raises DirectoryNotFound."""
        ...

    def get_recursive(
        self, digest: B3Digest, *, timeout: float | None = None
    ) -> Iterator[Directory]:
        """The validated closure of `digest`, root first, each directory after one that
        references it. Raises DirectoryNotFound if the root is unknown, a ClosureError if the
        closure is inconsistent."""
        ...

    def put(self, directories: Iterable[Directory], *, timeout: float | None = None) -> B3Digest:
        """Upload a closure, leaves first, root last; returns the root digest."""
        ...


class PathInfoService(Protocol):
    def get_by_hash(self, digest: bytes, *, timeout: float | None = None) -> PathInfo:
        """The PathInfo whose store path has this 20-byte hash, whatever its name part.

        This is all the wire protocol can ask; `get` adds the name comparison."""
        ...

    def get(self, store_path: StorePath, *, timeout: float | None = None) -> PathInfo:
        """The PathInfo named exactly `store_path` (hash *and* name). Raises PathInfoNotFound."""
        ...

    def list(self, *, timeout: float | None = None) -> Iterator[PathInfo]: ...

    def put(self, path_info: PathInfo, *, timeout: float | None = None) -> PathInfo: ...

    def calculate_nar(self, node: Node, *, timeout: float | None = None) -> tuple[int, bytes]:
        """(nar_size, nar_sha256) of the NAR serialisation of `node`."""
        ...


@dataclass
class Services:
    """The three services a mount, an import or a server works with, wherever they live.

    `connect.open_services` and the embedded stores both return one. `closers` release what
    the services share (channels, a store's database), last opened first; `close` runs each
    once, so closing twice is harmless.
    """

    blobs: BlobService
    directories: DirectoryService
    path_infos: PathInfoService
    closers: list[Callable[[], None]] = field(default_factory=list)

    def close(self) -> None:
        while self.closers:
            self.closers.pop()()

    def __enter__(self) -> Services:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
