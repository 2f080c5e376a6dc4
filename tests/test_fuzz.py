"""Fuzz targets: everything a server or a user can hand us must end in a castore error or a
correct result, never in another exception, a hang or a wrong answer.

Each target is a plain check function and a hypothesis strategy, in `TARGETS`. The tests
here run each briefly (CASTORE_FUZZ_EXAMPLES examples, 200 by default); `bench/fuzz` runs
the same targets for much longer. Properties:

  directory_bytes   decode_directory + Directory.validate on arbitrary and on mutated valid
                    encodings: only castore errors; a directory that validates re-encodes
                    canonically, round-trips, and has only names the kernel can take.
  path_info_bytes   decode_path_info + PathInfo.validate: only castore errors; a valid one's
                    root node is named like a store path.
  nar_trees         render_nar of random trees (some broken: bad names, unsorted or duplicate
                    entries, bad symlink targets, contents that disagree with their size):
                    castore error, or bytes that a NAR parser written here reads back as
                    exactly that tree; a tree that is fine must render.
  nixbase32         decode of arbitrary text: Nixbase32Error, or bytes that encode back to
                    the same text; encode/decode round-trips any bytes.
  store_paths       StorePath.parse and parse_absolute of arbitrary text: InvalidStorePath, or
                    a path that prints back as the same text.
  addresses         parse_address of arbitrary text: InvalidAddress, or an address whose
                    text form parses back to it.
  digests           B3Digest.parse of arbitrary text: InvalidDigest, or a digest that prints
                    back in a form that parses to it.
"""

from __future__ import annotations

import base64
import hashlib
import os
import pathlib
import re
import string
import subprocess
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from castore_client import nixbase32
from castore_client.address import Address, parse_address
from castore_client.codec import decode_directory, decode_path_info
from castore_client.digest import B3Digest
from castore_client.directory import (
    MAX_NAME_LEN,
    MAX_SYMLINK_TARGET_LEN,
    Directory,
    DirectoryNode,
    FileNode,
    Node,
    SymlinkNode,
)
from castore_client.errors import (
    CastoreError,
    InvalidAddress,
    InvalidDigest,
    InvalidStorePath,
)
from castore_client.nar import nar_size_and_sha256, render_nar
from castore_client.storepath import StorePath

from . import fixtures as fx

EXAMPLES = int(os.environ.get("CASTORE_FUZZ_EXAMPLES", "200"))


def fuzz_settings(max_examples: int = EXAMPLES, **kwargs: Any) -> settings:
    return settings(
        max_examples=max_examples,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
        **kwargs,
    )


# --------------------------------------------------------------------------------------------
# Directory and PathInfo decoding


_VALID_NAMES = st.text(string.ascii_letters + string.digits + "._-", min_size=1, max_size=8)
# Mostly valid, so that whole directories get past the first check often enough.
_NAMES = st.one_of(
    _VALID_NAMES.map(str.encode),
    _VALID_NAMES.map(str.encode),
    _VALID_NAMES.map(str.encode),
    st.sampled_from([b"", b".", b"..", b"a/b", b"/", b"a\0", b"x" * 255, b"x" * 256]),
    st.binary(max_size=10),
)
_DIGESTS = st.one_of(
    st.binary(min_size=32, max_size=32),
    st.sampled_from([fx.b3(b""), fx.WITH_KEEP_DIGEST]),
    st.sampled_from([fx.b3(b""), fx.WITH_KEEP_DIGEST]),
    st.binary(max_size=40),
)
_MUTATIONS = st.sampled_from([0, 0, 0, 0, 1, 2, 3])
_SIZES = st.one_of(st.integers(0, 1000), st.sampled_from([0, (1 << 63), (1 << 64) - 1]))


def _encoded_node() -> st.SearchStrategy[tuple[int, bytes]]:
    """(Directory field number, hand-encoded node) with arbitrary, often invalid, contents."""
    return st.one_of(
        st.builds(lambda n, d, s: (1, fx.dir_node(n, d, s)), _NAMES, _DIGESTS, _SIZES),
        st.builds(
            lambda n, d, s, x: (2, fx.file_node(n, d, s, x)),
            _NAMES,
            _DIGESTS,
            _SIZES,
            st.booleans(),
        ),
        st.builds(
            lambda n, t: (3, fx.symlink_node(n, t)),
            _NAMES,
            st.one_of(st.binary(max_size=12), st.sampled_from([b"", b"a\0b", b"t" * 4096])),
        ),
    )


@st.composite
def _valid_directory_encoding(draw: st.DrawFn) -> bytes:
    """A hand-encoded Directory that breaks no rule: unique names, sorted, 32-byte digests."""
    names = draw(st.lists(_VALID_NAMES.filter(lambda n: n not in (".", "..")), max_size=6))
    dirs: list[bytes] = []
    files: list[bytes] = []
    links: list[bytes] = []
    for name in sorted(set(names)):
        kind = draw(st.sampled_from([dirs, files, links]))
        if kind is links:
            links.append(fx.symlink_node(name.encode(), draw(st.binary(min_size=1, max_size=9))))
        elif kind is files:
            digest = draw(st.binary(min_size=32, max_size=32))
            size, executable = draw(st.integers(0, 1 << 40)), draw(st.booleans())
            files.append(fx.file_node(name.encode(), digest, size, executable))
        else:
            digest = draw(st.binary(min_size=32, max_size=32))
            dirs.append(fx.dir_node(name.encode(), digest, draw(st.integers(0, 1 << 40))))
    return fx.directory(dirs, files, links)


@st.composite
def directory_bytes(draw: st.DrawFn) -> bytes:
    """Arbitrary bytes, or a hand-encoded Directory (valid or not), mutated byte by byte."""
    shape = draw(st.integers(0, 3))
    if shape == 0:
        return draw(st.binary(max_size=300))
    if shape == 1:
        data = bytearray(draw(_valid_directory_encoding()))
    else:
        nodes = draw(st.lists(_encoded_node(), max_size=6))
        if draw(st.booleans()):
            nodes.sort()  # by field number, then by encoding, which starts with the name
        data = bytearray(b"".join(fx.field_bytes(number, body) for number, body in nodes))
    for _ in range(draw(_MUTATIONS)):
        if not data:
            break
        i = draw(st.integers(0, len(data) - 1))
        kind = draw(st.sampled_from(["flip", "delete", "insert"]))
        if kind == "flip":
            data[i] ^= 1 << draw(st.integers(0, 7))
        elif kind == "delete":
            del data[i]
        else:
            data.insert(i, draw(st.integers(0, 255)))
    return bytes(data)


def check_directory_bytes(data: bytes) -> None:
    try:
        directory = decode_directory(data)
        directory.validate()
    except CastoreError:
        return
    encoded = directory.encoded
    again = decode_directory(encoded)
    assert again == directory
    assert again.encoded == encoded
    assert directory.digest.raw == fx.b3(encoded)
    names = [node.name for node in directory.entries()]
    assert names == sorted(set(names)), "entries must come in strictly increasing order"
    for name in names:
        assert name and name not in (b".", b"..") and len(name) <= MAX_NAME_LEN
        assert b"/" not in name and b"\0" not in name
    for link in directory.symlinks:
        assert link.target and b"\0" not in link.target
        assert len(link.target) <= MAX_SYMLINK_TARGET_LEN


_STORE_BASENAMES = st.builds(
    lambda h, n: f"{h}-{n}",
    st.text(nixbase32.ALPHABET, min_size=32, max_size=32),
    st.text(string.ascii_letters + ".-_+?=", min_size=0, max_size=6),
)


@st.composite
def path_info_bytes(draw: st.DrawFn) -> bytes:
    """Arbitrary bytes, or a PathInfo message around a hand-encoded root node, mutated."""
    if draw(st.integers(0, 3)) == 0:
        return draw(st.binary(max_size=300))
    number, body = draw(_encoded_node())
    if draw(st.integers(0, 3)) > 0:
        name = draw(
            st.one_of(
                st.sampled_from(["", "-", "x" * 32 + "-a"]),
                _STORE_BASENAMES,
                _STORE_BASENAMES,
                _STORE_BASENAMES,
            )
        ).encode()
        body += fx.field_bytes(1, name)  # a second name field: the last one wins
    node = fx.field_bytes(number, body)
    narinfo = fx.field_uint(1, draw(st.integers(0, 1 << 20))) + fx.field_bytes(
        2, draw(st.one_of(st.binary(min_size=32, max_size=32), st.binary(max_size=40)))
    )
    references = b"".join(
        fx.field_bytes(2, ref)
        for ref in draw(st.one_of(st.just([]), st.lists(st.binary(max_size=21), max_size=2)))
    )
    data = bytearray(fx.field_bytes(1, node) + references + fx.field_bytes(3, narinfo))
    for _ in range(draw(_MUTATIONS)):
        if data:
            data[draw(st.integers(0, len(data) - 1))] ^= 1 << draw(st.integers(0, 7))
    return bytes(data)


def check_path_info_bytes(data: bytes) -> None:
    try:
        path_info = decode_path_info(data)
        path_info.validate()
    except CastoreError:
        return
    assert path_info.node is not None
    store_path = path_info.store_path
    assert store_path.to_bytes_name() == path_info.node.name


# --------------------------------------------------------------------------------------------
# NAR rendering of random trees


@dataclass(frozen=True)
class TFile:
    content: bytes
    executable: bool = False
    size_delta: int = 0  # the FileNode announces len(content) + size_delta


@dataclass(frozen=True)
class TLink:
    target: bytes


@dataclass(frozen=True)
class TDir:
    entries: tuple[tuple[bytes, TFile | TLink | TDir], ...]
    keep_order: bool = False  # build the Directory in this order instead of sorted


TNode = TFile | TLink | TDir

_TREE_NAMES = st.one_of(
    st.text("abcz.-_", min_size=1, max_size=4).map(str.encode),
    st.text("abcz.-_", min_size=1, max_size=4).map(str.encode),
    st.text("abcz.-_", min_size=1, max_size=4).map(str.encode),
    st.sampled_from([b"", b".", b"..", b"a/b", b"n\0", b"\xff", b"x" * 256]),
)
_TARGETS = st.one_of(
    st.text("abc/.", min_size=1, max_size=8).map(str.encode),
    st.text("abc/.", min_size=1, max_size=8).map(str.encode),
    st.sampled_from([b"", b"a\0b", b"t" * 4096, b"/nix/store/x"]),
)


def _trees() -> st.SearchStrategy[TNode]:
    leaves = st.one_of(
        st.builds(
            # A FileNode's size is a u64 on the wire: never below zero.
            lambda content, executable, delta: TFile(
                content, executable, delta if content else abs(delta)
            ),
            st.binary(max_size=40),
            st.booleans(),
            st.sampled_from([0] * 14 + [-1, 1]),
        ),
        st.builds(TLink, _TARGETS),
    )
    return st.recursive(
        leaves,
        lambda children: st.builds(
            TDir,
            st.lists(st.tuples(_TREE_NAMES, children), max_size=4).map(tuple),
            st.sampled_from([False] * 5 + [True]),
        ),
        max_leaves=12,
    )


def nar_trees() -> st.SearchStrategy[TNode]:
    return _trees()


class _Store:
    """Blobs and directories of one random tree, as render_nar reads them."""

    def __init__(self) -> None:
        self.blobs: dict[B3Digest, bytes] = {}
        self.directories: dict[B3Digest, Directory] = {}

    def node(self, name: bytes, tree: TNode) -> Node:
        if isinstance(tree, TFile):
            digest = B3Digest(fx.b3(tree.content))
            self.blobs[digest] = tree.content
            return FileNode(name, digest, len(tree.content) + tree.size_delta, tree.executable)
        if isinstance(tree, TLink):
            return SymlinkNode(name, tree.target)
        directory = self.directory(tree)
        return DirectoryNode(name, directory.digest, 2 * len(directory))

    def directory(self, tree: TDir) -> Directory:
        nodes = [self.node(name, child) for name, child in tree.entries]
        if tree.keep_order:
            directory = Directory(
                tuple(n for n in nodes if isinstance(n, DirectoryNode)),
                tuple(n for n in nodes if isinstance(n, FileNode)),
                tuple(n for n in nodes if isinstance(n, SymlinkNode)),
            )
        else:
            directory = Directory.of(nodes)
        self.directories[directory.digest] = directory
        return directory

    def read_blob(self, digest: B3Digest) -> Iterable[bytes]:
        data = self.blobs[digest]
        middle = len(data) // 2
        return [data[:middle], data[middle:]]

    def get_directory(self, digest: B3Digest) -> Directory:
        return self.directories[digest]


def _is_fine(tree: TNode) -> bool:
    """Whether a NAR of `tree` must be produced: every rule of the format holds, by the rules
    written out here rather than the library's."""
    if isinstance(tree, TFile):
        return tree.size_delta == 0
    if isinstance(tree, TLink):
        t = tree.target
        return bool(t) and len(t) <= MAX_SYMLINK_TARGET_LEN and b"\0" not in t
    names = [name for name, _ in tree.entries]
    if len(set(names)) != len(names):
        return False
    if tree.keep_order:
        # Each kind's list must be sorted, as the Directory holds them; their merge then is.
        for kind in (TDir, TFile, TLink):
            of_kind = [name for name, child in tree.entries if isinstance(child, kind)]
            if of_kind != sorted(of_kind):
                return False
    for name in names:
        if not name or name in (b".", b"..") or len(name) > MAX_NAME_LEN:
            return False
        if b"/" in name or b"\0" in name:
            return False
    return all(_is_fine(child) for _, child in tree.entries)


def _expected(tree: TNode) -> Any:
    """What parse_nar returns for `tree` (entries in sorted order, as a NAR has them)."""
    if isinstance(tree, TFile):
        return ("regular", tree.executable, tree.content)
    if isinstance(tree, TLink):
        return ("symlink", tree.target)
    return ("directory", [(name, _expected(child)) for name, child in sorted(tree.entries)])


class NarFormatError(Exception):
    pass


def parse_nar(data: bytes) -> Any:
    """A small, strict NAR reader: ("regular", executable, contents), ("symlink", target) or
    ("directory", [(name, node), ...]); raises NarFormatError on anything else."""
    pos = 0

    def token() -> bytes:
        nonlocal pos
        if pos + 8 > len(data):
            raise NarFormatError(f"truncated at {pos}")
        length = int.from_bytes(data[pos : pos + 8], "little")
        start = pos + 8
        end = start + length
        padded = end + (-length % 8)
        if padded > len(data):
            raise NarFormatError(f"token of {length} bytes at {pos} runs past the end")
        if any(data[end:padded]):
            raise NarFormatError(f"non-zero padding at {end}")
        pos = padded
        return data[start:end]

    def expect(*words: bytes) -> None:
        for word in words:
            got = token()
            if got != word:
                raise NarFormatError(f"expected {word!r}, got {got[:40]!r} before {pos}")

    def node() -> Any:
        expect(b"(", b"type")
        kind = token()
        if kind == b"regular":
            executable = False
            tag = token()
            if tag == b"executable":
                expect(b"")
                executable = True
                tag = token()
            if tag != b"contents":
                raise NarFormatError(f"expected contents, got {tag!r}")
            contents = token()
            expect(b")")
            return ("regular", executable, contents)
        if kind == b"symlink":
            expect(b"target")
            target = token()
            expect(b")")
            return ("symlink", target)
        if kind == b"directory":
            entries: list[tuple[bytes, Any]] = []
            while True:
                tag = token()
                if tag == b")":
                    return ("directory", entries)
                if tag != b"entry":
                    raise NarFormatError(f"expected entry or ')', got {tag!r}")
                expect(b"(", b"name")
                name = token()
                if entries and name <= entries[-1][0]:
                    raise NarFormatError(f"entry {name!r} out of order")
                expect(b"node")
                entries.append((name, node()))
                expect(b")")
        raise NarFormatError(f"unknown node type {kind!r}")

    expect(b"nix-archive-1")
    root = node()
    if pos != len(data):
        raise NarFormatError(f"{len(data) - pos} bytes after the root node")
    return root


def check_nar_tree(tree: TNode) -> None:
    store = _Store()
    root = store.node(b"root", tree)
    try:
        nar = b"".join(render_nar(root, store.read_blob, store.get_directory))
    except CastoreError:
        assert not _is_fine(tree), "a tree that breaks no rule was refused"
        return
    assert _is_fine(tree), "a broken tree rendered"
    assert parse_nar(nar) == _expected(tree)
    assert nar_size_and_sha256(root, store.read_blob, store.get_directory) == (
        len(nar),
        hashlib.sha256(nar).digest(),
    )


# --------------------------------------------------------------------------------------------
# Text the user or a peer types: nixbase32, store paths, addresses, digests


_NIX32_TEXT = st.one_of(
    st.text(nixbase32.ALPHABET, max_size=60),
    st.text(nixbase32.ALPHABET + "eotuE0-_ \u00e9", max_size=60),
    st.text(max_size=60),
)


def check_nixbase32(text: str) -> None:
    try:
        data = nixbase32.decode(text)
    except nixbase32.Nixbase32Error:
        return
    assert nixbase32.encode(data) == text


def check_nixbase32_bytes(data: bytes) -> None:
    text = nixbase32.encode(data)
    assert len(text) == nixbase32.encoded_len(len(data))
    assert set(text) <= set(nixbase32.ALPHABET)
    assert nixbase32.decode(text) == data


_STORE_PATH_TEXT = st.one_of(
    st.builds(
        lambda h, sep, name: h + sep + name,
        st.text(nixbase32.ALPHABET, min_size=30, max_size=34),
        st.sampled_from(["-", "-", "-", "_", ""]),
        st.text(string.ascii_letters + string.digits + "+-_?=./ \u00e9", max_size=12),
    ),
    st.builds(lambda s: "/nix/store/" + s, st.text(max_size=50)),
    st.text(max_size=60),
)


def check_store_path(text: str) -> None:
    for parse, shown in (
        (StorePath.parse, str),
        (StorePath.parse_absolute, lambda p: p.absolute),
    ):
        try:
            path = parse(text)
        except InvalidStorePath:
            continue
        assert shown(path) == text
        assert StorePath.from_bytes_name(path.to_bytes_name()) == path


_ADDRESS_TEXT = st.one_of(
    st.builds(
        lambda scheme, sep, rest: scheme + sep + rest,
        st.sampled_from(
            ["grpc+http", "grpc+https", "grpc+unix", "memory", "file", "GRPC+HTTP", "http", ""]
        ),
        st.sampled_from(["://", ":///", ":/", "//", ""]),
        st.text(string.printable + "\u00e9\u0000[]%@", max_size=40),
    ),
    st.text(max_size=60),
)


def check_address(text: str) -> None:
    try:
        address = parse_address(text)
    except InvalidAddress:
        return
    assert isinstance(address, Address)
    if address.is_grpc:
        assert address.grpc_target()
    address.is_loopback()
    assert parse_address(str(address)) == address


_DIGEST_TEXT = st.one_of(
    st.builds(
        lambda prefix, body: prefix + body,
        st.sampled_from(["blake3-", "b3:", "BLAKE3-", ""]),
        st.text(string.ascii_letters + string.digits + "+/=-_", max_size=48),
    ),
    st.builds(lambda b: "blake3-" + base64.b64encode(b).decode(), st.binary(max_size=40)),
    st.text(max_size=60),
)


def check_digest(text: str) -> None:
    try:
        digest = B3Digest.parse(text)
    except InvalidDigest:
        return
    assert len(digest.raw) == 32
    assert B3Digest.parse(str(digest)) == digest


# --------------------------------------------------------------------------------------------
# The targets, and their tests


TARGETS: dict[str, tuple[Callable[[Any], None], st.SearchStrategy[Any]]] = {
    "directory_bytes": (check_directory_bytes, directory_bytes()),
    "path_info_bytes": (check_path_info_bytes, path_info_bytes()),
    "nar_trees": (check_nar_tree, nar_trees()),
    "nixbase32": (check_nixbase32, _NIX32_TEXT),
    "nixbase32_bytes": (check_nixbase32_bytes, st.binary(max_size=80)),
    "store_paths": (check_store_path, _STORE_PATH_TEXT),
    "addresses": (check_address, _ADDRESS_TEXT),
    "digests": (check_digest, _DIGEST_TEXT),
}


def fuzz_test(name: str, max_examples: int = EXAMPLES, **kwargs: Any) -> Callable[[], None]:
    """The hypothesis test of target `name`, with its own settings (bench/fuzz makes more)."""
    check, strategy = TARGETS[name]
    return fuzz_settings(max_examples, **kwargs)(given(strategy)(check))


test_fuzz_directory_bytes = fuzz_test("directory_bytes")
test_fuzz_path_info_bytes = fuzz_test("path_info_bytes")
test_fuzz_nar_trees = fuzz_test("nar_trees")
test_fuzz_nixbase32 = fuzz_test("nixbase32")
test_fuzz_nixbase32_bytes = fuzz_test("nixbase32_bytes")
test_fuzz_store_paths = fuzz_test("store_paths")
test_fuzz_addresses = fuzz_test("addresses")
test_fuzz_digests = fuzz_test("digests")


def test_every_target_has_a_test() -> None:
    tests = {name.removeprefix("test_fuzz_") for name in globals() if name.startswith("test_fuzz_")}
    assert tests == set(TARGETS)


def test_bench_fuzz_runs_every_target() -> None:
    """bench/fuzz in its smallest configuration, so that it cannot rot unnoticed."""
    root = pathlib.Path(__file__).resolve().parent.parent
    result = subprocess.run(
        [str(root / "bench" / "fuzz"), "--examples", "5", "--seed", "1"],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "PYTHON": sys.executable},
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    for name in TARGETS:
        assert re.search(rf"^  {name} +\d+ examples .* ok$", result.stdout, re.M), result.stdout
    assert "no failures" in result.stdout


# --------------------------------------------------------------------------------------------
# The NAR parser itself, on a hand-written NAR, so that a lenient parser cannot hide a bug


def test_parse_nar_reads_a_hand_written_nar() -> None:
    from .test_nar import HAND_DIR_WITH_SYMLINK, HAND_EXECUTABLE_EMPTY, HAND_FILE_HI

    assert parse_nar(HAND_FILE_HI) == ("regular", False, b"hi")
    assert parse_nar(HAND_EXECUTABLE_EMPTY) == ("regular", True, b"")
    kind, entries = parse_nar(HAND_DIR_WITH_SYMLINK)
    assert kind == "directory"
    assert [name for name, _ in entries] == [b"l"]
    for broken in (HAND_FILE_HI[:-1], HAND_FILE_HI + b"\0" * 8, HAND_FILE_HI[:40]):
        with pytest.raises(NarFormatError):
            parse_nar(broken)


# --------------------------------------------------------------------------------------------
# Found by fuzzing


@pytest.mark.parametrize(
    "text", ["file:///tmp/a%2541", "grpc+unix:///tmp/a%3Fb.sock", "file:///tmp/a%23b"]
)
def test_address_text_form_round_trips(text: str) -> None:
    address = parse_address(text)
    assert parse_address(str(address)) == address
