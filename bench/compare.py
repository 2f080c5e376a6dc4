#!/usr/bin/env python3
"""castore mount next to sshfs and local disk, on the same bytes, in one run.

Sets up the same content three ways and measures each the same way:

  castore  `castore serve` on a file:// store (filled by `castore import`), `castore mount`
  sshfs    sshfs over loopback to an sshd started here on 127.0.0.1 with throwaway keys
  local    the directory on local disk that both of the above serve

plus a plain grpcio stream of the big file's size (bench/blob_transfer.py's ceiling roles) as
the transport ceiling. For each: cold and warm sequential read of the big file, random 4 KiB
reads, time to first byte of a small file, `find | wc -l` and `tar cf - | wc -c` of the
small-file tree, and the peak RSS of the filesystem process while it reads the big file.

Every cold measurement uses a fresh mount (castore: a fresh `castore mount` process, and with
--castore-fresh-server a fresh `castore serve` too; sshfs: a fresh ssh connection and
sftp-server; one sshd and by default one castore server serve the whole run), and the
kernel's page cache is dropped (echo 3 > /proc/sys/vm/drop_caches, root only) right before
every cold measurement of every setup, so the servers read their disks too.
Median of --runs; prints a table with the ratios castore/sshfs and castore/local, and each
target as met / not met; writes JSON. Everything started here is stopped and the temporary
directory removed on every exit path.

Needs root, fusermount3, sshfs and sshd (Debian: fuse3 sshfs openssh-server).

    bench/compare [--big-mib 1024] [--files 10000] [--dirs 100] [--runs 3]

With --rtt-ms N it measures what users meet instead (bench/latency.py): the servers behind a
delay relay of N ms round trip (bench/relay.py) on CPU 1, the clients on CPU 0, and workloads
on real files: a cold read of a 256 MiB file, tar, grep -r and find of a copied header tree,
and Python importing packages kept on the mount; with each mount's CPU seconds, the physical
limit, and issue 13's targets for that round trip.

    bench/compare --rtt-ms 20 [--runs 3] [--tree-source /usr/include/linux]
                  [--app-packages numpy,trio]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import pathlib
import platform
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import blob_transfer
from harness import (
    MIB,
    ROOT,
    castore,
    castore_mount,
    drop_caches,
    first_byte,
    free_port,
    peak_rss_mib,
    process,
    random_reads,
    sequential_read,
    socket_ready,
    tcp_ready,
    xof_pieces,
)

SETUPS = ("castore", "sshfs", "local")
CEILING = "grpcio"
SSHD = "/usr/sbin/sshd"
SFTP_SERVER = "/usr/lib/openssh/sftp-server"
TTFB_FILES = 20  # time to first byte: the median over this many small files, one per directory


@dataclass(frozen=True)
class Metric:
    key: str
    label: str
    unit: str
    higher_is_better: bool
    fmt: str


METRICS = (
    Metric("seq_cold", "sequential read cold", "MB/s", True, ".0f"),
    Metric("seq_warm", "sequential read warm", "MB/s", True, ".0f"),
    Metric("random_4k", "random 4 KiB reads cold", "reads/s", True, ".0f"),
    Metric("ttfb", "time to first byte, small file", "ms", False, ".2f"),
    Metric("find", "find | wc -l cold", "ms", False, ".0f"),
    Metric("tar", "tar cf - | wc -c cold", "s", False, ".2f"),
    Metric("peak_rss", "fs peak RSS reading the big file", "MiB", False, ".0f"),
)
METRIC = {m.key: m for m in METRICS}

# What each setup is measured on; every other (setup, metric) pair is not applicable.
NOT_APPLICABLE = {
    ("local", "peak_rss"): "no filesystem process: the kernel serves local disk",
}
CEILING_METRICS = ("seq_cold",)


@dataclass(frozen=True)
class Target:
    text: str
    setup: str
    metric: str
    against: str | None  # None: compare the castore value itself with the threshold
    op: str  # ">=", "<=", "<"
    threshold: float
    unit: str  # how the compared value is shown: "x" for a ratio, "%" for a share, else a unit


TARGETS = (
    Target("cold sequential read >= 3x sshfs", "castore", "seq_cold", "sshfs", ">=", 3.0, "x"),
    Target(
        "cold sequential read >= 50% of the grpcio ceiling",
        "castore",
        "seq_cold",
        CEILING,
        ">=",
        0.5,
        "%",
    ),
    Target(
        "warm re-read >= 90% of the local page-cache read",
        "castore",
        "seq_warm",
        "local",
        ">=",
        0.9,
        "%",
    ),
    Target(
        "tar c of the small-file tree, cold, <= 0.5x sshfs's time",
        "castore",
        "tar",
        "sshfs",
        "<=",
        0.5,
        "x",
    ),
    Target("find no slower than sshfs", "castore", "find", "sshfs", "<=", 1.0, "x"),
    Target("random 4 KiB reads >= 2x sshfs", "castore", "random_4k", "sshfs", ">=", 2.0, "x"),
    Target("time to first byte of a small file < 5 ms", "castore", "ttfb", None, "<", 5.0, "ms"),
    Target(
        "fs peak RSS reading the big file < 300 MB",
        "castore",
        "peak_rss",
        None,
        "<",
        300e6 / MIB,
        "MiB",
    ),
)


def log(message: str) -> None:
    print(f"[compare {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------------------------
# Cleanup on every exit path


class Interrupted(BaseException):
    """SIGTERM or SIGHUP, turned into an exception so that every `with` block unwinds."""


def install_signal_handlers() -> None:
    """The first SIGINT/SIGTERM/SIGHUP unwinds; later ones are ignored so cleanup finishes."""

    def handler(signum: int, frame: object) -> None:
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(sig, signal.SIG_IGN)
        print(
            f"\n[compare] {signal.Signals(signum).name}: cleaning up, please wait",
            file=sys.stderr,
            flush=True,
        )
        raise Interrupted(signum)

    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, handler)


def mounts_under(path: pathlib.Path) -> list[str]:
    """Mount points at or below `path`, from /proc/self/mounts.

    Not os.path.ismount: a FUSE mount whose process died fails lstat (ENOTCONN), and ismount
    then says False although the mount is still there.
    """
    prefix = str(path)
    found = []
    for line in pathlib.Path("/proc/self/mounts").read_text().splitlines():
        fields = line.split()
        if len(fields) < 2:
            continue
        point = fields[1].replace("\\040", " ").replace("\\011", "\t").replace("\\134", "\\")
        if point == prefix or point.startswith(prefix + "/"):
            found.append(point)
    return found


def unmount(point: str | pathlib.Path) -> None:
    subprocess.run(
        ["fusermount3", "-u", "-z", str(point)],
        check=False,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


@contextlib.contextmanager
def work_directory(parent: str | None, keep: bool) -> Iterator[pathlib.Path]:
    work = pathlib.Path(tempfile.mkdtemp(prefix="castore-compare-", dir=parent)).resolve()
    try:
        yield work
    finally:
        for point in reversed(mounts_under(work)):
            unmount(point)
        left = mounts_under(work)
        if left:
            log(f"NOT removing {work}: still mounted: {', '.join(left)}")
        elif keep:
            log(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


@contextlib.contextmanager
def privsep_directory() -> Iterator[None]:
    """sshd refuses to start without /run/sshd (its privilege separation directory)."""
    path = pathlib.Path("/run/sshd")
    created = False
    if not path.is_dir():
        path.mkdir(mode=0o755, parents=True)
        created = True
    try:
        yield
    finally:
        if created:
            with contextlib.suppress(OSError):
                path.rmdir()


# --------------------------------------------------------------------------------------------
# Content: generated once on local disk; castore imports it, sshfs serves it


@dataclass
class Content:
    data: pathlib.Path  # the directory that local disk reads and sshfs serves
    big_name: str  # names under `data`, and under the castore mount's root
    tree_name: str
    big_size: int
    dirs: int
    per_dir: int
    file_size: int

    @property
    def entries(self) -> int:
        """What `find TREE` prints: the tree, its directories and its files."""
        return 1 + self.dirs + self.dirs * self.per_dir

    def small(self, d: int, f: int) -> str:
        return f"{self.tree_name}/dir{d:03d}/file{f:04d}"


def small_bytes(d: int, f: int, size: int) -> bytes:
    return next(xof_pieces(b"small %d %d" % (d, f), size, size))


def generate(data: pathlib.Path, big_size: int, dirs: int, per_dir: int, file_size: int) -> None:
    data.mkdir()
    with open(data / "big", "wb") as out:
        for piece in xof_pieces(b"big", big_size):
            out.write(piece)
    tree = data / "tree"
    for d in range(dirs):
        sub = tree / f"dir{d:03d}"
        sub.mkdir(parents=True)
        for f in range(per_dir):
            (sub / f"file{f:04d}").write_bytes(small_bytes(d, f, file_size))


# --------------------------------------------------------------------------------------------
# The three setups and the ceiling


@contextlib.contextmanager
def castore_serve(
    work: pathlib.Path, transport: str, prefix: tuple[str, ...] = ()
) -> Iterator[str]:
    """`castore serve` on the file:// store under `work`, on 127.0.0.1 or a unix socket;
    `prefix` goes before the command (--rtt-ms: taskset, to pin it to the server's CPU)."""
    if transport == "tcp":
        port = free_port()
        address = f"grpc+http://127.0.0.1:{port}"
        ready = tcp_ready(port)
    else:
        sock = work / "castore.sock"
        sock.unlink(missing_ok=True)
        address = f"grpc+unix://{sock}"
        ready = socket_ready(sock)
    argv = [*prefix, *castore("serve", "--store", f"file://{work}/store", "--listen", address)]
    with process(argv, ready, work / "serve.log"):
        yield address


def ssh_client_pid(client_key: pathlib.Path) -> int | None:
    """The ssh process an sshfs mount runs (sshfs double-forks it, so it is not a child)."""
    wanted = f"-oIdentityFile={client_key}".encode()
    for cmdline in pathlib.Path("/proc").glob("[0-9]*/cmdline"):
        with contextlib.suppress(OSError):
            argv = cmdline.read_bytes().split(b"\0")
            if argv and argv[0].endswith(b"ssh") and wanted in argv:
                return int(cmdline.parent.name)
    return None


@dataclass
class Sshd:
    port: int
    client_key: pathlib.Path


@contextlib.contextmanager
def sshd(work: pathlib.Path, prefix: tuple[str, ...] = ()) -> Iterator[Sshd]:
    """sshd -D on 127.0.0.1 only, root login by a throwaway key only; `prefix` goes before
    the command (taskset: its sftp-servers inherit the pinning)."""
    ssh = work / "ssh"
    ssh.mkdir(mode=0o700)
    for name in ("host_key", "client_key"):
        subprocess.run(
            [
                "ssh-keygen",
                "-q",
                "-t",
                "ed25519",
                "-N",
                "",
                "-C",
                f"castore-compare {name}",
                "-f",
                str(ssh / name),
            ],
            check=True,
        )
    shutil.copy(ssh / "client_key.pub", ssh / "authorized_keys")
    sftp = SFTP_SERVER if os.access(SFTP_SERVER, os.X_OK) else "internal-sftp"
    config = ssh / "sshd_config"
    config.write_text(
        f"""\
ListenAddress 127.0.0.1
HostKey "{ssh / "host_key"}"
PidFile none
PermitRootLogin prohibit-password
PubkeyAuthentication yes
AuthorizedKeysFile "{ssh / "authorized_keys"}"
PasswordAuthentication no
KbdInteractiveAuthentication no
AuthenticationMethods publickey
AllowUsers root
StrictModes no
UsePAM no
X11Forwarding no
AllowTcpForwarding no
PrintMotd no
Subsystem sftp {sftp}
LogLevel INFO
"""
    )
    port = free_port()
    with (
        privsep_directory(),
        process(
            [*prefix, SSHD, "-D", "-e", "-f", str(config), "-p", str(port)],
            tcp_ready(port),
            work / "sshd.log",
        ),
    ):
        yield Sshd(port, ssh / "client_key")


@contextlib.contextmanager
def sshfs_mount(
    server: Sshd, source: pathlib.Path, mountpoint: pathlib.Path, log_path: pathlib.Path
) -> Iterator[subprocess.Popen[bytes]]:
    """sshfs -f (foreground, so the pid is the filesystem's), read-only, default options."""
    mountpoint.mkdir(parents=True, exist_ok=True)
    options = [
        "ro",
        f"IdentityFile={server.client_key}",
        "StrictHostKeyChecking=no",
        "UserKnownHostsFile=/dev/null",
        "BatchMode=yes",
        "LogLevel=ERROR",
        f"port={server.port}",
    ]
    argv = ["sshfs", "-f", "-o", ",".join(options), f"root@127.0.0.1:{source}", str(mountpoint)]
    try:
        with process(argv, lambda: os.path.ismount(mountpoint), log_path) as proc:
            yield proc
    finally:
        if str(mountpoint) in mounts_under(mountpoint):
            unmount(mountpoint)


@contextlib.contextmanager
def grpcio_ceiling(size_mib: int) -> Iterator[Callable[[], dict[str, float]]]:
    """bench/blob_transfer.py's plain grpcio server; each call downloads in a fresh client."""
    port = free_port()
    common = ["--size-mib", str(size_mib)]
    server = [sys.executable, blob_transfer.__file__, "--role", "ceiling-server"]
    with blob_transfer.background(*server, "--port", str(port), *common, ready="ready"):

        def download() -> dict[str, float]:
            result = blob_transfer.run_child(
                "--role",
                "ceiling-client",
                "--port",
                str(port),
                "--direction",
                "download",
                *common,
            )
            return {k: float(v) for k, v in result.items()}  # type: ignore[arg-type]

        yield download


# --------------------------------------------------------------------------------------------
# Measuring


def timed_shell(command: str) -> tuple[float, str]:
    """Seconds for a pipeline (failing if any part fails), and what it printed."""
    start = time.perf_counter()
    done = subprocess.run(
        ["bash", "-c", f"set -o pipefail; {command}"],
        check=True,
        stdout=subprocess.PIPE,
        text=True,
    )
    return time.perf_counter() - start, done.stdout.strip()


@dataclass
class Results:
    samples: dict[str, dict[str, list[float]]] = field(
        default_factory=lambda: {s: {} for s in (*SETUPS, CEILING)}
    )
    extra: dict[str, dict[str, list[float]]] = field(
        default_factory=lambda: {s: {} for s in (*SETUPS, CEILING)}
    )
    checks: dict[str, dict[str, object]] = field(default_factory=lambda: {s: {} for s in SETUPS})
    dropped: list[bool] = field(default_factory=list)

    def add(self, setup: str, metric: str, value: float) -> None:
        self.samples[setup].setdefault(metric, []).append(value)

    def add_extra(self, setup: str, name: str, value: float) -> None:
        self.extra[setup].setdefault(name, []).append(value)

    def median(self, setup: str, metric: str) -> float | None:
        values = self.samples.get(setup, {}).get(metric)
        return statistics.median(values) if values else None

    def ratio(self, metric: str, a: str, b: str) -> float | None:
        x, y = self.median(a, metric), self.median(b, metric)
        if x is None or y is None or y == 0:
            return None
        return x / y


class Bench:
    def __init__(self, args: argparse.Namespace, work: pathlib.Path, content: Content) -> None:
        self.args = args
        self.work = work
        self.content = content
        self.results = Results()
        self.sshd: Sshd | None = None
        self.castore_address: str | None = None  # None: a fresh server for each mount
        self.castore_mnt = work / "mnt-castore"
        self.sshfs_mnt = work / "mnt-sshfs"

    # -- fresh instances of each setup: (root directory holding the content, fs pid or None)

    @contextlib.contextmanager
    def fresh(self, setup: str, tag: str) -> Iterator[tuple[pathlib.Path, int | None]]:
        if setup == "castore":
            with contextlib.ExitStack() as stack:
                address = self.castore_address or stack.enter_context(
                    castore_serve(self.work, self.args.castore_transport)
                )
                log_path = self.work / f"mount-{tag}.log"
                proc = stack.enter_context(castore_mount(address, self.castore_mnt, log_path))
                yield self.castore_mnt, proc.pid
        elif setup == "sshfs":
            assert self.sshd is not None
            with sshfs_mount(
                self.sshd, self.content.data, self.sshfs_mnt, self.work / f"sshfs-{tag}.log"
            ) as proc:
                yield self.sshfs_mnt, proc.pid
        else:
            yield self.content.data, None

    def cold(self) -> None:
        """Empty the kernel's page cache right before a cold measurement."""
        self.results.dropped.append(drop_caches())

    # -- the measurements

    def sequential(self, setup: str, run: int) -> None:
        c = self.content
        with self.fresh(setup, f"seq-{run}") as (root, pid):
            big = root / c.big_name
            size = big.stat().st_size
            if size != c.big_size:
                raise RuntimeError(f"{setup}: {big} has {size} bytes, not {c.big_size}")
            self.cold()
            self.results.add(setup, "seq_cold", c.big_size / sequential_read(big) / 1e6)
            self.results.add(setup, "seq_warm", c.big_size / sequential_read(big) / 1e6)
            if pid is not None:
                self.results.add(setup, "peak_rss", peak_rss_mib(pid))
                if setup == "sshfs" and self.sshd is not None:
                    ssh = ssh_client_pid(self.sshd.client_key)
                    if ssh is not None:
                        self.results.add_extra(
                            setup, "ssh client peak RSS (MiB)", peak_rss_mib(ssh)
                        )
            if run == 0:
                self.spot_check(setup, root)

    def spot_check(self, setup: str, root: pathlib.Path) -> None:
        """The setups serve the same bytes: the big file's first and last MiB, some small files."""
        import blake3

        c = self.content
        xof = blake3.blake3(b"big")  # as xof_pieces(b"big", ...) made it
        span = min(MIB, c.big_size)
        with open(root / c.big_name, "rb") as f:
            for what, offset in (("first", 0), ("last", c.big_size - span)):
                f.seek(offset)
                if f.read(span) != xof.digest(length=span, seek=offset):
                    raise RuntimeError(f"{setup}: the big file's {what} MiB differs")
        for d, f_ in ((0, 0), (c.dirs - 1, c.per_dir - 1)):
            if (root / c.small(d, f_)).read_bytes() != small_bytes(d, f_, c.file_size):
                raise RuntimeError(f"{setup}: {c.small(d, f_)} differs")
        self.results.checks[setup]["content spot check"] = "ok"

    def small_and_random(self, setup: str, run: int) -> None:
        c, args = self.content, self.args
        with self.fresh(setup, f"small-{run}") as (root, _):
            self.cold()
            ttfb = [first_byte(root / c.small(d, 0)) for d in range(min(TTFB_FILES, c.dirs))]
            self.results.add(setup, "ttfb", statistics.median(ttfb) * 1e3)
            seconds = random_reads(root / c.big_name, args.random_reads)
            self.results.add(setup, "random_4k", args.random_reads / seconds)

    def find(self, setup: str, run: int) -> None:
        c = self.content
        with self.fresh(setup, f"find-{run}") as (root, _):
            self.cold()
            seconds, out = timed_shell(f"find {shlex.quote(str(root / c.tree_name))} | wc -l")
            self.results.add(setup, "find", seconds * 1e3)
            if int(out) != c.entries:
                raise RuntimeError(f"{setup}: find printed {out} entries, not {c.entries}")
            self.results.checks[setup]["find entries"] = int(out)

    def tar(self, setup: str, run: int) -> None:
        c = self.content
        with self.fresh(setup, f"tar-{run}") as (root, _):
            self.cold()
            seconds, out = timed_shell(
                f"tar cf - -C {shlex.quote(str(root))} {c.tree_name} | wc -c"
            )
            self.results.add(setup, "tar", seconds)
            self.results.checks[setup]["tar bytes"] = int(out)
            if int(out) < c.dirs * c.per_dir * c.file_size:
                raise RuntimeError(f"{setup}: tar wrote only {out} bytes")

    def run(self) -> None:
        args = self.args
        with contextlib.ExitStack() as stack:
            self.sshd = stack.enter_context(sshd(self.work))
            log(f"sshd on 127.0.0.1:{self.sshd.port}")
            if not args.castore_fresh_server:
                self.castore_address = stack.enter_context(
                    castore_serve(self.work, args.castore_transport)
                )
                log(f"castore serve on {self.castore_address}")
            ceiling = stack.enter_context(grpcio_ceiling(args.big_mib))
            for run in range(args.runs):
                for setup in SETUPS:
                    log(f"run {run + 1}/{args.runs}: {setup}")
                    self.sequential(setup, run)
                    self.small_and_random(setup, run)
                    self.find(setup, run)
                    self.tar(setup, run)
                log(f"run {run + 1}/{args.runs}: grpcio ceiling")
                down = ceiling()
                self.results.add(CEILING, "seq_cold", self.content.big_size / down["seconds"] / 1e6)
                self.results.add_extra(CEILING, "client peak RSS (MiB)", down["rss_mib"])
        tar_sizes = {s: self.results.checks[s].get("tar bytes") for s in SETUPS}
        if len(set(tar_sizes.values())) != 1:
            log(f"note: tar wrote different byte counts: {tar_sizes}")


# --------------------------------------------------------------------------------------------
# Reporting


def fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def target_value(results: Results, t: Target) -> float | None:
    if t.against is None:
        return results.median(t.setup, t.metric)
    return results.ratio(t.metric, t.setup, t.against)


def target_met(value: float | None, t: Target) -> bool | None:
    if value is None:
        return None
    return {
        ">=": value >= t.threshold,
        "<=": value <= t.threshold,
        "<": value < t.threshold,
    }[t.op]


def show_target_value(value: float | None, t: Target) -> str:
    if value is None:
        return "not measured"
    if t.unit == "x":
        return f"{value:.2f}x"
    if t.unit == "%":
        return f"{value:.0%}"
    return f"{value:.2f} {t.unit}"


def print_report(args: argparse.Namespace, content: Content, results: Results) -> None:
    dropped = bool(results.dropped) and all(results.dropped)
    files = content.dirs * content.per_dir
    print(
        f"castore vs sshfs vs local disk: {args.big_mib} MiB file; {files} files of "
        f"{args.file_kib} KiB in {content.dirs} directories; median of {args.runs} run(s)"
    )
    if dropped:
        print(
            "page cache dropped (echo 3 > /proc/sys/vm/drop_caches) before every cold "
            "measurement of every setup; every cold FUSE measurement on a fresh mount"
        )
    else:
        print(
            "WARNING: the page cache could NOT be dropped (needs root): cold figures of local "
            "disk and the servers' disk reads are not cold"
        )
    server = "a fresh server per mount" if args.castore_fresh_server else "one server"
    transport = "127.0.0.1" if args.castore_transport == "tcp" else "a unix socket"
    print(f"castore over {transport} ({server}); sshfs over ssh on 127.0.0.1 (one sshd)")
    columns = [*SETUPS, CEILING, "castore/sshfs", "castore/local"]
    width = 38
    print(f"{'measurement':<{width}}" + "".join(f"{c:>14}" for c in columns))
    for m in METRICS:
        cells = [fmt(results.median(s, m.key), m.fmt) for s in (*SETUPS, CEILING)]
        cells += [
            fmt(results.ratio(m.key, "castore", other), ".2f") + "x" for other in ("sshfs", "local")
        ]
        cells = ["-" if c == "-x" else c for c in cells]
        print(f"{f'{m.label} ({m.unit})':<{width}}" + "".join(f"{c:>14}" for c in cells))
    print("castore/sshfs and castore/local are ratios of the medians: above 1 means castore has")
    print("the larger value (better for MB/s and reads/s, worse for ms, s and MiB).")
    if not is_full_size(args):
        print("(the targets are set for 1024 MiB, 10000 files in 100 directories, 3 runs)")
    print("targets:")
    for t in TARGETS:
        value = target_value(results, t)
        met = target_met(value, t)
        verdict = "met" if met else "not met"
        print(f"  {verdict:<8} {t.text}: {show_target_value(value, t)}")


def is_full_size(args: argparse.Namespace) -> bool:
    return (args.big_mib, args.files, args.dirs, args.file_kib, args.runs) == (
        1024,
        10_000,
        100,
        4,
        3,
    )


def tool_version(argv: list[str], prefix: str = "") -> str:
    """The first line of what argv prints that starts with `prefix`."""
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"unknown ({exc})"
    for line in (done.stdout + done.stderr).splitlines():
        if line.startswith(prefix):
            return line.removeprefix(prefix).strip() if prefix.endswith(" ") else line.strip()
    return "unknown"


def report_json(args: argparse.Namespace, content: Content, results: Results) -> dict[str, Any]:
    setups: dict[str, dict[str, object]] = {}
    for setup in (*SETUPS, CEILING):
        row: dict[str, object] = {}
        for m in METRICS:
            if setup == CEILING and m.key not in CEILING_METRICS:
                continue
            note = NOT_APPLICABLE.get((setup, m.key))
            row[m.key] = {
                "median": results.median(setup, m.key),
                "samples": results.samples[setup].get(m.key, []),
                **({"not_applicable": note} if note else {}),
            }
        setups[setup] = row
    targets = []
    for t in TARGETS:
        value = target_value(results, t)
        targets.append(
            {
                "target": t.text,
                "value": value,
                "compared": f"{t.setup}/{t.against}" if t.against else t.setup,
                "metric": t.metric,
                "op": t.op,
                "threshold": t.threshold,
                "met": target_met(value, t),
            }
        )
    return {
        "title": "castore vs sshfs vs local disk",
        "config": {
            "big_mib": args.big_mib,
            "files": content.dirs * content.per_dir,
            "dirs": content.dirs,
            "file_kib": args.file_kib,
            "random_reads": args.random_reads,
            "runs": args.runs,
            "castore_transport": args.castore_transport,
            "castore_fresh_server": args.castore_fresh_server,
            "full_size": is_full_size(args),
        },
        "page_cache_dropped_before_every_cold_measurement": bool(results.dropped)
        and all(results.dropped),
        "metrics": {
            m.key: {"label": m.label, "unit": m.unit, "higher_is_better": m.higher_is_better}
            for m in METRICS
        },
        "setups": setups,
        "ratios": {
            m.key: {
                "castore/sshfs": results.ratio(m.key, "castore", "sshfs"),
                "castore/local": results.ratio(m.key, "castore", "local"),
                **(
                    {"castore/grpcio": results.ratio(m.key, "castore", CEILING)}
                    if m.key in CEILING_METRICS
                    else {}
                ),
            }
            for m in METRICS
        },
        "targets": targets,
        "extra": {s: v for s, v in results.extra.items() if v},
        "checks": results.checks,
        "notes": [
            "Every setup serves the same bytes: generated once on local disk; castore imported "
            "them with `castore import`; sshfs serves that directory.",
            "Cold: a fresh mount (sshfs: a fresh ssh connection and sftp-server; castore: a "
            "fresh `castore mount`, and with castore_fresh_server a fresh `castore serve` too, "
            "else one server and one sshd serve the whole run) and the page cache dropped "
            "right before the measurement, for every setup.",
            "Warm: the same file read again right after the cold read, in the same mount.",
            "random_4k and ttfb are measured on a fresh mount after dropping the page cache.",
            "peak_rss: VmHWM of the filesystem process (castore mount; sshfs, without its ssh "
            "child, whose VmHWM is under extra) after the cold and warm read of the big file.",
            "grpcio: bench/blob_transfer.py's plain grpcio stream of the big file's size, "
            "1 MiB messages, in a fresh client process; the transport ceiling.",
        ],
        "environment": {
            "kernel": platform.release(),
            "machine": platform.machine(),
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "sshfs": tool_version(["sshfs", "--version"], "SSHFS"),
            "ssh": tool_version(["ssh", "-V"]),
            "ssh_cipher_preference": tool_version(["ssh", "-G", "127.0.0.1"], "ciphers "),
        },
    }


# --------------------------------------------------------------------------------------------


def check_prerequisites() -> list[str]:
    problems = []
    if os.geteuid() != 0:
        problems.append("run as root (sshd for a root key login, and drop_caches)")
    if not os.path.exists("/dev/fuse"):
        problems.append("/dev/fuse is missing")
    for tool, package in (
        ("fusermount3", "fuse3"),
        ("sshfs", "sshfs"),
        (SSHD, "openssh-server"),
        ("ssh-keygen", "openssh-client"),
        ("tar", "tar"),
        ("find", "findutils"),
    ):
        if shutil.which(tool) is None:
            problems.append(f"{tool} is missing (Debian package {package})")
    return problems


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--big-mib", type=int, help="size of the big file (default 1024; 256 with --rtt-ms)"
    )
    parser.add_argument("--files", type=int, default=10_000, help="small files in the tree")
    parser.add_argument("--dirs", type=int, default=100, help="directories they are spread over")
    parser.add_argument("--file-kib", type=int, default=4, help="size of each small file")
    parser.add_argument("--random-reads", type=int, default=2000, help="random 4 KiB reads")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument(
        "--castore-transport",
        choices=("tcp", "unix"),
        default="tcp",
        help="castore serve on 127.0.0.1 (default, as sshfs and the ceiling) or a unix socket",
    )
    parser.add_argument(
        "--castore-fresh-server",
        action="store_true",
        help="start a fresh `castore serve` for every mount, not one for the whole run",
    )
    parser.add_argument("--tmpdir", help="where to make the temporary directory")
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory")
    parser.add_argument("--json", type=pathlib.Path, help="default bench/results/compare.json")
    latency = parser.add_argument_group(
        "latency mode (--rtt-ms): servers behind a delay relay on CPU 1, clients on CPU 0, "
        "workloads on real files; see bench/latency.py"
    )
    latency.add_argument(
        "--rtt-ms",
        type=float,
        help="round trip to the servers, in ms (0: no relay, still pinned); not given: the "
        "loopback run on shared CPUs above",
    )
    latency.add_argument(
        "--tree-source",
        default="/usr/include/linux",
        help="the real tree to copy into the content (default /usr/include/linux)",
    )
    latency.add_argument(
        "--tree-files", type=int, default=0, help="copy only its first N files (default all)"
    )
    latency.add_argument(
        "--app-packages",
        default="numpy,trio",
        help="comma-separated, installed with pip install --target; the application start "
        "imports them (default numpy,trio: a C extension and a pure-Python package set)",
    )
    latency.add_argument(
        "--app-modules", help="comma-separated modules to import (default: --app-packages)"
    )
    latency.add_argument(
        "--code",
        help="measure the castore_client and castore_fuse in this directory (copied at the "
        "start; default: this checkout's), e.g. to run several round trips on one version",
    )
    args = parser.parse_args()
    if args.rtt_ms is not None:
        return latency_main(parser, args)
    if args.big_mib is None:
        args.big_mib = 1024
    if args.json is None:
        args.json = ROOT / "bench/results/compare.json"
    if args.files < args.dirs or args.dirs < 1 or args.runs < 1 or args.big_mib < 1:
        parser.error("need --runs >= 1, --big-mib >= 1 and --files >= --dirs >= 1")
    if args.random_reads < 1 or args.file_kib < 1:
        parser.error("need --random-reads >= 1 and --file-kib >= 1")
    parent = pathlib.Path(args.tmpdir or tempfile.gettempdir()).resolve()
    if any(ch.isspace() for ch in str(parent)):
        parser.error(f"--tmpdir/TMPDIR {parent}: whitespace in it cannot pass through ssh options")
    problems = check_prerequisites()
    if problems:
        for problem in problems:
            print(f"compare: {problem}", file=sys.stderr)
        return 2

    install_signal_handlers()
    try:
        with work_directory(args.tmpdir, args.keep) as work:
            log(f"working in {work}")
            content, results = prepare_and_run(args, work)
    except Interrupted as exc:
        return 128 + int(exc.args[0])
    except KeyboardInterrupt:
        return 130
    # The JSON first: a closed stdout (compare | head) must not lose the results.
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(
        json.dumps(report_json(args, content, results), indent=2, allow_nan=False) + "\n"
    )
    print_report(args, content, results)
    print(f"wrote {args.json}")
    return 0


def latency_main(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    if args.big_mib is None:
        args.big_mib = 256
    if args.json is None:
        args.json = ROOT / "bench/results/compare-latency.json"
    if args.rtt_ms < 0 or args.runs < 1 or args.big_mib < 1 or args.tree_files < 0:
        parser.error("need --rtt-ms >= 0, --runs >= 1, --big-mib >= 1 and --tree-files >= 0")
    if args.castore_transport != "tcp" or args.castore_fresh_server:
        parser.error(
            "--rtt-ms relays castore serve's TCP port: no --castore-transport unix "
            "or --castore-fresh-server"
        )
    args.app_packages = [p for p in args.app_packages.split(",") if p]
    args.app_modules = [
        m for m in (args.app_modules or ",".join(args.app_packages)).split(",") if m
    ]
    if not args.app_packages or not args.app_modules:
        parser.error("--app-packages and --app-modules need at least one name")
    parent = pathlib.Path(args.tmpdir or tempfile.gettempdir()).resolve()
    if any(ch.isspace() for ch in str(parent)):
        parser.error(f"--tmpdir/TMPDIR {parent}: whitespace in it cannot pass through ssh options")
    import latency

    return latency.main(args)


def prepare_and_run(args: argparse.Namespace, work: pathlib.Path) -> tuple[Content, Results]:
    per_dir = args.files // args.dirs
    big_size = args.big_mib * MIB
    file_size = args.file_kib * 1024
    data = work / "data"
    start = time.monotonic()
    log(f"generating {args.big_mib} MiB + {per_dir * args.dirs} files on local disk")
    generate(data, big_size, args.dirs, per_dir, file_size)
    log(f"importing into castore (file:// store) after {time.monotonic() - start:.1f} s")
    start = time.monotonic()
    with castore_serve(work, args.castore_transport) as address:
        done = subprocess.run(
            castore(
                "import", "--store", address, "--no-progress", str(data / "big"), str(data / "tree")
            ),
            check=True,
            stdout=subprocess.PIPE,
            text=True,
            cwd=ROOT,
        )
    big_path, tree_path = done.stdout.split()
    log(f"imported in {time.monotonic() - start:.1f} s: {big_path} {tree_path}")
    # Local disk and sshfs use the names the mount shows, so all three read the same paths.
    big_name, tree_name = pathlib.PurePath(big_path).name, pathlib.PurePath(tree_path).name
    (data / "big").rename(data / big_name)
    (data / "tree").rename(data / tree_name)
    content = Content(data, big_name, tree_name, big_size, args.dirs, per_dir, file_size)
    bench = Bench(args, work, content)
    bench.run()
    return content, bench.results


if __name__ == "__main__":
    sys.modules.setdefault("compare", sys.modules[__name__])  # bench/latency.py imports it
    raise SystemExit(main())
