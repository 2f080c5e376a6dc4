"""Shared pieces of the benchmarks: a server on a file store, test content, mounts, timing."""

from __future__ import annotations

import contextlib
import json
import os
import pathlib
import signal
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

MIB = 1 << 20
BIG_NAME = "bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb-big"
TREE_NAME = "ssssssssssssssssssssssssssssssss-tree"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def xof_pieces(seed: bytes, size: int, piece: int = MIB) -> Iterator[bytes]:
    """Incompressible, reproducible bytes without holding them: BLAKE3 extendable output."""
    import blake3

    xof = blake3.blake3(seed)
    for offset in range(0, size, piece):
        yield xof.digest(length=min(piece, size - offset), seek=offset)


def log_tail(log: pathlib.Path, size: int = 2000) -> str:
    """The end of a log, for an error message: the benchmarks remove their directory on exit."""
    try:
        with open(log, "rb") as f:
            f.seek(max(0, f.seek(0, os.SEEK_END) - size))
            return f.read().decode(errors="replace").strip() or "(empty)"
    except OSError as exc:
        return f"(unreadable: {exc})"


@contextlib.contextmanager
def process(
    argv: list[str], ready: Callable[[], bool], log: pathlib.Path
) -> Iterator[subprocess.Popen[bytes]]:
    """Run argv until the block ends; wait for `ready()`; SIGTERM (then SIGKILL) on exit."""
    with open(log, "ab") as out:
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, cwd=ROOT)
    try:
        deadline = time.monotonic() + 60
        while not ready():
            if proc.poll() is not None:
                raise RuntimeError(
                    f"{argv[:4]} exited with {proc.returncode}; {log} ends: {log_tail(log)}"
                )
            if time.monotonic() > deadline:
                raise RuntimeError(f"{argv[:4]} not ready after 60 s; {log} ends: {log_tail(log)}")
            time.sleep(0.05)
        yield proc
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


# Interpreter flags for every castore command; bench/latency.py sets ["-P"] so that a snapshot
# of the code on PYTHONPATH, not the checkout in the working directory, is what runs.
CASTORE_FLAGS: list[str] = []


def castore(*args: str) -> list[str]:
    return [sys.executable, *CASTORE_FLAGS, "-m", "castore_fuse", *args]


def socket_ready(path: pathlib.Path) -> Callable[[], bool]:
    def ready() -> bool:
        if not path.exists():
            return False
        with socket.socket(socket.AF_UNIX) as s:
            try:
                s.connect(str(path))
            except OSError:
                return False
        return True

    return ready


def tcp_ready(port: int) -> Callable[[], bool]:
    def ready() -> bool:
        with socket.socket() as s:
            s.settimeout(1)
            try:
                s.connect(("127.0.0.1", port))
            except OSError:
                return False
        return True

    return ready


@contextlib.contextmanager
def castore_server(workdir: pathlib.Path) -> Iterator[str]:
    sock = workdir / "castore.sock"
    address = f"grpc+unix://{sock}"
    argv = castore("serve", "--store", f"file://{workdir}/store", "--listen", address)
    with process(argv, socket_ready(sock), workdir / "serve.log"):
        yield address


@contextlib.contextmanager
def castore_mount(
    address: str,
    mountpoint: pathlib.Path,
    log: pathlib.Path,
    extra_args: Sequence[str] = (),
) -> Iterator[subprocess.Popen[bytes]]:
    """`castore mount --list-root`, plus `extra_args`, until the block ends."""
    mountpoint.mkdir(parents=True, exist_ok=True)
    argv = castore("mount", "--store", address, "--list-root", *extra_args, str(mountpoint))
    try:
        with process(argv, lambda: os.path.ismount(mountpoint), log) as proc:
            yield proc
    finally:
        # Not os.path.ismount: it says False for a dead FUSE mount (ENOTCONN), which most
        # needs removing.
        if str(mountpoint) in pathlib.Path("/proc/self/mounts").read_text():
            subprocess.run(["fusermount3", "-u", "-z", str(mountpoint)], check=False)


def populate(address: str, big_size: int, files: int, dirs: int, file_size: int) -> None:
    """One large random file and a tree of `files` small files spread over `dirs` directories."""
    from castore_client.connect import open_services
    from castore_client.digest import B3Digest
    from castore_client.directory import Directory, DirectoryNode, FileNode
    from castore_client.pathinfo import NarInfo, PathInfo

    with open_services(address, timeout=600) as s:
        big = s.blobs.put(xof_pieces(b"big", big_size))
        s.path_infos.put(
            PathInfo(node=FileNode(BIG_NAME.encode(), big, big_size), narinfo=NarInfo(0, bytes(32)))
        )
        subdirs = []
        per_dir = files // dirs
        for d in range(dirs):
            nodes = []
            for f in range(per_dir):
                data = next(xof_pieces(b"small %d %d" % (d, f), file_size, file_size))
                digest = s.blobs.put([data])
                nodes.append(FileNode(b"file%04d" % f, digest, file_size))
            subdirs.append(Directory.of(nodes))
        top = Directory.of(
            DirectoryNode(b"dir%03d" % d, sub.digest, sub.size()) for d, sub in enumerate(subdirs)
        )
        root = s.directories.put([*subdirs, top])
        assert root == top.digest
        node = DirectoryNode(TREE_NAME.encode(), top.digest, top.size())
        s.path_infos.put(PathInfo(node=node, narinfo=NarInfo(0, bytes(32))))
        _ = B3Digest


def drop_caches() -> bool:
    """Empty the kernel's page cache so that a 'cold' read is cold; needs root."""
    try:
        os.sync()
        pathlib.Path("/proc/sys/vm/drop_caches").write_text("3\n")
        return True
    except OSError:
        return False


def sequential_read(path: pathlib.Path, block: int = MIB) -> float:
    """Seconds to read the whole file with `block`-sized reads."""
    start = time.perf_counter()
    fd = os.open(path, os.O_RDONLY)
    try:
        while os.read(fd, block):
            pass
    finally:
        os.close(fd)
    return time.perf_counter() - start


def random_reads(path: pathlib.Path, count: int, size: int = 4096, seed: int = 1) -> float:
    """Seconds for `count` reads of `size` bytes at random offsets."""
    import random

    rng = random.Random(seed)
    length = path.stat().st_size
    offsets = [rng.randrange(0, length - size) for _ in range(count)]
    fd = os.open(path, os.O_RDONLY)
    try:
        start = time.perf_counter()
        for offset in offsets:
            os.pread(fd, size, offset)
        return time.perf_counter() - start
    finally:
        os.close(fd)


def first_byte(path: pathlib.Path) -> float:
    start = time.perf_counter()
    with open(path, "rb") as f:
        f.read(1)
    return time.perf_counter() - start


def shell_seconds(command: str) -> float:
    start = time.perf_counter()
    subprocess.run(command, shell=True, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - start


def peak_rss_mib(pid: int) -> float:
    for line in pathlib.Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


@dataclass
class Table:
    """Rows of medians: printed as a table, written as JSON with every sample."""

    title: str
    rows: dict[str, dict[str, list[float]]]

    def add(self, row: str, column: str, value: float) -> None:
        self.rows.setdefault(row, {}).setdefault(column, []).append(value)

    def median(self, row: str, column: str) -> float:
        return statistics.median(self.rows[row][column])

    def print(self, columns: list[str], units: dict[str, str]) -> None:
        print(self.title)
        header = f"{'':<34}" + "".join(f"{c:>16}" for c in columns)
        print(header)
        for row, values in self.rows.items():
            cells = "".join(
                f"{statistics.median(values[c]):>16.{units.get(c, '2f')}}"
                if c in values
                else f"{'-':>16}"
                for c in columns
            )
            print(f"{row:<34}{cells}")

    def write(self, path: pathlib.Path, **extra: object) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        medians = {
            r: {c: statistics.median(v) for c, v in cols.items()} for r, cols in self.rows.items()
        }
        path.write_text(
            json.dumps(
                {"title": self.title, "medians": medians, "samples": self.rows, **extra}, indent=2
            )
        )
        print(f"wrote {path}")
