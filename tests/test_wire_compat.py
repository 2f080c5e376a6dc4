"""Our server seen by a client that shares none of our code: raw protobuf bytes by hand,
method paths as strings. This is what a tvix or snix client would send.
"""

from __future__ import annotations

from collections.abc import Iterator

import grpc
import pytest

from castore_client.rpc.server import CastoreServer

from . import fixtures as fx


def ident(data: bytes) -> bytes:
    return data


@pytest.fixture(params=["tvix", "snix"])
def wire(
    request: pytest.FixtureRequest, server: CastoreServer
) -> Iterator[tuple[grpc.Channel, str]]:
    target = server.address
    with grpc.insecure_channel(target.grpc_target()) as channel:
        yield channel, request.param


def call(channel: grpc.Channel, path: str, kind: str = "unary_unary"):  # type: ignore[no-untyped-def]
    return getattr(channel, kind)(path, request_serializer=ident, response_deserializer=ident)


def put_blob(channel: grpc.Channel, ns: str, data: bytes) -> bytes:
    put = call(channel, f"/{ns}.castore.v1.BlobService/Put", "stream_unary")
    return put(iter([fx.field_bytes(1, data[i : i + 65536]) for i in range(0, len(data), 65536)]))


def test_blob_put_stat_read(wire: tuple[grpc.Channel, str]) -> None:
    channel, ns = wire
    for blob in (fx.BLOB_A, fx.BLOB_B, fx.HELLOWORLD, b""):
        assert put_blob(channel, ns, blob) == fx.field_bytes(1, fx.b3(blob))
        stat = call(channel, f"/{ns}.castore.v1.BlobService/Stat")(
            fx.field_bytes(1, fx.b3(blob)) + fx.field_uint(2, 1)
        )
        read = call(channel, f"/{ns}.castore.v1.BlobService/Read", "unary_stream")
        messages = list(read(fx.field_bytes(1, fx.b3(blob))))
        data = b"".join(_bytes_field_1(m) for m in messages)
        assert data == blob
        if len(blob) > 600_000:  # chunked: field 2 repeated ChunkMeta
            assert stat.startswith(b"\x12")


def test_directory_put_get(wire: tuple[grpc.Channel, str]) -> None:
    channel, ns = wire
    put = call(channel, f"/{ns}.castore.v1.DirectoryService/Put", "stream_unary")
    assert put(iter([fx.WITH_KEEP_BYTES, fx.COMPLICATED_BYTES])) == fx.field_bytes(
        1, fx.COMPLICATED_DIGEST
    )
    get = call(channel, f"/{ns}.castore.v1.DirectoryService/Get", "unary_stream")
    single = list(get(fx.field_bytes(1, fx.COMPLICATED_DIGEST)))
    assert single == [fx.COMPLICATED_BYTES]
    recursive = list(get(fx.field_bytes(1, fx.COMPLICATED_DIGEST) + fx.field_uint(2, 1)))
    assert recursive == [fx.COMPLICATED_BYTES, fx.WITH_KEEP_BYTES]
    assert list(get(fx.field_bytes(1, fx.b3(b"unknown")) + fx.field_uint(2, 1))) == []


def _bytes_field_1(message: bytes) -> bytes:
    """Decode a message holding only `bytes data = 1` (tag, varint length, payload)."""
    if not message:
        return b""
    assert message[0] == 0x0A
    length, shift, i = 0, 0, 1
    while True:
        byte = message[i]
        length |= (byte & 0x7F) << shift
        i += 1
        if byte < 0x80:
            break
        shift += 7
    assert len(message) == i + length
    return message[i:]


def status_of(fn, *args) -> grpc.StatusCode:  # type: ignore[no-untyped-def]
    with pytest.raises(grpc.RpcError) as info:
        result = fn(*args)
        if not isinstance(result, bytes):
            list(result)
    return info.value.code()  # type: ignore[no-any-return]


def test_put_rejections_have_spec_status(wire: tuple[grpc.Channel, str]) -> None:
    channel, ns = wire
    put = call(channel, f"/{ns}.castore.v1.DirectoryService/Put", "stream_unary")
    dangling = fx.directory(dirs=[fx.dir_node(b"x", fx.WITH_KEEP_DIGEST, fx.WITH_KEEP_SIZE)])
    wrong_size = fx.directory(dirs=[fx.dir_node(b"x", fx.WITH_KEEP_DIGEST, 1)])
    two_roots = [fx.WITH_KEEP_BYTES, fx.directory(files=[fx.file_node(b"z", fx.b3(b""), 0)])]
    bad_name = fx.directory(files=[fx.file_node(b"..", fx.b3(b""), 0)])
    slash_name = fx.directory(files=[fx.file_node(b"a/b", fx.b3(b""), 0)])
    short_digest = fx.directory(files=[fx.file_node(b"a", b"\x01" * 31, 0)])
    for stream in (
        [dangling],
        [fx.WITH_KEEP_BYTES, wrong_size],
        two_roots,
        [bad_name],
        [slash_name],
        [short_digest],
    ):
        assert status_of(put, iter(stream)) == grpc.StatusCode.INTERNAL
    assert status_of(put, iter([])) == grpc.StatusCode.INVALID_ARGUMENT
    # Nothing from the refused streams was stored.
    get = call(channel, f"/{ns}.castore.v1.DirectoryService/Get", "unary_stream")
    assert status_of(get, fx.field_bytes(1, fx.WITH_KEEP_DIGEST)) == grpc.StatusCode.NOT_FOUND


def test_bad_requests_have_spec_status(wire: tuple[grpc.Channel, str]) -> None:
    channel, ns = wire
    stat = call(channel, f"/{ns}.castore.v1.BlobService/Stat")
    assert status_of(stat, fx.field_bytes(1, b"short")) == grpc.StatusCode.INVALID_ARGUMENT
    assert status_of(stat, fx.field_bytes(1, fx.b3(b"?"))) == grpc.StatusCode.NOT_FOUND
    read = call(channel, f"/{ns}.castore.v1.BlobService/Read", "unary_stream")
    assert status_of(read, fx.field_bytes(1, fx.b3(b"?"))) == grpc.StatusCode.NOT_FOUND
    get_info = call(channel, f"/{ns}.store.v1.PathInfoService/Get")
    assert status_of(get_info, b"") == grpc.StatusCode.UNIMPLEMENTED
    assert status_of(get_info, fx.field_bytes(1, b"\x00" * 19)) == grpc.StatusCode.INVALID_ARGUMENT
    assert status_of(get_info, fx.field_bytes(1, b"\x00" * 20)) == grpc.StatusCode.NOT_FOUND
    put_info = call(channel, f"/{ns}.store.v1.PathInfoService/Put")
    assert status_of(put_info, b"") == grpc.StatusCode.INVALID_ARGUMENT


def test_health_is_serving(server: CastoreServer) -> None:
    with grpc.insecure_channel(server.address.grpc_target()) as channel:
        check = call(channel, "/grpc.health.v1.Health/Check")
        assert check(b"") == fx.field_uint(1, 1)  # status SERVING
        named = fx.field_bytes(1, b"tvix.castore.v1.BlobService")
        assert check(named) == fx.field_uint(1, 1)
