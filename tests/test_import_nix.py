"""`castore import` against Nix itself (Debian's nix-bin) as the oracle.

The store path printed must be the one `nix-store --add` prints; the NAR the store serves back
(through a real FUSE mount, through CalculateNAR, and as recorded in the PathInfo) must be the
NAR `nix-store --dump` makes of the source. Every `nix-store --add` runs in a throwaway chroot
store under tmp_path, so the real /nix is never touched.
"""

from __future__ import annotations

import dataclasses
import fcntl
import hashlib
import os
import pty
import re
import struct
import subprocess
import sys
import termios
import threading
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import pytest

from castore_client.connect import open_services
from castore_client.digest import B3Digest
from castore_client.directory import DirectoryNode, FileNode, Node
from castore_client.errors import CastoreError
from castore_client.importer import import_path
from castore_client.pathinfo import ContentAddress, HashType
from castore_client.rpc.server import CastoreServer
from castore_client.services import BlobService, Services
from castore_client.storepath import StorePath

from .conftest import listen_address, require_tool
from .fuse_harness import REPO_ROOT, mounted, require_fuse
from .trees import (
    BAD_KINDS,
    make_bad_entry,
    make_full_tree,
    make_single,
    make_tree_with_bad_entry,
    make_writable,
    write_file,
)

GUARD_TIMEOUT = 90
"""Kills an import that hangs (say, on a fifo opened for reading) before pytest-timeout does;
it measures nothing."""

ADDRESS_VARIABLES = (
    "CASTORE_STORE",
    "BLOB_SERVICE_ADDR",
    "DIRECTORY_SERVICE_ADDR",
    "PATH_INFO_SERVICE_ADDR",
)

SINGLE_NAMES = {
    "file": "hello.txt",
    "executable": "run.sh",
    "empty-file": "nothing",
    "symlink": "a-link",
    "empty-dir": "hollow",
}


# --------------------------------------------------------------------------------------------
# A server whose blob Puts are counted


class CountingBlobService:
    """Delegates to a store's BlobService, counting the blobs and bytes each Put brings."""

    def __init__(self, inner: BlobService) -> None:
        self.inner = inner
        self.lock = threading.Lock()
        self.puts = 0
        self.bytes = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def put(self, data: Iterable[bytes], *, timeout: float | None = None) -> B3Digest:
        received = 0

        def counted() -> Iterator[bytes]:
            nonlocal received
            for piece in data:
                received += len(piece)
                yield piece

        digest = self.inner.put(counted(), timeout=timeout)
        with self.lock:
            self.puts += 1
            self.bytes += received
        return digest


@pytest.fixture
def counting_blobs(memory_store: Services) -> CountingBlobService:
    return CountingBlobService(memory_store.blobs)


@pytest.fixture
def unix_server(
    memory_store: Services,
    counting_blobs: CountingBlobService,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[CastoreServer]:
    services = Services(counting_blobs, memory_store.directories, memory_store.path_infos)
    with CastoreServer(services, listen_address("unix", tmp_path_factory)) as server:
        yield server


@pytest.fixture
def client(unix_server: CastoreServer) -> Iterator[Services]:
    with open_services(unix_server.address, timeout=60) as services:
        yield services


# --------------------------------------------------------------------------------------------
# Running castore and nix-store


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
    for name in ADDRESS_VARIABLES:
        env.pop(name, None)  # they would override --store
    return env


def run_import(
    server: CastoreServer, *paths: Path | str, cwd: Path = REPO_ROOT, drop_dac: bool = False
) -> subprocess.CompletedProcess[bytes]:
    """`castore import --store <server> PATHS` as a user runs it; output is not a terminal.

    With `drop_dac`, a root importer loses CAP_DAC_OVERRIDE and CAP_DAC_READ_SEARCH (through
    its capability bounding set, so it stays uid 0 and can reach everything else), so that
    permission bits stop it as they stop any other user.
    """
    argv = [sys.executable, "-m", "castore_fuse", "import", "--store", str(server.address)]
    argv += [os.fsencode(p).decode("utf-8", "surrogateescape") for p in paths]
    if drop_dac and os.geteuid() == 0:
        setpriv = require_tool("setpriv")
        argv = [setpriv, "--bounding-set", "-dac_override,-dac_read_search", "--", *argv]
    return subprocess.run(
        argv,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        cwd=cwd,
        env=_env(),
        timeout=GUARD_TIMEOUT,
    )


def _drain(fd: int, sink: bytearray) -> None:
    while True:
        try:
            piece = os.read(fd, 65536)
        except OSError:  # EIO: every writer of the pty's other end has gone
            return
        if not piece:
            return
        sink += piece


def run_import_on_terminal(server: CastoreServer, path: Path) -> tuple[bytes, bytes]:
    """`castore import PATH` with stderr on a pseudo-terminal: (stdout, what the terminal got)."""
    controller, terminal = pty.openpty()
    fcntl.ioctl(terminal, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))
    argv = [sys.executable, "-m", "castore_fuse", "import", "--store", str(server.address)]
    shown = bytearray()
    reader = threading.Thread(target=_drain, args=(controller, shown), daemon=True)
    try:
        with subprocess.Popen(
            [*argv, str(path)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=terminal,
            cwd=REPO_ROOT,
            env=_env(),
        ) as proc:
            os.close(terminal)
            terminal = -1
            reader.start()
            stdout, _ = proc.communicate(timeout=GUARD_TIMEOUT)
        reader.join(GUARD_TIMEOUT)
    finally:
        os.close(controller)
        if terminal >= 0:
            os.close(terminal)
    assert proc.returncode == 0, bytes(shown).decode(errors="replace")
    return stdout, bytes(shown)


def nix_add(store_root: Path, *paths: Path | str, cwd: Path | None = None) -> bytes:
    """What `nix-store --add PATHS` prints, from a chroot store that keeps /nix/store names."""
    tool = require_tool("nix-store")
    return subprocess.run(
        [tool, "--store", str(store_root), "--add", *map(str, paths)],
        check=True,
        capture_output=True,
        cwd=cwd,
    ).stdout


def nix_dump(path: Path) -> bytes:
    tool = require_tool("nix-store")
    return subprocess.run(
        [os.fsencode(tool), b"--dump", os.fsencode(path)], check=True, capture_output=True
    ).stdout


def imported_lines(result: subprocess.CompletedProcess[bytes]) -> list[str]:
    assert result.returncode == 0, result.stderr.decode(errors="replace")
    return result.stdout.decode().splitlines()


def stderr_lines(result: subprocess.CompletedProcess[bytes]) -> list[str]:
    return [line for line in result.stderr.decode(errors="replace").splitlines() if line.strip()]


# --------------------------------------------------------------------------------------------
# Checks on what a store holds


def anonymous(node: Node) -> Node:
    return dataclasses.replace(node, name=b"")


def check_path_info(client: Services, store_path: StorePath, nar: bytes) -> Node:
    """The PathInfo of `store_path` describes `nar` exactly as an import should; returns its
    root node."""
    info = client.path_infos.get(store_path)
    info.validate()
    sha256 = hashlib.sha256(nar).digest()
    assert info.node is not None and info.narinfo is not None
    assert info.node.name == store_path.to_bytes_name()
    assert info.store_path == store_path
    assert (info.narinfo.nar_size, info.narinfo.nar_sha256) == (len(nar), sha256)
    assert info.narinfo.ca == ContentAddress(HashType.NAR_SHA256, sha256)
    assert info.references == ()
    assert info.narinfo.reference_names == ()
    return info.node


def file_nodes(client: Services, root: Node) -> Iterator[tuple[bytes, FileNode]]:
    """Every FileNode under `root`, with its path, from the directories the store holds."""
    if isinstance(root, FileNode):
        yield b"", root
    if not isinstance(root, DirectoryNode):
        return
    by_digest = {d.digest: d for d in client.directories.get_recursive(root.digest)}
    stack = [(b"", root.digest)]
    while stack:
        prefix, digest = stack.pop()
        directory = by_digest[digest]
        for f in directory.files:
            yield prefix + f.name, f
        for d in directory.directories:
            stack.append((prefix + d.name + b"/", d.digest))


def check_blobs_present(client: Services, root: Node) -> dict[bytes, FileNode]:
    """Every file's blob is in the store, even the empty one; returns the files by path."""
    files = dict(file_nodes(client, root))
    for path, node in files.items():
        try:
            client.blobs.stat(node.digest)
        except CastoreError as exc:
            raise AssertionError(f"blob of {path!r} ({node.size} bytes) not in the store") from exc
    return files


# --------------------------------------------------------------------------------------------
# The printed store path is the one Nix prints


def make_root(tmp_path: Path, kind: str) -> Path:
    src = tmp_path / "src"
    src.mkdir(parents=True)
    if kind == "tree":
        return make_full_tree(src / "tree")
    return make_single(src / SINGLE_NAMES[kind], kind)


@pytest.mark.parametrize("kind", ["tree", *SINGLE_NAMES])
def test_import_prints_what_nix_store_add_prints(
    tmp_path: Path, unix_server: CastoreServer, client: Services, kind: str
) -> None:
    root = make_root(tmp_path, kind)
    expected = nix_add(tmp_path / "nix", root)
    result = run_import(unix_server, root)
    assert result.returncode == 0, result.stderr.decode(errors="replace")
    assert result.stdout == expected
    store_path = StorePath.parse_absolute(expected.decode().strip())
    node = check_path_info(client, store_path, nix_dump(root))
    check_blobs_present(client, node)


def test_full_tree_big_file_is_chunked_by_the_server(
    tmp_path: Path, unix_server: CastoreServer, client: Services
) -> None:
    root = make_root(tmp_path, "tree")
    (line,) = imported_lines(run_import(unix_server, root))
    node = client.path_infos.get(StorePath.parse_absolute(line)).node
    assert isinstance(node, DirectoryNode)
    files = check_blobs_present(client, node)
    big = files[b"big-random"]
    assert big.size == (root / "big-random").stat().st_size
    assert len(client.blobs.stat(big.digest)) >= 2
    assert files[b"tool"].executable and files[b"empty-executable"].executable
    assert not files[b"group-exec-only"].executable
    assert files[b"\xff\xfe-not-utf8"].size == len(b"latin-1 bytes in the name\n")
    assert files[b"dir-\xe9/inside"].size > 0
    assert files[b"sub/dup-1"].digest == files[b"sub/dup-2"].digest


def test_several_paths_print_one_line_each_in_order(
    tmp_path: Path, unix_server: CastoreServer, client: Services
) -> None:
    roots = [make_root(tmp_path / kind, kind) for kind in ("symlink", "tree", "file", "empty-dir")]
    expected = nix_add(tmp_path / "nix", *roots)
    result = run_import(unix_server, *roots)
    assert result.returncode == 0, result.stderr.decode(errors="replace")
    assert result.stdout == expected
    assert len(expected.splitlines()) == len(roots)
    assert len(list(client.path_infos.list())) == len(roots)


@pytest.mark.parametrize("spelling", ["tree", "tree/", "./tree", "src/../tree"])
def test_relative_and_trailing_slash_paths_are_named_as_nix_names_them(
    tmp_path: Path, unix_server: CastoreServer, spelling: str
) -> None:
    (tmp_path / "src").mkdir()
    make_single(tmp_path / "tree", "empty-dir")
    write_file(tmp_path / "tree" / "f", b"f\n")
    expected = nix_add(tmp_path / "nix", spelling, cwd=tmp_path)
    result = run_import(unix_server, spelling, cwd=tmp_path)
    assert result.returncode == 0, result.stderr.decode(errors="replace")
    assert result.stdout == expected


def test_progress_bar_only_on_a_terminal(tmp_path: Path, unix_server: CastoreServer) -> None:
    root = make_root(tmp_path, "tree")
    expected = nix_add(tmp_path / "nix", root)
    piped = run_import(unix_server, root)
    assert piped.stdout == expected
    assert b"\r" not in piped.stderr and b"%|" not in piped.stderr
    stdout, shown = run_import_on_terminal(unix_server, root)
    assert stdout == expected
    assert b"%|" in shown, shown


# --------------------------------------------------------------------------------------------
# The NAR served back is the NAR of the source


@pytest.mark.fuse
def test_mounted_import_dumps_as_the_source(
    tmp_path: Path, unix_server: CastoreServer, client: Services
) -> None:
    require_fuse()
    root = make_root(tmp_path, "tree")
    source_nar = nix_dump(root)
    (line,) = imported_lines(run_import(unix_server, root))
    store_path = StorePath.parse_absolute(line)
    node = check_path_info(client, store_path, source_nar)

    with mounted(unix_server.address, tmp_path=tmp_path) as mnt:
        mounted_nar = nix_dump(mnt / str(store_path))
    sha256 = hashlib.sha256(source_nar).digest()
    assert hashlib.sha256(mounted_nar).digest() == sha256
    assert mounted_nar == source_nar
    assert client.path_infos.calculate_nar(anonymous(node)) == (len(source_nar), sha256)


@pytest.mark.parametrize("kind", ["tree", *SINGLE_NAMES])
def test_calculate_nar_agrees_with_nix_dump(
    tmp_path: Path, unix_server: CastoreServer, client: Services, kind: str
) -> None:
    root = make_root(tmp_path, kind)
    nar = nix_dump(root)
    (line,) = imported_lines(run_import(unix_server, root))
    node = client.path_infos.get(StorePath.parse_absolute(line)).node
    assert node is not None
    assert client.path_infos.calculate_nar(anonymous(node)) == (
        len(nar),
        hashlib.sha256(nar).digest(),
    )


# --------------------------------------------------------------------------------------------
# The Python API, and importing what the store already has


def test_import_path_result_describes_the_import(
    tmp_path: Path, client: Services, counting_blobs: CountingBlobService
) -> None:
    root = make_root(tmp_path, "tree")
    nar = nix_dump(root)
    result = import_path(root, client)
    assert result.store_path.absolute == nix_add(tmp_path / "nix", root).decode().strip()
    assert (result.nar_size, result.nar_sha256) == (len(nar), hashlib.sha256(nar).digest())
    stored = check_path_info(client, result.store_path, nar)
    assert anonymous(result.node) == anonymous(stored)
    assert result.blobs_uploaded == counting_blobs.puts > 0
    assert result.bytes_uploaded == counting_blobs.bytes
    check_blobs_present(client, stored)


def test_second_import_uploads_no_blob(
    tmp_path: Path, client: Services, counting_blobs: CountingBlobService
) -> None:
    root = make_root(tmp_path, "tree")
    first = import_path(root, client)
    assert first.blobs_uploaded > 0
    puts, sent = counting_blobs.puts, counting_blobs.bytes
    second = import_path(root, client)
    assert (counting_blobs.puts, counting_blobs.bytes) == (puts, sent)
    assert (second.blobs_uploaded, second.bytes_uploaded) == (0, 0)
    distinct = {f.digest for f in check_blobs_present(client, first.node).values()}
    assert second.blobs_skipped >= len(distinct)
    assert second.store_path == first.store_path
    assert (second.nar_size, second.nar_sha256) == (first.nar_size, first.nar_sha256)
    assert anonymous(second.node) == anonymous(first.node)


def test_only_changed_content_is_uploaded(
    tmp_path: Path, client: Services, counting_blobs: CountingBlobService
) -> None:
    root = make_root(tmp_path, "tree")
    first = import_path(root, client)
    write_file(root / "sub" / "deeper" / "x", b"y" * 1000, 0o700)  # new content
    write_file(root / "copy-of-leaf", b"leaf")  # content the store has
    puts = counting_blobs.puts
    second = import_path(root, client)
    assert second.blobs_uploaded == 1 == counting_blobs.puts - puts
    assert second.bytes_uploaded == 1000
    assert second.store_path != first.store_path
    assert second.store_path.absolute == nix_add(tmp_path / "nix", root).decode().strip()


def test_cli_reimport_puts_no_blob(
    tmp_path: Path, unix_server: CastoreServer, counting_blobs: CountingBlobService
) -> None:
    root = make_root(tmp_path, "tree")
    first = imported_lines(run_import(unix_server, root))
    puts = counting_blobs.puts
    assert imported_lines(run_import(unix_server, root)) == first
    assert counting_blobs.puts == puts


# --------------------------------------------------------------------------------------------
# Entries a NAR cannot hold, and entries that cannot be read


def make_bad_tree(tmp_path: Path, kind: str, where: str) -> tuple[Path, Path]:
    """(the path to import, the bad entry in it): nested in a tree, or the import root itself."""
    src = tmp_path / "src"
    src.mkdir()
    try:
        if where == "nested":
            root = src / "tree"
            return root, make_tree_with_bad_entry(root, kind)
        make_bad_entry(src / "bad", kind)
        return src / "bad", src / "bad"
    except PermissionError as exc:
        # Only a device node needs a privilege (CAP_MKNOD) to be made; no way around that.
        pytest.skip(f"cannot make a {kind} here: {exc}")


def describe(bad: Path, root: Path) -> str:
    """The part of the bad entry's path the error line must show, however it spells the path."""
    return str(bad.relative_to(root.parent))


@pytest.mark.parametrize("where", ["nested", "root"])
@pytest.mark.parametrize("kind", BAD_KINDS)
def test_cli_refuses_bad_entries(
    tmp_path: Path, unix_server: CastoreServer, client: Services, kind: str, where: str
) -> None:
    root, bad = make_bad_tree(tmp_path, kind, where)
    try:
        # Root reads mode-000 files anyway; run_import takes that power away for these.
        result = run_import(unix_server, root, drop_dac=kind.startswith("unreadable"))
    finally:
        make_writable(tmp_path / "src")
    assert result.returncode != 0
    assert result.stdout == b""
    lines = stderr_lines(result)
    assert len(lines) == 1, result.stderr.decode(errors="replace")
    assert describe(bad, root) in lines[0]
    assert list(client.path_infos.list()) == []


@pytest.mark.parametrize("kind", ["socket", "fifo", "device"])
def test_import_path_refuses_bad_entries(tmp_path: Path, client: Services, kind: str) -> None:
    # The unreadable kinds need the importer to run without root's powers: see the CLI test.
    root, bad = make_bad_tree(tmp_path, kind, "nested")
    with pytest.raises((CastoreError, OSError), match=re.escape(describe(bad, root))):
        import_path(root, client)
    assert list(client.path_infos.list()) == []


def test_cli_refuses_a_missing_path(
    tmp_path: Path, unix_server: CastoreServer, client: Services
) -> None:
    result = run_import(unix_server, tmp_path / "absent")
    assert result.returncode != 0
    assert result.stdout == b""
    lines = stderr_lines(result)
    assert len(lines) == 1 and "absent" in lines[0], result.stderr.decode(errors="replace")
    assert list(client.path_infos.list()) == []


def test_a_bad_path_among_good_ones_fails_the_command(
    tmp_path: Path, unix_server: CastoreServer
) -> None:
    good = make_root(tmp_path / "good", "file")
    root, bad = make_bad_tree(tmp_path, "fifo", "nested")
    result = run_import(unix_server, good, root)
    assert result.returncode != 0
    assert describe(bad, root) in result.stderr.decode(errors="replace")
