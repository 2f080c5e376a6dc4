"""gRPC calls registered with the caller's CancelScope (castore_client.cancel) while they run,
so that cancelling the scope from another thread stops them at once; and the deadlines of
streams, which gRPC cannot express.

gRPC's own timeout covers a stream's whole life, so any deadline short enough to notice a dead
server would cut off a large blob that is still arriving. Streams therefore get no gRPC
timeout; instead the `Watchdog` cancels one whose server has kept the reader waiting for a
single message longer than the deadline (before the first message: longer than the call's
budget, retries included). Time the reader spends elsewhere between two messages does not
count, so a listing paged through slowly by `ls | less` is not cut off either.
"""

from __future__ import annotations

import math
import threading
import time
import weakref
from collections.abc import Callable, Iterable, Iterator
from typing import Any, Protocol

import grpc

from ..cancel import check_cancelled, current_scope, tracked
from ..errors import Cancelled
from .retry import Budget


def await_future(future: Any) -> Any:
    """Wait for a call's result; the current CancelScope can cancel it meanwhile."""
    check_cancelled()
    with tracked(future):
        try:
            return future.result()
        except grpc.FutureCancelledError:
            raise Cancelled("cancelled by the caller") from None


class DeadlineExpired(grpc.RpcError):
    """What a call the watchdog cancelled fails with: DEADLINE_EXCEEDED, as if gRPC had
    enforced the deadline itself, so that retries, failover and translation treat both alike
    (it counts as a `grpc.Call`, which is how they read a status)."""

    def __init__(self, waited: float) -> None:
        self._details = f"no answer from the server within {waited:g} s"
        super().__init__(self._details)

    def code(self) -> grpc.StatusCode:
        return grpc.StatusCode.DEADLINE_EXCEEDED

    def details(self) -> str:
        return self._details


grpc.Call.register(DeadlineExpired)


class Watched(Protocol):
    """A call the watchdog may cancel once `expires` (a monotonic time) has passed."""

    expires: float

    def expire(self) -> None: ...


class Watchdog:
    """One thread that cancels the calls whose `expires` has passed.

    It sleeps until the earliest expiry it knows of; calls move their expiry on as messages
    arrive without telling it, so it wakes up, finds the new time and sleeps again. That costs
    a wake-up per deadline per call at worst, and a message costs two clock reads.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        # Weak: a stream its reader dropped without closing must not live on in here.
        self._watched: weakref.WeakSet[Watched] = weakref.WeakSet()
        self._wake_at = math.inf
        self._thread: threading.Thread | None = None

    def watch(self, call: Watched) -> None:
        with self._lock:
            self._watched.add(call)
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._run, name="castore-deadlines", daemon=True
                )
                self._thread.start()
            if call.expires < self._wake_at:
                self._changed.notify()

    def unwatch(self, call: Watched) -> None:
        with self._lock:
            self._watched.discard(call)

    def touched(self, call: Watched) -> None:
        """`call.expires` moved, perhaps earlier than the watchdog means to wake up."""
        with self._lock:
            if call.expires < self._wake_at:
                self._changed.notify()

    def _run(self) -> None:
        while True:
            with self._lock:
                now = time.monotonic()
                due = [call for call in self._watched if call.expires <= now]
                self._watched.difference_update(due)
                if not due:
                    self._wake_at = min((call.expires for call in self._watched), default=math.inf)
                    self._changed.wait(None if self._wake_at == math.inf else self._wake_at - now)
                    self._wake_at = -math.inf
                    continue
            for call in due:
                call.expire()


WATCHDOG = Watchdog()


class StreamCall:
    """A server stream's response iterator, registered with the current CancelScope and the
    watchdog.

    `start` opens the stream; it is called again (after `budget` allowed a retry) when an
    attempt fails before its first message. The first message must come within the budget's
    deadline, each later one within `budget.timeout` of being asked for.
    """

    def __init__(self, start: Callable[[], Any], budget: Budget) -> None:
        self._start = start
        self._budget = budget
        self._received = False
        self._expired = False
        self._watching = True
        self.expires = math.inf
        self._scope = current_scope()
        self._call = self._begin()

    def _begin(self) -> Any:
        call = self._start()
        self._expired = False
        if self._scope is not None:
            self._scope.add(call)
        return call

    def __iter__(self) -> StreamCall:
        return self

    def __next__(self) -> Any:
        if self._watching:
            self.expires = (
                time.monotonic() + self._budget.timeout if self._received else self._budget.deadline
            )
            WATCHDOG.watch(self)
        while True:
            try:
                item = next(self._call)
                self._received = True
                self.expires = math.inf
                return item
            except grpc.RpcError as exc:
                error: grpc.RpcError = exc
                if self._expired:
                    error = DeadlineExpired(self._budget.timeout)
                if self._received or not self._budget.retry_after(error):
                    self._release()
                    raise error from None
                if self._scope is not None:
                    self._scope.discard(self._call)
                self._call = self._begin()
                self.expires = self._budget.deadline
                WATCHDOG.watch(self)
            except BaseException:
                self._release()
                raise

    def expire(self) -> None:
        """The server kept us waiting past the deadline: end the attempt."""
        self._expired = True
        self._call.cancel()

    def cancel(self) -> bool:
        self._release()
        return bool(self._call.cancel())

    def _release(self) -> None:
        if self._watching:
            self._watching = False
            WATCHDOG.unwatch(self)
        if self._scope is not None:
            self._scope.discard(self._call)
            self._scope = None


class UploadWatch:
    """The deadline of a client stream: grpc pulls the next request when it can send it, so
    the time from one message handed over to the next pull (and from the last one to the
    answer) is the server's; the time spent producing a message is ours and does not count."""

    def __init__(self, timeout: float) -> None:
        self.timeout = timeout
        self.expires = math.inf
        self.expired = False
        self.future: Any = None

    def requests(self, requests: Iterable[Any]) -> Iterator[Any]:
        """`requests`, with the clock running whenever grpc holds a message we gave it."""
        for request in requests:
            self.expires = time.monotonic() + self.timeout
            WATCHDOG.touched(self)
            yield request
            self.expires = math.inf
        self.expires = time.monotonic() + self.timeout
        WATCHDOG.touched(self)

    def expire(self) -> None:
        self.expired = True
        if self.future is not None:
            self.future.cancel()
