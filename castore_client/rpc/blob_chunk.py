"""A direct codec for BlobChunk, the one message that carries bulk data.

`BlobChunk { bytes data = 1; }` is so simple that going through the protobuf runtime costs
two extra copies of every byte (into its arena and back out) for nothing; at loopback speeds
those copies are a large share of the transfer. Anything but the plain shape (unknown fields,
repeated fields) is handed to the protobuf runtime, so the result is always what it would give.
"""

from __future__ import annotations

from ..directory import varint
from ..pb import rpc_blobstore_pb2 as bpb

_TAG = b"\x0a"


def encode(data: bytes) -> bytes:
    if not data:
        return b""
    return b"".join((_TAG, varint(len(data)), data))


def decode(message: bytes) -> bytes | memoryview:
    """The payload; a read-only view into the message when the shape is plain (no copy)."""
    if not message:
        return b""
    if message[0] == 0x0A:
        length = 0
        shift = 0
        pos = 1
        while pos < len(message) and pos <= 10:
            byte = message[pos]
            length |= (byte & 0x7F) << shift
            pos += 1
            if byte < 0x80:
                if pos + length == len(message):
                    return memoryview(message)[pos:]
                break
            shift += 7
    return bytes(bpb.BlobChunk.FromString(message).data)


class BlobChunkCodec:
    """Stands where a message class would, so that Read and Put move plain `bytes`."""

    SerializeToString = staticmethod(encode)
    FromString = staticmethod(decode)
