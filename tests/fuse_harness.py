"""Helpers for the mount tests: fixture stores, a mount subprocess, and misbehaving services.

Every mount test runs the real `castore mount` command against an in-process gRPC server, so
that what is tested is what a user runs. Digests and sizes that tests compare against come
from `tests.fixtures` (the blake3 package and hand-assembled protobuf bytes) or from the
embedded store the test server wraps, never from `castore_fuse`.
"""

from __future__ import annotations

import base64
import contextlib
import importlib.util
import itertools
import os
import pathlib
import random
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest

from castore_client.address import Address, parse_address
from castore_client.digest import B3Digest
from castore_client.directory import Directory, DirectoryNode, FileNode, Node, SymlinkNode
from castore_client.pathinfo import NarInfo, PathInfo
from castore_client.services import BlobService, ChunkMeta, DirectoryService, PathInfoService

from . import fixtures as fx

REPO_ROOT = pathlib.Path(__file__).resolve().parent.parent

# Root names of the reference tests (tvix castore/src/fs/fuse/tests.rs).
BLOB_A_NAME = "00000000000000000000000000000000-test"
BLOB_B_NAME = "55555555555555555555555555555555-test"
HELLOWORLD_NAME = "66666666666666666666666666666666-test"
SYMLINK_NAME = "11111111111111111111111111111111-test"  # -> BLOB_A_NAME
SYMLINK_NAME2 = "44444444444444444444444444444444-test"  # -> /nix/store/somewhereelse
WITH_KEEP_NAME = "22222222222222222222222222222222-test"
COMPLICATED_NAME = "33333333333333333333333333333333-test"

SOMEWHERE_ELSE = b"/nix/store/somewhereelse"

# Our additions (hash parts are distinct nixbase32 strings, as the PathInfoService keys on them).
DANGLING_NAME = "77777777777777777777777777777777-dangling"
DANGLING_TARGET = b"88888888888888888888888888888888-absent"
RANDOM_NAME = "cccccccccccccccccccccccccccccccc-random"
RANDOM_BLOB = random.Random(2603).randbytes(3 << 20)

XATTR_DIRECTORY = "user.{ns}.castore.directory.digest"
XATTR_BLOB = "user.{ns}.castore.blob.digest"

MOUNT_TIMEOUT = 20.0
STOP_TIMEOUT = 15.0


def digest_text(raw: bytes) -> str:
    """The text form of a digest (`blake3-` + padded standard base64), written out by hand."""
    return "blake3-" + base64.b64encode(raw).decode("ascii")


# --------------------------------------------------------------------------------------------
# Skipping, or failing in CI


def require_fuse() -> None:
    """Mount tests need /dev/fuse, fusermount3 and pyfuse3: skip locally, fail in CI."""
    missing = [
        what
        for what, present in (
            ("/dev/fuse", os.path.exists("/dev/fuse")),
            ("fusermount3", shutil.which("fusermount3") is not None),
            ("pyfuse3", importlib.util.find_spec("pyfuse3") is not None),
        )
        if not present
    ]
    if missing:
        reason = f"mount tests need {', '.join(missing)}"
        if "CI" in os.environ:
            pytest.fail(f"{reason}, and CI is set")
        pytest.skip(reason)


# --------------------------------------------------------------------------------------------
# Populating stores


def path_info(node: Node) -> PathInfo:
    return PathInfo(node=node, narinfo=NarInfo(nar_size=0, nar_sha256=bytes(32)))


def put_blob(store: Any, data: bytes) -> B3Digest:
    digest = store.blobs.put([data])
    assert digest.raw == fx.b3(data), "the store hashed a fixture blob differently"
    return digest


def with_keep_directory() -> Directory:
    directory = Directory(files=(FileNode(b".keep", B3Digest(fx.b3(fx.EMPTY)), 0),))
    assert directory.encoded == fx.WITH_KEEP_BYTES
    return directory


def complicated_directory() -> Directory:
    directory = Directory(
        directories=(DirectoryNode(b"keep", B3Digest(fx.WITH_KEEP_DIGEST), fx.WITH_KEEP_SIZE),),
        files=(FileNode(b".keep", B3Digest(fx.b3(fx.EMPTY)), 0),),
        symlinks=(SymlinkNode(b"aa", SOMEWHERE_ELSE),),
    )
    assert directory.encoded == fx.COMPLICATED_BYTES
    return directory


def file_root(name: str, data: bytes, executable: bool = False) -> FileNode:
    return FileNode(name.encode(), B3Digest(fx.b3(data)), len(data), executable)


def with_keep_root() -> DirectoryNode:
    return DirectoryNode(WITH_KEEP_NAME.encode(), B3Digest(fx.WITH_KEEP_DIGEST), fx.WITH_KEEP_SIZE)


def populate_fixtures(store: Any) -> None:
    """The reference tests' root nodes, all in one store, uploaded through its put methods."""
    for blob in (fx.BLOB_A, fx.BLOB_B, fx.HELLOWORLD, fx.EMPTY):
        put_blob(store, blob)
    store.directories.put([with_keep_directory()])
    store.directories.put([with_keep_directory(), complicated_directory()])
    roots: list[Node] = [
        file_root(BLOB_A_NAME, fx.BLOB_A),
        file_root(BLOB_B_NAME, fx.BLOB_B),
        file_root(HELLOWORLD_NAME, fx.HELLOWORLD, executable=True),
        SymlinkNode(SYMLINK_NAME.encode(), BLOB_A_NAME.encode()),
        SymlinkNode(SYMLINK_NAME2.encode(), SOMEWHERE_ELSE),
        with_keep_root(),
        DirectoryNode(
            COMPLICATED_NAME.encode(), B3Digest(fx.COMPLICATED_DIGEST), fx.COMPLICATED_SIZE
        ),
    ]
    for node in roots:
        store.path_infos.put(path_info(node))


def populate_extras(store: Any) -> None:
    """A dangling relative symlink and a 3 MiB random multi-chunk file, besides the fixtures."""
    store.path_infos.put(path_info(SymlinkNode(DANGLING_NAME.encode(), DANGLING_TARGET)))
    digest = put_blob(store, RANDOM_BLOB)
    assert len(store.blobs.stat(digest)) >= 2, "the random file must be chunked"
    store.path_infos.put(path_info(file_root(RANDOM_NAME, RANDOM_BLOB)))


def populate_missing_directory(store: Any) -> None:
    """The reference's B21 setup: a root DirectoryNode for DIRECTORY_WITH_KEEP, no Directory."""
    store.path_infos.put(path_info(with_keep_root()))


def populate_missing_blob(store: Any) -> None:
    """The reference's B22 setup: a root FileNode for BLOB_A, and no blob."""
    store.path_infos.put(path_info(file_root(BLOB_A_NAME, fx.BLOB_A)))


# Root names every test store of `populate_fixtures` + `populate_extras` holds, with what
# lstat must say about them: (kind, size).
ROOT_ENTRIES: dict[str, tuple[str, int]] = {
    BLOB_A_NAME: ("file", len(fx.BLOB_A)),
    BLOB_B_NAME: ("file", len(fx.BLOB_B)),
    HELLOWORLD_NAME: ("file", len(fx.HELLOWORLD)),
    SYMLINK_NAME: ("symlink", len(BLOB_A_NAME)),
    SYMLINK_NAME2: ("symlink", len(SOMEWHERE_ELSE)),
    WITH_KEEP_NAME: ("dir", fx.WITH_KEEP_SIZE),
    COMPLICATED_NAME: ("dir", fx.COMPLICATED_SIZE),
    DANGLING_NAME: ("symlink", len(DANGLING_TARGET)),
    RANDOM_NAME: ("file", len(RANDOM_BLOB)),
}


def store_hash(i: int) -> str:
    """A distinct 32-character nixbase32 hash part for number `i`."""
    alphabet = "0123456789abcdfghijklmnpqrsvwxyz"
    chars = []
    for _ in range(32):
        i, rem = divmod(i, 32)
        chars.append(alphabet[rem])
    return "".join(reversed(chars))


# --------------------------------------------------------------------------------------------
# Mounting


def mounted_paths() -> set[str]:
    """Mount points in this mount namespace, from /proc/self/mountinfo.

    `os.path.ismount` cannot tell a stale FUSE mount (every stat fails with ENOTCONN) from
    no mount at all, so teardown and the crash tests ask the kernel's table instead.
    """
    paths = set()
    with open("/proc/self/mountinfo", encoding="utf-8", errors="surrogateescape") as f:
        for line in f:
            point = line.split(" ")[4]
            paths.add(re.sub(r"\\([0-7]{3})", lambda m: chr(int(m[1], 8)), point))
    return paths


def processes_mentioning(text: str) -> list[str]:
    """Command lines of running processes that contain `text` (what a test left behind)."""
    found = []
    for cmdline in pathlib.Path("/proc").glob("[0-9]*/cmdline"):
        try:
            argv = cmdline.read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if text in argv:
            found.append(argv)
    return found


def is_mounted(path: os.PathLike[str] | str) -> bool:
    return os.path.realpath(path) in mounted_paths()


def wait_until(predicate: Callable[[], bool], timeout: float, interval: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout
    while True:
        if predicate():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(interval)


def wait_until_settled(value: Callable[[], int], quiet: float = 1.0, timeout: float = 60) -> int:
    """Poll `value` until it has not changed for `quiet` seconds; returns it."""
    deadline = time.monotonic() + timeout
    last, since = value(), time.monotonic()
    while time.monotonic() < deadline:
        time.sleep(quiet / 4)
        now = value()
        if now != last:
            last, since = now, time.monotonic()
        elif time.monotonic() - since >= quiet:
            break
    return last


def mount_command(
    server_address: Address | str, flags: Iterable[str], mountpoint: os.PathLike[str] | str
) -> list[str]:
    return [
        sys.executable,
        "-m",
        "castore_fuse",
        "mount",
        "--store",
        str(server_address),
        *flags,
        str(mountpoint),
    ]


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
    for name in (
        "CASTORE_STORE",
        "BLOB_SERVICE_ADDR",
        "DIRECTORY_SERVICE_ADDR",
        "PATH_INFO_SERVICE_ADDR",
    ):
        env.pop(name, None)  # they would override --store
    return env


@dataclass
class Mount:
    """A running `castore mount` process and its mountpoint; `log()` is what it wrote."""

    path: pathlib.Path
    proc: subprocess.Popen[bytes]
    log_path: pathlib.Path
    returncode: int | None = field(default=None, init=False)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def alive(self) -> bool:
        return self.proc.poll() is None

    def wait_mounted(self, timeout: float = MOUNT_TIMEOUT) -> None:
        deadline = time.monotonic() + timeout
        while not is_mounted(self.path):
            if self.proc.poll() is not None:
                raise AssertionError(
                    f"castore mount exited with {self.proc.returncode} before mounting:\n"
                    f"{self.log()}"
                )
            if time.monotonic() >= deadline:
                raise AssertionError(f"not mounted after {timeout} s:\n{self.log()}")
            time.sleep(0.05)
        os.stat(self.path)  # returns once the filesystem answers requests

    def signal(self, sig: signal.Signals) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)

    def wait_exit(self, timeout: float = STOP_TIMEOUT) -> int:
        try:
            self.returncode = self.proc.wait(timeout)
        except subprocess.TimeoutExpired as exc:
            raise AssertionError(
                f"castore mount still running {timeout} s after a signal:\n{self.log()}"
            ) from exc
        return self.returncode

    def stop(self) -> int | None:
        """SIGTERM, then SIGKILL, then a lazy fusermount3 -u: never leave a mount behind."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(STOP_TIMEOUT)
        self.returncode = self.proc.returncode
        if is_mounted(self.path):
            wait_until(lambda: not is_mounted(self.path), 2.0)
        if is_mounted(self.path):
            subprocess.run(["fusermount3", "-u", "-z", str(self.path)], check=False)
        return self.returncode


def start_mount(
    server_address: Address | str, *flags: str, tmp_path: pathlib.Path, name: str = "mnt"
) -> Mount:
    """Start `castore mount` on `tmp_path/name` without waiting; the caller must stop() it."""
    mountpoint = tmp_path / name
    mountpoint.mkdir(exist_ok=True)
    log_path = tmp_path / f"{name}.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            mount_command(server_address, flags, mountpoint),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=REPO_ROOT,
            env=_env(),
        )
    return Mount(mountpoint, proc, log_path)


@contextlib.contextmanager
def mount_process(
    server_address: Address | str, *flags: str, tmp_path: pathlib.Path, name: str = "mnt"
) -> Iterator[Mount]:
    """A mounted filesystem as a Mount (path, process, log); unmounted however the block ends."""
    mount = start_mount(server_address, *flags, tmp_path=tmp_path, name=name)
    try:
        mount.wait_mounted()
        yield mount
    finally:
        mount.stop()


@contextlib.contextmanager
def mounted(
    server_address: Address | str, *flags: str, tmp_path: pathlib.Path
) -> Iterator[pathlib.Path]:
    """The mountpoint of `castore mount --store server_address *flags`, for a `with` block."""
    with mount_process(server_address, *flags, tmp_path=tmp_path) as mount:
        yield mount.path


def run_mount_expecting_error(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """Run `castore mount ARGS`, which must exit by itself; a mount that stays up is stopped."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "castore_fuse", "mount", *args],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=REPO_ROOT,
        env=_env(),
    )
    try:
        stdout, stderr = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.terminate()
        try:
            stdout, stderr = proc.communicate(timeout=STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            proc.kill()
            stdout, stderr = proc.communicate()
        raise AssertionError(
            f"castore mount {' '.join(args)} did not exit within {timeout} s:\n{stderr}"
        ) from None
    return subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr)


def unix_listen_address(tmp_path_factory: pytest.TempPathFactory) -> Address:
    """A unix socket address in a short directory (socket paths are limited to 107 bytes)."""
    return parse_address(f"grpc+unix://{tmp_path_factory.mktemp('sock')}/castore.sock")


TCP_LISTEN_ADDRESS = "grpc+http://127.0.0.1:0"


# --------------------------------------------------------------------------------------------
# Services that misbehave on purpose


class _Delegating:
    def __init__(self, inner: Any) -> None:
        self.inner = inner

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


class CorruptingBlobService(_Delegating):
    """Serves one flipped byte in every blob or chunk in `corrupt`, whichever way it is read.

    Reading a blob whole whose chunks include a corrupted one yields its chunks one by one
    through this wrapper, so that the corruption shows however a client asks.
    """

    def __init__(self, inner: BlobService, corrupt: Iterable[B3Digest]) -> None:
        super().__init__(inner)
        self.corrupt = set(corrupt)
        self.served_corrupt = 0

    def stat(self, digest: B3Digest, *, timeout: float | None = None) -> list[ChunkMeta]:
        return self.inner.stat(digest, timeout=timeout)

    def read(self, digest: B3Digest, *, timeout: float | None = None) -> Iterator[bytes]:
        if digest in self.corrupt:
            return self._flipped(self.inner.read(digest, timeout=timeout))
        chunks = self.inner.stat(digest, timeout=timeout)
        if any(chunk.digest in self.corrupt for chunk in chunks):
            return itertools.chain.from_iterable(
                self.read(chunk.digest, timeout=timeout) for chunk in chunks
            )
        return self.inner.read(digest, timeout=timeout)

    def _flipped(self, pieces: Iterator[bytes | memoryview]) -> Iterator[bytes]:
        flipped = False
        for piece in pieces:
            data = bytes(piece)
            if not flipped and data:
                middle = len(data) // 2
                data = data[:middle] + bytes([data[middle] ^ 0x01]) + data[middle + 1 :]
                flipped = True
                self.served_corrupt += 1
            yield data


def invalid_directories() -> dict[str, tuple[bytes, Directory, str]]:
    """Directories a server may send but a client must refuse, by the rule each breaks.

    Each maps a case to (the digest asked for, what is served for it, a child name to stat).
    Digests come from hand-encoded bytes (tests.fixtures), not from the Directory model.
    """
    empty = B3Digest(fx.b3(fx.EMPTY))
    cases: dict[str, tuple[bytes, Directory, str]] = {}
    for case, names in (
        ("dotdot", [b"..", b"x"]),
        ("slash", [b"a/b", b"c"]),
        ("unsorted", [b"b", b"a"]),
    ):
        encoded = fx.directory(files=[fx.file_node(n, empty.raw, 0) for n in names])
        served = Directory(files=tuple(FileNode(n, empty, 0) for n in names))
        assert served.encoded == encoded
        cases[case] = (fx.b3(encoded), served, names[-1].decode())
    # A valid directory served for a digest that is not its own.
    cases["mismatch"] = (fx.b3(b"not the directory you asked for"), with_keep_directory(), ".keep")
    return cases


INVALID_DIRECTORY_ROOTS = {
    "dotdot": "ffffffffffffffffffffffffffffffff-dotdot",
    "slash": "gggggggggggggggggggggggggggggggg-slash",
    "unsorted": "hhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhh-unsorted",
    "mismatch": "iiiiiiiiiiiiiiiiiiiiiiiiiiiiiiii-mismatch",
}


def populate_invalid_directories(store: Any) -> dict[B3Digest, Directory]:
    """Root DirectoryNodes for each invalid directory; returns what the server must send."""
    served = {}
    for case, (digest, directory, _child) in invalid_directories().items():
        size = 2 * len(directory)
        node = DirectoryNode(INVALID_DIRECTORY_ROOTS[case].encode(), B3Digest(digest), size)
        store.path_infos.put(path_info(node))
        served[B3Digest(digest)] = directory
    return served


class InvalidDirectoryService(_Delegating):
    """Answers the digests in `replacements` with the (invalid) Directory given for each."""

    def __init__(self, inner: DirectoryService, replacements: dict[B3Digest, Directory]) -> None:
        super().__init__(inner)
        self.replacements = dict(replacements)

    def get(self, digest: B3Digest, *, timeout: float | None = None) -> Directory:
        replacement = self.replacements.get(digest)
        if replacement is not None:
            return replacement
        return self.inner.get(digest, timeout=timeout)

    def get_recursive(
        self, digest: B3Digest, *, timeout: float | None = None
    ) -> Iterator[Directory]:
        seen = {digest}
        queue = [digest]
        while queue:
            directory = self.get(queue.pop(0), timeout=timeout)
            yield directory
            for child in directory.directories:
                if child.digest not in seen:
                    seen.add(child.digest)
                    queue.append(child.digest)


class CountingPathInfoService(_Delegating):
    """Counts the PathInfos each `list()` produces, and notes when a listing stops."""

    def __init__(self, inner: PathInfoService) -> None:
        super().__init__(inner)
        self.lock = threading.Lock()
        self.listings: list[Listing] = []

    def list(self, *, timeout: float | None = None) -> Iterator[PathInfo]:
        listing = Listing()
        with self.lock:
            self.listings.append(listing)
        return listing.run(self.inner.list(timeout=timeout))


@dataclass
class Listing:
    produced: int = 0
    exhausted: bool = False
    ended: threading.Event = field(default_factory=threading.Event)

    def run(self, inner: Iterator[PathInfo]) -> Iterator[PathInfo]:
        try:
            for item in inner:
                self.produced += 1
                yield item
            self.exhausted = True
        finally:
            self.ended.set()
