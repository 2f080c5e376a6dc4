"""Conversion between the generated protobuf messages and the domain model.

The only module besides the gRPC transport that touches `castore_client.pb`. Conversions from
protobuf check what the domain types cannot express (digest lengths, a Node with nothing set)
and raise the domain's validation errors; the remaining rules are `Directory.validate`'s.
"""

from __future__ import annotations

from typing import cast

from .digest import B3Digest
from .directory import Directory, DirectoryNode, FileNode, Node, SymlinkNode
from .errors import (
    DigestMismatch,
    InvalidNodeDigest,
    InvalidPathInfo,
    InvalidStorePath,
    ProtocolError,
)
from .pathinfo import ContentAddress, HashType, NarInfo, PathInfo, Signature
from .pb import castore_pb2, pathinfo_pb2
from .storepath import StorePath

DIGEST_LEN = 32


def _node_digest(raw: bytes, name: bytes) -> B3Digest:
    if len(raw) != DIGEST_LEN:
        raise InvalidNodeDigest(f"{name!r}: digest of {len(raw)} bytes, expected {DIGEST_LEN}")
    return B3Digest(bytes(raw))


def directory_node_from_pb(msg: castore_pb2.DirectoryNode) -> DirectoryNode:
    return DirectoryNode(msg.name, _node_digest(msg.digest, msg.name), msg.size)


def file_node_from_pb(msg: castore_pb2.FileNode) -> FileNode:
    return FileNode(msg.name, _node_digest(msg.digest, msg.name), msg.size, msg.executable)


def symlink_node_from_pb(msg: castore_pb2.SymlinkNode) -> SymlinkNode:
    return SymlinkNode(msg.name, msg.target)


def directory_from_pb(msg: castore_pb2.Directory) -> Directory:
    """Convert without validating: callers run `Directory.validate` (or a closure validator)."""
    return Directory(
        tuple(directory_node_from_pb(d) for d in msg.directories),
        tuple(file_node_from_pb(f) for f in msg.files),
        tuple(symlink_node_from_pb(s) for s in msg.symlinks),
    )


def directory_to_pb(directory: Directory) -> castore_pb2.Directory:
    msg = castore_pb2.Directory()
    msg.ParseFromString(directory.encoded)
    return msg


def decode_directory(data: bytes) -> Directory:
    msg = castore_pb2.Directory()
    try:
        msg.ParseFromString(data)
    except Exception as exc:  # the protobuf runtime raises its own DecodeError
        raise ProtocolError(f"undecodable Directory: {exc}") from None
    return directory_from_pb(msg)


def decode_named_directory(data: bytes, digest: B3Digest) -> Directory:
    """Decode the directory fetched as `digest` and check that it is that one (not validated).

    Received bytes that hash to the digest are its canonical encoding, so they are kept as
    `encoded` and nothing is encoded again (about 1 us per entry less); bytes that do not
    are encoded again and checked, since a server may encode the same directory differently.
    """
    directory = decode_directory(data)
    if B3Digest.of(data) == digest:
        directory.__dict__["encoded"] = bytes(data)
        directory.__dict__["digest"] = digest
    elif directory.digest != digest:
        raise DigestMismatch(f"directory {digest}: received one that hashes to {directory.digest}")
    return directory


def node_from_pb(msg: castore_pb2.Node) -> Node:
    kind = msg.WhichOneof("node")
    if kind == "directory":
        return directory_node_from_pb(msg.directory)
    if kind == "file":
        return file_node_from_pb(msg.file)
    if kind == "symlink":
        return symlink_node_from_pb(msg.symlink)
    raise ProtocolError("a Node message with none of directory, file or symlink set")


def node_to_pb(node: Node) -> castore_pb2.Node:
    if isinstance(node, DirectoryNode):
        return castore_pb2.Node(
            directory=castore_pb2.DirectoryNode(
                name=node.name, digest=node.digest.raw, size=node.size
            )
        )
    if isinstance(node, FileNode):
        return castore_pb2.Node(
            file=castore_pb2.FileNode(
                name=node.name, digest=node.digest.raw, size=node.size, executable=node.executable
            )
        )
    return castore_pb2.Node(symlink=castore_pb2.SymlinkNode(name=node.name, target=node.target))


def _store_path_from_pb(msg: pathinfo_pb2.StorePath) -> StorePath:
    try:
        return StorePath(bytes(msg.digest), msg.name)
    except InvalidStorePath as exc:
        raise InvalidPathInfo(f"deriver: {exc}") from None


def _ca_from_pb(msg: pathinfo_pb2.NARInfo.CA) -> ContentAddress:
    try:
        return ContentAddress(HashType(msg.type), bytes(msg.digest))
    except ValueError:
        raise InvalidPathInfo(f"ca has unknown hash type {msg.type}") from None


def path_info_from_pb(msg: pathinfo_pb2.PathInfo) -> PathInfo:
    """Convert without validating (PathInfo.validate is the gate); shape errors still raise."""
    node = node_from_pb(msg.node) if msg.HasField("node") else None
    narinfo = None
    if msg.HasField("narinfo"):
        n = msg.narinfo
        narinfo = NarInfo(
            nar_size=n.nar_size,
            nar_sha256=bytes(n.nar_sha256),
            signatures=tuple(Signature(s.name, bytes(s.data)) for s in n.signatures),
            reference_names=tuple(n.reference_names),
            deriver=_store_path_from_pb(n.deriver) if n.HasField("deriver") else None,
            ca=_ca_from_pb(n.ca) if n.HasField("ca") else None,
        )
    return PathInfo(node=node, references=tuple(bytes(r) for r in msg.references), narinfo=narinfo)


def path_info_to_pb(path_info: PathInfo) -> pathinfo_pb2.PathInfo:
    msg = pathinfo_pb2.PathInfo(references=list(path_info.references))
    if path_info.node is not None:
        msg.node.CopyFrom(node_to_pb(path_info.node))
    n = path_info.narinfo
    if n is not None:
        msg.narinfo.nar_size = n.nar_size
        msg.narinfo.nar_sha256 = n.nar_sha256
        msg.narinfo.reference_names.extend(n.reference_names)
        for s in n.signatures:
            msg.narinfo.signatures.add(name=s.name, data=s.data)
        if n.deriver is not None:
            msg.narinfo.deriver.name = n.deriver.name
            msg.narinfo.deriver.digest = n.deriver.digest
        if n.ca is not None:
            msg.narinfo.ca.type = cast("pathinfo_pb2.NARInfo.CA.Hash", int(n.ca.hash_type))
            msg.narinfo.ca.digest = n.ca.digest
    return msg


def encode_path_info(path_info: PathInfo) -> bytes:
    return path_info_to_pb(path_info).SerializeToString(deterministic=True)


def decode_path_info(data: bytes) -> PathInfo:
    msg = pathinfo_pb2.PathInfo()
    try:
        msg.ParseFromString(data)
    except Exception as exc:  # the protobuf runtime raises its own DecodeError
        raise ProtocolError(f"undecodable PathInfo: {exc}") from None
    return path_info_from_pb(msg)
