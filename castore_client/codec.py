"""Conversion between the generated protobuf messages and the domain model.

The only module besides the gRPC transport that touches `castore_client.pb`. Conversions from
protobuf check what the domain types cannot express (digest lengths, a Node with nothing set)
and raise the domain's validation errors; the remaining rules are `Directory.validate`'s.
"""

from __future__ import annotations

from .digest import B3Digest
from .directory import Directory, DirectoryNode, FileNode, Node, SymlinkNode
from .errors import InvalidNodeDigest, ProtocolError
from .pb import castore_pb2

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
