"""The `castore` command: serve a store, import into it, mount it.

Every subcommand fails with one line on stderr and a non-zero status for bad input; a
traceback is only shown with -vv, since a user who typed a wrong address needs the address
named, not the call stack.
"""

from __future__ import annotations

import os

# The mount forks fusermount3 (auto_unmount) while gRPC channels exist; the child only execs,
# so gRPC's fork handlers have nothing to protect and just log warnings.
os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "0")
# gRPC core logs each failed TLS handshake at INFO on stderr; the command's own error line
# already names the failure, so only gRPC's errors are shown unless GRPC_VERBOSITY says else.
os.environ.setdefault("GRPC_VERBOSITY", "ERROR")

import argparse  # noqa: E402
import logging  # noqa: E402
import pathlib  # noqa: E402
import signal  # noqa: E402
import sys  # noqa: E402
import threading  # noqa: E402
from collections.abc import Callable, Sequence  # noqa: E402
from typing import TYPE_CHECKING  # noqa: E402

from castore_client.address import DEFAULT_ADDRESS, Address, parse_address  # noqa: E402
from castore_client.errors import CastoreError  # noqa: E402

if TYPE_CHECKING:
    from castore_client.tls import ServerTlsOptions, TlsOptions

log = logging.getLogger("castore")


class UsageError(Exception):
    """A user-facing error: printed as one line, exit status 1."""


def _default_store() -> str:
    data_home = os.environ.get("XDG_DATA_HOME") or str(pathlib.Path.home() / ".local" / "share")
    return f"file://{data_home}/castore"


def _setup_logging(verbosity: int) -> None:
    level = logging.INFO if verbosity == 0 else logging.DEBUG
    logging.basicConfig(
        level=level,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )


def _address(text: str) -> Address:
    try:
        return parse_address(text)
    except CastoreError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def cmd_serve(args: argparse.Namespace) -> int:
    from castore_client.rpc.server import CastoreServer
    from castore_client.stores import open_embedded_store

    listen: Address = args.listen
    if listen.scheme not in ("grpc+http", "grpc+https", "grpc+unix"):
        raise UsageError(
            f"--listen {listen}: use grpc+http://HOST:PORT, grpc+https://HOST:PORT "
            "or grpc+unix:///PATH"
        )
    store_address: Address = args.store
    if store_address.is_grpc:
        raise UsageError(f"--store {store_address}: serve needs memory:// or file:///PATH")
    tls = _server_tls(args, listen)
    if listen.scheme == "grpc+http" and not listen.is_loopback():
        log.warning(
            "listening on %s without TLS: anyone who can reach it can read and write the store",
            listen,
        )
    if tls is not None and not tls.requires_client_certificates and not listen.is_loopback():
        log.warning(
            "listening on %s without --tls-client-ca: anyone who can reach it can read and "
            "write the store",
            listen,
        )
    if listen.scheme == "grpc+unix":
        _remove_stale_socket(pathlib.Path(listen.path or ""))
    store = open_embedded_store(store_address)
    stopped = threading.Event()
    try:
        try:
            server = CastoreServer(store, listen, tls=tls)
        except (RuntimeError, OSError) as exc:
            raise UsageError(f"cannot listen on {listen}: {exc}") from None
        _on_signals(lambda: stopped.set())
        log.info("castore serve: ready on %s, store %s", server.address, store_address)
        stopped.wait()
        log.info("shutting down")
        server.stop(grace=2.0)
    finally:
        store.close()
    return 0


def _server_tls(args: argparse.Namespace, listen: Address) -> ServerTlsOptions | None:
    """The server's TLS identity: grpc+https needs --tls-cert and --tls-key, nothing else does."""
    from castore_client.tls import ServerTlsOptions

    given = [
        flag
        for flag, value in (
            ("--tls-cert", args.tls_cert),
            ("--tls-key", args.tls_key),
            ("--tls-client-ca", args.tls_client_ca),
        )
        if value is not None
    ]
    if not listen.uses_tls:
        if given:
            raise UsageError(
                f"{given[0]} needs --listen grpc+https://HOST:PORT (the listen address is {listen})"
            )
        return None
    if args.tls_cert is None or args.tls_key is None:
        raise UsageError(f"--listen {listen} needs --tls-cert FILE and --tls-key FILE")
    try:
        return ServerTlsOptions.load(args.tls_cert, args.tls_key, args.tls_client_ca)
    except CastoreError as exc:
        raise UsageError(str(exc)) from None


def _client_tls(args: argparse.Namespace, addresses: Sequence[str]) -> TlsOptions | None:
    """--tls-ca, --tls-cert and --tls-key, loaded; only a grpc+https address can use them."""
    from castore_client.tls import TlsOptions

    given = [
        flag
        for flag, value in (
            ("--tls-ca", args.tls_ca),
            ("--tls-cert", args.tls_cert),
            ("--tls-key", args.tls_key),
        )
        if value is not None
    ]
    if not given:
        return None
    if not any(parse_address(p).uses_tls for a in addresses for p in a.split(",")):
        raise UsageError(
            f"{given[0]} applies to grpc+https addresses only, and none is given "
            f"({', '.join(dict.fromkeys(addresses))})"
        )
    try:
        return TlsOptions.load(args.tls_ca, args.tls_cert, args.tls_key)
    except CastoreError as exc:
        raise UsageError(str(exc)) from None


def _service_addresses(args: argparse.Namespace) -> tuple[str, str, str]:
    """--store sets all three; per-service flags, then their environment variables, override."""
    store = args.store_addr or os.environ.get("CASTORE_STORE") or DEFAULT_ADDRESS
    pick = []
    for flag, env in (
        (args.blob_service_addr, "BLOB_SERVICE_ADDR"),
        (args.directory_service_addr, "DIRECTORY_SERVICE_ADDR"),
        (args.path_info_service_addr, "PATH_INFO_SERVICE_ADDR"),
    ):
        pick.append(flag or os.environ.get(env) or store)
    for text in pick:
        try:
            for part in text.split(","):
                parse_address(part)
        except CastoreError as exc:
            raise UsageError(str(exc)) from None
    return pick[0], pick[1], pick[2]


def cmd_mount(args: argparse.Namespace) -> int:
    from castore_client.blob_readers import BlobReaders
    from castore_client.connect import open_services
    from castore_client.digest import B3Digest
    from castore_client.rpc.endpoint import Namespace

    from .fs_model import CastoreFilesystem
    from .mount import MountError, MountOptions, check_mountpoint, run_mount
    from .root_nodes import DirectoryRootNodes, PathInfoRootNodes, RootNodes

    blob_addr, dir_addr, info_addr = _service_addresses(args)
    tls = _client_tls(args, (blob_addr, dir_addr, info_addr))
    namespace = Namespace.parse(args.protocol)
    root_digest = B3Digest.parse(args.root_digest) if args.root_digest else None
    try:
        mountpoint = check_mountpoint(args.mountpoint)
    except MountError as exc:
        raise UsageError(str(exc)) from None
    services = open_services(
        blob_addr,
        dir_addr,
        info_addr,
        namespace=namespace,
        timeout=args.timeout,
        connect_timeout=args.connect_timeout,
        tls=tls,
    )
    with services:
        root_nodes: RootNodes
        if root_digest is not None:
            root_nodes = DirectoryRootNodes(services.directories, root_digest)
        else:
            root_nodes = PathInfoRootNodes(services.path_infos)
        fs = CastoreFilesystem(
            BlobReaders(services.blobs, _chunk_cache(args)),
            services.directories,
            root_nodes,
            list_root=args.list_root,
            show_xattr=args.show_xattr,
            xattr_namespace="snix" if namespace is Namespace.SNIX else "tvix",
        )
        try:
            run_mount(
                fs,
                MountOptions(
                    mountpoint,
                    allow_other=args.allow_other,
                    fsname=f"castore:{blob_addr}"[:200],
                    debug=args.verbose >= 3,
                ),
            )
        except MountError as exc:
            raise UsageError(str(exc)) from None
    return 0


def cmd_import(args: argparse.Namespace) -> int:
    from castore_client.connect import open_services
    from castore_client.importer import import_path
    from castore_client.rpc.endpoint import Namespace

    blob_addr, dir_addr, info_addr = _service_addresses(args)
    tls = _client_tls(args, (blob_addr, dir_addr, info_addr))
    for path in args.paths:
        if not os.path.lexists(path):
            raise UsageError(f"{path}: no such file or directory")
    with open_services(
        blob_addr,
        dir_addr,
        info_addr,
        namespace=Namespace.parse(args.protocol),
        timeout=args.timeout,
        connect_timeout=args.connect_timeout,
        tls=tls,
    ) as services:
        for path in args.paths:
            with _progress_for(
                path, enabled=sys.stderr.isatty() and not args.no_progress
            ) as progress:
                result = import_path(path, services, progress=progress)
            print(result.store_path.absolute, flush=True)
    return 0


def _progress_for(path: str, *, enabled: bool):  # type: ignore[no-untyped-def]
    """A tqdm bar over the bytes to import, on a terminal only; a no-op context otherwise."""
    import contextlib

    from castore_client.importer import Progress, tree_totals

    if not enabled:
        return contextlib.nullcontext(None)
    from tqdm import tqdm

    files, size = tree_totals(path)

    @contextlib.contextmanager
    def bar():  # type: ignore[no-untyped-def]
        with tqdm(
            total=size,
            unit="B",
            unit_scale=True,
            unit_divisor=1024,
            desc=os.path.basename(os.path.abspath(path))[:30],
            leave=False,
            postfix={"files": f"0/{files}"},
        ) as t:
            done = 0

            def on_file() -> None:
                nonlocal done
                done += 1
                t.set_postfix(files=f"{done}/{files}", refresh=False)

            def on_upload(n: int) -> None:
                t.total += n
                t.update(n)

            yield Progress(on_bytes=t.update, on_file=on_file, on_upload=on_upload)

    return bar()


def _chunk_cache(args: argparse.Namespace):  # type: ignore[no-untyped-def]
    from castore_client.chunk_cache import ChunkCache
    from castore_client.disk_cache import DiskChunkCache, parse_size

    try:
        memory = parse_size(args.memory_cache_size)
        disk_size = parse_size(args.cache_size)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    disk = None
    if args.cache_dir:
        try:
            disk = DiskChunkCache(args.cache_dir, disk_size)
        except OSError as exc:
            raise UsageError(f"--cache-dir {args.cache_dir}: {exc.strerror}") from None
    return ChunkCache(memory, disk)


def _remove_stale_socket(path: pathlib.Path) -> None:
    """A socket file left by a killed server blocks the bind; a live one must not be stolen."""
    import socket

    if not path.is_socket():
        return
    probe = socket.socket(socket.AF_UNIX)
    try:
        probe.connect(str(path))
    except OSError:
        path.unlink()
    else:
        raise UsageError(f"{path}: another server is listening on this socket")
    finally:
        probe.close()


def _on_signals(handler: Callable[[], None]) -> None:
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda signum, frame: handler())


def _add_address_options(parser: argparse.ArgumentParser) -> None:
    addresses = parser.add_argument_group(
        "addresses",
        "Environment: CASTORE_STORE stands for --store; BLOB_SERVICE_ADDR, "
        "DIRECTORY_SERVICE_ADDR, PATH_INFO_SERVICE_ADDR for the per-service flags "
        "(flags win over the environment).",
    )
    addresses.add_argument(
        "--store",
        dest="store_addr",
        metavar="ADDR",
        help=(
            f"address of all three services (default {DEFAULT_ADDRESS}); several gRPC "
            "servers separated by commas are used in order, with failover"
        ),
    )
    addresses.add_argument("--blob-service-addr", metavar="ADDR", help="BlobService address")
    addresses.add_argument(
        "--directory-service-addr", metavar="ADDR", help="DirectoryService address"
    )
    addresses.add_argument(
        "--path-info-service-addr", metavar="ADDR", help="PathInfoService address"
    )
    addresses.add_argument(
        "--protocol",
        default="tvix",
        choices=["tvix", "snix", "auto"],
        help="gRPC package names to speak (default tvix; auto asks the server)",
    )
    addresses.add_argument(
        "--timeout",
        type=float,
        default=None,
        metavar="SECONDS",
        help="deadline of each remote call, retries included; a dead server gives EIO after "
        "it (default none)",
    )
    addresses.add_argument(
        "--connect-timeout",
        type=float,
        default=10.0,
        metavar="SECONDS",
        help="how long to wait for the server at startup (default 10)",
    )
    tls = parser.add_argument_group(
        "TLS", "For grpc+https addresses; without --tls-ca the system's CA certificates apply."
    )
    tls.add_argument(
        "--tls-ca", metavar="FILE", help="PEM CA certificate(s) to verify the server with"
    )
    tls.add_argument(
        "--tls-cert",
        metavar="FILE",
        help="PEM client certificate, for servers that require one (with --tls-key)",
    )
    tls.add_argument("--tls-key", metavar="FILE", help="PEM private key of --tls-cert")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="castore",
        description=(
            "Serve, fill and mount tvix/snix content-addressed stores (castore). "
            "Addresses: grpc+http://HOST:PORT, grpc+https://HOST:PORT, grpc+unix:///PATH, "
            "memory://, file:///PATH."
        ),
    )
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "-v", "--verbose", action="count", default=0, help="more log output (repeatable)"
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    serve = sub.add_parser(
        "serve",
        parents=[common],
        help="serve a store over gRPC (BlobService, DirectoryService, PathInfoService)",
        description=(
            "Serve an embedded store over gRPC under both the tvix and snix protocol "
            "namespaces, plus grpc.health.v1. Stops cleanly on SIGINT or SIGTERM."
        ),
    )
    serve.add_argument(
        "--listen",
        type=_address,
        default=parse_address(DEFAULT_ADDRESS),
        metavar="ADDR",
        help=(
            "grpc+http://HOST:PORT, grpc+https://HOST:PORT (with --tls-cert and --tls-key) "
            f"or grpc+unix:///PATH (default {DEFAULT_ADDRESS})"
        ),
    )
    serve.add_argument(
        "--store",
        type=_address,
        default=None,
        metavar="ADDR",
        help="memory:// or file:///PATH (default file://$XDG_DATA_HOME/castore)",
    )
    serve_tls = serve.add_argument_group("TLS", "For --listen grpc+https://HOST:PORT.")
    serve_tls.add_argument(
        "--tls-cert", metavar="FILE", help="PEM certificate (chain) the server presents"
    )
    serve_tls.add_argument("--tls-key", metavar="FILE", help="PEM private key of --tls-cert")
    serve_tls.add_argument(
        "--tls-client-ca",
        metavar="FILE",
        help="PEM CA certificate(s): require clients to present a certificate signed by them",
    )
    serve.set_defaults(func=cmd_serve)

    mount = sub.add_parser(
        "mount",
        parents=[common],
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
    _add_address_options(mount)
    mount.add_argument(
        "--list-root", action="store_true", help="allow listing the root (off: EPERM)"
    )
    mount.add_argument(
        "--show-xattr",
        action="store_true",
        help="expose user.tvix.castore.{blob,directory}.digest extended attributes",
    )
    mount.add_argument("--allow-other", action="store_true", help="let other users see the mount")
    mount.add_argument(
        "--root-digest", metavar="DIGEST", help="use this Directory (blake3-...) as the root"
    )
    mount.add_argument(
        "--cache-dir",
        metavar="DIR",
        help="keep verified chunks on disk here, shared by every mount on the host",
    )
    mount.add_argument(
        "--cache-size",
        default="1G",
        metavar="SIZE",
        help="the disk cache's limit, e.g. 512M or 10G (default 1G)",
    )
    mount.add_argument(
        "--memory-cache-size",
        default="128M",
        metavar="SIZE",
        help="verified chunks kept in memory (default 128M)",
    )
    mount.add_argument("mountpoint", metavar="MOUNTPOINT", help="an existing, empty directory")
    mount.set_defaults(func=cmd_mount)

    imp = sub.add_parser(
        "import",
        parents=[common],
        help="upload paths into a store and register them as Nix store paths",
        description=(
            "Upload each PATH (a file, directory or symlink) into the store: its blobs (only "
            "those the store lacks), its directories, and a PathInfo named exactly as "
            "`nix-store --add PATH` names it. Prints one absolute store path per PATH. Sockets, "
            "fifos, device nodes and unreadable files stop the import with an error naming the "
            "path; nothing is registered for a PATH that failed."
        ),
    )
    _add_address_options(imp)
    imp.add_argument(
        "--no-progress", action="store_true", help="no progress bar, even on a terminal"
    )
    imp.add_argument("paths", nargs="+", metavar="PATH", help="what to import")
    imp.set_defaults(func=cmd_import)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "store", "absent") is None:
        args.store = parse_address(_default_store())
    _setup_logging(args.verbose)
    try:
        return int(args.func(args))
    except (UsageError, CastoreError, OSError) as exc:
        if args.verbose >= 2:
            log.exception("failed")
        print(f"castore {args.command}: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
