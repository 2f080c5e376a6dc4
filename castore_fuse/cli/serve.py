"""`castore serve`: an embedded store over gRPC, until SIGINT or SIGTERM."""

from __future__ import annotations

import argparse
import logging
import os
import pathlib
import signal
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING

from castore_client.address import DEFAULT_ADDRESS, Address, parse_address
from castore_client.errors import CastoreError, InvalidTlsConfig

from .options import Subparsers, UsageError, add_command, add_identity_options, read_pem_option

if TYPE_CHECKING:
    from castore_client.tls import ServerTlsOptions

log = logging.getLogger("castore")


def add_parser(subparsers: Subparsers) -> None:
    parser = add_command(
        subparsers,
        "serve",
        help="serve a store over gRPC (BlobService, DirectoryService, PathInfoService)",
        description=(
            "Serve an embedded store over gRPC under both the tvix and snix protocol "
            "namespaces, plus grpc.health.v1. Stops cleanly on SIGINT or SIGTERM."
        ),
    )
    parser.add_argument(
        "--listen",
        type=_address,
        default=parse_address(DEFAULT_ADDRESS),
        metavar="ADDR",
        help=(
            "grpc+http://HOST:PORT, grpc+https://HOST:PORT (with --tls-cert and --tls-key) "
            f"or grpc+unix:///PATH (default {DEFAULT_ADDRESS})"
        ),
    )
    parser.add_argument(
        "--store",
        type=_address,
        default=None,
        metavar="ADDR",
        help="memory:// or file:///PATH (default file://$XDG_DATA_HOME/castore)",
    )
    tls = parser.add_argument_group(
        "TLS",
        "For --listen grpc+https://HOST:PORT, which needs --tls-cert and --tls-key.",
    )
    add_identity_options(tls)
    tls.add_argument(
        "--tls-client-ca",
        metavar="FILE",
        help="PEM CA certificate(s): require clients to present a certificate signed by them",
    )
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from castore_client.rpc.server import CastoreServer
    from castore_client.stores import open_embedded_store

    listen: Address = args.listen
    if listen.scheme not in ("grpc+http", "grpc+https", "grpc+unix"):
        raise UsageError(
            f"--listen {listen}: use grpc+http://HOST:PORT, grpc+https://HOST:PORT "
            "or grpc+unix:///PATH"
        )
    store_address: Address = args.store or _default_store()
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
        except InvalidTlsConfig as exc:
            raise UsageError(
                f"--tls-cert {args.tls_cert}, --tls-key {args.tls_key}: {exc}"
            ) from None
        except (RuntimeError, OSError) as exc:
            raise UsageError(f"cannot listen on {listen}: {exc}") from None
        _on_signals(stopped.set)
        log.info("castore serve: ready on %s, store %s", server.address, store_address)
        stopped.wait()
        log.info("shutting down")
        server.stop(grace=2.0)
    finally:
        store.close()
    return 0


def _address(text: str) -> Address:
    try:
        return parse_address(text)
    except CastoreError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _default_store() -> Address:
    data_home = os.environ.get("XDG_DATA_HOME") or str(pathlib.Path.home() / ".local" / "share")
    try:
        return parse_address(f"file://{data_home}/castore")
    except CastoreError as exc:
        raise UsageError(f"the default --store (from XDG_DATA_HOME): {exc}") from None


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
    return ServerTlsOptions(
        certificate_chain=read_pem_option("--tls-cert", args.tls_cert, "certificate"),
        private_key=read_pem_option("--tls-key", args.tls_key, "private key"),
        client_ca=(
            None
            if args.tls_client_ca is None
            else read_pem_option("--tls-client-ca", args.tls_client_ca, "certificate")
        ),
    )


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
