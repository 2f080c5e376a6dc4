"""Where the names in the mount's root come from.

The root is not a castore Directory: it is a namespace of root nodes, by default the store
paths a PathInfoService knows (so the mount looks like /nix/store), or the entries of one
Directory (`--root-digest`), or a fixed mapping (tests). Providers block; the filesystem calls
them from worker threads.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator, Mapping
from typing import Protocol

from castore_client.digest import B3Digest
from castore_client.directory import Directory, Node, validate_name
from castore_client.directory_cache import DirectoryCache
from castore_client.disk_cache import DiskChunkCache
from castore_client.errors import (
    DirectoryValidationError,
    InvalidStorePath,
    PathInfoNotFound,
)
from castore_client.services import DirectoryService, PathInfoService
from castore_client.storepath import StorePath

log = logging.getLogger(__name__)


class RootNodes(Protocol):
    def get(self, name: bytes) -> Node | None:
        """The node called exactly `name`, or None if there is none."""
        ...

    def list(self) -> Iterator[Node]:
        """Every root node, in the provider's order; may be long, so it streams."""
        ...


class PathInfoRootNodes:
    """Store paths by basename: `<32 nixbase32 chars>-<name>`."""

    def __init__(self, path_infos: PathInfoService) -> None:
        self.path_infos = path_infos

    def get(self, name: bytes) -> Node | None:
        try:
            store_path = StorePath.from_bytes_name(name)
        except InvalidStorePath:
            return None
        try:
            path_info = self.path_infos.get(store_path)
        except PathInfoNotFound:
            return None
        return _checked(path_info.node, name)

    def list(self) -> Iterator[Node]:
        for path_info in self.path_infos.list():
            node = path_info.node
            if node is None:
                log.warning("skipping a PathInfo without a root node")
                continue
            try:
                StorePath.from_bytes_name(node.name)
            except InvalidStorePath as exc:
                log.warning("skipping a root node with an invalid name %r: %s", node.name, exc)
                continue
            yield node


class RememberedRootNodes:
    """Root names answered before, from the disk cache first, then from `inner`.

    A store path's content never changes for as long as the path exists, so its root node,
    once answered, is kept on disk (as a one-entry Directory, so that it is checked on the
    way out like any cached object) under a name scoped to the server's address: a later
    mount starts warm, and with the server gone the names it knew still resolve. A path the
    server has since deleted keeps resolving from the cache until the cache forgets it.
    """

    def __init__(self, inner: RootNodes, cache: DirectoryCache, scope: str) -> None:
        if cache.disk is None:
            raise ValueError("remembered root nodes need a directory cache with a disk tier")
        self.inner = inner
        self.cache = cache
        self.disk: DiskChunkCache = cache.disk
        self.scope = scope.encode()

    def get(self, name: bytes) -> Node | None:
        key = b"root node\0" + self.scope + b"\0" + name
        node = self._remembered(key, name)
        if node is not None:
            return node
        node = self.inner.get(name)
        if node is not None:
            record = Directory.of([node])
            self.cache.put(record)
            self.disk.put_ref(key, record.digest)
        return node

    def _remembered(self, key: bytes, name: bytes) -> Node | None:
        """The record is a directory like any other: verified and validated on the way out."""
        digest = self.disk.get_ref(key)
        record = None if digest is None else self.cache.get(digest, disk=True)
        return None if record is None else _checked(record.child(name), name)

    def list(self) -> Iterator[Node]:
        return self.inner.list()


class DirectoryRootNodes:
    """The entries of one castore Directory, fetched (and validated) once."""

    def __init__(
        self,
        directories: DirectoryService,
        digest: B3Digest,
        cache: DirectoryCache | None = None,
    ) -> None:
        self.directories = directories
        self.digest = digest
        self.cache = cache
        self._lock = threading.Lock()
        self._directory: Directory | None = None

    def _get_directory(self) -> Directory:
        with self._lock:
            if self._directory is None:
                self._directory = (
                    self.directories.get(self.digest)
                    if self.cache is None
                    else self.cache.load(self.digest, self.directories)
                )
            return self._directory

    def get(self, name: bytes) -> Node | None:
        return self._get_directory().child(name)

    def list(self) -> Iterator[Node]:
        return self._get_directory().entries()


class StaticRootNodes:
    def __init__(self, nodes: Mapping[bytes, Node]) -> None:
        self.nodes = dict(sorted(nodes.items()))

    def get(self, name: bytes) -> Node | None:
        return self.nodes.get(name)

    def list(self) -> Iterator[Node]:
        return iter(self.nodes.values())


def _checked(node: Node | None, name: bytes) -> Node | None:
    """A root node must carry the name it was asked for, and a name the kernel can take."""
    if node is None:
        return None
    if node.name != name:
        log.warning("root node for %r is named %r; treating it as absent", name, node.name)
        return None
    try:
        validate_name(node.name)
    except DirectoryValidationError as exc:
        log.warning("root node name %r is invalid: %s", node.name, exc)
        return None
    return node
