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
import random
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any, TypeVar

import grpc
import grpc.experimental

from ..address import Address
from ..cancel import Cancelled, check_cancelled, current_scope, tracked
from ..cancel import sleep as cancel_sleep
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
        # Reconnect soon after a server comes back (gRPC's default first wait is 1 s).
        ("grpc.initial_reconnect_backoff_ms", 100),
        ("grpc.min_reconnect_backoff_ms", 100),
        ("grpc.max_reconnect_backoff_ms", 5_000),
        # Server-streaming calls (every blob Read) are driven on the thread that iterates them.
        # Otherwise grpcio starts a thread per call whenever none is in flight, which cost about
        # 0.9 ms of CPU per small-file read.
        (grpc.experimental.ChannelOptions.SingleThreadedUnaryStream, 1),
    ]
    target = address.grpc_target()
    if address.uses_tls:
        creds = grpc.ssl_channel_credentials(root_certificates, private_key, certificate_chain)
        return grpc.secure_channel(target, creds, options=options)
    return grpc.insecure_channel(target, options=options)


RETRYABLE = frozenset(
    {
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
    }
)


@dataclass(frozen=True)
class RetryPolicy:
    """Retries of idempotent calls: exponential backoff with full jitter.

    With a deadline (`--timeout`) a call is retried until the deadline passes, so a server
    that restarts within it is never noticed; without one, `attempts` bounds the tries.
    """

    attempts: int = 5
    initial_backoff: float = 0.05
    max_backoff: float = 2.0

    def backoff(self, attempt: int) -> float:
        return random.uniform(0, min(self.max_backoff, self.initial_backoff * 2 ** (attempt - 1)))


class _Budget:
    """One logical call's deadline and attempt count across its retries."""

    def __init__(
        self,
        policy: RetryPolicy,
        timeout: float | None,
        idempotent: bool,
        on_failure: Callable[[grpc.StatusCode | None], None] = lambda code: None,
    ) -> None:
        self.policy = policy
        self.idempotent = idempotent
        self.on_failure = on_failure
        self.deadline = None if timeout is None else time.monotonic() + timeout
        self.attempt = 1

    def remaining(self) -> float | None:
        if self.deadline is None:
            return None
        return max(self.deadline - time.monotonic(), 0.001)

    def retry_after(self, exc: grpc.RpcError) -> bool:
        """Whether to try again; sleeps the backoff first (cancellable)."""
        code = exc.code() if isinstance(exc, grpc.Call) else None
        self.on_failure(code)
        if not self.idempotent or code not in RETRYABLE:
            return False
        if self.deadline is None and self.attempt >= self.policy.attempts:
            return False
        delay = self.policy.backoff(self.attempt)
        if self.deadline is not None and time.monotonic() + delay >= self.deadline:
            return False
        log.debug("retrying after %s (attempt %d, %.2f s)", code, self.attempt, delay)
        cancel_sleep(delay)
        self.attempt += 1
        return True


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
        self.channels = list(channel) if isinstance(channel, list) else [channel]
        self.retry = retry or RetryPolicy()
        self.failback_after = failback_after
        self._active = 0
        self._left_primary_at = 0.0
        self._requested = namespace
        self._resolved: Namespace | None = None if namespace is Namespace.AUTO else namespace
        self._lock = threading.Lock()
        self._callables: dict[tuple[int, str, str], Any] = {}

    @property
    def channel(self) -> grpc.Channel:
        """The channel calls go to now."""
        if self._active and time.monotonic() - self._left_primary_at > self.failback_after:
            log.info("trying the first server again")
            self._active = 0
        return self.channels[self._active]

    def _note_failure(self, code: grpc.StatusCode | None) -> None:
        if len(self.channels) < 2 or code not in (
            grpc.StatusCode.UNAVAILABLE,
            grpc.StatusCode.DEADLINE_EXCEEDED,
        ):
            return
        with self._lock:
            self._active = (self._active + 1) % len(self.channels)
            if self._active == 1 or self._left_primary_at == 0.0:
                self._left_primary_at = time.monotonic()
        log.warning("server unavailable (%s); switching to server %d", code, self._active + 1)

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
        channel = self.channel
        key = (self._active, service, method)
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
        response_type: type[Resp],
        timeout: float | None,
        *,
        idempotent: bool = False,
    ) -> Resp:
        budget = _Budget(self.retry, timeout, idempotent, self._note_failure)
        while True:
            call = self._callable(
                "unary_unary",
                service,
                method,
                type(request).SerializeToString,
                response_type.FromString,
            )
            try:
                return _await(call.future(request, timeout=budget.remaining()))  # type: ignore[no-any-return]
            except grpc.RpcError as exc:
                if not budget.retry_after(exc):
                    raise

    def server_stream(
        self,
        service: str,
        method: str,
        request: Any,
        response_type: type[Resp],
        timeout: float | None,
        *,
        idempotent: bool = False,
    ) -> Iterator[Resp]:
        """The response iterator; `.cancel()` stops the stream.

        An idempotent stream that fails before its first message is retried; once messages
        have arrived, resuming is the caller's business (it knows what it already has).
        """

        def start() -> Any:
            call = self._callable(
                "unary_stream",
                service,
                method,
                type(request).SerializeToString,
                response_type.FromString,
            )
            return call(request, timeout=budget.remaining())

        check_cancelled()
        budget = _Budget(self.retry, timeout, idempotent, self._note_failure)
        return StreamCall(start, budget)

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
        share = timeout / len(self.channels)
        for index, channel in enumerate(self.channels):
            try:
                grpc.channel_ready_future(channel).result(timeout=share)
            except grpc.FutureTimeoutError:
                continue
            self._active = index
            return
        raise Unavailable(f"cannot reach {address} within {timeout:g} s")

    def close(self) -> None:
        for channel in self.channels:
            channel.close()


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

    def __init__(self, start: Callable[[], Any], budget: _Budget) -> None:
        self._start = start
        self._budget = budget
        self._received = False
        self._scope = current_scope()
        self._call = self._begin()

    def _begin(self) -> Any:
        call = self._start()
        if self._scope is not None:
            self._scope._add(call)
        return call

    def __iter__(self) -> StreamCall:
        return self

    def __next__(self) -> Any:
        while True:
            try:
                item = next(self._call)
                self._received = True
                return item
            except grpc.RpcError as exc:
                if self._received or not self._budget.retry_after(exc):
                    self._release()
                    raise
                if self._scope is not None:
                    self._scope._discard(self._call)
                self._call = self._begin()
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
