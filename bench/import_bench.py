#!/usr/bin/env python3
"""`castore import` of a large tree into `castore serve --store file://...` over a unix socket:
throughput of the first import (MB/s, files/s), the time of a second import of the same tree
(which must upload nothing; target: under a fifth of the first), and the importer's peak RSS.
An import of an empty directory measures the fixed cost every import pays (start, connect).

The tree is --small-files files of --file-kib KiB of random bytes in --dirs directories, plus
one random file of --big-mib MiB, written piecewise so that memory stays low. Every run starts
a fresh server on an empty store. Imports run with stderr on a pseudo-terminal, so that the
progress bar is drawn as a user would see it (pass --no-pty to time them without it); the
terminal output goes to a log file. Prints a table of medians, writes JSON with every sample.

    python bench/import_bench.py [--small-files 10000] [--big-mib 1024] [--runs 1]
    python bench/import_bench.py --small-files 500 --big-mib 64     # a quick check
"""

from __future__ import annotations

import argparse
import fcntl
import os
import pathlib
import pty
import re
import statistics
import struct
import subprocess
import sys
import tempfile
import termios
import threading
import time
from dataclasses import dataclass

from harness import MIB, ROOT, Table, castore, castore_server, drop_caches, xof_pieces

SUMMARY = re.compile(rb"(\d+) blobs uploaded \((\d+) bytes\), (\d+) already in the store")
ANSI = re.compile(rb"\x1b\[[0-9;?]*[A-Za-z]")
TERMINAL_SIZE = (24, 120)  # rows, columns


# --------------------------------------------------------------------------------------------
# The tree


def generate_tree(tree: pathlib.Path, files: int, dirs: int, file_size: int, big: int) -> int:
    """Write the tree; returns its total size in bytes."""
    tree.mkdir()
    for d in range(dirs):
        (tree / f"dir{d:03d}").mkdir()
    for i in range(files):
        (tree / f"dir{i % dirs:03d}" / f"file{i // dirs:05d}").write_bytes(os.urandom(file_size))
    with open(tree / "big", "wb") as f:
        for piece in xof_pieces(os.urandom(16), big):
            f.write(piece)
    return files * file_size + big


# --------------------------------------------------------------------------------------------
# Running one import


@dataclass
class Outcome:
    seconds: float
    peak_rss_mib: float
    stdout: bytes
    terminal: bytes  # what stderr showed (the progress bar and the log), or its plain text

    def summary(self) -> tuple[int, int, int] | None:
        """(blobs uploaded, bytes uploaded, blobs already present), from the importer's log."""
        match = SUMMARY.search(self.terminal)
        return None if match is None else (int(match[1]), int(match[2]), int(match[3]))

    def progress_bar_frames(self) -> int:
        """How many times a bar was redrawn: tqdm rewrites its line after a carriage return."""
        return self.terminal.count(b"\r")


def _drain(fd: int, sink: bytearray) -> None:
    while True:
        try:
            data = os.read(fd, 65536)
        except OSError:  # EIO: every writer of the pty's other end has gone
            return
        if not data:
            return
        sink += data


def _terminal() -> tuple[int, int]:
    """A pseudo-terminal pair with a size set, so that the bar has a width to fill."""
    controller, terminal = pty.openpty()
    rows, cols = TERMINAL_SIZE
    fcntl.ioctl(terminal, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))
    return controller, terminal


def run_import(address: str, tree: pathlib.Path, *, on_pty: bool) -> Outcome:
    """`castore import` of `tree`, stdout captured, stderr on a pty or a pipe; timed."""
    argv = castore("import", "--store", address, str(tree))
    captured = bytearray()
    controller = terminal = -1
    if on_pty:
        controller, terminal = _terminal()
    start = time.perf_counter()
    proc = subprocess.Popen(
        argv,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=terminal if on_pty else subprocess.PIPE,
        cwd=ROOT,
    )
    if on_pty:
        os.close(terminal)
        reader = threading.Thread(target=_drain, args=(controller, captured), daemon=True)
    else:
        assert proc.stderr is not None
        reader = threading.Thread(target=_drain, args=(proc.stderr.fileno(), captured), daemon=True)
    reader.start()
    _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.perf_counter() - start
    proc.returncode = os.waitstatus_to_exitcode(status)
    reader.join()
    assert proc.stdout is not None
    stdout = proc.stdout.read()
    proc.stdout.close()
    if proc.stderr is not None:
        proc.stderr.close()
    if on_pty:
        os.close(controller)
    if proc.returncode != 0:
        raise RuntimeError(
            f"castore import exited with {proc.returncode}:\n{captured.decode(errors='replace')}"
        )
    return Outcome(seconds, usage.ru_maxrss / 1024, stdout, bytes(captured))


# --------------------------------------------------------------------------------------------
# Runs and the report


def one_run(
    work: pathlib.Path, tree: pathlib.Path, args: argparse.Namespace
) -> tuple[Outcome, Outcome, Outcome]:
    """A fresh server on an empty store; the tree imported twice, and an empty directory once
    (the fixed cost of an import: interpreter start, imports, connecting)."""
    work.mkdir()
    (work / "empty").mkdir()
    with castore_server(work) as address:
        if args.drop_caches:
            drop_caches()
        first = run_import(address, tree, on_pty=not args.no_pty)
        second = run_import(address, tree, on_pty=not args.no_pty)
        empty = run_import(address, work / "empty", on_pty=False)
    lines = first.stdout.decode().splitlines()
    if len(lines) != 1 or not lines[0].startswith("/nix/store/"):
        raise RuntimeError(f"castore import printed {first.stdout!r}, not one store path")
    if second.stdout != first.stdout:
        raise RuntimeError(f"the second import printed {second.stdout!r}, not {first.stdout!r}")
    return first, second, empty


def record(
    table: Table, first: Outcome, second: Outcome, empty: Outcome, files: int, size: int
) -> None:
    table.add("first import", "seconds", first.seconds)
    table.add("first import", "MB/s", size / first.seconds / 1e6)
    table.add("first import", "files/s", files / first.seconds)
    table.add("first import", "peak RSS (MiB)", first.peak_rss_mib)
    table.add("second import", "seconds", second.seconds)
    table.add("second import", "MB/s", size / second.seconds / 1e6)
    table.add("second import", "files/s", files / second.seconds)
    table.add("second import", "peak RSS (MiB)", second.peak_rss_mib)
    table.add("empty directory (fixed cost)", "seconds", empty.seconds)
    table.add("empty directory (fixed cost)", "peak RSS (MiB)", empty.peak_rss_mib)
    table.add("second / first", "seconds", second.seconds / first.seconds)
    net = (second.seconds - empty.seconds) / (first.seconds - empty.seconds)
    table.add("second / first, fixed cost removed", "seconds", net)


def last_bar(terminal: bytes) -> str:
    """The last progress-bar frame that was drawn, without terminal control sequences."""
    frames = [ANSI.sub(b"", f).strip() for f in terminal.split(b"\r")]
    frames = [f.split(b"]", 1)[0] + b"]" for f in frames if b"%|" in f]
    return frames[-1].decode(errors="replace") if frames else ""


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--small-files", type=int, default=10_000)
    parser.add_argument("--dirs", type=int, default=100)
    parser.add_argument("--file-kib", type=int, default=4)
    parser.add_argument("--big-mib", type=int, default=1024)
    parser.add_argument("--runs", type=int, default=1, help="fresh server and store each run")
    parser.add_argument("--no-pty", action="store_true", help="stderr to a pipe: no progress bar")
    parser.add_argument(
        "--drop-caches", action="store_true", help="empty the page cache before each first import"
    )
    parser.add_argument("--pty-log", type=pathlib.Path, help="keep the first run's terminal here")
    parser.add_argument(
        "--json", type=pathlib.Path, default=ROOT / "bench/results/import_bench.json"
    )
    return parser.parse_args()


def main() -> int:
    args = parse_args()
    files = args.small_files + 1
    table = Table(
        f"castore import: {args.small_files} files of {args.file_kib} KiB in {args.dirs} "
        f"directories + one {args.big_mib} MiB file; median of {args.runs} run(s)",
        {},
    )
    load_before = os.getloadavg()
    summaries = []
    bar = ""
    frames = 0
    with tempfile.TemporaryDirectory(prefix="castore-import-bench-") as tmp:
        tmp_path = pathlib.Path(tmp)
        tree = tmp_path / "tree"
        print(f"writing the tree under {tree} ...", flush=True)
        size = generate_tree(
            tree, args.small_files, args.dirs, args.file_kib * 1024, args.big_mib * MIB
        )
        for run in range(args.runs):
            first, second, empty = one_run(tmp_path / f"run{run}", tree, args)
            record(table, first, second, empty, files, size)
            summaries.append({"first": first.summary(), "second": second.summary()})
            if run == 0:
                bar, frames = last_bar(first.terminal), first.progress_bar_frames()
                if args.pty_log:
                    args.pty_log.write_bytes(first.terminal)
            print(f"run {run}: first {first.seconds:.2f} s, second {second.seconds:.2f} s")

    columns = ["seconds", "MB/s", "files/s", "peak RSS (MiB)"]
    table.print(columns, {"files/s": "0f", "peak RSS (MiB)": "1f"})
    ratio = table.median("second / first", "seconds")
    verdict = "met" if ratio < 0.2 else "NOT met"
    net = table.median("second / first, fixed cost removed", "seconds")
    print(f"second import / first import: {ratio:.3f} (target < 0.2: {verdict}); {net:.3f} net")
    uploaded_again = [s["second"][0] for s in summaries if s["second"] is not None]
    print(f"blobs uploaded by the second import: {uploaded_again or 'not reported'}")
    if not args.no_pty:
        print(f"progress bar: {frames} frames drawn; last: {bar!r}")
    table.write(
        args.json,
        args={k: str(v) if isinstance(v, pathlib.Path) else v for k, v in vars(args).items()},
        tree={"files": files, "bytes": size},
        uploads=summaries,
        second_over_first=ratio,
        second_over_first_net_of_fixed_cost=net,
        target_met=ratio < 0.2,
        progress_bar={"frames": frames, "last": bar} if not args.no_pty else None,
        cpus=os.cpu_count(),
        load_average_before=load_before,
        python=sys.version.split()[0],
        median_first_seconds=statistics.median(table.rows["first import"]["seconds"]),
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
