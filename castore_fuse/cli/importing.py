"""`castore import`: upload paths and register them as the store paths Nix would give them."""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
from collections.abc import Iterator
from typing import TYPE_CHECKING

from .options import (
    Subparsers,
    UsageError,
    add_client_options,
    add_command,
    client_config,
    open_client,
)

if TYPE_CHECKING:
    from castore_client.importer import Progress


def add_parser(subparsers: Subparsers) -> None:
    parser = add_command(
        subparsers,
        "import",
        help="upload paths into a store and register them as Nix store paths",
        description=(
            "Upload each PATH (a file, directory or symlink) into the store: its blobs (only "
            "those the store lacks), its directories, and a PathInfo named exactly as "
            "`nix-store --add PATH` names it. Prints one absolute store path per PATH. Sockets, "
            "fifos, device nodes and unreadable files stop the import with an error naming the "
            "path; nothing is registered for a PATH that failed."
        ),
    )
    add_client_options(parser)
    parser.add_argument(
        "--no-progress", action="store_true", help="no progress bar, even on a terminal"
    )
    parser.add_argument("paths", nargs="+", metavar="PATH", help="what to import")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from castore_client.importer import import_path
    from castore_client.text import printable

    config = client_config(args)
    for path in args.paths:
        if not os.path.lexists(path):
            raise UsageError(f"{printable(path)}: no such file or directory")
    enabled = sys.stderr.isatty() and not args.no_progress
    with open_client(config) as services:
        for path in args.paths:
            with _progress(path, enabled=enabled) as progress:
                result = import_path(path, services, progress=progress)
            print(result.store_path.absolute, flush=True)
    return 0


@contextlib.contextmanager
def _progress(path: str, *, enabled: bool) -> Iterator[Progress | None]:
    """A tqdm bar over the bytes to import, on a terminal only; nothing otherwise."""
    if not enabled:
        yield None
        return
    from tqdm import tqdm

    from castore_client.importer import Progress, tree_totals
    from castore_client.text import printable

    files, size = tree_totals(path)
    with tqdm(
        total=size,
        unit="B",
        unit_scale=True,
        unit_divisor=1024,
        desc=printable(os.path.basename(os.path.abspath(path)))[:30],
        leave=False,
        postfix={"files": f"0/{files}"},
    ) as bar:
        done = 0

        def on_file() -> None:
            nonlocal done
            done += 1
            bar.set_postfix(files=f"{done}/{files}", refresh=False)

        def on_bytes(n: int) -> None:
            bar.update(n)

        def on_upload(n: int) -> None:
            bar.total = (bar.total or 0) + n
            bar.update(n)

        yield Progress(on_bytes=on_bytes, on_file=on_file, on_upload=on_upload)
