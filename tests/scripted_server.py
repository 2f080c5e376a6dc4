"""A gRPC server that answers with scripted raw bytes, to play a misbehaving peer.

Handlers receive the raw request bytes and return (or yield) raw response bytes, so the
tests can send anything a broken or hostile server might: wrong digests, bad orders,
truncated streams.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from concurrent import futures
from typing import Any

import grpc


def _identity(data: bytes) -> bytes:
    return data


@contextlib.contextmanager
def scripted_server(
    unary: dict[str, Callable[[bytes, grpc.ServicerContext], bytes]] | None = None,
    streams: dict[str, Callable[[bytes, grpc.ServicerContext], Iterator[bytes]]] | None = None,
) -> Iterator[str]:
    """Serve method paths like "/tvix.castore.v1.BlobService/Stat"; yields the target."""
    handlers: dict[str, dict[str, Any]] = {}
    for path, fn in (unary or {}).items():
        service, method = path.strip("/").split("/")
        handlers.setdefault(service, {})[method] = grpc.unary_unary_rpc_method_handler(
            fn, request_deserializer=_identity, response_serializer=_identity
        )
    for path, fn in (streams or {}).items():
        service, method = path.strip("/").split("/")
        handlers.setdefault(service, {})[method] = grpc.unary_stream_rpc_method_handler(
            fn, request_deserializer=_identity, response_serializer=_identity
        )
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    for service, methods in handlers.items():
        server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(service, methods),))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        yield f"grpc+http://127.0.0.1:{port}"
    finally:
        server.stop(0).wait()
