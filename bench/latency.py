"""bench/compare --rtt-ms N: castore vs sshfs vs local disk with the servers behind a round trip.

Users reach a store over a LAN or a WAN, from a machine whose CPU is not the server's. So here
the servers (castore serve, sshd and its sftp-servers) and a delay relay in front of each
(bench/relay.py, N/2 ms each way; none at N = 0) run on CPU 1, and castore mount, sshfs with
its ssh, the readers and this script on CPU 0. The content is real: a tree copied from this
machine (default /usr/include/linux), a big file, and Python packages installed with
`pip install --target`, whose import is the application cold start. For each workload: the
median time of each setup, the mount's CPU seconds (utime + stime from /proc/PID/stat), its
peak RSS, and the physical limit: the bytes the workload must move at the link rate measured
through the relay alone, plus the round trips no client of the castore protocol can avoid.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import pathlib
import platform
import shlex
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import compare
import harness
import relay
from harness import (
    MIB,
    ROOT,
    castore,
    castore_mount,
    drop_caches,
    peak_rss_mib,
    sequential_read,
    xof_pieces,
)

SERVER_CPU, CLIENT_CPU = 1, 0
PIN = ("taskset", "-c", str(SERVER_CPU))
SETUPS = compare.SETUPS
GREP_NEEDLE = "castore-no-such-string"
CLK_TCK = os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class Workload:
    key: str
    label: str
    unit: str
    higher_is_better: bool
    fmt: str
    round_trips: int  # that no client of the castore protocol can avoid, from a fresh mount
    why: str


WORKLOADS = (
    Workload(
        "seq_cold",
        "sequential read cold",
        "MB/s",
        True,
        ".0f",
        2,
        "the store path's PathInfo, then one BlobService.Read whose answer streams the file",
    ),
    Workload(
        "tar",
        "tar cf - | wc -c cold",
        "s",
        False,
        ".2f",
        3,
        "the PathInfo, the whole directory closure in one recursive GetDirectory, then every "
        "blob of the tree asked for at once",
    ),
    Workload(
        "grep",
        "grep -r cold",
        "s",
        False,
        ".2f",
        3,
        "as tar: PathInfo, closure, every blob at once",
    ),
    Workload(
        "find",
        "find | wc -l cold",
        "s",
        False,
        ".3f",
        2,
        "the PathInfo, then the closure; find reads no file (the directory messages, a few "
        "kB, are left out of the bytes)",
    ),
    Workload(
        "app",
        "application cold start",
        "s",
        False,
        ".2f",
        3,
        "the PathInfo, the closure, then every file the start opens asked for at once, which "
        "needs a client that knows them beforehand (e.g. from an earlier run); a client that "
        "does not waits at least one round trip per file in turn (serial_floor_round_trips)",
    ),
)
WORKLOAD = {w.key: w for w in WORKLOADS}


@dataclass(frozen=True)
class Target:
    text: str
    kind: str  # "value": castore's median; "speedup": castore vs sshfs; "cpu_per_file"; "rss"
    workload: str
    op: str
    threshold: float
    unit: str


def _speedups(threshold: float, keys: tuple[str, ...]) -> tuple[Target, ...]:
    return tuple(
        Target(
            f"{WORKLOAD[k].label} >= {threshold:g}x sshfs"
            if threshold != 1
            else f"{WORKLOAD[k].label} no slower than sshfs",
            "speedup",
            k,
            ">=",
            threshold,
            "x",
        )
        for k in keys
    )


# Issue 13's targets, by round trip in ms; the memory target holds at every round trip.
TARGETS_BY_RTT: dict[float, tuple[Target, ...]] = {
    20.0: (
        Target("tar c of the real tree <= 1.0 s cold", "value", "tar", "<=", 1.0, "s"),
        Target("application cold start <= 3 s", "value", "app", "<=", 3.0, "s"),
        Target("sequential read >= 300 MB/s", "value", "seq_cold", ">=", 300.0, "MB/s"),
        Target("find <= 0.1 s", "value", "find", "<=", 0.1, "s"),
    ),
    0.5: _speedups(1.5, tuple(w.key for w in WORKLOADS)),
    0.0: (
        *_speedups(1.0, ("app", "tar")),
        Target("client CPU per small file (tar) <= 0.4 ms", "cpu_per_file", "tar", "<=", 0.4, "ms"),
    ),
}
ALWAYS = (
    Target("mount peak RSS <= 300 MB in every workload", "rss", "", "<=", 300e6 / MIB, "MiB"),
)


def targets_for(rtt_ms: float) -> tuple[Target, ...]:
    return (*TARGETS_BY_RTT.get(rtt_ms, ()), *ALWAYS)


# --------------------------------------------------------------------------------------------
# Content


@dataclass
class Content:
    data: pathlib.Path
    big_name: str
    tree_name: str
    app_name: str
    big_size: int
    tree_source: str
    tree_files: int
    tree_entries: int  # what `find TREE` prints
    tree_bytes: int
    app_packages: list[str]
    app_modules: list[str]
    app_installed: list[str]  # dist-info names: what pip installed, with versions
    app_opened: list[str] = field(default_factory=list)  # files the start opens, under the app
    app_opened_bytes: int = 0

    def workload_bytes(self, key: str) -> int:
        return {
            "seq_cold": self.big_size,
            "tar": self.tree_bytes,
            "grep": self.tree_bytes,
            "find": 0,
            "app": self.app_opened_bytes,
        }[key]


def copy_tree(source: pathlib.Path, dest: pathlib.Path, limit: int) -> None:
    """Regular files and directories of `source` (the first `limit` files in sorted order, all
    with 0), keeping the layout; symlinks and special files are left out."""
    copied = 0
    dest.mkdir()
    for dirpath, dirnames, filenames in os.walk(source):
        dirnames.sort()
        here = pathlib.Path(dirpath)
        target = dest / here.relative_to(source)
        target.mkdir(exist_ok=True)
        for name in sorted(filenames):
            if limit and copied >= limit:
                return
            path = here / name
            if path.is_symlink() or not path.is_file():
                continue
            shutil.copyfile(path, target / name)
            os.chmod(target / name, 0o755 if os.access(path, os.X_OK) else 0o644)
            copied += 1


def install_app(dest: pathlib.Path, packages: list[str]) -> list[str]:
    """pip install --target, then byte-compile with unchecked-hash pycs.

    Timestamp pycs would be stale on the castore mount (its files carry no source mtime), so
    Python would recompile there and not on sshfs or local disk; unchecked-hash pycs are used
    as they are by all three.
    """
    pip = [sys.executable, "-m", "pip", "install", "--quiet", "--no-input", "--no-compile"]
    subprocess.run([*pip, "--target", str(dest), *packages], check=True)
    subprocess.run(
        [
            sys.executable,
            "-m",
            "compileall",
            "-q",
            "-j",
            "2",
            "--invalidation-mode",
            "unchecked-hash",
            str(dest),
        ],
        check=True,
        stdout=subprocess.DEVNULL,
    )
    return sorted(p.name.removesuffix(".dist-info") for p in dest.glob("*.dist-info"))


OPENED_PROBE = """\
import json, os, sys
opened = set()
def hook(event, args):
    if event == "open" and args and isinstance(args[0], (str, bytes)):
        opened.add(os.fsdecode(args[0]))
sys.addaudithook(hook)
for name in sys.argv[1:]:
    __import__(name)
with open("/proc/self/maps") as maps:
    for line in maps:
        parts = line.split(None, 5)
        if len(parts) == 6:
            opened.add(parts[5].strip())
print(json.dumps(sorted(opened)))
"""


def app_env(app_dir: pathlib.Path) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(app_dir), "PYTHONDONTWRITEBYTECODE": "1"}


def files_the_start_opens(app_dir: pathlib.Path, modules: list[str]) -> list[str]:
    """Files under `app_dir` the start opens or maps (Python's `open` audit events, for the
    .py/.pyc it reads, and /proc/self/maps, for the .so files it loads), run from local disk."""
    done = subprocess.run(
        [sys.executable, "-s", "-c", OPENED_PROBE, *modules],
        check=True,
        capture_output=True,
        text=True,
        env=app_env(app_dir),
    )
    prefix = str(app_dir) + "/"
    return [p for p in json.loads(done.stdout) if p.startswith(prefix) and os.path.isfile(p)]


def prepare(args: argparse.Namespace, work: pathlib.Path) -> Content:
    data = work / "data"
    data.mkdir()
    start = time.monotonic()
    compare.log(f"writing the {args.big_mib} MiB file")
    with open(data / "big", "wb") as out:
        for piece in xof_pieces(b"big", args.big_mib * MIB):
            out.write(piece)
    compare.log(f"copying {args.tree_source}")
    copy_tree(pathlib.Path(args.tree_source), data / "tree", args.tree_files)
    files = [p for p in (data / "tree").rglob("*") if p.is_file()]
    tree_bytes = sum(p.stat().st_size for p in files)
    entries = 1 + sum(1 for _ in (data / "tree").rglob("*"))
    compare.log(f"pip install --target: {' '.join(args.app_packages)}")
    installed = install_app(data / "app", args.app_packages)
    compare.log(f"importing into castore after {time.monotonic() - start:.1f} s")
    with compare.castore_serve(work, "tcp") as address:
        done = subprocess.run(
            castore(
                "import",
                "--store",
                address,
                "--no-progress",
                *(str(data / n) for n in ("big", "tree", "app")),
            ),
            check=True,
            stdout=subprocess.PIPE,
            text=True,
            cwd=ROOT,
        )
    names = [pathlib.PurePath(p).name for p in done.stdout.split()]
    for old, new in zip(("big", "tree", "app"), names, strict=True):
        (data / old).rename(data / new)
    content = Content(
        data=data,
        big_name=names[0],
        tree_name=names[1],
        app_name=names[2],
        big_size=args.big_mib * MIB,
        tree_source=str(args.tree_source),
        tree_files=len(files),
        tree_entries=entries,
        tree_bytes=tree_bytes,
        app_packages=list(args.app_packages),
        app_modules=list(args.app_modules),
        app_installed=installed,
    )
    content.app_opened = files_the_start_opens(data / content.app_name, content.app_modules)
    content.app_opened_bytes = sum(os.stat(p).st_size for p in content.app_opened)
    compare.log(
        f"content ready: {content.tree_files} files ({content.tree_bytes / 1e6:.1f} MB) in the "
        f"tree; the start opens {len(content.app_opened)} files "
        f"({content.app_opened_bytes / 1e6:.1f} MB) of {', '.join(installed)}"
    )
    return content


# --------------------------------------------------------------------------------------------
# Measuring


def cpu_seconds(pids: list[int]) -> float:
    """utime + stime of each process (all its threads, the exited ones too), in 10 ms ticks."""
    total = 0
    for pid in pids:
        text = pathlib.Path(f"/proc/{pid}/stat").read_text()
        fields = text.rsplit(")", 1)[1].split()
        total += int(fields[11]) + int(fields[12])  # fields 14 and 15 of proc(5)
    return total / CLK_TCK


def cpus_allowed(pid: int) -> str:
    with contextlib.suppress(OSError):
        for line in pathlib.Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("Cpus_allowed_list:"):
                return line.split(":", 1)[1].strip()
    return "unknown"


@dataclass
class Results:
    samples: dict[str, dict[str, list[float]]] = field(
        default_factory=lambda: {s: {} for s in SETUPS}
    )
    cpu: dict[str, dict[str, list[float]]] = field(default_factory=lambda: {s: {} for s in SETUPS})
    rss: dict[str, dict[str, list[float]]] = field(default_factory=lambda: {s: {} for s in SETUPS})
    link_rate: list[float] = field(default_factory=list)  # bytes/s
    checks: dict[str, dict[str, object]] = field(default_factory=lambda: {s: {} for s in SETUPS})
    pinning: dict[str, str] = field(default_factory=dict)
    dropped: list[bool] = field(default_factory=list)

    def median(self, setup: str, key: str, table: str = "samples") -> float | None:
        values = getattr(self, table)[setup].get(key)
        return statistics.median(values) if values else None

    def speedup(self, key: str) -> float | None:
        """How many times faster castore is than sshfs (above 1: castore is faster)."""
        c, s = self.median("castore", key), self.median("sshfs", key)
        if c is None or s is None or c == 0 or s == 0:
            return None
        return c / s if WORKLOAD[key].higher_is_better else s / c

    def rate(self) -> float | None:
        return statistics.median(self.link_rate) if self.link_rate else None


class Bench:
    def __init__(self, args: argparse.Namespace, work: pathlib.Path, content: Content) -> None:
        self.args = args
        self.rtt = args.rtt_ms / 1000
        self.work = work
        self.content = content
        self.results = Results()
        self.castore_address = ""
        self.sshd: compare.Sshd | None = None
        self.source_port = 0

    @contextlib.contextmanager
    def fresh(self, setup: str, tag: str) -> Iterator[tuple[pathlib.Path, list[int]]]:
        """A fresh mount: its root and the pids whose CPU time is the mount's."""
        if setup == "castore":
            mnt = self.work / "mnt-castore"
            with castore_mount(self.castore_address, mnt, self.work / f"mount-{tag}.log") as p:
                self.results.pinning.setdefault("castore mount", cpus_allowed(p.pid))
                yield mnt, [p.pid]
        elif setup == "sshfs":
            assert self.sshd is not None
            mnt = self.work / "mnt-sshfs"
            log_path = self.work / f"sshfs-{tag}.log"
            with compare.sshfs_mount(self.sshd, self.content.data, mnt, log_path) as p:
                ssh = compare.ssh_client_pid(self.sshd.client_key)
                pids = [p.pid] + ([ssh] if ssh is not None else [])
                self.results.pinning.setdefault("sshfs", cpus_allowed(p.pid))
                if ssh is not None:
                    self.results.pinning.setdefault("ssh (sshfs's)", cpus_allowed(ssh))
                sftp = pid_of(compare.SFTP_SERVER)
                if sftp is not None:
                    self.results.pinning.setdefault("sftp-server", cpus_allowed(sftp))
                yield mnt, pids
        else:
            yield self.content.data, []

    def measure(self, setup: str, key: str, run: int) -> None:
        with self.fresh(setup, f"{key}-{run}") as (root, pids):
            self.results.dropped.append(drop_caches())
            before = cpu_seconds(pids) if pids else 0.0
            value = getattr(self, key)(setup, root)
            if pids:
                self.results.cpu[setup].setdefault(key, []).append(cpu_seconds(pids) - before)
                self.results.rss[setup].setdefault(key, []).append(peak_rss_mib(pids[0]))
            self.results.samples[setup].setdefault(key, []).append(value)

    # -- the workloads: each returns its figure in its unit

    def seq_cold(self, setup: str, root: pathlib.Path) -> float:
        big = root / self.content.big_name
        seconds = sequential_read(big)
        if big.stat().st_size != self.content.big_size:
            raise RuntimeError(f"{setup}: {big} is not {self.content.big_size} bytes")
        return self.content.big_size / seconds / 1e6

    def find(self, setup: str, root: pathlib.Path) -> float:
        tree = shlex.quote(str(root / self.content.tree_name))
        seconds, out = compare.timed_shell(f"find {tree} | wc -l")
        self.check(setup, "find entries", int(out), self.content.tree_entries)
        return seconds

    def tar(self, setup: str, root: pathlib.Path) -> float:
        c = self.content
        seconds, out = compare.timed_shell(
            f"tar cf - -C {shlex.quote(str(root))} {c.tree_name} | wc -c"
        )
        if int(out) < c.tree_bytes:
            raise RuntimeError(f"{setup}: tar wrote only {out} bytes")
        self.results.checks[setup]["tar bytes"] = int(out)
        return seconds

    def grep(self, setup: str, root: pathlib.Path) -> float:
        # -c reads every file to its end and prints a line for each; status 1 is "no match".
        tree = shlex.quote(str(root / self.content.tree_name))
        seconds, out = compare.timed_shell(
            f"{{ grep -r -c -F -e {GREP_NEEDLE} -- {tree} || [ $? -eq 1 ]; }} | wc -l"
        )
        self.check(setup, "grep files", int(out), self.content.tree_files)
        return seconds

    def app(self, setup: str, root: pathlib.Path) -> float:
        c = self.content
        app_dir = root / c.app_name
        code = "import sys\n" + "".join(f"import {m}\n" for m in c.app_modules)
        code += "".join(f"print(sys.modules[{m!r}].__file__)\n" for m in c.app_modules)
        start = time.perf_counter()
        done = subprocess.run(
            [sys.executable, "-s", "-c", code],
            check=True,
            capture_output=True,
            text=True,
            env=app_env(app_dir),
        )
        seconds = time.perf_counter() - start
        outside = [f for f in done.stdout.split() if not f.startswith(str(app_dir) + "/")]
        if outside:
            raise RuntimeError(f"{setup}: the start imported from outside the mount: {outside}")
        self.results.checks[setup]["app modules from the mount"] = len(c.app_modules)
        return seconds

    def check(self, setup: str, what: str, got: int, want: int) -> None:
        if got != want:
            raise RuntimeError(f"{setup}: {what}: {got}, not {want}")
        self.results.checks[setup][what] = got

    def link_rate(self) -> None:
        """Bytes/s of a raw TCP stream from the source on CPU 1, through the relay (if any),
        to this script on CPU 0: the fastest any protocol could move bytes here."""
        size = self.content.big_size
        got, seconds = relay.receive_all(self.source_port, size)
        if got != size:
            raise RuntimeError(f"link rate: received {got} of {size} bytes")
        self.results.link_rate.append(size / max(seconds - self.rtt / 2, 1e-9))

    def run(self) -> None:
        args, work = self.args, self.work
        relayed = args.rtt_ms > 0
        with contextlib.ExitStack() as stack:

            def in_front(port: int, name: str) -> int:
                if not relayed:
                    return port
                argv = ["--target-port", str(port), "--rtt-ms", str(args.rtt_ms)]
                proc, front = stack.enter_context(
                    relay.background(argv, SERVER_CPU, work / f"relay-{name}.log")
                )
                self.results.pinning[f"relay for {name}"] = cpus_allowed(proc.pid)
                return front

            sshd = stack.enter_context(compare.sshd(work, PIN))
            self.results.pinning["sshd"] = cpus_allowed(listener_pid(sshd.port))
            self.sshd = compare.Sshd(in_front(sshd.port, "sshd"), sshd.client_key)
            address = stack.enter_context(compare.castore_serve(work, "tcp", PIN))
            port = int(address.rsplit(":", 1)[1])
            self.results.pinning["castore serve"] = cpus_allowed(listener_pid(port))
            self.castore_address = f"grpc+http://127.0.0.1:{in_front(port, 'castore serve')}"
            source_argv = ["--role", "source", "--size-mib", str(args.big_mib)]
            source, source_port = stack.enter_context(
                relay.background(source_argv, SERVER_CPU, work / "source.log")
            )
            self.results.pinning["link-rate source"] = cpus_allowed(source.pid)
            self.source_port = in_front(source_port, "link-rate source")
            self.results.pinning["readers and this script"] = cpus_allowed(os.getpid())
            compare.log(
                f"sshd behind 127.0.0.1:{self.sshd.port}, castore serve behind "
                f"{self.castore_address}, {args.rtt_ms:g} ms round trip"
            )
            for run in range(args.runs):
                for setup in SETUPS:
                    compare.log(f"run {run + 1}/{args.runs}: {setup}")
                    for w in WORKLOADS:
                        self.measure(setup, w.key, run)
                self.link_rate()


def pid_of(program: str) -> int | None:
    """A process running `program`, if any."""
    for cmdline in pathlib.Path("/proc").glob("[0-9]*/cmdline"):
        with contextlib.suppress(OSError):
            if cmdline.read_bytes().split(b"\0")[0] == program.encode():
                return int(cmdline.parent.name)
    return None


def listener_pid(port: int) -> int:
    """The pid listening on 127.0.0.1:`port` (from /proc/net/tcp and the fds in /proc)."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError):
            for line in pathlib.Path(table).read_text().splitlines()[1:]:
                fields = line.split()
                local, state = fields[1], fields[3]
                if state == "0A" and int(local.rsplit(":", 1)[1], 16) == port:
                    inodes.add(fields[9])
    for fd in pathlib.Path("/proc").glob("[0-9]*/fd/*"):
        with contextlib.suppress(OSError):
            link = os.readlink(fd)
            if link.startswith("socket:[") and link[8:-1] in inodes:
                return int(fd.parent.parent.name)
    return -1


# --------------------------------------------------------------------------------------------
# The limit, the targets, the report


def as_seconds(content: Content, key: str, value: float | None) -> float | None:
    if value is None or value == 0:
        return None
    return content.big_size / (value * 1e6) if key == "seq_cold" else value


def floor_seconds(content: Content, results: Results, key: str) -> float | None:
    """What no remote setup can beat here: moving the bytes at the link rate, or doing what
    local disk does (the servers read the same cold disk; the reader does the same work)."""
    rate = results.rate()
    local = as_seconds(content, key, results.median("local", key))
    if rate is None or local is None:
        return None
    return max(content.workload_bytes(key) / rate, local)


def limit_seconds(content: Content, results: Results, rtt: float, key: str) -> float | None:
    floor = floor_seconds(content, results, key)
    return None if floor is None else WORKLOAD[key].round_trips * rtt + floor


def limit_value(content: Content, results: Results, rtt: float, key: str) -> float | None:
    seconds = limit_seconds(content, results, rtt, key)
    if seconds is None or seconds == 0:
        return None
    return content.big_size / seconds / 1e6 if key == "seq_cold" else seconds


def round_trips_worth(content: Content, results: Results, rtt: float, key: str) -> float | None:
    """castore's time beyond the floor, in round trips (the mount's CPU time counts too)."""
    seconds = as_seconds(content, key, results.median("castore", key))
    floor = floor_seconds(content, results, key)
    if not rtt or seconds is None or floor is None:
        return None
    return (seconds - floor) / rtt


def cpu_per_file_ms(content: Content, results: Results, setup: str) -> float | None:
    cpu = results.median(setup, "tar", "cpu")
    return None if cpu is None else cpu / content.tree_files * 1e3


def target_value(content: Content, results: Results, t: Target) -> float | None:
    if t.kind == "value":
        return results.median("castore", t.workload)
    if t.kind == "speedup":
        return results.speedup(t.workload)
    if t.kind == "cpu_per_file":
        return cpu_per_file_ms(content, results, "castore")
    peaks = [max(v) for v in results.rss["castore"].values() if v]
    return max(peaks) if peaks else None


def target_met(value: float | None, t: Target) -> bool | None:
    if value is None:
        return None
    return value >= t.threshold if t.op == ">=" else value <= t.threshold


def show(value: float | None, spec: str, suffix: str = "") -> str:
    return "-" if value is None else format(value, spec) + suffix


def pinning_line(results: Results) -> str:
    server = [k for k, v in results.pinning.items() if v == str(SERVER_CPU)]
    client = [k for k, v in results.pinning.items() if v == str(CLIENT_CPU)]
    other = [f"{k} on {v}" for k, v in results.pinning.items() if k not in server + client]
    line = f"CPU {SERVER_CPU}: {', '.join(server)}; CPU {CLIENT_CPU}: {', '.join(client)}"
    return line + (f"; WARNING, not as meant: {', '.join(other)}" if other else "")


def print_report(args: argparse.Namespace, content: Content, results: Results) -> None:
    rtt = args.rtt_ms / 1000
    imports = ", ".join(content.app_modules)
    print(
        f"castore vs sshfs vs local disk, round trip {args.rtt_ms:g} ms: {args.big_mib} MiB "
        f"file; {content.tree_files} files ({content.tree_bytes / 1e6:.1f} MB) of "
        f"{content.tree_source}; application start `import {imports}`; median of {args.runs}"
    )
    if args.rtt_ms > 0:
        print(
            f"bench/relay.py in front of castore serve and sshd holds every chunk "
            f"{args.rtt_ms / 2:g} ms each way (TCP handshakes are not delayed)"
        )
    else:
        print("no relay: the clients connect to the servers directly on 127.0.0.1")
    print(pinning_line(results) + " (Cpus_allowed_list in /proc/PID/status)")
    if results.dropped and all(results.dropped):
        print("page cache dropped before every measurement of every setup; fresh mount each")
    else:
        print("WARNING: the page cache could NOT be dropped (needs root): figures are not cold")
    rate = results.rate()
    print(
        f"limit = round trips that cannot be avoided x {args.rtt_ms:g} ms + the longer of "
        f"bytes / {show(rate and rate / 1e6, '.0f')} MB/s (a raw TCP stream, CPU {SERVER_CPU} "
        f"to CPU {CLIENT_CPU}, {'through the relay alone' if args.rtt_ms > 0 else 'direct'}) "
        "and local disk's time"
    )
    columns = ("castore", "sshfs", "local", "limit", "castore/sshfs", "RTTs", "limit RTTs")
    width = 30
    print(f"{'workload':<{width}}" + "".join(f"{c:>14}" for c in columns))
    for w in WORKLOADS:
        cells = [show(results.median(s, w.key), w.fmt) for s in SETUPS]
        cells.append(show(limit_value(content, results, rtt, w.key), w.fmt))
        cells.append(show(results.speedup(w.key), ".2f", "x"))
        cells.append(show(round_trips_worth(content, results, rtt, w.key), ".0f"))
        cells.append(str(w.round_trips) if rtt else "-")
        print(f"{f'{w.label} ({w.unit})':<{width}}" + "".join(f"{c:>14}" for c in cells))
    print(
        "castore/sshfs: how many times faster castore is (above 1: faster). RTTs: castore's "
        "time beyond the limit's floor, in round trips (its CPU time counts too); limit RTTs: "
        "those no client can avoid."
    )
    print(
        f"the start opens {len(content.app_opened)} files "
        f"({content.app_opened_bytes / 1e6:.1f} MB) of {', '.join(content.app_installed)}"
    )
    print(
        f"{'mount CPU s / peak RSS MiB':<{width}}"
        + "".join(f"{c:>14}" for c in ("castore CPU", "sshfs+ssh CPU", "castore RSS", "sshfs RSS"))
    )
    for w in WORKLOADS:
        cells = [show(results.median(s, w.key, "cpu"), ".2f") for s in ("castore", "sshfs")]
        cells += [show(results.median(s, w.key, "rss"), ".0f") for s in ("castore", "sshfs")]
        print(f"{w.label:<{width}}" + "".join(f"{c:>14}" for c in cells))
    per_file = [cpu_per_file_ms(content, results, s) for s in ("castore", "sshfs")]
    print(
        f"mount CPU per file read by tar: castore {show(per_file[0], '.2f')} ms, "
        f"sshfs+ssh {show(per_file[1], '.2f')} ms"
    )
    if args.rtt_ms in TARGETS_BY_RTT:
        print(f"targets (issue 13, round trip {args.rtt_ms:g} ms):")
    else:
        print(
            f"targets: issue 13 sets none for a {args.rtt_ms:g} ms round trip (only for 20, "
            "0.5 and 0); the memory target holds at any:"
        )
    for t in targets_for(args.rtt_ms):
        value = target_value(content, results, t)
        verdict = "met" if target_met(value, t) else "not met"
        spec = (
            WORKLOAD[t.workload].fmt if t.kind == "value" else ".2f" if t.unit != "MiB" else ".0f"
        )
        shown = show(value, spec, t.unit if t.unit == "x" else f" {t.unit}")
        print(f"  {verdict:<8} {t.text}: {shown if value is not None else 'not measured'}")


def report_json(args: argparse.Namespace, content: Content, results: Results) -> dict[str, Any]:
    rtt = args.rtt_ms / 1000
    workloads: dict[str, Any] = {}
    rate = results.rate()
    for w in WORKLOADS:
        workloads[w.key] = {
            "label": w.label,
            "unit": w.unit,
            "higher_is_better": w.higher_is_better,
            "setups": {
                s: {
                    "median": results.median(s, w.key),
                    "samples": results.samples[s].get(w.key, []),
                    **(
                        {
                            "mount_cpu_seconds": {
                                "median": results.median(s, w.key, "cpu"),
                                "samples": results.cpu[s].get(w.key, []),
                            },
                            "mount_peak_rss_mib": {
                                "median": results.median(s, w.key, "rss"),
                                "samples": results.rss[s].get(w.key, []),
                            },
                        }
                        if s != "local"
                        else {}
                    ),
                }
                for s in SETUPS
            },
            "castore/sshfs_speedup": results.speedup(w.key),
            "limit": {
                "value": limit_value(content, results, rtt, w.key),
                "seconds": limit_seconds(content, results, rtt, w.key),
                "floor_seconds": floor_seconds(content, results, w.key),
                "transfer_seconds": (
                    content.workload_bytes(w.key) / rate if rate is not None else None
                ),
                "bytes": content.workload_bytes(w.key),
                "round_trips": w.round_trips,
                "round_trips_why": w.why,
            },
            "castore_round_trips_worth": round_trips_worth(content, results, rtt, w.key),
        }
    workloads["app"]["serial_floor_round_trips"] = len(content.app_opened)
    targets = []
    for t in targets_for(args.rtt_ms):
        value = target_value(content, results, t)
        targets.append(
            {
                "target": t.text,
                "kind": t.kind,
                "workload": t.workload or None,
                "value": value,
                "op": t.op,
                "threshold": t.threshold,
                "unit": t.unit,
                "met": target_met(value, t),
            }
        )
    return {
        "title": f"castore vs sshfs vs local disk, round trip {args.rtt_ms:g} ms",
        "config": {
            "rtt_ms": args.rtt_ms,
            "relay": args.rtt_ms > 0,
            "big_mib": args.big_mib,
            "runs": args.runs,
            "tree_source": content.tree_source,
            "tree_files_limit": args.tree_files,
        },
        "content": {
            "tree_files": content.tree_files,
            "tree_entries": content.tree_entries,
            "tree_bytes": content.tree_bytes,
            "app_packages": content.app_packages,
            "app_installed": content.app_installed,
            "app_modules": content.app_modules,
            "app_start_command": f"python -s -c 'import {', '.join(content.app_modules)}' "
            "with PYTHONPATH at the packages on the mount",
            "app_files_opened": len(content.app_opened),
            "app_bytes_opened": content.app_opened_bytes,
            "app_files_opened_list": [
                os.path.relpath(p, content.data / content.app_name) for p in content.app_opened
            ],
        },
        "pinning": {
            "server_cpu": SERVER_CPU,
            "client_cpu": CLIENT_CPU,
            "observed_cpus_allowed": results.pinning,
        },
        "link_rate": {
            "bytes_per_second": rate,
            "samples": results.link_rate,
            "how": "a raw TCP stream of the big file's size from a byte source on the server "
            "CPU, through a relay like the servers' (none at RTT 0), read on the client CPU; "
            "the time less half a round trip (the first byte's delay), once per run",
        },
        "page_cache_dropped_before_every_measurement": bool(results.dropped)
        and all(results.dropped),
        "workloads": workloads,
        "mount_cpu_ms_per_file_read_by_tar": {
            s: cpu_per_file_ms(content, results, s) for s in ("castore", "sshfs")
        },
        "targets": targets,
        "checks": results.checks,
        "notes": [
            "limit = round_trips x RTT + floor; floor = the longer of bytes / link rate and "
            "local disk's median for the workload (the servers read the same cold disk, the "
            "reader does the same work: no remote setup beats either here).",
            "Every measurement is on a fresh mount (castore: a fresh `castore mount`; sshfs: a "
            "fresh ssh connection and sftp-server) right after the page cache was dropped; one "
            "castore serve and one sshd serve the whole run.",
            "The relay delays bytes, not TCP: connections are accepted and made at once and TCP "
            "sees loopback, so the round trips counted are those of the protocols above it.",
            "Mount CPU: utime+stime from /proc/PID/stat (10 ms ticks) of castore mount, and of "
            "sshfs plus its ssh, from just before the workload to just after it.",
            "Peak RSS: VmHWM of castore mount (sshfs without ssh) at the end of the workload.",
            "sshfs's CPU includes ssh's (encryption); castore's channel is plaintext gRPC.",
            "App start bytes: the sizes of the files under the packages that the start opens "
            "(open audit events) or maps (/proc/self/maps), found by one run from local disk; "
            "whole files, though a .so is only read where it faults.",
        ],
        "environment": {
            "kernel": platform.release(),
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "sshfs": compare.tool_version(["sshfs", "--version"], "SSHFS"),
            "ssh": compare.tool_version(["ssh", "-V"]),
        },
    }


def git_describe() -> str:
    """The commit measured, and whether the read path had uncommitted changes."""
    try:
        head = subprocess.run(
            ["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(ROOT), "status", "--porcelain", "castore_client", "castore_fuse"],
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    return head + (" with uncommitted changes in castore_client/castore_fuse" if dirty else "")


CODE_PACKAGES = ("castore_client", "castore_fuse")


def code_fingerprint(root: pathlib.Path) -> str:
    """SHA-256 over the read path's source files (names and bytes)."""
    digest = hashlib.sha256()
    for package in CODE_PACKAGES:
        for path in sorted((root / package).rglob("*.py")):
            digest.update(str(path.relative_to(root)).encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()


def snapshot_code(work: pathlib.Path, source: pathlib.Path) -> dict[str, str]:
    """Run a copy of the read path taken now, so that edits to the checkout during the run
    (it takes minutes) do not mix versions within one table; say which code it was."""
    code = work / "code"
    for package in CODE_PACKAGES:
        shutil.copytree(
            source / package, code / package, ignore=shutil.ignore_patterns("__pycache__")
        )
    os.environ["PYTHONPATH"] = str(code)
    harness.CASTORE_FLAGS[:] = ["-P"]  # no working directory (the checkout) on sys.path
    described = git_describe() if source == ROOT else f"the copy in {source}"
    return {"commit": described, "sha256": code_fingerprint(code), "from": str(source)}


def check_prerequisites(args: argparse.Namespace) -> list[str]:
    problems = compare.check_prerequisites()
    for tool in ("taskset", "grep", "wc"):
        if shutil.which(tool) is None:
            problems.append(f"{tool} is missing")
    if not {SERVER_CPU, CLIENT_CPU} <= os.sched_getaffinity(0):
        problems.append(f"--rtt-ms pins to CPUs {CLIENT_CPU} and {SERVER_CPU}: not both allowed")
    if args.code and not all((pathlib.Path(args.code) / p).is_dir() for p in CODE_PACKAGES):
        problems.append(f"--code {args.code} holds no castore_client and castore_fuse")
    if not pathlib.Path(args.tree_source).is_dir():
        problems.append(f"--tree-source {args.tree_source} is not a directory")
    return problems


def main(args: argparse.Namespace) -> int:
    problems = check_prerequisites(args)
    if problems:
        for problem in problems:
            print(f"compare: {problem}", file=sys.stderr)
        return 2
    os.sched_setaffinity(0, {CLIENT_CPU})
    started = time.monotonic()
    compare.install_signal_handlers()
    try:
        with compare.work_directory(args.tmpdir, args.keep) as work:
            compare.log(f"working in {work}")
            code = snapshot_code(work, pathlib.Path(args.code or ROOT).resolve())
            compare.log(f"measuring a copy of the read path: {code['commit']}")
            content = prepare(args, work)
            bench = Bench(args, work, content)
            bench.run()
    except compare.Interrupted as exc:
        return 128 + int(exc.args[0])
    except KeyboardInterrupt:
        return 130
    report = report_json(args, content, bench.results)
    report["wall_seconds"] = time.monotonic() - started
    if not args.code:
        changed = code_fingerprint(ROOT) != code["sha256"]
        code["checkout_changed_during_the_run"] = str(changed)
    report["code_measured"] = code
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(report, indent=2, allow_nan=False) + "\n")
    print_report(args, content, bench.results)
    print(
        f"code measured: {code['commit']} (a copy taken at the start, sha256 {code['sha256'][:12]})"
    )
    print(f"took {report['wall_seconds']:.0f} s; wrote {args.json}")
    return 0
