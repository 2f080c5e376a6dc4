"""A gRPC server for any store: both protocol namespaces plus grpc.health.v1.

It is `castore serve`, the server of the demo and compose stack, and the in-process server of
the tests. It applies the server-side rules of spec sections 5-7 by delegating to the store,
whose put methods validate, and translating errors to the spec's status codes.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from concurrent import futures
from typing import Any, NoReturn

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from ..address import Address
from ..codec import (
    directory_from_pb,
    directory_to_pb,
    node_from_pb,
    path_info_from_pb,
    path_info_to_pb,
)
from ..digest import B3Digest
from ..errors import CastoreError, InvalidDigest, InvalidStorePath
from ..pb import castore_pb2 as cpb
from ..pb import pathinfo_pb2 as ppb
from ..pb import rpc_blobstore_pb2 as bpb
from ..pb import rpc_directory_pb2 as dpb
from ..pb import rpc_pathinfo_pb2 as rppb
from ..services import BlobService, DirectoryService, PathInfoService, Services
from ..tls import InvalidTlsConfig, ServerTlsOptions
from .blob_chunk import BlobChunkCodec
from .channel import MAX_MESSAGE
from .namespace import Namespace, service_name
from .status import status_for

log = logging.getLogger(__name__)

STORE_HASH_LEN = 20


def _abort(context: grpc.ServicerContext, exc: BaseException, what: str) -> NoReturn:
    code = status_for(exc)
    if code is grpc.StatusCode.INTERNAL and not isinstance(exc, CastoreError):
        log.exception("%s failed unexpectedly", what)
    else:
        log.debug("%s: %s: %s", what, code.name, exc)
    context.abort(code, f"{what}: {exc}")


def _digest(raw: bytes, context: grpc.ServicerContext, what: str) -> B3Digest:
    try:
        return B3Digest(raw)
    except InvalidDigest as exc:
        _abort(context, exc, what)


class BlobServicer:
    def __init__(self, blobs: BlobService) -> None:
        self.blobs = blobs

    def Stat(
        self, request: bpb.StatBlobRequest, context: grpc.ServicerContext
    ) -> bpb.StatBlobResponse:
        digest = _digest(request.digest, context, "Stat")
        try:
            chunks = self.blobs.stat(digest)
        except Exception as exc:
            _abort(context, exc, f"stat {digest}")
        return bpb.StatBlobResponse(
            chunks=[
                bpb.StatBlobResponse.ChunkMeta(digest=c.digest.raw, size=c.size) for c in chunks
            ]
        )

    def Read(self, request: bpb.ReadBlobRequest, context: grpc.ServicerContext) -> Iterator[bytes]:
        """Yields raw pieces; the handler's BlobChunk codec frames them without copies."""
        digest = _digest(request.digest, context, "Read")
        try:
            yield from self.blobs.read(digest)
        except Exception as exc:
            _abort(context, exc, f"read {digest}")

    def Put(self, requests: Iterator[bytes], context: grpc.ServicerContext) -> bpb.PutBlobResponse:
        try:
            digest = self.blobs.put(requests)
        except Exception as exc:
            _abort(context, exc, "put blob")
        return bpb.PutBlobResponse(digest=digest.raw)


class DirectoryServicer:
    def __init__(self, directories: DirectoryService) -> None:
        self.directories = directories

    def Get(
        self, request: dpb.GetDirectoryRequest, context: grpc.ServicerContext
    ) -> Iterator[cpb.Directory]:
        if request.WhichOneof("by_what") is None:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "GetDirectoryRequest needs a digest")
        digest = _digest(request.digest, context, "Get")
        try:
            if not request.recursive:
                yield directory_to_pb(self.directories.get(digest))
                return
            closure = self.directories.get_recursive(digest)
            try:
                first = next(closure)
            except StopIteration:
                return
            except CastoreError as exc:
                if status_for(exc) is grpc.StatusCode.NOT_FOUND:
                    return  # an unknown root is an empty stream, not an error
                raise
            yield directory_to_pb(first)
            for directory in closure:
                yield directory_to_pb(directory)
        except Exception as exc:
            _abort(context, exc, f"get {digest}")

    def Put(
        self, requests: Iterator[cpb.Directory], context: grpc.ServicerContext
    ) -> dpb.PutDirectoryResponse:
        received = 0

        def directories() -> Iterator[Any]:
            nonlocal received
            for message in requests:
                received += 1
                yield directory_from_pb(message)

        try:
            root = self.directories.put(directories())
        except Exception as exc:
            if received == 0:
                context.abort(grpc.StatusCode.INVALID_ARGUMENT, "Put received no directories")
            _abort(context, exc, "put directories")
        return dpb.PutDirectoryResponse(root_digest=root.raw)


class PathInfoServicer:
    def __init__(self, path_infos: PathInfoService) -> None:
        self.path_infos = path_infos

    def Get(self, request: rppb.GetPathInfoRequest, context: grpc.ServicerContext) -> ppb.PathInfo:
        if request.WhichOneof("by_what") is None:
            context.abort(grpc.StatusCode.UNIMPLEMENTED, "only by_output_hash is supported")
        if len(request.by_output_hash) != STORE_HASH_LEN:
            _abort(
                context,
                InvalidStorePath(f"by_output_hash has {len(request.by_output_hash)} bytes, not 20"),
                "Get",
            )
        try:
            return path_info_to_pb(self.path_infos.get_by_hash(request.by_output_hash))
        except Exception as exc:
            _abort(context, exc, f"get path info {request.by_output_hash.hex()}")

    def Put(self, request: ppb.PathInfo, context: grpc.ServicerContext) -> ppb.PathInfo:
        try:
            stored = self.path_infos.put(path_info_from_pb(request))
        except Exception as exc:
            _abort(context, exc, "put path info")
        return path_info_to_pb(stored)

    def CalculateNAR(
        self, request: cpb.Node, context: grpc.ServicerContext
    ) -> rppb.CalculateNARResponse:
        try:
            size, sha256 = self.path_infos.calculate_nar(node_from_pb(request))
        except Exception as exc:
            _abort(context, exc, "calculate NAR")
        return rppb.CalculateNARResponse(nar_size=size, nar_sha256=sha256)

    def List(
        self, request: rppb.ListPathInfoRequest, context: grpc.ServicerContext
    ) -> Iterator[ppb.PathInfo]:
        try:
            for path_info in self.path_infos.list():
                yield path_info_to_pb(path_info)
        except Exception as exc:
            _abort(context, exc, "list path infos")


def _handlers(store: Services) -> dict[str, dict[str, grpc.RpcMethodHandler]]:
    blobs = BlobServicer(store.blobs)
    dirs = DirectoryServicer(store.directories)
    infos = PathInfoServicer(store.path_infos)

    def h(
        kind: Callable[..., grpc.RpcMethodHandler], fn: Any, req: Any, resp: Any
    ) -> grpc.RpcMethodHandler:
        return kind(
            fn, request_deserializer=req.FromString, response_serializer=resp.SerializeToString
        )

    return {
        "castore.v1.BlobService": {
            "Stat": h(
                grpc.unary_unary_rpc_method_handler,
                blobs.Stat,
                bpb.StatBlobRequest,
                bpb.StatBlobResponse,
            ),
            "Read": h(
                grpc.unary_stream_rpc_method_handler,
                blobs.Read,
                bpb.ReadBlobRequest,
                BlobChunkCodec,
            ),
            "Put": h(
                grpc.stream_unary_rpc_method_handler, blobs.Put, BlobChunkCodec, bpb.PutBlobResponse
            ),
        },
        "castore.v1.DirectoryService": {
            "Get": h(
                grpc.unary_stream_rpc_method_handler,
                dirs.Get,
                dpb.GetDirectoryRequest,
                cpb.Directory,
            ),
            "Put": h(
                grpc.stream_unary_rpc_method_handler,
                dirs.Put,
                cpb.Directory,
                dpb.PutDirectoryResponse,
            ),
        },
        "store.v1.PathInfoService": {
            "Get": h(
                grpc.unary_unary_rpc_method_handler,
                infos.Get,
                rppb.GetPathInfoRequest,
                ppb.PathInfo,
            ),
            "Put": h(grpc.unary_unary_rpc_method_handler, infos.Put, ppb.PathInfo, ppb.PathInfo),
            "CalculateNAR": h(
                grpc.unary_unary_rpc_method_handler,
                infos.CalculateNAR,
                cpb.Node,
                rppb.CalculateNARResponse,
            ),
            "List": h(
                grpc.unary_stream_rpc_method_handler,
                infos.List,
                rppb.ListPathInfoRequest,
                ppb.PathInfo,
            ),
        },
    }


def listen_target(address: Address, tls: ServerTlsOptions | None = None) -> str:
    """The bind target for `address`; grpc+https needs `tls`, and only grpc+https takes it."""
    if not address.is_grpc or (address.uses_tls and tls is None):
        raise ValueError(
            f"cannot listen on {address}: use grpc+http://HOST:PORT or grpc+unix:///PATH, "
            "or grpc+https://HOST:PORT with a certificate and key"
        )
    if tls is not None and not address.uses_tls:
        raise ValueError(f"cannot listen on {address} with TLS: use grpc+https://HOST:PORT")
    return address.grpc_target()


def check_server_tls(tls: ServerTlsOptions) -> None:
    """Raise InvalidTlsConfig if gRPC refuses this certificate and key on any address.

    gRPC reports a key that does not belong to its certificate (or one it cannot use) as a
    failure to bind; trying again on a port of our own tells that apart from a busy address.
    """
    probe = grpc.server(futures.ThreadPoolExecutor(max_workers=1))
    try:
        probe.add_secure_port("127.0.0.1:0", server_credentials(tls))
    except RuntimeError:
        raise InvalidTlsConfig(
            "gRPC refused the TLS certificate and private key (--tls-cert, --tls-key): "
            "does the key belong to the certificate?"
        ) from None
    finally:
        probe.stop(None)


def server_credentials(tls: ServerTlsOptions) -> grpc.ServerCredentials:
    """The server's identity; with a client CA, clients must present a certificate it signed."""
    return grpc.ssl_server_credentials(
        [(tls.private_key, tls.certificate_chain)],
        root_certificates=tls.client_ca,
        require_client_auth=tls.client_ca is not None,
    )


class CastoreServer:
    """A started server; `port` is the bound TCP port (useful with port 0)."""

    def __init__(
        self,
        store: Services,
        listen: Address,
        *,
        max_workers: int = 32,
        namespaces: tuple[Namespace, ...] = (Namespace.TVIX, Namespace.SNIX),
        tls: ServerTlsOptions | None = None,
    ) -> None:
        """Serve `store` on `listen`; a grpc+https address needs `tls` (cert, key, client CA)."""
        target = listen_target(listen, tls)
        self._server = grpc.server(
            futures.ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="castore-rpc"),
            options=[
                ("grpc.max_receive_message_length", MAX_MESSAGE),
                ("grpc.max_send_message_length", MAX_MESSAGE),
                ("grpc.so_reuseport", 0),
            ],
        )
        names = []
        for namespace in namespaces:
            for service, methods in _handlers(store).items():
                name = service_name(namespace, service)
                names.append(name)
                self._server.add_generic_rpc_handlers(
                    (grpc.method_handlers_generic_handler(name, methods),)
                )
        self._health = health.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self._health, self._server)
        for name in ["", *names]:
            self._health.set(name, health_pb2.HealthCheckResponse.SERVING)
        self.address = listen
        if tls is not None:
            try:
                self.port = self._server.add_secure_port(target, server_credentials(tls))
            except RuntimeError:
                self._server.stop(None)
                check_server_tls(tls)
                raise
        else:
            self.port = self._server.add_insecure_port(target)
        if listen.scheme != "grpc+unix" and self.port == 0:
            raise OSError(f"cannot listen on {listen}: address in use or not available")
        if listen.scheme in ("grpc+http", "grpc+https") and listen.port == 0:
            self.address = Address(listen.scheme, listen.host, self.port)
        self._server.start()
        log.info("serving on %s", self.address)

    def stop(self, grace: float | None = 2.0) -> None:
        self._health.enter_graceful_shutdown()
        self._server.stop(grace).wait()

    def wait(self, timeout: float | None = None) -> bool:
        return self._server.wait_for_termination(timeout)

    def __enter__(self) -> CastoreServer:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop(0)
