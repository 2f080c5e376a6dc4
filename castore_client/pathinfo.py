"""PathInfo: what a Nix store path is in castore terms (root node, references, NAR metadata).

The dataclasses accept anything the wire can carry, so that a received PathInfo can be held and
reported on; `PathInfo.validate()` is the gate (spec section 7) that a server applies on Put
and a client applies before trusting what Get returned.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from .digest import B3Digest
from .directory import (
    U64_MAX,
    DirectoryNode,
    FileNode,
    Node,
    SymlinkNode,
    validate_symlink_target,
)
from .errors import (
    CastoreError,
    DirectoryValidationError,
    InvalidPathInfo,
    InvalidStorePath,
    PathInfoNotFound,
    ProtocolError,
)
from .storepath import DIGEST_SIZE, StorePath

NAR_SHA256_SIZE = 32
SIGNATURE_SIZE = 64


class HashType(enum.IntEnum):
    NAR_SHA256 = 0
    NAR_SHA1 = 1
    NAR_SHA512 = 2
    NAR_MD5 = 3
    TEXT_SHA256 = 4
    FLAT_SHA1 = 5
    FLAT_MD5 = 6
    FLAT_SHA256 = 7
    FLAT_SHA512 = 8

    @property
    def digest_size(self) -> int:
        return _DIGEST_SIZES[self.name.rsplit("_", 1)[1]]


_DIGEST_SIZES = {"MD5": 16, "SHA1": 20, "SHA256": 32, "SHA512": 64}


@dataclass(frozen=True, slots=True)
class Signature:
    """An ed25519 signature over the narinfo fingerprint, by the key called `name`."""

    name: str
    data: bytes


@dataclass(frozen=True, slots=True)
class ContentAddress:
    hash_type: HashType
    digest: bytes


@dataclass(frozen=True, slots=True)
class NarInfo:
    nar_size: int
    nar_sha256: bytes
    signatures: tuple[Signature, ...] = ()
    reference_names: tuple[str, ...] = ()
    deriver: StorePath | None = None
    ca: ContentAddress | None = None


@dataclass(frozen=True, slots=True)
class PathInfo:
    node: Node | None
    references: tuple[bytes, ...] = ()
    narinfo: NarInfo | None = None

    @property
    def store_path(self) -> StorePath:
        """The store path this PathInfo describes, named by its root node."""
        if self.node is None:
            raise InvalidPathInfo("the PathInfo has no root node, so no store path")
        return StorePath.from_bytes_name(self.node.name)

    def validate(self) -> None:
        """Raise InvalidPathInfo naming the first thing a real server would refuse."""
        narinfo = self.narinfo
        if narinfo is None:
            raise InvalidPathInfo("narinfo is missing")
        _validate_narinfo(narinfo)
        _validate_references(self.references, narinfo.reference_names)
        if self.node is None:
            raise InvalidPathInfo("root node is missing")
        _validate_root_node(self.node)


def expect_store_path(path_info: PathInfo, store_path: StorePath) -> PathInfo:
    """`path_info`, found under the hash of `store_path`, if it is named exactly `store_path`.

    A lookup can only ask by hash, and two paths may share a hash part while their names
    differ; every `PathInfoService.get` applies this after `get_by_hash`, so that a path whose
    name differs reads as absent. A PathInfo that names no store path at all cannot have been
    stored by a valid Put, so it is the peer's fault (ProtocolError).
    """
    try:
        found = path_info.store_path
    except CastoreError as exc:
        raise ProtocolError(
            f"{store_path}: the PathInfo under that hash names no store path: {exc}"
        ) from None
    if found != store_path:
        raise PathInfoNotFound(f"{store_path}: the store has {found} under that hash")
    return path_info


def _validate_narinfo(narinfo: NarInfo) -> None:
    if not 0 <= narinfo.nar_size <= U64_MAX:
        raise InvalidPathInfo(f"nar_size {narinfo.nar_size} is not a u64")
    if len(narinfo.nar_sha256) != NAR_SHA256_SIZE:
        raise InvalidPathInfo(
            f"nar_sha256 is {len(narinfo.nar_sha256)} bytes, expected {NAR_SHA256_SIZE}"
        )
    for i, signature in enumerate(narinfo.signatures):
        if len(signature.data) != SIGNATURE_SIZE:
            raise InvalidPathInfo(
                f"signature {i} ({signature.name!r}) is {len(signature.data)} bytes, "
                f"expected {SIGNATURE_SIZE}"
            )
    ca = narinfo.ca
    if ca is not None:
        try:
            hash_type = HashType(ca.hash_type)
        except ValueError:
            raise InvalidPathInfo(f"ca has unknown hash type {ca.hash_type!r}") from None
        if len(ca.digest) != hash_type.digest_size:
            raise InvalidPathInfo(
                f"ca digest is {len(ca.digest)} bytes, but {hash_type.name} needs "
                f"{hash_type.digest_size}"
            )


def _validate_references(references: tuple[bytes, ...], names: tuple[str, ...]) -> None:
    for i, reference in enumerate(references):
        if len(reference) != DIGEST_SIZE:
            raise InvalidPathInfo(
                f"reference {i} is {len(reference)} bytes, expected {DIGEST_SIZE}"
            )
    if len(names) != len(references):
        raise InvalidPathInfo(f"{len(references)} references but {len(names)} reference_names")
    for i, (reference, name) in enumerate(zip(references, names, strict=True)):
        try:
            parsed = StorePath.parse(name)
        except InvalidStorePath as exc:
            raise InvalidPathInfo(f"reference_names[{i}] is not a store path: {exc}") from None
        if parsed.digest != reference:
            raise InvalidPathInfo(
                f"reference_names[{i}] {name!r} does not match the digest of reference {i}"
            )


def _validate_root_node(node: Node) -> None:
    try:
        StorePath.from_bytes_name(node.name)
    except InvalidStorePath as exc:
        raise InvalidPathInfo(f"root node name is not a store-path basename: {exc}") from None
    if isinstance(node, DirectoryNode | FileNode):
        if not isinstance(node.digest, B3Digest):
            raise InvalidPathInfo(f"root node digest is not a B3Digest: {node.digest!r}")
        if not 0 <= node.size <= U64_MAX:
            raise InvalidPathInfo(f"root node size {node.size} is not a u64")
    elif isinstance(node, SymlinkNode):
        try:
            validate_symlink_target(node.target, node.name)
        except DirectoryValidationError as exc:
            raise InvalidPathInfo(f"root node: {exc}") from None
    else:
        raise InvalidPathInfo(f"root node is not a castore node: {node!r}")
