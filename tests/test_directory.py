"""The Directory model: canonical encoding, digest, size, validation and entry order.

Expected encodings are written out byte by byte (tag, varint length, payload) and expected digests
are the blake3 package's hash of those bytes. The generated protobuf classes serve as a second,
independent oracle. Nothing expected is computed by castore_client.directory itself.
"""

from __future__ import annotations

import random

import blake3
import pytest
from hypothesis import given
from hypothesis import strategies as st

from castore_client.digest import B3Digest
from castore_client.directory import (
    Directory,
    DirectoryNode,
    FileNode,
    SizeFormula,
    SymlinkNode,
    validate_name,
    validate_symlink_target,
)
from castore_client.errors import (
    DirectoryValidationError,
    DuplicateName,
    InvalidName,
    InvalidSymlinkTarget,
    SizeOverflow,
    UnsortedNames,
)
from castore_client.pb import castore_pb2 as pb

U64_MAX = 2**64 - 1
CURRENT = SizeFormula.CURRENT
LEGACY = SizeFormula.LEGACY

# BLAKE3 of b"" (tvix prints this literal in its own tests).
EMPTY_BLOB = bytes.fromhex("af1349b9f5f9a1a6a0404dea36dcc9499bcb25c9adc112b7cc9a93cae41f3262")
HELLOWORLD_BLOB = bytes.fromhex("5ca7815adcb484e9a136c11efe69c1d530176d549b5d18d038eb5280b4b3470c")
DUMMY = B3Digest(bytes(32))  # tvix's DUMMY_DIGEST
DUMMY_2 = B3Digest(b"\x10" + bytes(31))  # tvix's DUMMY_DIGEST_2


def b3(data: bytes) -> bytes:
    return blake3.blake3(data).digest()


# --- hand-built canonical bytes ----------------------------------------------------------------
# Directory: 0x0a = field 1 (directories), 0x12 = field 2 (files), 0x1a = field 3 (symlinks),
# all wire type 2 (length-delimited). Inside nodes: 0x0a name, 0x12 digest / target,
# 0x18 = field 3 varint (size), 0x20 = field 4 varint (executable).

# FileNode{name ".keep", digest EMPTY_BLOB}; size 0 and executable false are omitted.
KEEP_FILE_NODE = b"\x0a\x05" + b".keep" + b"\x12\x20" + EMPTY_BLOB
assert len(KEEP_FILE_NODE) == 0x29

# DIRECTORY_WITH_KEEP = {".keep": empty file}
DIRECTORY_WITH_KEEP_BYTES = b"\x12\x29" + KEEP_FILE_NODE
DIRECTORY_WITH_KEEP_DIGEST = b3(DIRECTORY_WITH_KEEP_BYTES)


def complicated_bytes(keep_size: int) -> bytes:
    """DIRECTORY_COMPLICATED = {keep: DIRECTORY_WITH_KEEP, .keep: empty file, aa: symlink}."""
    keep_dir_node = (
        b"\x0a\x04" + b"keep"
        + b"\x12\x20" + DIRECTORY_WITH_KEEP_DIGEST
        + b"\x18" + bytes([keep_size])  # a one-byte varint (keep_size < 128)
    )  # fmt: skip
    assert len(keep_dir_node) == 0x2A
    aa_symlink_node = b"\x0a\x02" + b"aa" + b"\x12\x18" + b"/nix/store/somewhereelse"
    assert len(aa_symlink_node) == 0x1E
    return (
        b"\x0a\x2a" + keep_dir_node
        + b"\x12\x29" + KEEP_FILE_NODE
        + b"\x1a\x1e" + aa_symlink_node
    )  # fmt: skip


# `keep`'s DirectoryNode carries DIRECTORY_WITH_KEEP's size: 2 (current formula) or 1 (legacy).
COMPLICATED_BYTES_CURRENT = complicated_bytes(2)
COMPLICATED_BYTES_LEGACY = complicated_bytes(1)

# The same digests as literals (blake3 of the bytes above, computed when writing this test; no
# published tvix value was found to compare with, tvix computes them at runtime).
DIRECTORY_WITH_KEEP_HEX = "8b5b5d642b646bb8ed504b0862c39413e87e57491497de7bd075953f7b83810e"
COMPLICATED_CURRENT_HEX = "424a7f6ce08d805d15b428062faae96299a1675d708c3a39261afe38cdd04feb"
COMPLICATED_LEGACY_HEX = "3f951a15afd586fb3121ef4d13d582e811ce0e5a7f21c0497fd87490e9e2355a"

# A directory exercising multi-byte varints and every field:
#   dirs:     "d"   -> DUMMY_2, size 200        (size varint c8 01)
#   files:    "hello" -> HELLOWORLD, size 300, executable   (size varint ac 02, exec 20 01)
#             "huge"  -> DUMMY, size 2**64-1                (ten-byte varint)
#   symlinks: "l" -> 200-byte target            (target length c8 01, node length ce 01)
BIG_DIR_NODE = b"\x0a\x01d" + b"\x12\x20" + DUMMY_2.raw + b"\x18\xc8\x01"
BIG_EXEC_FILE_NODE = (
    b"\x0a\x05hello" + b"\x12\x20" + HELLOWORLD_BLOB + b"\x18\xac\x02" + b"\x20\x01"
)
BIG_HUGE_FILE_NODE = b"\x0a\x04huge" + b"\x12\x20" + DUMMY.raw + b"\x18" + b"\xff" * 9 + b"\x01"
LONG_TARGET = b"../" * 66 + b"xy"
BIG_SYMLINK_NODE = b"\x0a\x01l" + b"\x12\xc8\x01" + LONG_TARGET
BIG_BYTES = (
    b"\x0a\x28" + BIG_DIR_NODE
    + b"\x12\x2e" + BIG_EXEC_FILE_NODE
    + b"\x12\x33" + BIG_HUGE_FILE_NODE
    + b"\x1a\xce\x01" + BIG_SYMLINK_NODE
)  # fmt: skip


def test_hand_built_lengths_are_right() -> None:
    assert len(LONG_TARGET) == 200
    assert len(BIG_DIR_NODE) == 0x28
    assert len(BIG_EXEC_FILE_NODE) == 0x2E
    assert len(BIG_HUGE_FILE_NODE) == 0x33
    assert len(BIG_SYMLINK_NODE) == 0xCE  # 206, sent as varint ce 01


# --- the Directory objects under test ---------------------------------------------------------

DIRECTORY_WITH_KEEP = Directory(files=(FileNode(b".keep", B3Digest(EMPTY_BLOB), 0),))


def complicated(keep_size: int) -> Directory:
    return Directory(
        directories=(DirectoryNode(b"keep", B3Digest(DIRECTORY_WITH_KEEP_DIGEST), keep_size),),
        files=(FileNode(b".keep", B3Digest(EMPTY_BLOB), 0),),
        symlinks=(SymlinkNode(b"aa", b"/nix/store/somewhereelse"),),
    )


DIRECTORY_COMPLICATED = complicated(2)
DIRECTORY_COMPLICATED_LEGACY = complicated(1)

BIG = Directory(
    directories=(DirectoryNode(b"d", DUMMY_2, 200),),
    files=(
        FileNode(b"hello", B3Digest(HELLOWORLD_BLOB), 300, executable=True),
        FileNode(b"huge", DUMMY, U64_MAX),
    ),
    symlinks=(SymlinkNode(b"l", LONG_TARGET),),
)


def to_pb(d: Directory) -> pb.Directory:
    return pb.Directory(
        directories=[
            pb.DirectoryNode(name=n.name, digest=n.digest.raw, size=n.size) for n in d.directories
        ],
        files=[
            pb.FileNode(name=n.name, digest=n.digest.raw, size=n.size, executable=n.executable)
            for n in d.files
        ],
        symlinks=[pb.SymlinkNode(name=n.name, target=n.target) for n in d.symlinks],
    )


def assert_same_fields(parsed: pb.Directory, d: Directory) -> None:
    assert [(n.name, n.digest, n.size) for n in parsed.directories] == [
        (n.name, n.digest.raw, n.size) for n in d.directories
    ]
    assert [(n.name, n.digest, n.size, n.executable) for n in parsed.files] == [
        (n.name, n.digest.raw, n.size, n.executable) for n in d.files
    ]
    assert [(n.name, n.target) for n in parsed.symlinks] == [(n.name, n.target) for n in d.symlinks]


FIXTURES = [
    pytest.param(Directory(), b"", id="empty"),
    pytest.param(DIRECTORY_WITH_KEEP, DIRECTORY_WITH_KEEP_BYTES, id="with_keep"),
    pytest.param(DIRECTORY_COMPLICATED, COMPLICATED_BYTES_CURRENT, id="complicated"),
    pytest.param(DIRECTORY_COMPLICATED_LEGACY, COMPLICATED_BYTES_LEGACY, id="complicated_legacy"),
    pytest.param(BIG, BIG_BYTES, id="multibyte_varints"),
]


# --- encoding and digest -----------------------------------------------------------------------


@pytest.mark.parametrize(("directory", "expected"), FIXTURES)
def test_canonical_encoding(directory: Directory, expected: bytes) -> None:
    assert directory.encoded == expected


@pytest.mark.parametrize(("directory", "expected"), FIXTURES)
def test_digest_is_blake3_of_encoding(directory: Directory, expected: bytes) -> None:
    assert isinstance(directory.digest, B3Digest)
    assert directory.digest.raw == b3(expected)


@pytest.mark.parametrize(("directory", "expected"), FIXTURES)
def test_encoding_matches_protobuf(directory: Directory, expected: bytes) -> None:
    assert to_pb(directory).SerializeToString(deterministic=True) == expected
    assert directory.encoded == to_pb(directory).SerializeToString(deterministic=True)


@pytest.mark.parametrize(("directory", "expected"), FIXTURES)
def test_encoding_parses_back(directory: Directory, expected: bytes) -> None:
    parsed = pb.Directory.FromString(directory.encoded)
    assert_same_fields(parsed, directory)
    assert parsed.SerializeToString(deterministic=True) == expected


def test_empty_directory_digest_is_blake3_of_nothing() -> None:
    # tvix asserts this literal for the empty Directory (castore proto/tests/directory.rs).
    assert Directory().digest.raw == EMPTY_BLOB
    assert Directory().encoded == b""


def test_fixture_digest_literals() -> None:
    assert b3(DIRECTORY_WITH_KEEP_BYTES).hex() == DIRECTORY_WITH_KEEP_HEX
    assert b3(COMPLICATED_BYTES_CURRENT).hex() == COMPLICATED_CURRENT_HEX
    assert b3(COMPLICATED_BYTES_LEGACY).hex() == COMPLICATED_LEGACY_HEX
    assert DIRECTORY_WITH_KEEP.digest.raw.hex() == DIRECTORY_WITH_KEEP_HEX
    assert DIRECTORY_COMPLICATED.digest.raw.hex() == COMPLICATED_CURRENT_HEX
    assert DIRECTORY_COMPLICATED_LEGACY.digest.raw.hex() == COMPLICATED_LEGACY_HEX
    assert str(DIRECTORY_WITH_KEEP.digest) == "blake3-i1tdZCtka7jtUEsIYsOUE+h+V0kUl9570HWVP3uDgQ4="


def test_complicated_digest_depends_on_keep_size() -> None:
    assert DIRECTORY_COMPLICATED.digest != DIRECTORY_COMPLICATED_LEGACY.digest


def test_defaults_are_omitted() -> None:
    # A node with every field at its proto3 default encodes as an empty message.
    d = Directory(
        directories=(DirectoryNode(b"", DUMMY, 0),),
        files=(FileNode(b"", DUMMY, 0, executable=False),),
    )
    digest_field = b"\x12\x20" + DUMMY.raw
    assert d.encoded == b"\x0a\x22" + digest_field + b"\x12\x22" + digest_field
    assert d.encoded == to_pb(d).SerializeToString(deterministic=True)


def test_executable_flag_changes_encoding() -> None:
    plain = Directory(files=(FileNode(b"x", DUMMY, 1),))
    exe = Directory(files=(FileNode(b"x", DUMMY, 1, executable=True),))
    node = b"\x0a\x01x" + b"\x12\x20" + DUMMY.raw + b"\x18\x01"
    assert plain.encoded == b"\x12\x27" + node
    assert exe.encoded == b"\x12\x29" + node + b"\x20\x01"
    assert plain.digest != exe.digest


@pytest.mark.parametrize(
    ("size", "varint"),
    [
        (1, b"\x01"),
        (127, b"\x7f"),
        (128, b"\x80\x01"),
        (300, b"\xac\x02"),
        (16383, b"\xff\x7f"),
        (16384, b"\x80\x80\x01"),
        (2**63, b"\x80" * 9 + b"\x01"),
        (U64_MAX, b"\xff" * 9 + b"\x01"),
    ],
)
def test_size_varint_boundaries(size: int, varint: bytes) -> None:
    node = b"\x0a\x01f" + b"\x12\x20" + DUMMY.raw + b"\x18" + varint
    d = Directory(files=(FileNode(b"f", DUMMY, size),))
    assert d.encoded == b"\x12" + bytes([len(node)]) + node
    assert d.encoded == to_pb(d).SerializeToString(deterministic=True)


def test_of_sorts_each_list() -> None:
    built = Directory.of(
        [
            SymlinkNode(b"aa", b"/nix/store/somewhereelse"),
            FileNode(b".keep", B3Digest(EMPTY_BLOB), 0),
            DirectoryNode(b"keep", B3Digest(DIRECTORY_WITH_KEEP_DIGEST), 2),
        ]
    )
    assert built == DIRECTORY_COMPLICATED
    assert built.encoded == COMPLICATED_BYTES_CURRENT
    shuffled = Directory.of([FileNode(n, DUMMY, 0) for n in (b"c", b"a", b"b")])
    assert [f.name for f in shuffled.files] == [b"a", b"b", b"c"]


# --- entries order ------------------------------------------------------------------------------


def test_entries_order_b13() -> None:
    entries = list(DIRECTORY_COMPLICATED.entries())
    assert [e.name for e in entries] == [b".keep", b"aa", b"keep"]
    assert [type(e) for e in entries] == [FileNode, SymlinkNode, DirectoryNode]
    assert len(DIRECTORY_COMPLICATED) == 3


def test_entries_byte_order_across_kinds() -> None:
    d = Directory(
        directories=(DirectoryNode(b"B", DUMMY, 0), DirectoryNode(b"b", DUMMY, 0)),
        files=(FileNode(b"a", DUMMY, 0), FileNode(b"\xff", DUMMY, 0)),
        symlinks=(SymlinkNode(b"A", b"t"), SymlinkNode(b"aa", b"t")),
    )
    assert [e.name for e in d.entries()] == [b"A", b"B", b"a", b"aa", b"b", b"\xff"]
    assert list(Directory().entries()) == []


# --- size ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("formula", [CURRENT, LEGACY])
def test_empty_size_is_zero(formula: SizeFormula) -> None:
    assert Directory().size(formula) == 0


@pytest.mark.parametrize(
    ("directory", "current", "legacy"),
    [
        pytest.param(DIRECTORY_WITH_KEEP, 2, 1, id="with_keep"),
        pytest.param(Directory(files=(FileNode(b"f", DUMMY, 42),)), 2, 1, id="file"),
        pytest.param(Directory(symlinks=(SymlinkNode(b"s", b"t"),)), 2, 1, id="symlink"),
        pytest.param(Directory(directories=(DirectoryNode(b"d", DUMMY, 0),)), 2, 1, id="dir0"),
        pytest.param(Directory(directories=(DirectoryNode(b"d", DUMMY, 4),)), 6, 5, id="dir4"),
        pytest.param(DIRECTORY_COMPLICATED, 2 * 3 + 2, 3 + 2, id="complicated"),
        pytest.param(DIRECTORY_COMPLICATED_LEGACY, 2 * 3 + 1, 3 + 1, id="complicated_legacy"),
        pytest.param(BIG, 2 * 4 + 200, 4 + 200, id="big"),  # file sizes never count
    ],
)
def test_size(directory: Directory, current: int, legacy: int) -> None:
    assert directory.size(CURRENT) == current
    assert directory.size(LEGACY) == legacy
    assert directory.size() == current  # the default is the current formula
    assert directory.size(CURRENT) == current  # the per-formula cache keeps them apart


@pytest.mark.parametrize(
    ("formula", "leaf", "mid", "top"),
    [
        # leaf = {f1, f2}; mid = {leaf/, s}; top = {mid/, other/, f}
        (CURRENT, 2 * 2, 2 * 2 + 4, 2 * 3 + 8 + 4),
        (LEGACY, 2, 2 + 2, 3 + 4 + 2),
    ],
)
def test_nested_sizes(formula: SizeFormula, leaf: int, mid: int, top: int) -> None:
    leaf_dir = Directory(files=(FileNode(b"f1", DUMMY, 10), FileNode(b"f2", DUMMY, 20)))
    assert leaf_dir.size(formula) == leaf
    mid_dir = Directory(
        directories=(DirectoryNode(b"leaf", leaf_dir.digest, leaf),),
        symlinks=(SymlinkNode(b"s", b"leaf/f1"),),
    )
    assert mid_dir.size(formula) == mid
    top_dir = Directory(
        directories=(
            DirectoryNode(b"mid", mid_dir.digest, mid),
            DirectoryNode(b"other", leaf_dir.digest, leaf),
        ),
        files=(FileNode(b"f", DUMMY, 1),),
    )
    assert top_dir.size(formula) == top


# --- validation: accepted ---------------------------------------------------------------------


@pytest.mark.parametrize(("directory", "expected"), FIXTURES)
@pytest.mark.parametrize("formula", [CURRENT, LEGACY])
def test_fixtures_validate(directory: Directory, expected: bytes, formula: SizeFormula) -> None:
    directory.validate(formula)


def test_sorting_is_per_list() -> None:
    Directory(
        directories=(DirectoryNode(b"b", DUMMY, 0), DirectoryNode(b"c", DUMMY, 0)),
        symlinks=(SymlinkNode(b"a", b"foo"),),
    ).validate()
    Directory(
        directories=(DirectoryNode(b"b", DUMMY, 0),), files=(FileNode(b"a", DUMMY, 0),)
    ).validate()
    Directory(files=(FileNode(b"z", DUMMY, 0),), symlinks=(SymlinkNode(b"a", b"t"),)).validate()


def test_sorting_is_by_raw_bytes() -> None:
    names = [b"B", b"a", b"a\x01", b"aa", b"\x7f", b"\x80", b"\xff"]
    Directory(files=tuple(FileNode(n, DUMMY, 0) for n in names)).validate()


# --- validation: rejected, each with its own error class ----------------------------------------


def raises_exactly(cls: type[Exception], directory: Directory, *args: SizeFormula) -> None:
    with pytest.raises(DirectoryValidationError) as excinfo:
        directory.validate(*args)
    assert excinfo.type is cls, f"expected {cls.__name__}, got {excinfo.type.__name__}"


def dirs(*names: bytes) -> Directory:
    return Directory(directories=tuple(DirectoryNode(n, DUMMY, 0) for n in names))


def files(*names: bytes) -> Directory:
    return Directory(files=tuple(FileNode(n, DUMMY, 0) for n in names))


def links(*names: bytes) -> Directory:
    return Directory(symlinks=tuple(SymlinkNode(n, b"target") for n in names))


@pytest.mark.parametrize("make", [dirs, files, links], ids=["dirs", "files", "symlinks"])
def test_unsorted_rejected_in_each_list(make) -> None:  # type: ignore[no-untyped-def]
    make(b"a", b"b").validate()
    raises_exactly(UnsortedNames, make(b"b", b"a"))
    raises_exactly(UnsortedNames, make(b"a", b"c", b"b"))
    raises_exactly(UnsortedNames, make(b"aa", b"a"))


@pytest.mark.parametrize("make", [dirs, files, links], ids=["dirs", "files", "symlinks"])
def test_duplicate_within_list_rejected(make) -> None:  # type: ignore[no-untyped-def]
    raises_exactly(DuplicateName, make(b"a", b"a"))
    raises_exactly(DuplicateName, make(b"a", b"b", b"b"))


@pytest.mark.parametrize(
    "directory",
    [
        Directory(directories=(DirectoryNode(b"a", DUMMY, 0),), files=(FileNode(b"a", DUMMY, 0),)),
        Directory(files=(FileNode(b"a", DUMMY, 0),), symlinks=(SymlinkNode(b"a", b"t"),)),
        Directory(
            directories=(DirectoryNode(b"a", DUMMY, 0),), symlinks=(SymlinkNode(b"a", b"t"),)
        ),
        Directory(
            directories=(DirectoryNode(b"a", DUMMY, 0), DirectoryNode(b"z", DUMMY, 0)),
            files=(FileNode(b"m", DUMMY, 0),),
            symlinks=(SymlinkNode(b"b", b"t"), SymlinkNode(b"z", b"t")),
        ),
    ],
    ids=["dir+file", "file+symlink", "dir+symlink", "among_others"],
)
def test_duplicate_across_lists_rejected(directory: Directory) -> None:
    raises_exactly(DuplicateName, directory)


BAD_NAMES = [
    pytest.param(b"", id="empty"),
    pytest.param(b".", id="dot"),
    pytest.param(b"..", id="dotdot"),
    pytest.param(b"x" * 256, id="256_bytes"),
    pytest.param(b"\xff" * 300, id="300_bytes"),
    pytest.param(b"/", id="slash"),
    pytest.param(b"a/b", id="inner_slash"),
    pytest.param(b"a/", id="trailing_slash"),
    pytest.param(b"\x00", id="nul"),
    pytest.param(b"a\x00b", id="inner_nul"),
]

GOOD_NAMES = [
    pytest.param(b"x" * 255, id="255_bytes"),
    pytest.param(b"\xff\xfe\x80", id="non_utf8"),
    pytest.param(b"with space", id="space"),
    pytest.param(b" ", id="only_space"),
    pytest.param(b"new\nline", id="newline"),
    pytest.param(b"...", id="three_dots"),
    pytest.param(b".hidden", id="dotfile"),
    pytest.param(b"..a", id="dotdot_prefix"),
    pytest.param(b"a\\b", id="backslash"),
    pytest.param("ü".encode(), id="utf8"),
    pytest.param(b"\x01\x7f", id="control"),
]


@pytest.mark.parametrize("name", BAD_NAMES)
def test_bad_name_rejected(name: bytes) -> None:
    with pytest.raises(InvalidName):
        validate_name(name)


@pytest.mark.parametrize("name", BAD_NAMES)
@pytest.mark.parametrize("make", [dirs, files, links], ids=["dirs", "files", "symlinks"])
def test_bad_name_rejected_in_directory(make, name: bytes) -> None:  # type: ignore[no-untyped-def]
    raises_exactly(InvalidName, make(name))


@pytest.mark.parametrize("name", GOOD_NAMES)
def test_good_name_accepted(name: bytes) -> None:
    validate_name(name)


@pytest.mark.parametrize("name", GOOD_NAMES)
@pytest.mark.parametrize("make", [dirs, files, links], ids=["dirs", "files", "symlinks"])
def test_good_name_accepted_in_directory(make, name: bytes) -> None:  # type: ignore[no-untyped-def]
    make(name).validate()


BAD_TARGETS = [
    pytest.param(b"", id="empty"),
    pytest.param(b"x" * 4096, id="4096_bytes"),
    pytest.param(b"x" * 10000, id="10000_bytes"),
    pytest.param(b"\x00", id="nul"),
    pytest.param(b"/nix/store/a\x00b", id="inner_nul"),
]

GOOD_TARGETS = [
    pytest.param(b"x", id="one_byte"),
    pytest.param(b"x" * 4095, id="4095_bytes"),
    pytest.param(b"/nix/store/somewhereelse", id="absolute"),
    pytest.param(b"..", id="dotdot"),
    pytest.param(b"../../etc/passwd", id="dotdot_path"),
    pytest.param(b".", id="dot"),
    pytest.param(b"/", id="root"),
    pytest.param(b"\xff\xfe", id="non_utf8"),
    pytest.param(b"a b\nc", id="whitespace"),
    pytest.param(b"a//b/", id="slashes"),
]


@pytest.mark.parametrize("target", BAD_TARGETS)
def test_bad_symlink_target_rejected(target: bytes) -> None:
    with pytest.raises(InvalidSymlinkTarget):
        validate_symlink_target(target)
    raises_exactly(InvalidSymlinkTarget, Directory(symlinks=(SymlinkNode(b"s", target),)))


@pytest.mark.parametrize("target", GOOD_TARGETS)
def test_good_symlink_target_accepted(target: bytes) -> None:
    validate_symlink_target(target)
    Directory(symlinks=(SymlinkNode(b"s", target),)).validate()


def one_child(size: int) -> Directory:
    return Directory(directories=(DirectoryNode(b"d", DUMMY, size),))


def test_size_at_the_u64_limit() -> None:
    # current: 2 * 1 + size; legacy: 1 + size
    assert one_child(U64_MAX - 2).size(CURRENT) == U64_MAX
    one_child(U64_MAX - 2).validate(CURRENT)
    assert one_child(U64_MAX - 1).size(LEGACY) == U64_MAX
    one_child(U64_MAX - 1).validate(LEGACY)


@pytest.mark.parametrize(
    ("directory", "formula"),
    [
        pytest.param(one_child(U64_MAX - 1), CURRENT, id="current_by_one"),
        pytest.param(one_child(U64_MAX), CURRENT, id="current_max"),
        pytest.param(one_child(U64_MAX), LEGACY, id="legacy_max"),
        pytest.param(
            Directory(
                directories=(DirectoryNode(b"a", DUMMY, 2**63), DirectoryNode(b"b", DUMMY, 2**63))
            ),
            LEGACY,
            id="two_halves",
        ),
        pytest.param(
            Directory(
                directories=(
                    DirectoryNode(b"a", DUMMY, 2**63 - 1),
                    DirectoryNode(b"b", DUMMY, 2**63 - 1),
                ),
                files=(FileNode(b"c", DUMMY, 0),),
            ),
            CURRENT,
            id="entries_tip_it_over",
        ),
    ],
)
def test_size_overflow_rejected(directory: Directory, formula: SizeFormula) -> None:
    raises_exactly(SizeOverflow, directory, formula)
    with pytest.raises(SizeOverflow):
        directory.size(formula)


@pytest.mark.parametrize(
    "directory",
    [
        pytest.param(Directory(files=(FileNode(b"f", DUMMY, 2**64),)), id="file_2**64"),
        pytest.param(Directory(files=(FileNode(b"f", DUMMY, -1),)), id="file_negative"),
        pytest.param(Directory(directories=(DirectoryNode(b"d", DUMMY, -1),)), id="dir_negative"),
    ],
)
def test_node_size_outside_u64_rejected(directory: Directory) -> None:
    with pytest.raises(DirectoryValidationError):
        directory.validate()


def test_error_classes_are_distinct() -> None:
    classes = {UnsortedNames, DuplicateName, InvalidName, InvalidSymlinkTarget, SizeOverflow}
    for cls in classes:
        assert issubclass(cls, DirectoryValidationError)
        assert not any(issubclass(cls, other) for other in classes - {cls})


# --- property tests ---------------------------------------------------------------------------

NAME_BYTES = [b for b in range(256) if b not in (0x00, 0x2F)]


def is_valid_name(name: bytes) -> bool:
    return 0 < len(name) <= 255 and name not in (b".", b"..") and not set(name) & {0x00, 0x2F}


def is_valid_target(target: bytes) -> bool:
    return 0 < len(target) <= 4095 and 0x00 not in target


names = st.one_of(
    st.sampled_from([b"a", b"b", b"aa", b".keep", b"keep", b"...", b"\xff"]),
    st.lists(st.sampled_from(NAME_BYTES), min_size=1, max_size=255).map(bytes),
).filter(lambda n: n not in (b".", b".."))
digests = st.binary(min_size=32, max_size=32).map(B3Digest)
targets = st.binary(min_size=1, max_size=300).map(lambda t: t.replace(b"\x00", b"@"))
child_sizes = st.integers(min_value=0, max_value=2**59)  # 16 of them stay below 2**64


@st.composite
def valid_directories(draw: st.DrawFn) -> Directory:
    unique_names = draw(st.lists(names, unique=True, max_size=16))
    ds: list[DirectoryNode] = []
    fs: list[FileNode] = []
    ls: list[SymlinkNode] = []
    for name in unique_names:
        kind = draw(st.sampled_from(["d", "f", "l"]))
        if kind == "d":
            ds.append(DirectoryNode(name, draw(digests), draw(child_sizes)))
        elif kind == "f":
            size = draw(st.integers(min_value=0, max_value=U64_MAX))
            fs.append(FileNode(name, draw(digests), size, draw(st.booleans())))
        else:
            ls.append(SymlinkNode(name, draw(targets)))
    return Directory(
        directories=tuple(sorted(ds, key=lambda n: n.name)),
        files=tuple(sorted(fs, key=lambda n: n.name)),
        symlinks=tuple(sorted(ls, key=lambda n: n.name)),
    )


@given(valid_directories())
def test_random_valid_directories_validate(d: Directory) -> None:
    d.validate(CURRENT)
    d.validate(LEGACY)
    child_sum = sum(n.size for n in d.directories)
    entries = len(d.directories) + len(d.files) + len(d.symlinks)
    assert d.size(CURRENT) == 2 * entries + child_sum
    assert d.size(LEGACY) == entries + child_sum


@given(valid_directories())
def test_random_directories_encode_like_protobuf(d: Directory) -> None:
    expected = to_pb(d).SerializeToString(deterministic=True)
    assert d.encoded == expected
    assert d.digest.raw == b3(expected)


@given(valid_directories())
def test_random_directories_round_trip_through_protobuf(d: Directory) -> None:
    parsed = pb.Directory.FromString(d.encoded)
    assert_same_fields(parsed, d)
    assert parsed.SerializeToString(deterministic=True) == d.encoded


@given(valid_directories())
def test_random_directories_entries_are_sorted(d: Directory) -> None:
    entry_names = [e.name for e in d.entries()]
    assert entry_names == sorted(entry_names)
    assert len(entry_names) == len(d)


@given(valid_directories(), st.randoms(use_true_random=False))
def test_shuffled_list_is_rejected(d: Directory, rnd: random.Random) -> None:
    shuffled = list(d.files)
    rnd.shuffle(shuffled)
    candidate = Directory(d.directories, tuple(shuffled), d.symlinks)
    if shuffled == list(d.files):
        candidate.validate()
    else:
        raises_exactly(UnsortedNames, candidate)


@given(st.binary(max_size=300))
def test_random_names_validate_or_raise_invalid_name(name: bytes) -> None:
    try:
        validate_name(name)
    except InvalidName:
        assert not is_valid_name(name)
    else:
        assert is_valid_name(name)


@given(st.binary(max_size=300), st.sampled_from([dirs, files, links]))
def test_random_names_in_directory_raise_only_invalid_name(name: bytes, make) -> None:  # type: ignore[no-untyped-def]
    try:
        make(name).validate()
    except InvalidName:
        assert not is_valid_name(name)
    else:
        assert is_valid_name(name)


@given(st.binary(max_size=5000))
def test_random_targets_validate_or_raise_invalid_target(target: bytes) -> None:
    try:
        validate_symlink_target(target)
    except InvalidSymlinkTarget:
        assert not is_valid_target(target)
    else:
        assert is_valid_target(target)
