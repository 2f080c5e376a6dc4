"""The fixture content of spec/behaviours.md, built from first principles for the tests.

Digests here come from the blake3 package and hand-assembled protobuf bytes, never from the
code under test, so a test comparing against them can fail.
"""

from __future__ import annotations

import blake3

BLOB_A = bytes([0x00, 0x01])
BLOB_B = bytes(range(255)) * 4096
HELLOWORLD = b"Hello World!"
EMPTY = b""


def b3(data: bytes) -> bytes:
    return blake3.blake3(data).digest()


def varint(n: int) -> bytes:
    out = bytearray()
    while n > 0x7F:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def field_bytes(number: int, value: bytes) -> bytes:
    """A length-delimited protobuf field; proto3 omits empty values."""
    if not value:
        return b""
    return varint(number << 3 | 2) + varint(len(value)) + value


def field_uint(number: int, value: int) -> bytes:
    return varint(number << 3) + varint(value) if value else b""


def file_node(name: bytes, digest: bytes, size: int, executable: bool = False) -> bytes:
    return (
        field_bytes(1, name)
        + field_bytes(2, digest)
        + field_uint(3, size)
        + field_uint(4, int(executable))
    )


def dir_node(name: bytes, digest: bytes, size: int) -> bytes:
    return field_bytes(1, name) + field_bytes(2, digest) + field_uint(3, size)


def symlink_node(name: bytes, target: bytes) -> bytes:
    return field_bytes(1, name) + field_bytes(2, target)


def directory(dirs: list[bytes] = (), files: list[bytes] = (), links: list[bytes] = ()) -> bytes:
    """Concatenate already-encoded nodes as Directory fields 1, 2 and 3 (in that order)."""
    return (
        b"".join(_msg(1, d) for d in dirs)
        + b"".join(_msg(2, f) for f in files)
        + b"".join(_msg(3, s) for s in links)
    )


def _msg(number: int, body: bytes) -> bytes:
    return varint(number << 3 | 2) + varint(len(body)) + body


# DIRECTORY_WITH_KEEP = {.keep: empty file}; size = 2 * 1 entry (current formula).
WITH_KEEP_BYTES = directory(files=[file_node(b".keep", b3(EMPTY), 0)])
WITH_KEEP_DIGEST = b3(WITH_KEEP_BYTES)
WITH_KEEP_SIZE = 2

# DIRECTORY_COMPLICATED = {keep: WITH_KEEP, .keep: empty file, aa -> /nix/store/somewhereelse}
COMPLICATED_BYTES = directory(
    dirs=[dir_node(b"keep", WITH_KEEP_DIGEST, WITH_KEEP_SIZE)],
    files=[file_node(b".keep", b3(EMPTY), 0)],
    links=[symlink_node(b"aa", b"/nix/store/somewhereelse")],
)
COMPLICATED_DIGEST = b3(COMPLICATED_BYTES)
COMPLICATED_SIZE = 2 * 3 + WITH_KEEP_SIZE
