"""The server's answers when a handler fails: one mapping from errors to status codes.

Store errors become the spec's codes, anything unexpected becomes INTERNAL with the traceback
in the server's log and only the name of the failed call in the client's message.
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from collections.abc import Iterator

import grpc
import pytest

from castore_client.address import parse_address
from castore_client.digest import B3Digest
from castore_client.directory import DirectoryNode, FileNode, SymlinkNode
from castore_client.errors import (
    CorruptData,
    InvalidAddress,
    InvalidInput,
    ListenFailed,
    Rejected,
    Unavailable,
)
from castore_client.pathinfo import NarInfo, PathInfo
from castore_client.rpc.server import CastoreServer, listen_target
from castore_client.services import Services
from castore_client.storepath import StorePath
from castore_client.stores import open_memory_store

from . import fixtures as fx

TCP = parse_address("grpc+http://127.0.0.1:0")


def raw(channel: grpc.Channel, path: str, kind: str = "unary_unary"):  # type: ignore[no-untyped-def]
    return getattr(channel, kind)(
        path, request_serializer=lambda b: b, response_deserializer=lambda b: b
    )


def failure(fn, *args) -> grpc.RpcError:  # type: ignore[no-untyped-def]
    with pytest.raises(grpc.RpcError) as info:
        result = fn(*args)
        if not isinstance(result, bytes):
            list(result)
    return info.value


def calculate_nar_node(node: bytes, kind: int = 2) -> bytes:
    """A castore Node message: field 1 directory, 2 file, 3 symlink."""
    return fx.field_bytes(kind, node)


@pytest.mark.parametrize(
    "node",
    [
        FileNode(b"named", B3Digest(fx.b3(fx.HELLOWORLD)), len(fx.HELLOWORLD)),
        SymlinkNode(b"named", b"/nix/store/x"),
        DirectoryNode(b"named", B3Digest(fx.b3(b"")), 0),
    ],
    ids=["file", "symlink", "directory"],
)
def test_calculate_nar_refuses_a_named_root_node(client: Services, node: object) -> None:
    client.blobs.put([fx.HELLOWORLD])
    with pytest.raises(Rejected, match="INVALID_ARGUMENT.*anonymous"):
        client.path_infos.calculate_nar(node)  # type: ignore[arg-type]


def test_calculate_nar_named_node_on_the_wire(server: CastoreServer) -> None:
    with grpc.insecure_channel(server.address.grpc_target()) as channel:
        calculate = raw(channel, "/tvix.store.v1.PathInfoService/CalculateNAR")
        # A symlink needs nothing stored, so only the name can be what is refused.
        anonymous = fx.symlink_node(b"", b"/nix/store/x")
        assert calculate(calculate_nar_node(anonymous, kind=3))
        named = fx.symlink_node(b"hello", b"/nix/store/x")
        error = failure(calculate, calculate_nar_node(named, kind=3))
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "calculate NAR" in error.details()


class Exploding:
    """Services whose every call fails with `error`, after `before` good List answers."""

    def __init__(self, error: Exception, before: list[PathInfo] | None = None) -> None:
        self.error = error
        self.before = before or []

    def stat(self, digest: B3Digest, *, timeout: float | None = None) -> list[object]:
        raise self.error

    def read(self, digest: B3Digest, *, timeout: float | None = None) -> Iterator[bytes]:
        yield b"some bytes"
        raise self.error

    def list(self, *, timeout: float | None = None) -> Iterator[PathInfo]:
        yield from self.before
        raise self.error


@pytest.fixture
def exploding(request: pytest.FixtureRequest) -> Iterator[tuple[grpc.Channel, Exploding]]:
    """A server whose blob and path info services raise `request.param`."""
    broken = Exploding(request.param, before=[path_info()])
    with (
        open_memory_store() as store,
        CastoreServer(
            Services(broken, store.directories, broken),  # type: ignore[arg-type]
            TCP,
        ) as server,
        grpc.insecure_channel(server.address.grpc_target()) as channel,
    ):
        yield channel, broken


def path_info() -> PathInfo:
    name = StorePath(bytes(20), "test")
    node = FileNode(str(name).encode(), B3Digest(fx.b3(b"")), 0)
    return PathInfo(node=node, narinfo=NarInfo(nar_size=0, nar_sha256=bytes(32)))


@pytest.mark.parametrize("exploding", [ZeroDivisionError("secret detail")], indirect=True)
def test_unexpected_error_is_internal_with_a_log_line(
    exploding: tuple[grpc.Channel, Exploding], caplog: pytest.LogCaptureFixture
) -> None:
    channel, _ = exploding
    digest = fx.b3(b"anything")
    with caplog.at_level(logging.ERROR, logger="castore_client.rpc.server"):
        error = failure(
            raw(channel, "/tvix.castore.v1.BlobService/Stat"), fx.field_bytes(1, digest)
        )
    assert error.code() == grpc.StatusCode.INTERNAL
    assert error.details().startswith(f"stat {B3Digest(digest)}: ")
    assert "ZeroDivisionError" in error.details()
    assert "Traceback" not in error.details()
    assert "secret detail" not in error.details()
    logged = [r for r in caplog.records if r.name == "castore_client.rpc.server"]
    assert logged and logged[0].exc_info is not None
    assert isinstance(logged[0].exc_info[1], ZeroDivisionError)


@pytest.mark.parametrize(
    ("exploding", "code"),
    [
        (Unavailable("disk went away"), grpc.StatusCode.UNAVAILABLE),
        (CorruptData("piece does not match its digest"), grpc.StatusCode.INTERNAL),
        (InvalidInput("no such thing"), grpc.StatusCode.INVALID_ARGUMENT),
        (RuntimeError("boom"), grpc.StatusCode.INTERNAL),
    ],
    indirect=["exploding"],
)
def test_errors_mid_stream_end_the_stream_with_their_status(
    exploding: tuple[grpc.Channel, Exploding], code: grpc.StatusCode
) -> None:
    channel, _ = exploding
    listed = raw(channel, "/snix.store.v1.PathInfoService/List", "unary_stream")(b"")
    first = next(listed)
    assert first  # one PathInfo arrived before the failure
    with pytest.raises(grpc.RpcError) as info:
        next(listed)
    assert info.value.code() == code
    assert info.value.details().startswith("list path infos: ")

    read = raw(channel, "/tvix.castore.v1.BlobService/Read", "unary_stream")
    error = failure(read, fx.field_bytes(1, fx.b3(b"x")))
    assert error.code() == code
    assert error.details().startswith("read blake3-")


def test_a_malformed_digest_is_named_by_its_length(server: CastoreServer) -> None:
    with grpc.insecure_channel(server.address.grpc_target()) as channel:
        error = failure(raw(channel, "/tvix.castore.v1.BlobService/Stat"), fx.field_bytes(1, b"x"))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error.details().startswith("stat a 1-byte digest: ")


def test_listen_target_refusals_are_invalid_addresses() -> None:
    with pytest.raises(InvalidAddress, match="cannot listen"):
        listen_target(parse_address("memory://"))
    with pytest.raises(InvalidAddress, match="certificate"):
        listen_target(parse_address("grpc+https://127.0.0.1:0"))


def test_a_busy_port_is_listen_failed() -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        with (
            open_memory_store() as store,
            pytest.raises(ListenFailed, match="cannot listen") as info,
        ):
            CastoreServer(store, parse_address(f"grpc+http://127.0.0.1:{port}"))
    assert isinstance(info.value, OSError)


def test_an_upload_the_client_cancels_is_no_server_error(
    caplog: pytest.LogCaptureFixture,
) -> None:
    sent = threading.Event()

    def pieces() -> Iterator[bytes]:
        yield fx.field_bytes(1, b"x" * 1000)  # BlobChunk.data
        sent.set()
        threading.Event().wait(5)  # the upload stalls; the client gives up meanwhile
        yield fx.field_bytes(1, b"y")

    with (
        open_memory_store() as store,
        CastoreServer(store, TCP) as server,
        grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel,
        caplog.at_level(logging.DEBUG, logger="castore_client.rpc.server"),
    ):
        put = raw(channel, "/tvix.castore.v1.BlobService/Put", "stream_unary")
        call = put.future(pieces())
        assert sent.wait(5)
        call.cancel()
        with pytest.raises(grpc.FutureCancelledError):
            call.result(5)
        # The handler sees the end of the request stream once the cancellation arrives.
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and not any(
            "put blob" in r.getMessage() for r in caplog.records
        ):
            threading.Event().wait(0.05)
    records = [r for r in caplog.records if "put blob" in r.getMessage()]
    assert records, "the server never saw the cancelled upload end"
    assert all(r.levelno < logging.WARNING for r in records), [r.getMessage() for r in records]
