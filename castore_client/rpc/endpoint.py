"""A gRPC channel with method paths bound to a protocol namespace.

tvix and snix serve byte-identical messages under different package names
(`/tvix.castore.v1.BlobService/Read` vs `/snix.castore.v1.BlobService/Read`), so one set of
generated message classes serves both and only the method paths change. In `auto` mode the
first call probes the tvix name once and falls back to snix when the server answers
UNIMPLEMENTED.
"""

from __future__ import annotations

import enum
import logging
import threading
from collections.abc import Callable, Iterable, Iterator
from typing import Any, TypeVar

import grpc

from ..address import Address
from ..cancel import Cancelled, check_cancelled, current_scope, tracked
from ..errors import InvalidAddress, Unavailable

log = logging.getLogger(__name__)

MAX_MESSAGE = 64 << 20
# Our own Put messages stay well under real servers' 4 MiB receive limit.
PUT_MESSAGE = 1 << 20

Resp = TypeVar("Resp")


class Namespace(enum.Enum):
    TVIX = "tvix"
    SNIX = "snix"
    AUTO = "auto"

    @classmethod
    def parse(cls, text: str) -> Namespace:
        try:
            return cls(text.lower())
        except ValueError:
            raise InvalidAddress(f"unknown protocol {text!r}; use tvix, snix or auto") from None


def service_name(namespace: Namespace, service: str) -> str:
    """`castore.v1.BlobService` -> `tvix.castore.v1.BlobService`."""
    assert namespace is not Namespace.AUTO
    return f"{namespace.value}.{service}"


def open_channel(
    address: Address,
    *,
    root_certificates: bytes | None = None,
    private_key: bytes | None = None,
    certificate_chain: bytes | None = None,
) -> grpc.Channel:
    options = [
        ("grpc.max_receive_message_length", MAX_MESSAGE),
        ("grpc.max_send_message_length", MAX_MESSAGE),
        ("grpc.keepalive_time_ms", 30_000),
        ("grpc.keepalive_timeout_ms", 10_000),
    ]
    target = address.grpc_target()
    if address.uses_tls:
        creds = grpc.ssl_channel_credentials(root_certificates, private_key, certificate_chain)
        return grpc.secure_channel(target, creds, options=options)
    return grpc.insecure_channel(target, options=options)


class Endpoint:
    """Calls methods by (service, method) name on a channel in the configured namespace."""

    def __init__(self, channel: grpc.Channel, namespace: Namespace = Namespace.TVIX) -> None:
        self.channel = channel
        self._requested = namespace
        self._resolved: Namespace | None = None if namespace is Namespace.AUTO else namespace
        self._lock = threading.Lock()
        self._callables: dict[tuple[str, str], Any] = {}

    @property
    def namespace(self) -> Namespace:
        if self._resolved is None:
            with self._lock:
                if self._resolved is None:
                    self._resolved = self._probe()
        return self._resolved

    def _probe(self, timeout: float = 10.0) -> Namespace:
        from ..pb import rpc_blobstore_pb2 as bpb

        stat = self.channel.unary_unary(
            f"/{service_name(Namespace.TVIX, 'castore.v1.BlobService')}/Stat",
            request_serializer=bpb.StatBlobRequest.SerializeToString,
            response_deserializer=bpb.StatBlobResponse.FromString,
        )
        try:
            stat(bpb.StatBlobRequest(digest=bytes(32)), timeout=timeout)
        except grpc.RpcError as exc:
            if isinstance(exc, grpc.Call) and exc.code() is grpc.StatusCode.UNIMPLEMENTED:
                log.info("server does not speak the tvix namespace; using snix")
                return Namespace.SNIX
            if isinstance(exc, grpc.Call) and exc.code() is grpc.StatusCode.UNAVAILABLE:
                # Decide later, when the server is up; this call will report the outage.
                return Namespace.TVIX
        return Namespace.TVIX

    def _callable(
        self,
        kind: str,
        service: str,
        method: str,
        serializer: Callable[[Any], bytes],
        deserializer: Callable[[bytes], Any],
    ) -> Any:
        key = (service, method)
        found = self._callables.get(key)
        if found is None:
            path = f"/{service_name(self.namespace, service)}/{method}"
            factory = getattr(self.channel, kind)
            found = factory(path, request_serializer=serializer, response_deserializer=deserializer)
            self._callables[key] = found
        return found

    def unary(
        self,
        service: str,
        method: str,
        request: Any,
        response_type: type[Resp],
        timeout: float | None,
    ) -> Resp:
        call = self._callable(
            "unary_unary",
            service,
            method,
            type(request).SerializeToString,
            response_type.FromString,
        )
        return _await(call.future(request, timeout=timeout))  # type: ignore[no-any-return]

    def server_stream(
        self,
        service: str,
        method: str,
        request: Any,
        response_type: type[Resp],
        timeout: float | None,
    ) -> Iterator[Resp]:
        """The response iterator; it is also a grpc.Call, so `.cancel()` stops the stream."""
        call = self._callable(
            "unary_stream",
            service,
            method,
            type(request).SerializeToString,
            response_type.FromString,
        )
        check_cancelled()
        return StreamCall(call(request, timeout=timeout))

    def client_stream(
        self,
        service: str,
        method: str,
        requests: Iterable[Any],
        request_type: type[Any],
        response_type: type[Resp],
        timeout: float | None,
    ) -> Resp:
        """Send a request stream; an exception raised while producing it is re-raised here.

        grpcio consumes the iterator on its own thread and would turn such an exception into
        an anonymous CANCELLED status, losing the reason.
        """
        call = self._callable(
            "stream_unary",
            service,
            method,
            request_type.SerializeToString,
            response_type.FromString,
        )
        failure: list[BaseException] = []

        def guarded() -> Iterator[Any]:
            try:
                yield from requests
            except Exception as exc:
                failure.append(exc)
                raise

        try:
            response = _await(call.future(guarded(), timeout=timeout))
        except grpc.RpcError:
            if failure:
                raise failure[0] from None
            raise
        if failure:
            raise failure[0]
        return response

    def wait_ready(self, timeout: float, address: object = "the server") -> None:
        """Block until the channel is connected; Unavailable after `timeout` seconds."""
        try:
            grpc.channel_ready_future(self.channel).result(timeout=timeout)
        except grpc.FutureTimeoutError:
            raise Unavailable(f"cannot reach {address} within {timeout:g} s") from None

    def close(self) -> None:
        self.channel.close()


def _await(future: Any) -> Any:
    """Wait for a call's result; the current CancelScope can cancel it meanwhile."""
    check_cancelled()
    with tracked(future):
        try:
            return future.result()
        except grpc.FutureCancelledError:
            raise Cancelled("cancelled by the caller") from None


class StreamCall:
    """A server stream's response iterator, registered with the current CancelScope."""

    def __init__(self, call: Any) -> None:
        self._call = call
        self._scope = current_scope()
        if self._scope is not None:
            self._scope._add(call)

    def __iter__(self) -> StreamCall:
        return self

    def __next__(self) -> Any:
        try:
            return next(self._call)
        except BaseException:
            self._release()
            raise

    def cancel(self) -> bool:
        self._release()
        return bool(self._call.cancel())

    def _release(self) -> None:
        if self._scope is not None:
            self._scope._discard(self._call)
            self._scope = None
