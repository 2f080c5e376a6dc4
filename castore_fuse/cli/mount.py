"""`castore mount`: a store as a read-only filesystem, in the foreground."""

from __future__ import annotations

import argparse
import os
from typing import TYPE_CHECKING

from castore_client.errors import InvalidDigest

from .options import (
    Subparsers,
    UsageError,
    add_client_options,
    add_command,
    client_config,
    open_client,
    size_option,
)

if TYPE_CHECKING:
    from castore_client.chunk_cache import ChunkCache
    from castore_client.connect import ClientConfig
    from castore_client.digest import B3Digest
    from castore_client.rpc.namespace import Namespace
    from castore_client.services import Services
    from castore_client.spool import Spool

    from ..fs_model import CastoreFilesystem


def add_parser(subparsers: Subparsers) -> None:
    parser = add_command(
        subparsers,
        "mount",
        help="mount a store read-only with FUSE",
        description=(
            "Mount a castore read-only at MOUNTPOINT and stay in the foreground until SIGINT, "
            "SIGTERM or an external unmount (fusermount3 -u). The root holds the store paths "
            "the PathInfoService knows, by basename, like /nix/store; with --root-digest it is "
            "that Directory instead. File contents are fetched when read and every byte is "
            "verified against its BLAKE3 digest; a corrupt or missing object is an EIO for "
            "whoever reads it, and the mount keeps serving everything else."
        ),
    )
    add_client_options(parser)
    parser.add_argument(
        "--list-root", action="store_true", help="allow listing the root (off: EPERM)"
    )
    parser.add_argument(
        "--show-xattr",
        action="store_true",
        help="expose user.tvix.castore.{blob,directory}.digest extended attributes",
    )
    parser.add_argument("--allow-other", action="store_true", help="let other users see the mount")
    parser.add_argument(
        "--root-digest", metavar="DIGEST", help="use this Directory (blake3-...) as the root"
    )
    parser.add_argument(
        "--cache-dir",
        metavar="DIR",
        help="keep verified chunks on disk here, shared by every mount on the host",
    )
    parser.add_argument(
        "--cache-size",
        default="1G",
        metavar="SIZE",
        help="the disk cache's limit, e.g. 512M or 10G (default 1G)",
    )
    parser.add_argument(
        "--memory-cache-size",
        default="128M",
        metavar="SIZE",
        help="verified chunks kept in memory (default 128M)",
    )
    parser.add_argument(
        "--metadata-cache-size",
        default="32M",
        metavar="SIZE",
        help=(
            "directories kept in memory (default 32M); past it the least recently used are "
            "fetched again (from --cache-dir if there is one)"
        ),
    )
    parser.add_argument("mountpoint", metavar="MOUNTPOINT", help="an existing, empty directory")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from ..versions import pyfuse3_problem

    problem = pyfuse3_problem()
    if problem is not None:
        raise UsageError(problem)
    from ..mount import MountError, MountOptions, check_mountpoint, run_mount

    config = client_config(args)
    # Every number is checked before anything is connected or mounted.
    _size("--memory-cache-size", args.memory_cache_size)
    _size("--metadata-cache-size", args.metadata_cache_size)
    _size("--cache-size", args.cache_size)
    root_digest = _root_digest(args.root_digest)
    try:
        mountpoint = check_mountpoint(args.mountpoint)
    except MountError as exc:
        raise UsageError(str(exc)) from None
    with _open_services(config, args.cache_dir) as services:
        fs = _filesystem(args, services, config.namespace, root_digest, config)
        try:
            run_mount(
                fs,
                MountOptions(
                    mountpoint,
                    allow_other=args.allow_other,
                    fsname=_fsname(config),
                    debug=args.verbose >= 3,
                ),
            )
        except MountError as exc:
            raise UsageError(str(exc)) from None
    return 0


def _open_services(config: ClientConfig, cache_dir: str | None) -> Services:
    """The services; with a cache, a server that cannot be reached is no reason not to mount:
    whatever the cache holds is served, and the rest fails within --timeout."""
    import dataclasses
    import logging

    try:
        return open_client(config)
    except UsageError as exc:
        if not cache_dir or config.connect_timeout is None:
            raise
        logging.getLogger(__name__).warning("%s; serving what %s holds", exc, cache_dir)
        return open_client(dataclasses.replace(config, connect_timeout=None))


def _filesystem(
    args: argparse.Namespace,
    services: Services,
    namespace: Namespace,
    root_digest: B3Digest | None,
    config: ClientConfig,
) -> CastoreFilesystem:
    """The filesystem model the options ask for, over the opened services."""
    from castore_client.blob_readers import BlobReaders
    from castore_client.directory_cache import DirectoryCache
    from castore_client.rpc.namespace import Namespace

    from ..fs_model import CastoreFilesystem
    from ..root_nodes import (
        DirectoryRootNodes,
        PathInfoRootNodes,
        RememberedRootNodes,
        RootNodes,
    )

    chunks = _chunk_cache(args)
    listings = DirectoryCache(
        _size("--metadata-cache-size", args.metadata_cache_size),
        chunks.disk,
    )
    root_nodes: RootNodes
    if root_digest is not None:
        root_nodes = DirectoryRootNodes(services.directories, root_digest, listings)
    else:
        root_nodes = PathInfoRootNodes(services.path_infos)
        if chunks.disk is not None:
            scope = ",".join(str(address) for address in config.path_infos)
            root_nodes = RememberedRootNodes(root_nodes, listings, scope)
    return CastoreFilesystem(
        BlobReaders(services.blobs, chunks, spool=_spool(args)),
        services.directories,
        root_nodes,
        list_root=args.list_root,
        show_xattr=args.show_xattr,
        xattr_namespace="snix" if namespace is Namespace.SNIX else "tvix",
        listings=listings,
    )


def _chunk_cache(args: argparse.Namespace) -> ChunkCache:
    from castore_client.chunk_cache import ChunkCache
    from castore_client.disk_cache import DiskChunkCache

    memory = _size("--memory-cache-size", args.memory_cache_size)
    disk_size = _size("--cache-size", args.cache_size)
    disk = None
    if args.cache_dir:
        try:
            disk = DiskChunkCache(args.cache_dir, disk_size)
        except OSError as exc:
            raise UsageError(f"--cache-dir {args.cache_dir}: {exc.strerror}") from None
    return ChunkCache(memory, disk)


def _spool(args: argparse.Namespace) -> Spool:
    """Blobs verified whole are kept next to the disk cache, within its size; else in the
    system's temporary directory, within the default limit."""
    from castore_client.spool import Spool

    if not args.cache_dir:
        return Spool()
    return Spool(os.path.join(args.cache_dir, ".spool"), _size("--cache-size", args.cache_size))


def _size(flag: str, text: str) -> int:
    return size_option(flag, text)


def _root_digest(text: str | None) -> B3Digest | None:
    from castore_client.digest import B3Digest

    if not text:
        return None
    try:
        return B3Digest.parse(text)
    except InvalidDigest as exc:
        raise UsageError(f"--root-digest: {exc}") from None


def _fsname(config: ClientConfig) -> str:
    """What the mount table shows as the source: the blob service's (first) address, and how
    many more there are; `run_mount` escapes whatever in it a mount option cannot hold."""
    first, *others = config.blobs
    return f"castore:{first}" + (f"(+{len(others)})" if others else "")
