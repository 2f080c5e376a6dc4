from __future__ import annotations

import dataclasses

import pytest

from castore_client.digest import B3Digest
from castore_client.directory import DirectoryNode, FileNode, SymlinkNode
from castore_client.errors import (
    InvalidInput,
    InvalidPathInfo,
    InvalidStorePath,
    PathInfoNotFound,
    ProtocolError,
)
from castore_client.pathinfo import (
    ContentAddress,
    HashType,
    NarInfo,
    PathInfo,
    Signature,
    expect_store_path,
)
from castore_client.storepath import DIGEST_SIZE, StorePath, check_store_hash

# The hash part is `nix-hash --type sha1 --to-base32` of the digest (see test_nixbase32).
REF_NAME = "00bgd045z0d4icpbc2yyz4gx48ak44la-net-tools-1.60_p20170221182432"
REF_DIGEST = bytes.fromhex("8a12321522fd91efbd60ebb2481af88580f61600")
# `nix-hash --type sha1 --to-base32 0000...01` printed this hash part.
OTHER_NAME = "04000000000000000000000000000000-other"
OTHER_DIGEST = bytes.fromhex("0000000000000000000000000000000000000001")
ROOT_NAME = b"00bgd045z0d4icpbc2yyz4gx48ak44la-hello"
EMPTY = B3Digest.of(b"")


def valid_info() -> PathInfo:
    return PathInfo(
        node=DirectoryNode(ROOT_NAME, EMPTY, 0),
        references=(REF_DIGEST, OTHER_DIGEST),
        narinfo=NarInfo(
            nar_size=112,
            nar_sha256=bytes(range(32)),
            signatures=(Signature("cache.nixos.org-1", bytes(64)),),
            reference_names=(REF_NAME, OTHER_NAME),
            deriver=StorePath.parse("00bgd045z0d4icpbc2yyz4gx48ak44la-hello.drv"),
            ca=ContentAddress(HashType.NAR_SHA256, bytes(32)),
        ),
    )


def with_narinfo(**changes: object) -> PathInfo:
    info = valid_info()
    assert info.narinfo is not None
    return dataclasses.replace(info, narinfo=dataclasses.replace(info.narinfo, **changes))


def test_hash_type_values() -> None:
    assert [(t.name, int(t)) for t in HashType] == [
        ("NAR_SHA256", 0),
        ("NAR_SHA1", 1),
        ("NAR_SHA512", 2),
        ("NAR_MD5", 3),
        ("TEXT_SHA256", 4),
        ("FLAT_SHA1", 5),
        ("FLAT_MD5", 6),
        ("FLAT_SHA256", 7),
        ("FLAT_SHA512", 8),
    ]


def test_valid_path_info() -> None:
    info = valid_info()
    info.validate()
    assert info.store_path.name == "hello"
    assert info.store_path.digest == REF_DIGEST
    assert str(info.store_path) == ROOT_NAME.decode()


@pytest.mark.parametrize(
    "node",
    [
        FileNode(ROOT_NAME, EMPTY, 0),
        FileNode(ROOT_NAME, EMPTY, 0, executable=True),
        SymlinkNode(ROOT_NAME, b"/nix/store/somewhere"),
        SymlinkNode(ROOT_NAME, b"\xff relative, non-utf8 and with spaces"),
        DirectoryNode(b"04000000000000000000000000000000-.dotted", EMPTY, 0),
    ],
)
def test_valid_root_nodes(node: object) -> None:
    dataclasses.replace(valid_info(), node=node).validate()


def test_minimal_valid_path_info() -> None:
    info = PathInfo(FileNode(ROOT_NAME, EMPTY, 0), (), NarInfo(0, bytes(32)))
    info.validate()


def test_frozen() -> None:
    info = valid_info()
    with pytest.raises(dataclasses.FrozenInstanceError):
        info.references = ()  # type: ignore[misc]


@pytest.mark.parametrize(
    ("info", "fragment"),
    [
        (dataclasses.replace(valid_info(), narinfo=None), "narinfo is missing"),
        (dataclasses.replace(valid_info(), node=None), "root node is missing"),
        (
            dataclasses.replace(valid_info(), references=(REF_DIGEST[:19], OTHER_DIGEST)),
            "reference 0 is 19 bytes",
        ),
        (
            dataclasses.replace(valid_info(), references=(REF_DIGEST, OTHER_DIGEST + b"\0")),
            "reference 1 is 21 bytes",
        ),
        (dataclasses.replace(valid_info(), references=(REF_DIGEST,)), "1 references but 2"),
        (with_narinfo(reference_names=(REF_NAME,)), "2 references but 1"),
        (with_narinfo(reference_names=(OTHER_NAME, REF_NAME)), "does not match"),
        (with_narinfo(reference_names=(REF_NAME, "/nix/store/" + OTHER_NAME)), "not a store"),
        (with_narinfo(reference_names=(REF_NAME, "other")), "not a store path"),
        (with_narinfo(nar_sha256=bytes(31)), "nar_sha256 is 31 bytes"),
        (with_narinfo(nar_sha256=b""), "nar_sha256 is 0 bytes"),
        (with_narinfo(nar_size=-1), "nar_size"),
        (with_narinfo(nar_size=1 << 64), "nar_size"),
        (with_narinfo(signatures=(Signature("k", bytes(63)),)), "signature 0 .* 63 bytes"),
        (
            with_narinfo(signatures=(Signature("k", bytes(64)), Signature("j", bytes(65)))),
            "signature 1 .* 65 bytes",
        ),
        (with_narinfo(ca=ContentAddress(HashType.NAR_SHA256, bytes(20))), "ca digest"),
        (with_narinfo(ca=ContentAddress(HashType.FLAT_MD5, bytes(32))), "ca digest"),
        (
            dataclasses.replace(valid_info(), node=DirectoryNode(b"hello", EMPTY, 0)),
            "not a store-path basename",
        ),
        (
            dataclasses.replace(valid_info(), node=FileNode(b"", EMPTY, 0)),
            "not a store-path basename",
        ),
        (
            dataclasses.replace(valid_info(), node=FileNode(ROOT_NAME + b"/bin", EMPTY, 0)),
            "not a store-path basename",
        ),
        (
            dataclasses.replace(valid_info(), node=FileNode(ROOT_NAME + b"\xff", EMPTY, 0)),
            "not a store-path basename",
        ),
        (
            dataclasses.replace(valid_info(), node=SymlinkNode(ROOT_NAME, b"")),
            "empty target",
        ),
        (
            dataclasses.replace(valid_info(), node=SymlinkNode(ROOT_NAME, b"a\0b")),
            "NUL",
        ),
        (
            dataclasses.replace(valid_info(), node=SymlinkNode(ROOT_NAME, b"x" * 4096)),
            "too long",
        ),
        (
            dataclasses.replace(valid_info(), node=FileNode(ROOT_NAME, EMPTY, 1 << 64)),
            "size",
        ),
    ],
)
def test_invalid_path_info(info: PathInfo, fragment: str) -> None:
    with pytest.raises(InvalidPathInfo, match=fragment):
        info.validate()


def test_invalid_path_info_is_invalid_input() -> None:
    assert issubclass(InvalidPathInfo, InvalidInput)


def test_store_path_without_node() -> None:
    with pytest.raises(InvalidPathInfo):
        _ = PathInfo(None).store_path


def test_expect_store_path_wants_hash_and_name() -> None:
    info = valid_info()
    wanted = StorePath.from_bytes_name(ROOT_NAME)
    assert expect_store_path(info, wanted) is info
    with pytest.raises(PathInfoNotFound, match="under that hash"):
        expect_store_path(info, StorePath(wanted.digest, "hello2"))
    with pytest.raises(PathInfoNotFound):
        expect_store_path(info, StorePath(OTHER_DIGEST, "hello"))


@pytest.mark.parametrize(
    "misnamed",
    [PathInfo(None), PathInfo(node=SymlinkNode(b"not-a-store-path", b"x"))],
    ids=["no node", "bad name"],
)
def test_expect_store_path_blames_the_peer_for_a_nameless_path_info(misnamed: PathInfo) -> None:
    with pytest.raises(ProtocolError, match="names no store path"):
        expect_store_path(misnamed, StorePath.from_bytes_name(ROOT_NAME))


def test_check_store_hash() -> None:
    assert check_store_hash(bytearray(DIGEST_SIZE)) == bytes(DIGEST_SIZE)
    for bad in (bytes(DIGEST_SIZE - 1), bytes(DIGEST_SIZE + 1), "0" * DIGEST_SIZE):
        with pytest.raises(InvalidStorePath):
            check_store_hash(bad)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("hash_type", "size"),
    [
        (HashType.NAR_SHA256, 32),
        (HashType.NAR_SHA1, 20),
        (HashType.NAR_SHA512, 64),
        (HashType.NAR_MD5, 16),
        (HashType.TEXT_SHA256, 32),
        (HashType.FLAT_SHA1, 20),
        (HashType.FLAT_MD5, 16),
        (HashType.FLAT_SHA256, 32),
        (HashType.FLAT_SHA512, 64),
    ],
)
def test_every_ca_hash_type_accepts_its_digest_size(hash_type: HashType, size: int) -> None:
    with_narinfo(ca=ContentAddress(hash_type, bytes(size))).validate()
