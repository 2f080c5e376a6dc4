"""A gRPC server for any store: both protocol namespaces plus grpc.health.v1.

It is `castore serve`, the server of the demo and compose stack, and the in-process server of
the tests. It applies the server-side rules of spec sections 5-7 by delegating to the store,
whose put methods validate. Every handler is wrapped by `_maps_errors`, the one place where a
castore error becomes the spec's status code (through `status.status_for`) and where anything
else becomes INTERNAL with a log line, so no handler builds a status by hand.
"""

from __future__ import annotations

import functools
import inspect
import logging
from collections.abc import Callable, Iterator
from concurrent import futures
from typing import Any, NoReturn, TypeVar

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
from ..errors import CastoreError, InvalidAddress, InvalidInput, InvalidTlsConfig, ListenFailed
from ..pb import castore_pb2 as cpb
from ..pb import pathinfo_pb2 as ppb
from ..pb import rpc_blobstore_pb2 as bpb
from ..pb import rpc_directory_pb2 as dpb
from ..pb import rpc_pathinfo_pb2 as rppb
from ..services import BlobService, DirectoryService, PathInfoService, Services
from ..storepath import check_store_hash
from ..tls import ServerTlsOptions
from .blob_chunk import BlobChunkCodec
from .channel import MAX_MESSAGE
from .namespace import Namespace, service_name
from .status import status_for

log = logging.getLogger(__name__)

Handler = TypeVar("Handler", bound=Callable[..., Any])
Describe = Callable[[Any], str]


class _Refusal(Exception):
    """A status no castore error stands for (UNIMPLEMENTED); it never leaves this module."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code


def _abort(context: grpc.ServicerContext, exc: Exception, what: str) -> NoReturn:
    if isinstance(exc, _Refusal):
        context.abort(exc.code, f"{what}: {exc}")
    if isinstance(exc, CastoreError):
        code = status_for(exc)
        log.debug("%s: %s: %s", what, code.name, exc)
        context.abort(code, f"{what}: {exc}")
    if isinstance(exc, grpc.RpcError) and not context.is_active():
        # A client that cancelled its upload: the request stream ends in an RpcError.
        log.debug("%s: cancelled by the client", what)
        context.abort(grpc.StatusCode.CANCELLED, f"{what}: cancelled by the client")
    log.exception("%s failed unexpectedly", what)
    # The client learns what failed, not how: the traceback stays in the server's log.
    context.abort(
        grpc.StatusCode.INTERNAL,
        f"{what}: unexpected server error ({type(exc).__name__}), see the server's log",
    )


def _maps_errors(what: str | Describe) -> Callable[[Handler], Handler]:
    """Answer whatever a handler raises with its status; `what` names the call in messages.

    `what` is a string, or a function of the request for calls about one object. Generator
    handlers (those with a streamed response) are wrapped as generators, so that errors raised
    mid-stream end the stream with a status too.
    """
    describe: Describe = what if callable(what) else (lambda request: what)

    def wrap(handler: Handler) -> Handler:
        if inspect.isgeneratorfunction(handler):

            @functools.wraps(handler)
            def streaming(self: Any, request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
                try:
                    yield from handler(self, request, context)
                except Exception as exc:
                    _abort(context, exc, describe(request))

            return streaming  # type: ignore[return-value]

        @functools.wraps(handler)
        def unary(self: Any, request: Any, context: grpc.ServicerContext) -> Any:
            try:
                return handler(self, request, context)
            except Exception as exc:
                _abort(context, exc, describe(request))

        return unary  # type: ignore[return-value]

    return wrap


def _shown(raw: bytes) -> str:
    """A request's digest as messages show it; one of the wrong length is only counted."""
    try:
        return str(B3Digest(raw))
    except InvalidInput:
        return f"a {len(raw)}-byte digest"


class BlobServicer:
    def __init__(self, blobs: BlobService) -> None:
        self.blobs = blobs

    @_maps_errors(lambda request: f"stat {_shown(request.digest)}")
    def Stat(
        self, request: bpb.StatBlobRequest, context: grpc.ServicerContext
    ) -> bpb.StatBlobResponse:
        chunks = self.blobs.stat(B3Digest(request.digest))
        return bpb.StatBlobResponse(
            chunks=[
                bpb.StatBlobResponse.ChunkMeta(digest=c.digest.raw, size=c.size) for c in chunks
            ]
        )

    @_maps_errors(lambda request: f"read {_shown(request.digest)}")
    def Read(
        self, request: bpb.ReadBlobRequest, context: grpc.ServicerContext
    ) -> Iterator[bytes | memoryview]:
        """Yields raw pieces; the handler's BlobChunk codec frames them without copies."""
        yield from self.blobs.read(B3Digest(request.digest))

    @_maps_errors("put blob")
    def Put(self, requests: Iterator[bytes], context: grpc.ServicerContext) -> bpb.PutBlobResponse:
        return bpb.PutBlobResponse(digest=self.blobs.put(requests).raw)


class DirectoryServicer:
    def __init__(self, directories: DirectoryService) -> None:
        self.directories = directories

    @_maps_errors(lambda request: f"get {_shown(request.digest)}")
    def Get(
        self, request: dpb.GetDirectoryRequest, context: grpc.ServicerContext
    ) -> Iterator[cpb.Directory]:
        if request.WhichOneof("by_what") is None:
            raise InvalidInput("GetDirectoryRequest needs a digest")
        digest = B3Digest(request.digest)
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

    @_maps_errors("put directories")
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
        except Exception:
            if received == 0:
                raise InvalidInput("Put received no directories") from None
            raise
        return dpb.PutDirectoryResponse(root_digest=root.raw)


class PathInfoServicer:
    def __init__(self, path_infos: PathInfoService) -> None:
        self.path_infos = path_infos

    @_maps_errors(lambda request: f"get path info {request.by_output_hash.hex() or '(no hash)'}")
    def Get(self, request: rppb.GetPathInfoRequest, context: grpc.ServicerContext) -> ppb.PathInfo:
        if request.WhichOneof("by_what") is None:
            raise _Refusal(grpc.StatusCode.UNIMPLEMENTED, "only by_output_hash is supported")
        digest = check_store_hash(request.by_output_hash)
        return path_info_to_pb(self.path_infos.get_by_hash(digest))

    @_maps_errors("put path info")
    def Put(self, request: ppb.PathInfo, context: grpc.ServicerContext) -> ppb.PathInfo:
        return path_info_to_pb(self.path_infos.put(path_info_from_pb(request)))

    @_maps_errors("calculate NAR")
    def CalculateNAR(
        self, request: cpb.Node, context: grpc.ServicerContext
    ) -> rppb.CalculateNARResponse:
        """The NAR of an anonymous node: a NAR has no name for its root, so a name is refused."""
        node = node_from_pb(request)
        if node.name:
            raise InvalidInput(
                f"the root node is named {node.name[:80]!r}; CalculateNAR takes an anonymous "
                "node (empty name)"
            )
        size, sha256 = self.path_infos.calculate_nar(node)
        return rppb.CalculateNARResponse(nar_size=size, nar_sha256=sha256)

    @_maps_errors("list path infos")
    def List(
        self, request: rppb.ListPathInfoRequest, context: grpc.ServicerContext
    ) -> Iterator[ppb.PathInfo]:
        for path_info in self.path_infos.list():
            yield path_info_to_pb(path_info)


def _handlers(store: Services) -> dict[str, dict[str, grpc.RpcMethodHandler[Any, Any]]]:
    blobs = BlobServicer(store.blobs)
    dirs = DirectoryServicer(store.directories)
    infos = PathInfoServicer(store.path_infos)

    def h(
        kind: Callable[..., grpc.RpcMethodHandler[Any, Any]], fn: Any, req: Any, resp: Any
    ) -> grpc.RpcMethodHandler[Any, Any]:
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
        raise InvalidAddress(
            f"cannot listen on {address}: use grpc+http://HOST:PORT or grpc+unix:///PATH, "
            "or grpc+https://HOST:PORT with a certificate and key"
        )
    if tls is not None and not address.uses_tls:
        raise InvalidAddress(f"cannot listen on {address} with TLS: use grpc+https://HOST:PORT")
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
            "gRPC refused the TLS certificate and private key: "
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
        cannot_listen = ListenFailed(f"cannot listen on {listen}: address in use or not available")
        try:
            if tls is not None:
                self.port = self._server.add_secure_port(target, server_credentials(tls))
            else:
                self.port = self._server.add_insecure_port(target)
        except RuntimeError:
            # gRPC says only "failed to bind"; with TLS, a key that does not fit its
            # certificate fails the same way, and the probe tells the two apart.
            self._server.stop(None)
            if tls is not None:
                check_server_tls(tls)
            raise cannot_listen from None
        if listen.scheme != "grpc+unix" and self.port == 0:
            self._server.stop(None)
            raise cannot_listen
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
