"""Calls by (service, method) name, on the server and in the namespace that are current.

`Endpoint` only dispatches: the channels and the choice between them are `failover`'s, the
method paths `namespace`'s, whether to try again `retry`'s, and waiting on a call while it
can be cancelled `cancellation`'s. Failed calls raise grpc.RpcError; the service clients
translate it (`status.translated`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any, Protocol, TypeVar

import grpc

from ..address import Address
from ..cancel import check_cancelled
from ..deadlines import DEFAULT_DEADLINE
from ..errors import Cancelled, Unavailable
from ..tls import TlsOptions
from .cancellation import WATCHDOG, DeadlineExpired, StreamCall, UploadWatch, await_future
from .channel import channel_for, tls_failure
from .failover import Failover
from .namespace import Namespace, ResolvedNamespace, service_name
from .retry import Budget, RetryPolicy

Resp = TypeVar("Resp")
Resp_co = TypeVar("Resp_co", covariant=True)


class Decoder(Protocol[Resp_co]):
    """A message class, or a codec standing in for one so that bulk data skips the protobuf
    runtime (`blob_chunk.BlobChunkCodec`)."""

    def FromString(self, data: bytes, /) -> Resp_co: ...


class Endpoint:
    """Calls methods by (service, method) name on a channel in the configured namespace."""

    def __init__(
        self,
        channel: grpc.Channel | list[grpc.Channel],
        namespace: Namespace = Namespace.TVIX,
        retry: RetryPolicy | None = None,
        *,
        failback_after: float = 30.0,
    ) -> None:
        """With several channels, calls go to the first that works: a call that finds its
        server unavailable moves on to the next (and is retried there if idempotent), and
        after `failback_after` seconds away the first is tried again."""
        self._failover = Failover(
            list(channel) if isinstance(channel, list) else [channel], failback_after
        )
        self.retry = retry or RetryPolicy()
        self._namespace = ResolvedNamespace(namespace)
        self._callables: dict[tuple[int, str, str, Any], Any] = {}

    @property
    def channels(self) -> list[grpc.Channel]:
        return self._failover.channels

    @property
    def channel(self) -> grpc.Channel:
        """The channel calls go to now."""
        return self._failover.channel

    @property
    def namespace(self) -> Namespace:
        return self._namespace.get(lambda: self.channel)

    def _budget(self, timeout: float | None, idempotent: bool) -> Budget:
        return Budget(self.retry, timeout, idempotent, self._failover.note_failure)

    def _callable(
        self,
        kind: str,
        service: str,
        method: str,
        serializer: Callable[[Any], bytes],
        deserializer: Callable[[bytes], Any],
    ) -> Any:
        channel = self.channel
        # The decoder is part of the key: one method may be read as messages or as bytes.
        key = (self._failover.active, service, method, deserializer)
        found = self._callables.get(key)
        if found is None:
            path = f"/{service_name(self.namespace, service)}/{method}"
            factory = getattr(channel, kind)
            found = factory(path, request_serializer=serializer, response_deserializer=deserializer)
            self._callables[key] = found
        return found

    def unary(
        self,
        service: str,
        method: str,
        request: Any,
        response_type: Decoder[Resp],
        timeout: float | None,
        *,
        idempotent: bool = False,
    ) -> Resp:
        budget = self._budget(timeout, idempotent)
        while True:
            call = self._callable(
                "unary_unary",
                service,
                method,
                type(request).SerializeToString,
                response_type.FromString,
            )
            try:
                return await_future(call.future(request, timeout=budget.remaining()))  # type: ignore[no-any-return]
            except grpc.RpcError as exc:
                if not budget.retry_after(exc):
                    raise

    def server_stream(
        self,
        service: str,
        method: str,
        request: Any,
        response_type: Decoder[Resp],
        timeout: float | None,
        *,
        idempotent: bool = False,
    ) -> Iterator[Resp]:
        """The response iterator; `.cancel()` stops the stream.

        An idempotent stream that fails before its first message is retried; once messages
        have arrived, resuming is the caller's business (it knows what it already has).
        `timeout` bounds the wait for each message, not the whole stream (see `cancellation`).
        """

        def start() -> Any:
            call = self._callable(
                "unary_stream",
                service,
                method,
                type(request).SerializeToString,
                response_type.FromString,
            )
            return call(request)

        check_cancelled()
        budget = self._budget(timeout, idempotent)
        return StreamCall(start, budget)

    def client_stream(
        self,
        service: str,
        method: str,
        requests: Iterable[Any],
        request_type: type[Any],
        response_type: Decoder[Resp],
        timeout: float | None,
    ) -> Resp:
        """Send a request stream; an exception raised while producing it is re-raised here.

        grpcio consumes the iterator on its own thread and would turn such an exception into
        an anonymous CANCELLED status, losing the reason. `timeout` bounds how long the server
        may keep each message (and, after the last, the answer) waiting, not the upload.
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

        watch = UploadWatch(DEFAULT_DEADLINE if timeout is None else timeout)
        watch.future = call.future(watch.requests(guarded()))
        WATCHDOG.watch(watch)
        try:
            response = await_future(watch.future)
        except (grpc.RpcError, Cancelled):
            if failure:
                raise failure[0] from None
            if watch.expired:
                raise DeadlineExpired(watch.timeout) from None
            raise
        finally:
            WATCHDOG.unwatch(watch)
        if failure:
            raise failure[0]
        return response  # type: ignore[no-any-return]

    def wait_ready(self, timeout: float, address: object = "the server") -> None:
        """Block until a channel is connected; Unavailable after `timeout` seconds."""
        self._failover.wait_ready(timeout, address)

    def close(self) -> None:
        self._failover.close()


def open_endpoint(
    addresses: Sequence[Address],
    namespace: Namespace,
    tls: TlsOptions | None = None,
    *,
    connect_timeout: float | None = None,
) -> Endpoint:
    """An Endpoint over the servers of one service, tried in the order given.

    With a connect timeout, one of them must accept a connection within that many seconds,
    or Unavailable is raised naming them (and, for grpc+https, the TLS error if the handshake
    is what failed) after closing the channels.
    """
    endpoint = Endpoint([channel_for(a, tls) for a in addresses], namespace)
    if connect_timeout is None:
        return endpoint
    try:
        try:
            endpoint.wait_ready(connect_timeout, ",".join(str(a) for a in addresses))
        except Unavailable as exc:
            reason = tls_failure(endpoint.channel) if addresses[0].uses_tls else None
            if reason is None:
                raise
            raise Unavailable(f"{exc}: {reason}") from None
    except BaseException:
        endpoint.close()
        raise
    return endpoint
