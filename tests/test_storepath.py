from __future__ import annotations

import hashlib
import subprocess
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from castore_client.errors import InvalidStorePath
from castore_client.storepath import STORE_DIR, StorePath

from .conftest import require_tool

# `nix-hash --type sha1 --to-base32 8a12...` prints the hash part of this path.
NET_TOOLS = "00bgd045z0d4icpbc2yyz4gx48ak44la-net-tools-1.60_p20170221182432"
NET_TOOLS_DIGEST = bytes.fromhex("8a12321522fd91efbd60ebb2481af88580f61600")
HASH = NET_TOOLS[:32]
NAME_CHARS = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789+-_?=."


def test_parse() -> None:
    path = StorePath.parse(NET_TOOLS)
    assert path.digest == NET_TOOLS_DIGEST
    assert path.name == "net-tools-1.60_p20170221182432"
    assert str(path) == NET_TOOLS
    assert path.absolute == "/nix/store/" + NET_TOOLS
    assert STORE_DIR == "/nix/store"


def test_hash_part_agrees_with_nix_hash() -> None:
    tool = require_tool("nix-hash")
    out = subprocess.run(
        [tool, "--type", "sha1", "--to-base32", NET_TOOLS_DIGEST.hex()],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    assert out == HASH


def test_constructor_and_parse_agree() -> None:
    made = StorePath(NET_TOOLS_DIGEST, "net-tools-1.60_p20170221182432")
    assert made == StorePath.parse(NET_TOOLS)
    assert hash(made) == hash(StorePath.parse(NET_TOOLS))


def test_is_frozen() -> None:
    path = StorePath.parse(NET_TOOLS)
    with pytest.raises(AttributeError):
        path.name = "other"  # type: ignore[misc]


@pytest.mark.parametrize(
    "name",
    [
        "a",
        "A",
        "0",
        "+",
        "-",
        "_",
        "?",
        "=",
        "a.b",
        "x" * 211,
        "hello-2.12.1",
        ".foo",
        ".gitignore",
        "..foo",
        "a-.",
        "a..",
        "foo-.",
    ],
)
def test_valid_names(name: str) -> None:
    path = StorePath.parse(f"{HASH}-{name}")
    assert path.name == name
    assert str(path) == f"{HASH}-{name}"


@pytest.mark.parametrize(
    ("basename", "fragment"),
    [
        ("", "too short"),
        (HASH, "too short"),
        (HASH + "-", "too short"),
        (HASH[:31] + "-foo", "expected '-'"),
        (HASH + "foo", "expected '-'"),
        (HASH + "_foo", "expected '-'"),
        ("00bgd045z0d4icpbc2yyz4gx48aku4la-foo", "hash part"),  # 'u' is not in the alphabet
        ("00BGD045Z0D4ICPBC2YYZ4GX48AK44LA-foo", "hash part"),
        (HASH + "-" + "x" * 212, "exceeds 211"),
        (HASH + "-foo bar", "' '"),
        (HASH + "-foo/bin", "'/'"),
        (HASH + "-caf\u00e9", "'\u00e9'"),
        (HASH + "-a@b", "'@'"),
        (HASH + "-a~b", "'~'"),
        (HASH + "-a\nb", "'\\\\n'"),
        (HASH + "-foo\n", "'\\\\n'"),
        (HASH + "-a:b", "':'"),
        (HASH + "-.", "not allowed"),
        (HASH + "-..", "not allowed"),
        (HASH + "-.-foo", "not allowed"),
        (HASH + "-..-foo", "not allowed"),
    ],
)
def test_parse_rejects(basename: str, fragment: str) -> None:
    with pytest.raises(InvalidStorePath, match=fragment):
        StorePath.parse(basename)


def test_constructor_rejects_bad_digest_and_name() -> None:
    with pytest.raises(InvalidStorePath, match="20 bytes"):
        StorePath(bytes(19), "foo")
    with pytest.raises(InvalidStorePath, match="20 bytes"):
        StorePath(bytes(21), "foo")
    with pytest.raises(InvalidStorePath, match="empty"):
        StorePath(bytes(20), "")


def test_parse_absolute() -> None:
    path = StorePath.parse_absolute("/nix/store/" + NET_TOOLS)
    assert path == StorePath.parse(NET_TOOLS)
    assert path.absolute == "/nix/store/" + NET_TOOLS


@pytest.mark.parametrize(
    "text",
    [
        NET_TOOLS,
        "nix/store/" + NET_TOOLS,
        "/nix/store",
        "/nix/store/",
        "/nix/storex/" + NET_TOOLS,
        "/nix/store//" + NET_TOOLS,
        "//nix/store/" + NET_TOOLS,
        "/nix/store/" + NET_TOOLS + "/bin/arp",
        "/nix/store/" + NET_TOOLS + "/",
        "/gnu/store/" + NET_TOOLS,
    ],
)
def test_parse_absolute_rejects(text: str) -> None:
    with pytest.raises(InvalidStorePath):
        StorePath.parse_absolute(text)


def test_bytes_names() -> None:
    path = StorePath.from_bytes_name(NET_TOOLS.encode())
    assert path == StorePath.parse(NET_TOOLS)
    assert path.to_bytes_name() == NET_TOOLS.encode()


@pytest.mark.parametrize(
    "name",
    [HASH.encode() + b"-\xff", HASH.encode() + b"-caf\xc3\xa9", b"\xff" * 40, b""],
)
def test_from_bytes_name_rejects(name: bytes) -> None:
    with pytest.raises(InvalidStorePath):
        StorePath.from_bytes_name(name)


@given(
    st.binary(min_size=20, max_size=20),
    st.text(alphabet=NAME_CHARS, min_size=1, max_size=211),
)
def test_round_trip(digest: bytes, name: str) -> None:
    if name in (".", "..") or name.startswith((".-", "..-")):
        return
    path = StorePath(digest, name)
    assert StorePath.parse(str(path)) == path
    assert StorePath.parse_absolute(path.absolute) == path
    assert StorePath.from_bytes_name(path.to_bytes_name()) == path


@given(st.text(max_size=260))
def test_parse_raises_only_invalid_store_path(text: str) -> None:
    try:
        path = StorePath.parse(text)
    except InvalidStorePath:
        return
    assert str(path) == text


@given(st.binary(max_size=260))
def test_from_bytes_name_raises_only_invalid_store_path(name: bytes) -> None:
    try:
        path = StorePath.from_bytes_name(name)
    except InvalidStorePath:
        return
    assert path.to_bytes_name() == name


def test_for_source_rejects_bad_input() -> None:
    with pytest.raises(InvalidStorePath, match="32 bytes"):
        StorePath.for_source("foo", bytes(20))
    with pytest.raises(InvalidStorePath):
        StorePath.for_source("foo bar", bytes(32))


def _make_tree(root: Path) -> None:
    root.mkdir()
    (root / "file").write_bytes(b"hello\n")
    (root / "script").write_bytes(b"#!/bin/sh\necho hi\n")
    (root / "script").chmod(0o755)
    (root / "empty").write_bytes(b"")
    (root / "sub").mkdir()
    (root / "sub" / "deeper").mkdir()
    (root / "sub" / "deeper" / "x").write_bytes(b"x" * 1000)
    (root / "hollow").mkdir()
    (root / "link").symlink_to("sub/deeper/x")


def _nix_dump_sha256(path: Path) -> bytes:
    tool = require_tool("nix-store")
    nar = subprocess.run([tool, "--dump", str(path)], check=True, capture_output=True).stdout
    return hashlib.sha256(nar).digest()


def _nix_store_add(path: Path, store_root: Path) -> str:
    """`nix-store --add` into a throwaway chroot store, so the real /nix/store is untouched.

    The printed path is still /nix/store/...: a chroot store keeps the logical store dir.
    """
    tool = require_tool("nix-store")
    result = subprocess.run(
        [tool, "--store", str(store_root), "--add", str(path)],
        check=True,
        capture_output=True,
        text=True,
    )
    return result.stdout.strip()


@pytest.mark.parametrize(
    "kind", ["file", "executable", "empty", "directory", "symlink", "leading-dot"]
)
def test_for_source_matches_nix_store_add(tmp_path: Path, kind: str) -> None:
    work = tmp_path / "work"
    work.mkdir()
    if kind == "file":
        target = work / "hello.txt"
        target.write_bytes(b"hello world\n")
    elif kind == "executable":
        target = work / "run.sh"
        target.write_bytes(b"#!/bin/sh\n")
        target.chmod(0o755)
    elif kind == "empty":
        target = work / "nothing"
        target.write_bytes(b"")
    elif kind == "directory":
        target = work / "my-src_1.0"
        _make_tree(target)
    elif kind == "symlink":
        target = work / "a-link"
        target.symlink_to("/dev/null")
    else:
        # Nix >= 2.4 (2.8 here) adds these; see the storepath module docstring.
        target = work / ".gitignore"
        target.write_bytes(b"*.pyc\n")
    expected = _nix_store_add(target, tmp_path / "store")
    nar_sha256 = _nix_dump_sha256(target)
    path = StorePath.for_source(target.name, nar_sha256)
    assert path.absolute == expected
    assert StorePath.parse_absolute(expected) == path


def test_for_source_recorded_from_nix() -> None:
    # Recorded from nix-bin 2.8: for a 0644 file `foo` holding "hi\n",
    # `nix-store --dump foo | sha256sum` and `nix-store --add foo` printed these.
    nar_sha256 = bytes.fromhex("10551daed7fa467d0b58826e7eb9a0f2af7d693de319f2ef775fffcda244b9f6")
    path = StorePath.for_source("foo", nar_sha256)
    assert path.absolute == "/nix/store/6mlv4zpsh5r2q4nb94lpkma95g744zvi-foo"
