"""The `castore` command: serve a store, import into it, mount it.

Every subcommand fails with one line on stderr and a non-zero status for bad input; a
traceback is only shown with -vv, since a user who typed a wrong address needs the address
named, not the call stack.
"""

from __future__ import annotations

import argparse
import logging
import os
import pathlib
import signal
import sys
import threading
from collections.abc import Callable, Sequence

from castore_client.address import DEFAULT_ADDRESS, Address, parse_address
from castore_client.errors import CastoreError

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
    if listen.scheme not in ("grpc+http", "grpc+unix"):
        raise UsageError(f"--listen {listen}: use grpc+http://HOST:PORT or grpc+unix:///PATH")
    store_address: Address = args.store
    if store_address.is_grpc:
        raise UsageError(f"--store {store_address}: serve needs memory:// or file:///PATH")
    if listen.scheme == "grpc+http" and not listen.is_loopback():
        log.warning(
            "listening on %s without TLS: anyone who can reach it can read and write the store",
            listen,
        )
    if listen.scheme == "grpc+unix":
        _remove_stale_socket(pathlib.Path(listen.path or ""))
    store = open_embedded_store(store_address)
    stopped = threading.Event()
    try:
        try:
            server = CastoreServer(store, listen)
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
        help=f"grpc+http://HOST:PORT or grpc+unix:///PATH (default {DEFAULT_ADDRESS})",
    )
    serve.add_argument(
        "--store",
        type=_address,
        default=None,
        metavar="ADDR",
        help="memory:// or file:///PATH (default file://$XDG_DATA_HOME/castore)",
    )
    serve.set_defaults(func=cmd_serve)
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
