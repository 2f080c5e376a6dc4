"""The `castore` command: serve a store, import into it, mount it.

Every subcommand fails with one line on stderr and a non-zero status for bad input; a
traceback is only shown with -vv, since a user who typed a wrong address needs the address
named, not the call stack. Each subcommand is a module with `add_parser` and `run`; what they
share (the address and TLS flags, the one-line error) is in `options`.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence
from typing import Any

from castore_client.errors import CastoreError
from castore_client.text import printable

from . import fstab, importing, mount, serve
from .options import UsageError

__all__ = ["UsageError", "build_parser", "main"]

COMMANDS = (serve, mount, importing)

log = logging.getLogger("castore")


def build_parser() -> argparse.ArgumentParser:
    return _parsers()[0]


def _parsers() -> tuple[argparse.ArgumentParser, dict[str, argparse.ArgumentParser]]:
    """The `castore` parser and its subcommands' parsers by name."""
    parser = argparse.ArgumentParser(
        prog="castore",
        description=(
            "Serve, fill and mount tvix/snix content-addressed stores (castore). "
            "Addresses: grpc+http://HOST:PORT, grpc+https://HOST:PORT, grpc+unix:///PATH, "
            "memory://, file:///PATH."
        ),
    )
    parser.add_argument(
        "--version",
        action=_Version,
        help="print the versions of castore-fuse, grpcio, pyfuse3 and libfuse, and exit",
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for command in COMMANDS:
        command.add_parser(subparsers)
    return parser, dict(subparsers.choices)


class _Version(argparse.Action):
    """--version, worked out only when asked for (it loads libfuse to ask its version)."""

    def __init__(self, option_strings: Sequence[str], dest: str, **kwargs: Any) -> None:
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS, **kwargs)

    def __call__(self, parser: argparse.ArgumentParser, *args: Any) -> None:
        from ..versions import version_text

        print(version_text())
        parser.exit()


def main(argv: Sequence[str] | None = None) -> int:
    arguments = list(sys.argv[1:] if argv is None else argv)
    parser, commands = _parsers()
    if fstab.is_fstab_call(arguments, list(commands)):
        try:
            mount_arguments = fstab.mount_arguments(arguments, commands["mount"])
        except UsageError as exc:
            print(f"castore: error: {printable(str(exc))}", file=sys.stderr)
            return 2
        return fstab.run_in_background(mount_arguments, main)
    _grpc_environment()
    args = parser.parse_args(arguments)
    _setup_logging(args.verbose)
    try:
        return int(args.run(args))
    except (UsageError, CastoreError, OSError) as exc:
        if args.verbose >= 2:
            log.exception("failed")
        # One line whatever the message quotes: a path with a newline in it would split it.
        print(f"castore {args.command}: error: {printable(str(exc))}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


def _grpc_environment() -> None:
    """gRPC reads these once, when it is first imported, which the commands do lazily."""
    # The mount forks fusermount3 (auto_unmount) while gRPC channels exist; the child only
    # execs, so gRPC's fork handlers have nothing to protect and just log warnings.
    os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "0")
    # gRPC core logs each failed TLS handshake at INFO on stderr; the command's own error line
    # already names the failure, so only gRPC's errors are shown unless GRPC_VERBOSITY says else.
    os.environ.setdefault("GRPC_VERBOSITY", "ERROR")


def _setup_logging(verbosity: int) -> None:
    level = logging.INFO if verbosity == 0 else logging.DEBUG
    logging.basicConfig(
        level=level,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
