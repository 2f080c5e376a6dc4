"""The gRPC clients against servers that break the protocol: nothing unverified gets through."""

from __future__ import annotations

from collections.abc import Iterator

import grpc
import pytest

from castore_client.address import parse_address
from castore_client.chunked_reader import fetch_verified, open_blob
from castore_client.digest import B3Digest
from castore_client.errors import (
    BlobNotFound,
    DigestMismatch,
    DirectoryNotFound,
    InvalidChunkList,
    InvalidName,
    MissingDirectory,
    SizeMismatch,
    UnexpectedDirectory,
    UnsortedNames,
)
from castore_client.rpc.blob_client import GrpcBlobService
from castore_client.rpc.channel import open_channel
from castore_client.rpc.directory_client import GrpcDirectoryService
from castore_client.rpc.endpoint import Endpoint
from castore_client.services import ChunkMeta

from . import fixtures as fx
from .scripted_server import scripted_server

GET = "/tvix.castore.v1.DirectoryService/Get"
STAT = "/tvix.castore.v1.BlobService/Stat"
READ = "/tvix.castore.v1.BlobService/Read"


def directory_service(target: str) -> GrpcDirectoryService:
    return GrpcDirectoryService(Endpoint(open_channel(parse_address(target))), timeout=10)


def blob_service(target: str) -> GrpcBlobService:
    return GrpcBlobService(Endpoint(open_channel(parse_address(target))), timeout=10)


def replies(*messages: bytes):
    def handler(request: bytes, context: grpc.ServicerContext) -> Iterator[bytes]:
        yield from messages

    return handler


# A two-level closure: COMPLICATED -> WITH_KEEP. A second child makes order matter.
OTHER_BYTES = fx.directory(files=[fx.file_node(b"x", fx.b3(b"x"), 1)])
OTHER_DIGEST = fx.b3(OTHER_BYTES)
PARENT_BYTES = fx.directory(
    dirs=[
        fx.dir_node(b"a", fx.WITH_KEEP_DIGEST, fx.WITH_KEEP_SIZE),
        fx.dir_node(b"b", OTHER_DIGEST, 2),
    ]
)
PARENT_DIGEST = fx.b3(PARENT_BYTES)


def get_all(target: str, root: bytes) -> list[bytes]:
    return [d.digest.raw for d in directory_service(target).get_recursive(B3Digest(root))]


def test_recursive_get_accepts_any_valid_order() -> None:
    for order in ([fx.WITH_KEEP_BYTES, OTHER_BYTES], [OTHER_BYTES, fx.WITH_KEEP_BYTES]):
        with scripted_server(streams={GET: replies(PARENT_BYTES, *order)}) as target:
            got = get_all(target, PARENT_DIGEST)
        assert got == [PARENT_DIGEST] + [fx.b3(b) for b in order]


def test_recursive_get_rejects_child_before_parent() -> None:
    with (
        scripted_server(
            streams={GET: replies(fx.WITH_KEEP_BYTES, PARENT_BYTES, OTHER_BYTES)}
        ) as target,
        pytest.raises(UnexpectedDirectory),
    ):
        get_all(target, PARENT_DIGEST)


def test_recursive_get_rejects_unreferenced_directory() -> None:
    stranger = fx.directory(files=[fx.file_node(b"y", fx.b3(b"y"), 1)])
    with (
        scripted_server(
            streams={GET: replies(PARENT_BYTES, fx.WITH_KEEP_BYTES, OTHER_BYTES, stranger)}
        ) as target,
        pytest.raises(UnexpectedDirectory),
    ):
        get_all(target, PARENT_DIGEST)


def test_recursive_get_rejects_missing_directory() -> None:
    with (
        scripted_server(streams={GET: replies(PARENT_BYTES, OTHER_BYTES)}) as target,
        pytest.raises(MissingDirectory) as info,
    ):
        get_all(target, PARENT_DIGEST)
    assert str(B3Digest(fx.WITH_KEEP_DIGEST)) in str(info.value)


def test_recursive_get_rejects_duplicate() -> None:
    with (
        scripted_server(
            streams={GET: replies(PARENT_BYTES, OTHER_BYTES, OTHER_BYTES, fx.WITH_KEEP_BYTES)}
        ) as target,
        pytest.raises(UnexpectedDirectory),
    ):
        get_all(target, PARENT_DIGEST)


def test_recursive_get_rejects_wrong_root() -> None:
    with (
        scripted_server(streams={GET: replies(OTHER_BYTES)}) as target,
        pytest.raises(UnexpectedDirectory),
    ):
        get_all(target, PARENT_DIGEST)


def test_recursive_get_rejects_wrong_announced_size() -> None:
    lying_parent = fx.directory(dirs=[fx.dir_node(b"a", fx.WITH_KEEP_DIGEST, 7)])
    with (
        scripted_server(streams={GET: replies(lying_parent, fx.WITH_KEEP_BYTES)}) as target,
        pytest.raises(SizeMismatch),
    ):
        get_all(target, fx.b3(lying_parent))


def test_recursive_get_unknown_root_is_not_found() -> None:
    with scripted_server(streams={GET: replies()}) as target, pytest.raises(DirectoryNotFound):
        get_all(target, PARENT_DIGEST)


def test_get_rejects_digest_mismatch() -> None:
    with (
        scripted_server(streams={GET: replies(OTHER_BYTES)}) as target,
        pytest.raises(DigestMismatch),
    ):
        directory_service(target).get(B3Digest(fx.WITH_KEEP_DIGEST))


@pytest.mark.parametrize(
    ("name", "error"),
    [(b"..", InvalidName), (b"a/b", InvalidName), (b"", InvalidName)],
)
def test_get_rejects_invalid_names(name: bytes, error: type[Exception]) -> None:
    bad = fx.directory(files=[fx.file_node(name, fx.b3(b""), 0)])
    with scripted_server(streams={GET: replies(bad)}) as target, pytest.raises(error):
        directory_service(target).get(B3Digest(fx.b3(bad)))


def test_get_rejects_unsorted() -> None:
    bad = fx.directory(files=[fx.file_node(b"b", fx.b3(b""), 0), fx.file_node(b"a", fx.b3(b""), 0)])
    with scripted_server(streams={GET: replies(bad)}) as target, pytest.raises(UnsortedNames):
        directory_service(target).get(B3Digest(fx.b3(bad)))


def blob_chunk(data: bytes) -> bytes:
    return fx.field_bytes(1, data)


def stat_reply(*chunks: tuple[bytes, int]):
    body = b"".join(
        fx.field_bytes(2, fx.field_bytes(1, digest) + fx.field_uint(2, size))
        for digest, size in chunks
    )

    def handler(request: bytes, context: grpc.ServicerContext) -> bytes:
        return body

    return handler


def test_blob_with_flipped_byte_is_rejected_whole() -> None:
    corrupt = bytearray(fx.BLOB_B)
    corrupt[1000] ^= 0xFF
    with scripted_server(
        unary={STAT: stat_reply()}, streams={READ: replies(blob_chunk(bytes(corrupt)))}
    ) as target:
        reader = open_blob(blob_service(target), B3Digest(fx.b3(fx.BLOB_B)))
        with pytest.raises(DigestMismatch) as info:
            reader.read_at(0, 10)
    assert str(B3Digest(fx.b3(fx.BLOB_B))) in str(info.value)


def test_truncated_blob_stream_is_rejected() -> None:
    with (
        scripted_server(
            unary={STAT: stat_reply()}, streams={READ: replies(blob_chunk(fx.BLOB_B[:4096]))}
        ) as target,
        pytest.raises(DigestMismatch),
    ):
        open_blob(blob_service(target), B3Digest(fx.b3(fx.BLOB_B))).read_at(0, 10)


def test_chunk_list_that_does_not_add_up_is_rejected() -> None:
    half = len(fx.BLOB_B) // 2
    chunks = ((fx.b3(fx.BLOB_B[:half]), half), (fx.b3(fx.BLOB_B[half:]), half - 1))
    with (
        scripted_server(unary={STAT: stat_reply(*chunks)}, streams={READ: replies()}) as target,
        pytest.raises(InvalidChunkList),
    ):
        open_blob(blob_service(target), B3Digest(fx.b3(fx.BLOB_B)), len(fx.BLOB_B))


HALF = 500_000  # not a multiple of 255, so the two halves of BLOB_B differ
FIRST, SECOND = fx.BLOB_B[:HALF], fx.BLOB_B[HALF:]
TWO_CHUNKS = ((fx.b3(FIRST), len(FIRST)), (fx.b3(SECOND), len(SECOND)))


def chunk_server(first: bytes, second: bytes, piece: int = 4096):  # type: ignore[no-untyped-def]
    """Serve BLOB_B as two chunks whose stored bytes are `first` and `second`, in small
    messages as real servers send them."""

    def read(request: bytes, context: grpc.ServicerContext) -> Iterator[bytes]:
        if fx.b3(FIRST) in request:
            data = first
        elif fx.b3(SECOND) in request:
            data = second
        else:
            data = first + second
        for i in range(0, len(data), piece):
            yield blob_chunk(data[i : i + piece])

    return scripted_server(unary={STAT: stat_reply(*TWO_CHUNKS)}, streams={READ: read})


@pytest.mark.parametrize("piece", [4096, 1000, 1 << 20])
def test_sequential_and_random_reads_over_any_message_size(piece: int) -> None:
    with chunk_server(FIRST, SECOND, piece) as target:
        reader = open_blob(blob_service(target), B3Digest(fx.b3(fx.BLOB_B)), len(fx.BLOB_B))
        step = 128 << 10
        out = b"".join(reader.read_at(o, step) for o in range(0, len(fx.BLOB_B), step))
        assert out == fx.BLOB_B
        assert reader.read_at(HALF - 5, 10) == fx.BLOB_B[HALF - 5 : HALF + 5]
        assert reader.read_at(3, 4) == fx.BLOB_B[3:7]


@pytest.mark.parametrize("offset", [0, HALF - 5])
def test_corrupt_chunk_yields_no_bytes(offset: int) -> None:
    """The chunk list cannot be proven while one of its chunks is corrupt, so no byte read
    through it is served, not even from the sound chunk."""
    with chunk_server(FIRST, SECOND[:-1] + b"\x00") as target:
        reader = open_blob(blob_service(target), B3Digest(fx.b3(fx.BLOB_B)), len(fx.BLOB_B))
        with pytest.raises(DigestMismatch) as info:
            reader.read_at(offset, 10)
        with pytest.raises(DigestMismatch):
            reader.read_at(10, 20)
    assert str(B3Digest(fx.b3(SECOND))) in str(info.value)


def test_a_chunk_list_of_another_blob_is_never_served() -> None:
    """Stat names sound chunks, but of other content than the blob: the proof fails."""
    other_first = bytes(reversed(FIRST))
    chunks = ((fx.b3(other_first), len(FIRST)), (fx.b3(SECOND), len(SECOND)))

    def read(request: bytes, context: grpc.ServicerContext) -> Iterator[bytes]:
        data = {fx.b3(other_first): other_first, fx.b3(SECOND): SECOND}.get(
            request[2:34], other_first + SECOND
        )
        for i in range(0, len(data), 4096):
            yield blob_chunk(data[i : i + 4096])

    with scripted_server(unary={STAT: stat_reply(*chunks)}, streams={READ: read}) as target:
        reader = open_blob(blob_service(target), B3Digest(fx.b3(fx.BLOB_B)), len(fx.BLOB_B))
        with pytest.raises(InvalidChunkList) as info:
            reader.read_at(HALF + 10, 100)
        with pytest.raises(InvalidChunkList):
            reader.read_at(0, 100)
    assert str(B3Digest(fx.b3(fx.BLOB_B))) in str(info.value)


def test_trailing_garbage_is_never_served() -> None:
    """The stream's excess comes after the last chunk, which verifies; a single fetch of that
    chunk gets the excess inside it and fails."""
    with chunk_server(FIRST, SECOND + b"extra") as target:
        reader = open_blob(blob_service(target), B3Digest(fx.b3(fx.BLOB_B)), len(fx.BLOB_B))
        assert reader.read_at(0, 10) == fx.BLOB_B[:10]
        assert reader.read_at(HALF, 1 << 20) == SECOND
        second = ChunkMeta(B3Digest(fx.b3(SECOND)), len(SECOND))
        with pytest.raises(DigestMismatch):
            fetch_verified(blob_service(target), second)


def test_missing_blob_is_not_found() -> None:
    def missing(request: bytes, context: grpc.ServicerContext) -> bytes:
        context.abort(grpc.StatusCode.NOT_FOUND, "no such blob")

    with scripted_server(unary={STAT: missing}) as target, pytest.raises(BlobNotFound):
        open_blob(blob_service(target), B3Digest(fx.b3(b"nope")))


def test_broken_stream_resumes_at_the_chunk_that_failed() -> None:
    """The whole-blob stream dies after the first chunk; reading goes on chunk by chunk."""
    requests: list[bytes] = []

    def read(request: bytes, context: grpc.ServicerContext) -> Iterator[bytes]:
        requests.append(request)
        if fx.b3(FIRST) in request:
            yield blob_chunk(FIRST)
        elif fx.b3(SECOND) in request:
            yield blob_chunk(SECOND)
        else:
            yield blob_chunk(FIRST)
            context.abort(grpc.StatusCode.UNAVAILABLE, "connection dropped")

    with scripted_server(unary={STAT: stat_reply(*TWO_CHUNKS)}, streams={READ: read}) as target:
        reader = open_blob(blob_service(target), B3Digest(fx.b3(fx.BLOB_B)), len(fx.BLOB_B))
        step = 128 << 10
        out = b"".join(reader.read_at(o, step) for o in range(0, len(fx.BLOB_B), step))
    assert out == fx.BLOB_B
    refetched = [r for r in requests if fx.b3(SECOND) in r]
    assert refetched and not [r for r in requests if fx.b3(FIRST) in r]  # only the failed one


def test_reads_out_of_order_share_one_stream() -> None:
    """The kernel's concurrent read-ahead requests arrive in any order: a request for the
    second chunk before the first still rides the one whole-blob stream, no single fetches."""
    requests: list[bytes] = []

    def read(request: bytes, context: grpc.ServicerContext) -> Iterator[bytes]:
        requests.append(request)
        data = {fx.b3(FIRST): FIRST, fx.b3(SECOND): SECOND}.get(request[2:34], fx.BLOB_B)
        for i in range(0, len(data), 4096):
            yield blob_chunk(data[i : i + 4096])

    with scripted_server(unary={STAT: stat_reply(*TWO_CHUNKS)}, streams={READ: read}) as target:
        reader = open_blob(blob_service(target), B3Digest(fx.b3(fx.BLOB_B)), len(fx.BLOB_B))
        assert reader.read_at(HALF + 10, 100) == fx.BLOB_B[HALF + 10 : HALF + 110]
        assert reader.read_at(0, HALF) == FIRST
        assert reader.read_at(HALF - 3, 6) == fx.BLOB_B[HALF - 3 : HALF + 3]
        reader.close()
    assert len(requests) == 1
    assert fx.b3(fx.BLOB_B) in requests[0]


def test_unavailable_is_retried_until_the_server_answers() -> None:
    attempts = []

    def flaky_stat(request: bytes, context: grpc.ServicerContext) -> bytes:
        attempts.append(1)
        if len(attempts) < 3:
            context.abort(grpc.StatusCode.UNAVAILABLE, "restarting")
        return b""

    with scripted_server(unary={STAT: flaky_stat}) as target:
        assert blob_service(target).stat(B3Digest(fx.b3(b"x"))) == []
    assert len(attempts) == 3
