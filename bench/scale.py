#!/usr/bin/env python3
"""castore mount at scale: a million distinct files and a directory of 100,000 entries.

Why: a mount that is fast on ten thousand files can still fall over on a real store, where
walks touch millions of entries. What grows with the number of entries is what this measures:
the mount's memory (inode table, directory listings, caches), its CPU per entry, and whether a
walk stays correct. Each file has content of its own, so each one is its own blob and its own
inode; nothing is deduplicated away.

How: a file:// store is filled directly through the embedded store's service interfaces
(BlobService.put from one worker process per CPU, then one DirectoryService.put per closure and
two PathInfos), not by importing real files, which would measure the importer. It holds two
store paths:

  <hash>-scale-tree   --files files (default 1,000,000), --per-dir (200) to a directory
                      (dNNNNNNN), --per-dir directories to a group (gNNNN): gNNNN/dNNNNNNN/fNNNNNNNN
  <hash>-scale-wide   one directory of --wide files (default 100,000): wNNNNNNN

Each file's bytes are a line naming its index, repeated 1 to 3 times (33 to 99 bytes), so every
byte read can be checked. The built store is kept in WORKDIR/store-<parameters>/ and reused by
the next run with the same parameters (--rebuild builds it again). At full size the build takes
about 5 minutes on 2 cores, the store about 4.5 GB and 1.1 million inodes of disk (each small
blob is a file of its own), and this process about 350 MB while it assembles the directories.
Then `castore serve` serves it on 127.0.0.1, `castore mount --list-root` (plus every
--mount-arg) mounts it, and these steps run one after the other on that one mount:

  find cold    `find TREE`, the kernel's page cache dropped first (root only)
  find 2nd     the same again
  ls -l wide   `ls -l WIDE`: the first time anything touches the wide directory
  stat all     `find TREE WIDE -printf '%y %s %i %p'`: an lstat of every entry
  tar 10%      `tar c` of every 10th directory, every byte checked as it streams out
  find 3rd     `find TREE` once more: the mount's RSS should not have grown since the 2nd
               (each step's RSS before it is in the JSON too, to tell the walk's own growth
               from what ls and tar added in between)

For each: wall time, entries per second, the mount's CPU seconds (utime + stime from
/proc/PID/stat), its RSS after the step (VmRSS) and its peak so far (VmHWM). Every listing is
checked against what was built: every entry seen exactly once, in the directory it belongs to,
with the right type and (where stat'ed) size, no two entries sharing an inode number. A check
that fails stops the run with exit status 1 and the JSON says what failed; a target that is not
met does not change the exit status.

With --offline every mount gets --cache-dir RUN/cache. After the steps the mount is unmounted,
the server STOPPED, and a fresh mount on the same cache directory walks both store paths and
reads the 10% again; whether every entry and byte came back is reported as `offline: ok` or
`offline: failed: <why>`. Every command has a timeout, and the offline mount gets
--connect-timeout 5 --timeout 5 unless --mount-arg sets them.

Prints a table and issue 14's targets (met / not met), and writes JSON (default
WORKDIR/scale-<parameters>.json). On every exit path it unmounts, stops everything it started
and removes its run directory (mountpoints, listings, cache; the logs go to WORKDIR/logs/);
the built store stays unless --no-keep-store.

    .venv/bin/python bench/scale.py [--files 1000000] [--per-dir 200] [--wide 100000]
        [--offline] [--mount-arg=--memory-cache-size=64M ...] [--workdir /var/tmp/castore-scale]

Write --mount-arg=VALUE (with the `=`) when VALUE starts with a dash; one token per
--mount-arg.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import importlib.util
import json
import os
import pathlib
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from typing import IO, Any

ROOT = pathlib.Path(__file__).resolve().parent.parent

FORMAT = 1
"""The layout and content version: a cached store of another version is built again."""

MIB = 1 << 20
CLK_TCK = os.sysconf("SC_CLK_TCK")
C_LOCALE = {**os.environ, "LC_ALL": "C"}
TAR_EVERY = 10  # the tar step reads every 10th directory of the tree
BUILD_BATCH = 2000  # blobs per task of a build worker
OFFLINE_MOUNT_DEFAULTS = {"--connect-timeout": "5", "--timeout": "5"}

FULL_SIZE = {"files": 1_000_000, "per_dir": 200, "wide": 100_000}
PEAK_RSS_LIMIT = 300e6  # bytes
RSS_GROWTH_LIMIT_MIB = 5.0
COLD_FIND_RATE = 100_000.0  # entries per second
WIDE_LS_SECONDS = 1.0


def log(message: str) -> None:
    print(f"[scale {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


class CheckFailed(Exception):
    """What the mount showed is not what was built: the run fails."""


class StepFailed(Exception):
    """A command failed or timed out; one line saying which and why."""


class Interrupted(BaseException):
    """SIGINT, SIGTERM or SIGHUP, raised so that every `with` block unwinds."""


# --------------------------------------------------------------------------------------------
# The layout: names, contents and counts, all derived from the three parameters


@dataclass(frozen=True)
class Layout:
    files: int
    per_dir: int
    wide: int

    @property
    def dirs(self) -> int:
        return -(-self.files // self.per_dir)

    @property
    def groups(self) -> int:
        return -(-self.dirs // self.per_dir)

    @property
    def key(self) -> str:
        return f"f{self.files}-p{self.per_dir}-w{self.wide}-v{FORMAT}"

    def dir_files(self, d: int) -> range:
        return range(d * self.per_dir, min((d + 1) * self.per_dir, self.files))

    def group_dirs(self, g: int) -> range:
        return range(g * self.per_dir, min((g + 1) * self.per_dir, self.dirs))

    @property
    def tree_entries(self) -> int:
        """What `find TREE` prints: the tree itself, its groups, directories and files."""
        return 1 + self.groups + self.dirs + self.files

    @property
    def wide_entries(self) -> int:
        """What `find WIDE` prints: the directory and its files."""
        return 1 + self.wide

    @property
    def tar_dirs(self) -> range:
        return range(0, self.dirs, TAR_EVERY)

    @property
    def tar_files(self) -> int:
        return sum(len(self.dir_files(d)) for d in self.tar_dirs)

    @property
    def tar_bytes(self) -> int:
        return sum(tree_size(i) for d in self.tar_dirs for i in self.dir_files(d))

    def dir_path(self, d: int) -> str:
        return f"g{d // self.per_dir:04d}/d{d:07d}"

    def tree_path(self, i: int) -> str:
        return f"{self.dir_path(i // self.per_dir)}/f{i:08d}"

    def store_path(self, kind: str) -> str:
        """The basename `<hash>-scale-<kind>`; the hash is derived from the parameters."""
        from castore_client.storepath import StorePath

        digest = hashlib.sha256(f"castore scale {kind} {self.key}".encode()).digest()[:20]
        return str(StorePath(digest, f"scale-{kind}"))


def tree_bytes(i: int) -> bytes:
    return (b"castore scale tree file %08d\n" % i) * (1 + i % 3)


def tree_size(i: int) -> int:
    return 33 * (1 + i % 3)


def wide_bytes(j: int) -> bytes:
    return (b"castore scale wide file %08d\n" % j) * (1 + j % 3)


def wide_size(j: int) -> int:
    return 33 * (1 + j % 3)


# --------------------------------------------------------------------------------------------
# Building the store (once per layout; kept for the next run)


def _worker_init() -> None:
    """Build workers leave signals to the bench, which cancels what they have not started."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, signal.SIG_DFL)


def _put_blobs(store: str, kind: str, start: int, stop: int) -> bytes:
    """BlobService.put each blob of [start, stop); their raw digests, concatenated in order."""
    import blake3

    from castore_client.stores import open_file_store

    make = tree_bytes if kind == "tree" else wide_bytes
    out = bytearray()
    with open_file_store(store) as services:
        for i in range(start, stop):
            data = make(i)
            digest = services.blobs.put([data]).raw
            if digest != blake3.blake3(data).digest():
                raise RuntimeError(f"BlobService.put of {kind} file {i} returned another digest")
            out += digest
    return bytes(out)


def put_all_blobs(store: pathlib.Path, kind: str, count: int, jobs: int) -> bytes:
    from concurrent.futures import ProcessPoolExecutor

    pool = ProcessPoolExecutor(jobs, initializer=_worker_init)
    try:
        tasks = [
            pool.submit(_put_blobs, str(store), kind, a, min(a + BUILD_BATCH, count))
            for a in range(0, count, BUILD_BATCH)
        ]
        parts = []
        start = last = time.monotonic()
        for n, task in enumerate(tasks, 1):
            parts.append(task.result())
            if time.monotonic() - last > 10 or n == len(tasks):
                last = time.monotonic()
                done = min(n * BUILD_BATCH, count)
                rate = done / max(last - start, 1e-9)
                log(f"  {kind}: {done}/{count} blobs, {rate:.0f}/s")
    except BaseException:
        pool.shutdown(wait=True, cancel_futures=True)
        raise
    pool.shutdown()
    return b"".join(parts)


def build_store(store: pathlib.Path, layout: Layout, jobs: int) -> float:
    """Fill a fresh file:// store at `store`; the seconds it took."""
    from castore_client.digest import B3Digest
    from castore_client.directory import Directory, DirectoryNode, FileNode
    from castore_client.pathinfo import NarInfo, PathInfo
    from castore_client.stores import open_file_store

    start = time.monotonic()
    open_file_store(store).close()  # the schema, before the workers open it concurrently
    log(f"building {layout.files} + {layout.wide} blobs with {jobs} worker(s) in {store}")
    tree = put_all_blobs(store, "tree", layout.files, jobs)
    wide = put_all_blobs(store, "wide", layout.wide, jobs)

    def digest(raw: bytes, i: int) -> B3Digest:
        return B3Digest(raw[32 * i : 32 * i + 32])

    leaves = [
        Directory.of(
            FileNode(b"f%08d" % i, digest(tree, i), tree_size(i)) for i in layout.dir_files(d)
        )
        for d in range(layout.dirs)
    ]
    groups = [
        Directory.of(
            DirectoryNode(b"d%07d" % d, leaves[d].digest, leaves[d].size())
            for d in layout.group_dirs(g)
        )
        for g in range(layout.groups)
    ]
    top = Directory.of(
        DirectoryNode(b"g%04d" % g, sub.digest, sub.size()) for g, sub in enumerate(groups)
    )
    wide_dir = Directory.of(
        FileNode(b"w%08d" % j, digest(wide, j), wide_size(j)) for j in range(layout.wide)
    )
    narinfo = NarInfo(0, bytes(32))  # the mount never reads it; a real NAR hash costs a read
    with open_file_store(store) as services:
        if services.directories.put([*leaves, *groups, top]) != top.digest:
            raise RuntimeError("DirectoryService.put returned another root for the tree")
        if services.directories.put([wide_dir]) != wide_dir.digest:
            raise RuntimeError("DirectoryService.put returned another root for the wide dir")
        for kind, directory in (("tree", top), ("wide", wide_dir)):
            name = layout.store_path(kind).encode()
            node = DirectoryNode(name, directory.digest, directory.size())
            services.path_infos.put(PathInfo(node=node, narinfo=narinfo))
    return time.monotonic() - start


def ensure_store(workdir: pathlib.Path, layout: Layout, jobs: int, rebuild: bool) -> dict[str, Any]:
    """The store for `layout` under `workdir`, built unless a complete one is there."""
    store = workdir / f"store-{layout.key}"
    marker = store / "built.json"
    if not rebuild and marker.is_file():
        with contextlib.suppress(ValueError, OSError):
            built = json.loads(marker.read_text())
            if built.get("key") == layout.key:
                log(f"reusing the store built in {built['build_seconds']:.0f} s: {store}")
                return {"path": str(store), "cached": True, **built}
    if store.exists():
        shutil.rmtree(store)
    seconds = build_store(store, layout, jobs)
    built = {
        "key": layout.key,
        "build_seconds": seconds,
        "built_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "jobs": jobs,
    }
    marker.write_text(json.dumps(built, indent=2) + "\n")  # last: a torn build has none
    log(f"built in {seconds:.0f} s")
    return {"path": str(store), "cached": False, **built}


# --------------------------------------------------------------------------------------------
# Checking what the mount shows against the layout


def index(name: bytes, letter: bytes, width: int) -> int | None:
    """N from a name `<letter><N in `width` digits>`, else None."""
    if len(name) != width + 1 or name[:1] != letter or not name[1:].isdigit():
        return None
    return int(name[1:])


class WrongBytes(CheckFailed):
    """A file's bytes differ from the ones built: always a failure, offline too."""


class Seen:
    """Which entries of the layout a listing showed, and every problem found on the way.

    `tree_entry` and `wide_entry` take a path relative to the store path (b"" for the store
    path itself), its type (b"d", b"f", or None when the listing does not show it) and its size
    (or None). An entry the layout lacks, one seen twice, a wrong type or size is a problem;
    so is, in `finish`, every entry of the layout that was expected and not seen.
    """

    def __init__(self, layout: Layout, *, tree: bool, wide: bool) -> None:
        self.layout = layout
        self.expect_tree, self.expect_wide = tree, wide
        self.tops = {"tree": 0, "wide": 0}
        self.groups = bytearray(layout.groups if tree else 0)
        self.dirs = bytearray(layout.dirs if tree else 0)
        self.files = bytearray(layout.files if tree else 0)
        self.wide = bytearray(layout.wide if wide else 0)
        self.entries = 0
        self.problems: list[str] = []
        self.problem_count = 0

    def problem(self, text: str) -> None:
        self.problem_count += 1
        if len(self.problems) < 8:
            self.problems.append(text)

    def _mark(self, seen: bytearray, i: int, rel: bytes) -> None:
        if seen[i]:
            self.problem(f"{rel.decode()} seen twice")
        seen[i] = 1

    def _unexpected(self, rel: bytes) -> None:
        self.problem(f"unexpected entry {rel[:200].decode(errors='replace')!r}")

    def _check(self, rel: bytes, kind: bytes | None, want: bytes, size: int | None, n: int) -> None:
        if kind is not None and kind != want:
            self.problem(f"{rel.decode() or '.'} has type {kind!r}, not {want!r}")
        if size is not None and size != n:
            self.problem(f"{rel.decode()} has size {size}, not {n}")

    def _top(self, which: str, kind: bytes | None) -> None:
        self.tops[which] += 1
        if self.tops[which] > 1:
            self.problem(f"the {which} store path seen twice")
        self._check(b"", kind, b"d", None, 0)

    def tree_entry(self, rel: bytes, kind: bytes | None = None, size: int | None = None) -> None:
        self.entries += 1
        lay = self.layout
        if not self.expect_tree:
            return self._unexpected(rel)
        if rel == b"":
            return self._top("tree", kind)
        parts = rel.split(b"/")
        g = index(parts[0], b"g", 4)
        if g is None or g >= lay.groups or len(parts) > 3:
            return self._unexpected(rel)
        if len(parts) == 1:
            self._mark(self.groups, g, rel)
            return self._check(rel, kind, b"d", None, 0)
        d = index(parts[1], b"d", 7)
        if d is None or d >= lay.dirs or d // lay.per_dir != g:
            return self._unexpected(rel)
        if len(parts) == 2:
            self._mark(self.dirs, d, rel)
            return self._check(rel, kind, b"d", None, 0)
        i = index(parts[2], b"f", 8)
        if i is None or i >= lay.files or i // lay.per_dir != d:
            return self._unexpected(rel)
        self._mark(self.files, i, rel)
        return self._check(rel, kind, b"f", size, tree_size(i))

    def wide_entry(self, rel: bytes, kind: bytes | None = None, size: int | None = None) -> None:
        self.entries += 1
        if not self.expect_wide:
            return self._unexpected(rel)
        if rel == b"":
            return self._top("wide", kind)
        j = index(rel, b"w", 8)
        if j is None or j >= self.layout.wide:
            return self._unexpected(rel)
        self._mark(self.wide, j, rel)
        return self._check(rel, kind, b"f", size, wide_size(j))

    def finish(self, what: str, *, tops: bool = True) -> dict[str, Any]:
        """Raise CheckFailed naming the problems; else what was checked, for the JSON."""
        lay = self.layout
        missing: list[str] = []
        kinds: list[tuple[bool, str, bytearray, str, Callable[[int], str]]] = [
            (self.expect_tree, "tree", self.groups, "groups", lambda n: f"g{n:04d}"),
            (self.expect_tree, "tree", self.dirs, "directories", lay.dir_path),
            (self.expect_tree, "tree", self.files, "files", lay.tree_path),
            (self.expect_wide, "wide", self.wide, "wide files", lambda n: f"w{n:08d}"),
        ]
        for expected, which in (self.expect_tree, "tree"), (self.expect_wide, "wide"):
            if expected and tops and not self.tops[which]:
                missing.append(f"the {which} store path")
        for expected, _, seen, noun, name in kinds:
            absent = seen.count(0) if expected else 0
            if absent:
                missing.append(f"{absent} {noun} (the first: {name(seen.index(0))})")
        if missing:
            self.problem("missing " + "; ".join(missing))
        if self.problem_count:
            more = self.problem_count - len(self.problems)
            raise CheckFailed(
                f"{what}: {self.problem_count} problem(s): {' | '.join(self.problems)}"
                + (f" | and {more} more" if more > 0 else "")
            )
        return {"entries": self.entries, "ok": True}


class Roots:
    """Absolute paths printed by find, back to (recorder, path relative to its store path)."""

    def __init__(self, pairs: Sequence[tuple[pathlib.Path, Callable[..., None]]]) -> None:
        self.pairs = [(os.fsencode(path), record) for path, record in pairs]

    def split(self, path: bytes) -> tuple[Callable[..., None], bytes]:
        for root, record in self.pairs:
            if path == root:
                return record, b""
            if path.startswith(root) and path[len(root) : len(root) + 1] == b"/":
                return record, path[len(root) + 1 :]
        raise CheckFailed(f"a path under neither store path: {path[:200]!r}")


def check_find(data: bytes, mnt: pathlib.Path, layout: Layout, *, wide: bool) -> dict[str, Any]:
    """`find TREE [WIDE]` printed exactly the layout's entries, each once."""
    seen = Seen(layout, tree=True, wide=wide)
    pairs = [(mnt / layout.store_path("tree"), seen.tree_entry)]
    if wide:
        pairs.append((mnt / layout.store_path("wide"), seen.wide_entry))
    roots = Roots(pairs)
    for line in data.splitlines():
        record, rel = roots.split(line)
        record(rel)
    return seen.finish("find")


def check_stat(data: bytes, mnt: pathlib.Path, layout: Layout) -> dict[str, Any]:
    """`find TREE WIDE -printf '%y %s %i %p\\n'`: every entry once with its type and size,
    and no inode number shared by two entries."""
    seen = Seen(layout, tree=True, wide=True)
    roots = Roots(
        [
            (mnt / layout.store_path("tree"), seen.tree_entry),
            (mnt / layout.store_path("wide"), seen.wide_entry),
        ]
    )
    inodes: list[int] = []
    for line in data.splitlines():
        fields = line.split(b" ", 3)
        if len(fields) != 4 or not fields[1].isdigit() or not fields[2].isdigit():
            raise CheckFailed(f"stat: unparsable line {line[:200]!r}")
        kind, size, ino, path = fields
        record, rel = roots.split(path)
        record(rel, kind, int(size))
        inodes.append(int(ino))
    result = seen.finish("stat")
    distinct = len(set(inodes))
    if distinct != len(inodes):
        raise CheckFailed(f"stat: {len(inodes)} entries have only {distinct} inode numbers")
    result["distinct_inodes"] = distinct
    return result


def check_ls(data: bytes, layout: Layout) -> dict[str, Any]:
    """`ls -l WIDE` in the C locale: a total line, then every wide file once, with its size."""
    seen = Seen(layout, tree=False, wide=True)
    lines = data.splitlines()
    if not lines or not lines[0].startswith(b"total "):
        raise CheckFailed(f"ls -l: the first line is not a total: {lines[:1]!r}")
    for line in lines[1:]:
        fields = line.split()
        if len(fields) != 9 or not fields[4].isdigit():
            raise CheckFailed(f"ls -l: unparsable line {line[:200]!r}")
        kind = b"f" if fields[0][:1] == b"-" else fields[0][:1]
        seen.wide_entry(fields[8], kind, int(fields[4]))
    return seen.finish("ls -l", tops=False)


def _tar_number(raw: bytes) -> int:
    text = raw.split(b"\0", 1)[0].strip()
    try:
        return int(text, 8) if text else 0
    except ValueError:
        raise CheckFailed(f"tar: a header field is not octal: {raw!r}") from None


def check_tar_stream(stream: IO[bytes], layout: Layout) -> dict[str, Any]:
    """Read a tar archive of `tar_members` to its end, checking every header and every byte:
    each listed directory and each of its files exactly once, and each file's bytes exactly
    the ones built (WrongBytes at the first that differs)."""
    wanted = set(layout.tar_dirs)
    seen_dirs = bytearray(layout.dirs)
    seen_files = bytearray(layout.files)
    files = dirs = checked = 0
    long_name: bytes | None = None
    while True:
        header = stream.read(512)
        if len(header) < 512:
            raise CheckFailed(f"tar: the archive ends inside a header, after {files} files")
        if header == bytes(512):
            if stream.read().strip(b"\0"):
                raise CheckFailed("tar: data after the end-of-archive block")
            break
        if _tar_number(header[148:156]) != sum(header[:148]) + 8 * 32 + sum(header[156:]):
            raise CheckFailed(f"tar: a bad header checksum, after {files} files")
        size = _tar_number(header[124:136])
        typeflag = header[156:157]
        data = stream.read(-(-size // 512) * 512)[:size]
        if len(data) != size:
            raise CheckFailed(f"tar: the archive ends inside a member, after {files} files")
        if typeflag == b"L":  # GNU long name: the next member's
            long_name = data.rstrip(b"\0")
            continue
        name = long_name or header[:100].split(b"\0", 1)[0]
        long_name = None
        if header[257:263] == b"ustar\0" and header[345:500].strip(b"\0"):
            name = header[345:500].split(b"\0", 1)[0] + b"/" + name
        parts = name.rstrip(b"/").split(b"/")
        g = index(parts[0], b"g", 4)
        d = index(parts[1], b"d", 7) if len(parts) >= 2 else None
        if g is None or d is None or d not in wanted or d // layout.per_dir != g:
            raise CheckFailed(f"tar: unexpected member {name[:200]!r}")
        if len(parts) == 2 and typeflag == b"5":
            if seen_dirs[d]:
                raise CheckFailed(f"tar: {name.decode()} twice")
            seen_dirs[d] = 1
            dirs += 1
            continue
        i = index(parts[2], b"f", 8) if len(parts) == 3 else None
        if i is None or typeflag not in (b"0", b"\0") or i // layout.per_dir != d:
            raise CheckFailed(f"tar: unexpected member {name[:200]!r} of type {typeflag!r}")
        if seen_files[i]:
            raise CheckFailed(f"tar: {name.decode()} twice")
        seen_files[i] = 1
        want = tree_bytes(i)
        if data != want:
            at = next(
                (k for k, (x, y) in enumerate(zip(data, want, strict=False)) if x != y),
                min(len(data), len(want)),
            )
            raise WrongBytes(
                f"tar: {name.decode()} differs from what was built at byte {at} "
                f"({size} bytes read, {len(want)} built): {data[at : at + 16]!r} "
                f"instead of {want[at : at + 16]!r}"
            )
        files += 1
        checked += size
    if dirs != len(wanted) or files != layout.tar_files:
        absent = [layout.dir_path(d) for d in layout.tar_dirs if not seen_dirs[d]]
        absent += [
            layout.tree_path(i)
            for d in layout.tar_dirs
            for i in layout.dir_files(d)
            if not seen_files[i]
        ]
        raise CheckFailed(
            f"tar: {dirs} of {len(wanted)} directories and {files} of {layout.tar_files} "
            f"files (the first missing: {absent[0] if absent else '?'})"
        )
    return {"files": files, "directories": dirs, "bytes_checked": checked, "ok": True}


# --------------------------------------------------------------------------------------------
# Processes: figures from /proc, commands with timeouts


@dataclass
class Figures:
    cpu_s: float
    rss_mib: float
    peak_mib: float


def figures(pid: int) -> Figures:
    """CPU seconds (utime + stime, all threads), VmRSS and VmHWM of a process."""
    try:
        stat_text = pathlib.Path(f"/proc/{pid}/stat").read_text()
        status_text = pathlib.Path(f"/proc/{pid}/status").read_text()
    except OSError:
        raise StepFailed(f"process {pid} is gone") from None
    stat = stat_text.rsplit(")", 1)[1].split()
    if stat[0] == "Z":
        raise StepFailed(f"process {pid} has exited")
    cpu = (int(stat[11]) + int(stat[12])) / CLK_TCK  # fields 14 and 15 of proc(5)
    status = {}
    for line in status_text.splitlines():
        name, _, value = line.partition(":")
        status[name] = value
    kib = {k: int(status[k].split()[0]) for k in ("VmRSS", "VmHWM")}
    return Figures(cpu, kib["VmRSS"] / 1024, kib["VmHWM"] / 1024)


def first_line(text: str | bytes) -> str:
    if isinstance(text, bytes):
        text = text.decode(errors="replace")
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[0][:300] if lines else "(nothing)"


def run_to_file(argv: list[str], out: pathlib.Path, timeout: float) -> float:
    """Run argv, stdout into `out`; its wall seconds. StepFailed if it exits non-zero, says
    anything on stderr or does not finish within `timeout`."""
    with open(out, "wb") as stdout:
        start = time.perf_counter()
        try:
            done = subprocess.run(
                argv, stdout=stdout, stderr=subprocess.PIPE, timeout=timeout, env=C_LOCALE
            )
        except subprocess.TimeoutExpired:
            raise StepFailed(f"{argv[0]} did not finish within {timeout:g} s") from None
        seconds = time.perf_counter() - start
    errors = done.stderr.decode(errors="replace").splitlines()
    if done.returncode or errors:
        more = f" (and {len(errors) - 1} more lines)" if len(errors) > 1 else ""
        raise StepFailed(
            f"{argv[0]} exited with {done.returncode}: {first_line(done.stderr)}{more}"
        )
    return seconds


def run_tar(
    tree: pathlib.Path, members: pathlib.Path, layout: Layout, timeout: float
) -> tuple[float, dict[str, Any]]:
    """`tar cf - -C TREE -T MEMBERS` streamed into check_tar_stream: wall seconds, checks.

    What tar says comes first: a file it could not read, it pads with zeros, so the check's
    complaint about those bytes is a consequence (StepFailed), not bytes the mount served."""
    argv = ["tar", "cf", "-", "-C", str(tree), "-T", str(members)]
    timed_out = threading.Event()
    failed: CheckFailed | None = None
    with tempfile.TemporaryFile() as errors:
        start = time.perf_counter()
        proc = subprocess.Popen(
            argv, stdout=subprocess.PIPE, stderr=errors, env=C_LOCALE, bufsize=MIB
        )

        def kill() -> None:
            timed_out.set()
            proc.kill()

        timer = threading.Timer(timeout, kill)
        timer.start()
        try:
            assert proc.stdout is not None
            try:
                checked = check_tar_stream(proc.stdout, layout)
            except CheckFailed as exc:
                failed, checked = exc, {}
                proc.kill()
            proc.wait()
        finally:
            timer.cancel()
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            if proc.stdout is not None:
                proc.stdout.close()
        seconds = time.perf_counter() - start
        errors.seek(0)
        said = errors.read()
    if timed_out.is_set():
        raise StepFailed(f"tar did not finish within {timeout:g} s")
    lines = said.decode(errors="replace").splitlines()
    if lines or (proc.returncode and failed is None):
        more = f" (and {len(lines) - 1} more lines)" if len(lines) > 1 else ""
        raise StepFailed(f"tar exited with {proc.returncode}: {first_line(said)}{more}")
    if failed is not None:
        raise failed
    return seconds, checked


def count_lines(path: pathlib.Path) -> int:
    count = 0
    with open(path, "rb") as f:
        while block := f.read(MIB):
            count += block.count(b"\n")
    return count


def mounts_under(path: pathlib.Path) -> list[str]:
    """Mount points at or below `path`, from /proc/self/mounts, dead FUSE mounts included
    (os.path.ismount says False for those: their lstat fails with ENOTCONN)."""
    prefix = str(path)
    found = []
    for line in pathlib.Path("/proc/self/mounts").read_text().splitlines():
        fields = line.split()
        if len(fields) >= 2:
            point = fields[1].replace("\\040", " ").replace("\\011", "\t").replace("\\134", "\\")
            if point == prefix or point.startswith(prefix + "/"):
                found.append(point)
    return found


def unmount_all(path: pathlib.Path) -> list[str]:
    """fusermount3 -u, then -u -z, on every mount under `path`; what is still mounted after."""
    for point in reversed(mounts_under(path)):
        for flags in ("-u",), ("-u", "-z"):
            with contextlib.suppress(subprocess.TimeoutExpired):
                subprocess.run(
                    ["fusermount3", *flags, point],
                    check=False,
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                    timeout=30,
                )
            if point not in mounts_under(path):
                break
    return mounts_under(path)


# --------------------------------------------------------------------------------------------
# The run


@dataclass
class Step:
    key: str
    label: str
    wall_s: float
    entries: int
    entries_per_s: float | None
    mount_cpu_s: float
    server_cpu_s: float | None
    rss_before_mib: float
    rss_mib: float
    peak_rss_mib: float
    checked: dict[str, Any]


Action = Callable[[], tuple[float, int, Callable[[], dict[str, Any]]]]
"""A step's work: returns its wall seconds, its entries, and its check, run after the figures
are read so that checking costs the mount nothing and is not in the wall time."""


@dataclass
class Run:
    layout: Layout
    mount_args: list[str]
    offline: bool
    drop_caches: bool
    timeout: float | None
    run_dir: pathlib.Path
    steps: list[Step] = field(default_factory=list)
    offline_steps: list[Step] = field(default_factory=list)
    offline_result: str = "not run"
    page_cache_dropped: list[bool] = field(default_factory=list)
    peaks: dict[str, float] = field(default_factory=dict)

    def step_timeout(self, entries: int, per_second: float = 1000) -> float:
        """--timeout, else a minute plus `entries` at `per_second` (slow, but not hung)."""
        return self.timeout or 60 + entries / per_second

    def cold(self) -> None:
        if self.drop_caches:
            from harness import drop_caches

            self.page_cache_dropped.append(drop_caches())

    def measure(
        self, into: list[Step], key: str, label: str, pid: int, spid: int | None, action: Action
    ) -> Step:
        log(f"{label} ...")
        before = figures(pid)
        server_before = figures(spid).cpu_s if spid else 0.0
        seconds, entries, check = action()
        after = figures(pid)
        server_cpu = figures(spid).cpu_s - server_before if spid else None
        step = Step(
            key,
            label,
            seconds,
            entries,
            entries / seconds if seconds > 0 else None,
            after.cpu_s - before.cpu_s,
            server_cpu,
            before.rss_mib,
            after.rss_mib,
            after.peak_mib,
            {"ok": None},
        )
        into.append(step)  # with its figures, even if its check fails
        try:
            step.checked = check()
        except CheckFailed as exc:
            step.checked = {"ok": False, "failure": first_line(str(exc))}
            raise
        log(
            f"{label}: {seconds:.2f} s, {entries} entries, mount CPU {step.mount_cpu_s:.2f} s, "
            f"RSS {after.rss_mib:.0f} MiB (peak {after.peak_mib:.0f} MiB)"
        )
        return step


def listing(
    run: Run,
    argv: list[str],
    name: str,
    check: Callable[[bytes], dict[str, Any]],
    timeout: float,
    header_lines: int = 0,
) -> Action:
    """A command whose stdout is a listing, one line per entry after `header_lines`, checked
    by `check`."""
    out = run.run_dir / f"{name}.txt"

    def action() -> tuple[float, int, Callable[[], dict[str, Any]]]:
        seconds = run_to_file(argv, out, timeout)

        def checked() -> dict[str, Any]:
            data = out.read_bytes()
            out.unlink()
            return check(data)

        return seconds, count_lines(out) - header_lines, checked

    return action


def tar_action(run: Run, tree: pathlib.Path, members: pathlib.Path, timeout: float) -> Action:
    def action() -> tuple[float, int, Callable[[], dict[str, Any]]]:
        seconds, checked = run_tar(tree, members, run.layout, timeout)
        return seconds, checked["files"], lambda: checked

    return action


def run_all(run: Run, store: pathlib.Path) -> None:
    from harness import castore, castore_mount, free_port, process, tcp_ready

    lay = run.layout
    mnt = run.run_dir / "mnt"
    tree, wide = mnt / lay.store_path("tree"), mnt / lay.store_path("wide")
    members = run.run_dir / "tar-members.txt"
    members.write_text("".join(lay.dir_path(d) + "\n" for d in lay.tar_dirs))
    port = free_port()
    address = f"grpc+http://127.0.0.1:{port}"
    serve = castore("serve", "--store", f"file://{store}", "--listen", address)
    cache = ["--cache-dir", str(run.run_dir / "cache")] if run.offline else []
    mount_args = [*cache, *run.mount_args]
    everything = lay.tree_entries + lay.wide_entries
    log(f"serving {store} on {address}")
    with process(serve, tcp_ready(port), run.run_dir / "serve.log") as server:
        log(f"mounting on {mnt} with --list-root {' '.join(mount_args)}".rstrip())
        with castore_mount(address, mnt, run.run_dir / "mount.log", mount_args) as mount:
            pid, spid = mount.pid, server.pid

            def find(key: str, label: str) -> None:
                action = listing(
                    run,
                    ["find", str(tree)],
                    key,
                    lambda data: check_find(data, mnt, lay, wide=False),
                    run.step_timeout(lay.tree_entries),
                )
                run.measure(run.steps, key, label, pid, spid, action)

            run.cold()
            find("find_cold", "find cold")
            find("find_2", "find 2nd")
            ls = listing(
                run,
                ["ls", "-l", str(wide)],
                "ls_wide",
                lambda data: check_ls(data, lay),
                run.step_timeout(lay.wide_entries),
                header_lines=1,
            )
            run.measure(run.steps, "ls_wide", "ls -l wide (cold)", pid, spid, ls)
            stat = listing(
                run,
                ["find", str(tree), str(wide), "-printf", "%y %s %i %p\\n"],
                "stat_all",
                lambda data: check_stat(data, mnt, lay),
                run.step_timeout(everything),
            )
            run.measure(run.steps, "stat_all", "stat all", pid, spid, stat)
            tar = tar_action(run, tree, members, run.step_timeout(lay.tar_files, 100))
            run.measure(run.steps, "tar_10pct", "tar c 10%", pid, spid, tar)
            find("find_3", "find 3rd")
            run.peaks["mount"] = figures(pid).peak_mib
    if run.offline:
        run_offline(run, address, mnt, tree, wide, members)


def offline_mount_args(run: Run) -> list[str]:
    args = ["--cache-dir", str(run.run_dir / "cache"), *run.mount_args]
    given = {a.split("=", 1)[0] for a in run.mount_args}
    for flag, value in OFFLINE_MOUNT_DEFAULTS.items():
        if flag not in given:
            args += [flag, value]
    return args


def run_offline(
    run: Run,
    address: str,
    mnt: pathlib.Path,
    tree: pathlib.Path,
    wide: pathlib.Path,
    members: pathlib.Path,
) -> None:
    """The server is stopped: a fresh mount on the same cache directory walks both store paths
    and re-reads the 10%. A wrong byte fails the run; whatever else goes wrong is the offline
    result, in one line."""
    from harness import castore_mount

    lay = run.layout
    online = {s.key: s.wall_s for s in run.steps}
    log_path = run.run_dir / "mount-offline.log"
    args = offline_mount_args(run)
    log(f"offline: the server is stopped; mounting again with {' '.join(args)}")
    run.cold()
    try:
        with castore_mount(address, mnt, log_path, args) as mount:
            walk = listing(
                run,
                ["find", str(tree), str(wide)],
                "offline_find",
                lambda data: check_find(data, mnt, lay, wide=True),
                run.timeout or 30 + 5 * (online["find_cold"] + online["ls_wide"]),
            )
            run.measure(run.offline_steps, "offline_find", "offline find", mount.pid, None, walk)
            timeout = run.timeout or 30 + 5 * online["tar_10pct"]
            tar = tar_action(run, tree, members, timeout)
            run.measure(run.offline_steps, "offline_tar", "offline tar c 10%", mount.pid, None, tar)
            run.peaks["offline mount"] = figures(mount.pid).peak_mib
    except WrongBytes:
        raise
    except (StepFailed, CheckFailed, OSError) as exc:
        run.offline_result = f"failed: {first_line(str(exc))}"
    except RuntimeError as exc:  # harness.process: the mount exited, or never came up
        lines = [line.strip() for line in log_text(log_path).splitlines() if line.strip()]
        why = lines[-1] if lines else first_line(str(exc))
        run.offline_result = f"failed: the mount did not start: {why[:300]}"
    else:
        run.offline_result = "ok"
    log(f"offline: {run.offline_result}")


def log_text(path: pathlib.Path) -> str:
    try:
        return path.read_text(errors="replace")
    except OSError:
        return ""


# --------------------------------------------------------------------------------------------
# Reporting


@dataclass(frozen=True)
class Verdict:
    target: str
    value: float | str | None
    shown: str
    met: bool | None  # None: not measured


def verdicts(run: Run, checks_ok: bool) -> list[Verdict]:
    steps = {s.key: s for s in run.steps}
    out = []
    peak = max(run.peaks.values(), default=None)
    if peak is None and run.steps:
        peak = max(s.peak_rss_mib for s in run.steps)
    out.append(
        Verdict(
            "peak RSS <= 300 MB through the run",
            peak,
            "-" if peak is None else f"{peak:.0f} MiB ({peak * MIB / 1e6:.0f} MB)",
            None if peak is None else peak * MIB <= PEAK_RSS_LIMIT,
        )
    )
    growth = shown = None
    if "find_3" in steps and "find_2" in steps:
        third = steps["find_3"]
        growth = third.rss_mib - steps["find_2"].rss_mib
        # The steps in between add what they read; the 3rd find's own share is the telling one.
        shown = (
            f"{growth:+.1f} MiB (during the 3rd find itself: "
            f"{third.rss_mib - third.rss_before_mib:+.1f} MiB)"
        )
    out.append(
        Verdict(
            f"RSS flat from the 2nd to the 3rd find (growth <= {RSS_GROWTH_LIMIT_MIB:.0f} MiB)",
            growth,
            shown or "-",
            None if growth is None else growth <= RSS_GROWTH_LIMIT_MIB,
        )
    )
    rate = steps["find_cold"].entries_per_s if "find_cold" in steps else None
    out.append(
        Verdict(
            "cold find >= 100,000 entries/s",
            rate,
            "-" if rate is None else f"{rate:,.0f} entries/s",
            None if rate is None else rate >= COLD_FIND_RATE,
        )
    )
    ls = steps["ls_wide"].wall_s if "ls_wide" in steps else None
    out.append(
        Verdict(
            f"ls -l of the wide directory <= {WIDE_LS_SECONDS:.1f} s",
            ls,
            "-" if ls is None else f"{ls:.2f} s",
            None if ls is None else ls <= WIDE_LS_SECONDS,
        )
    )
    out.append(
        Verdict(
            "every count and byte right",
            "yes" if checks_ok else "no",
            "yes" if checks_ok else "NO",
            checks_ok,
        )
    )
    offline = run.offline_result
    out.append(
        Verdict(
            "offline walk OK",
            offline,
            offline,
            None if offline == "not run" else offline == "ok",
        )
    )
    return out


def fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def print_report(run: Run, store: dict[str, Any], checks: dict[str, Any]) -> None:
    lay = run.layout
    print(
        f"castore mount at scale: {lay.files:,} files ({lay.per_dir} a directory, "
        f"{lay.dirs:,} directories in {lay.groups:,} group(s)) + a directory of {lay.wide:,}; "
        f"store {'reused' if store['cached'] else 'built'} "
        f"(built in {store['build_seconds']:.0f} s)"
    )
    args = " ".join(run.mount_args) or "(none)"
    print(f"mount arguments: {args}{' + --cache-dir (--offline)' if run.offline else ''}")
    dropped = run.page_cache_dropped
    if not run.drop_caches:
        print("page cache NOT dropped (--no-drop-caches)")
    elif dropped and all(dropped):
        print("page cache dropped (echo 3 > /proc/sys/vm/drop_caches) before the cold find")
    else:
        print("WARNING: the page cache could not be dropped (needs root): 'cold' is not cold")
    header = (
        f"{'step':<22}{'wall s':>10}{'entries':>11}{'entries/s':>12}{'mount CPU s':>13}"
        f"{'RSS MiB':>10}{'peak MiB':>10}"
    )
    print(header)
    for step in [*run.steps, *run.offline_steps]:
        print(
            f"{step.label:<22}{step.wall_s:>10.2f}{step.entries:>11,}"
            f"{fmt(step.entries_per_s, ',.0f'):>12}{step.mount_cpu_s:>13.2f}"
            f"{step.rss_mib:>10.1f}{step.peak_rss_mib:>10.1f}"
        )
    if not checks["ok"]:
        print(f"FAILED: {checks['failure']}")
    if run.offline:
        print(f"offline: {run.offline_result}")
    if {"files": lay.files, "per_dir": lay.per_dir, "wide": lay.wide} != FULL_SIZE:
        print("(issue 14's targets are set for 1,000,000 files, 200 a directory, 100,000 wide)")
    print("targets (issue 14):")
    for v in verdicts(run, checks["ok"]):
        verdict = {True: "met", False: "not met", None: "not run"}[v.met]
        print(f"  {verdict:<8} {v.target}: {v.shown}")


def rounded(value: Any) -> Any:
    """Floats to 6 decimals (CPU seconds come in clock ticks), through dicts and lists."""
    if isinstance(value, float):
        return round(value, 6)
    if isinstance(value, dict):
        return {k: rounded(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [rounded(v) for v in value]
    return value


def code_version() -> dict[str, Any]:
    def git(*args: str) -> str:
        try:
            done = subprocess.run(
                ["git", *args], cwd=ROOT, capture_output=True, text=True, timeout=10
            )
        except (OSError, subprocess.TimeoutExpired):
            return ""
        return done.stdout.strip()

    changed = git("status", "--porcelain", "--", "castore_client", "castore_fuse")
    return {"commit": git("rev-parse", "HEAD") or None, "uncommitted_changes": bool(changed)}


def report_json(
    args: argparse.Namespace,
    run: Run,
    store: dict[str, Any],
    checks: dict[str, Any],
) -> dict[str, Any]:
    lay = run.layout
    steps = [asdict(s) for s in run.steps]
    return {
        "title": "castore mount at scale",
        "config": {
            "files": lay.files,
            "per_dir": lay.per_dir,
            "wide": lay.wide,
            "dirs": lay.dirs,
            "groups": lay.groups,
            "mount_args": run.mount_args,
            "offline": run.offline,
            "drop_caches": run.drop_caches,
            "timeout": run.timeout,
            "workdir": str(args.workdir),
            "jobs": args.jobs,
            "full_size": {"files": lay.files, "per_dir": lay.per_dir, "wide": lay.wide}
            == FULL_SIZE,
        },
        "store": {
            **store,
            "tree_store_path": lay.store_path("tree"),
            "wide_store_path": lay.store_path("wide"),
        },
        "expected": {
            "tree_entries": lay.tree_entries,
            "wide_entries": lay.wide_entries,
            "wide_files": lay.wide,
            "tar_files": lay.tar_files,
            "tar_directories": len(lay.tar_dirs),
            "tar_bytes": lay.tar_bytes,
        },
        "page_cache_dropped": bool(run.page_cache_dropped) and all(run.page_cache_dropped),
        "steps": steps,
        "peak_rss_mib": run.peaks,
        "checks": checks,
        "offline": {
            "requested": run.offline,
            "result": run.offline_result,
            "ok": None if run.offline_result == "not run" else run.offline_result == "ok",
            "mount_args": offline_mount_args(run) if run.offline else None,
            "steps": [asdict(s) for s in run.offline_steps],
        },
        "targets": [asdict(v) for v in verdicts(run, checks["ok"])],
        "notes": [
            "wall_s: the command alone; the listing is checked after it, outside the time.",
            "mount_cpu_s / server_cpu_s: utime + stime from /proc/PID/stat over the step.",
            "rss_mib: the mount's VmRSS right after the step; peak_rss_mib its VmHWM by then.",
            "find cold/2nd/3rd walk the tree store path only, so that ls -l is the wide "
            "directory's first touch; stat all and the offline find walk both store paths.",
        ],
        "environment": {
            "kernel": platform.release(),
            "machine": platform.machine(),
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "code": code_version(),
        },
    }


# --------------------------------------------------------------------------------------------


def install_signal_handlers() -> None:
    """The first SIGINT/SIGTERM/SIGHUP unwinds; later ones are ignored so cleanup finishes."""

    def handler(signum: int, frame: object) -> None:
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(sig, signal.SIG_IGN)
        log(f"{signal.Signals(signum).name}: cleaning up, please wait")
        raise Interrupted(signum)

    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, handler)


@contextlib.contextmanager
def run_directory(workdir: pathlib.Path) -> Iterator[pathlib.Path]:
    """A fresh directory for one run's mountpoint, listings and cache; on exit everything
    under it is unmounted, its logs are copied to WORKDIR/logs/ and it is removed."""
    path = pathlib.Path(tempfile.mkdtemp(prefix="run-", dir=workdir))
    try:
        yield path
    finally:
        left = unmount_all(path)
        logs = workdir / "logs"
        shutil.rmtree(logs, ignore_errors=True)
        logs.mkdir(exist_ok=True)
        for log_file in path.glob("*.log"):
            with contextlib.suppress(OSError):
                shutil.copy(log_file, logs / log_file.name)
        if left:
            log(f"NOT removing {path}: still mounted: {', '.join(left)}")
        else:
            shutil.rmtree(path, ignore_errors=True)


def check_prerequisites() -> list[str]:
    problems = []
    if not os.path.exists("/dev/fuse"):
        problems.append("/dev/fuse is missing")
    for tool, package in (
        ("fusermount3", "fuse3"),
        ("find", "findutils"),
        ("tar", "tar"),
        ("ls", "coreutils"),
    ):
        if shutil.which(tool) is None:
            problems.append(f"{tool} is missing (Debian package {package})")
    for module in ("blake3", "grpc", "pyfuse3"):
        if importlib.util.find_spec(module) is None:
            problems.append(f"Python module {module} is missing: run with the checkout's .venv")
    return problems


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--files", type=int, default=FULL_SIZE["files"], help="files in the tree")
    parser.add_argument(
        "--per-dir", type=int, default=FULL_SIZE["per_dir"], help="files to a directory"
    )
    parser.add_argument(
        "--wide", type=int, default=FULL_SIZE["wide"], help="entries of the wide directory"
    )
    parser.add_argument(
        "--mount-arg",
        action="append",
        default=[],
        metavar="ARG",
        help="one more argument for castore mount (repeatable; --mount-arg=--flag=VALUE)",
    )
    parser.add_argument(
        "--offline",
        action="store_true",
        help="mount with --cache-dir, then stop the server and walk and read again",
    )
    parser.add_argument(
        "--workdir",
        type=pathlib.Path,
        default=pathlib.Path("/var/tmp/castore-scale"),
        help="where the built store is kept and the run happens (default /var/tmp/castore-scale)",
    )
    parser.add_argument("--json", type=pathlib.Path, help="default WORKDIR/scale-<params>.json")
    parser.add_argument(
        "--jobs", type=int, default=os.cpu_count() or 1, help="build worker processes"
    )
    parser.add_argument("--rebuild", action="store_true", help="build the store even if cached")
    parser.add_argument(
        "--keep-store",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="keep the built store for the next run (default: keep)",
    )
    parser.add_argument(
        "--drop-caches",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="drop the kernel's page cache before the cold find and the offline mount "
        "(root only; default: drop)",
    )
    parser.add_argument(
        "--timeout",
        type=float,
        help="seconds each step may take (default: a minute plus 1 ms an entry, 10 ms a file "
        "tar reads; "
        "offline: 30 s plus 5x the step's online time)",
    )
    args = parser.parse_args(argv)
    if not 1 <= args.files < 10**8:
        parser.error("--files must be from 1 to 99,999,999")
    if args.per_dir < 2:
        parser.error("--per-dir must be at least 2")
    if not 1 <= args.wide < 10**8:
        parser.error("--wide must be from 1 to 99,999,999")
    if Layout(args.files, args.per_dir, args.wide).groups >= 10**4:
        parser.error("--files / --per-dir**2 must stay under 10,000 groups")
    if args.jobs < 1 or (args.timeout is not None and not args.timeout > 0):
        parser.error("--jobs must be at least 1 and --timeout above 0")
    if args.offline and any(a.split("=", 1)[0] == "--cache-dir" for a in args.mount_arg):
        parser.error("--offline brings its own --cache-dir; do not pass one with --mount-arg")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    problems = check_prerequisites()
    if problems:
        for problem in problems:
            print(f"scale: {problem}", file=sys.stderr)
        return 2
    sys.path.insert(0, str(ROOT))
    sys.path.insert(0, str(ROOT / "bench"))
    layout = Layout(args.files, args.per_dir, args.wide)
    args.workdir = args.workdir.resolve()
    args.workdir.mkdir(parents=True, exist_ok=True)
    if args.json is None:
        args.json = args.workdir / f"scale-{layout.key}.json"
    install_signal_handlers()
    store: dict[str, Any] = {"path": None, "cached": False, "build_seconds": 0.0}
    run: Run | None = None
    checks: dict[str, Any] = {"ok": True, "failure": None}
    status = 0
    try:
        store = ensure_store(args.workdir, layout, args.jobs, args.rebuild)
        with run_directory(args.workdir) as run_dir:
            run = Run(layout, args.mount_arg, args.offline, args.drop_caches, args.timeout, run_dir)
            try:
                run_all(run, pathlib.Path(store["path"]))
            except (CheckFailed, StepFailed) as exc:
                checks = {"ok": False, "failure": first_line(str(exc))}
                status = 1
            except RuntimeError as exc:  # a server or mount that did not come up
                checks = {"ok": False, "failure": first_line(str(exc))}
                status = 1
                print(str(exc), file=sys.stderr)
    except Interrupted as exc:
        return 128 + int(exc.args[0])
    except KeyboardInterrupt:
        return 130
    finally:
        if not args.keep_store and store.get("path"):
            shutil.rmtree(store["path"], ignore_errors=True)
    assert run is not None
    # The JSON first: a closed stdout (scale.py | head) must not lose the results.
    args.json.parent.mkdir(parents=True, exist_ok=True)
    report = rounded(report_json(args, run, store, checks))
    args.json.write_text(json.dumps(report, indent=2, allow_nan=False) + "\n")
    print_report(run, store, checks)
    print(f"wrote {args.json}")
    if status:
        print(f"scale: FAILED: {checks['failure']}", file=sys.stderr)
    return status


if __name__ == "__main__":
    raise SystemExit(main())
