"""Cancelling blocking calls from outside the thread that makes them.

The services block (they are called from worker threads), but the FUSE layer must be able to
abandon a request: when a trio task is cancelled its worker thread should stop waiting on the
network at once, not at the RPC's deadline. A `CancelScope` is bound to the calling thread
while it runs a service method; the transport registers every call it starts with the current
scope (`castore_client.rpc.cancellation`), and `CancelScope.cancel()` (from any thread)
cancels them all. Without a scope, a call runs until it ends or reaches its deadline.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator
from typing import Protocol

from .errors import Cancelled

_local = threading.local()


class Cancellable(Protocol):
    def cancel(self) -> bool: ...


class CancelScope:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._calls: set[Cancellable] = set()
        self._event = threading.Event()
        self.cancelled = False

    def cancel(self) -> None:
        with self._lock:
            self.cancelled = True
            self._event.set()
            calls = list(self._calls)
        for call in calls:
            call.cancel()

    @contextlib.contextmanager
    def bound(self) -> Iterator[CancelScope]:
        """Make this the current scope of the calling thread for the duration."""
        previous = getattr(_local, "scope", None)
        _local.scope = self
        try:
            yield self
        finally:
            _local.scope = previous

    def add(self, call: Cancellable) -> None:
        """Cancel `call` with the scope; at once if the scope is already cancelled."""
        with self._lock:
            if self.cancelled:
                call.cancel()
            else:
                self._calls.add(call)

    def discard(self, call: Cancellable) -> None:
        with self._lock:
            self._calls.discard(call)


def current_scope() -> CancelScope | None:
    return getattr(_local, "scope", None)


@contextlib.contextmanager
def tracked(call: Cancellable) -> Iterator[None]:
    """Register `call` with the current scope (if any) while the block runs."""
    scope = current_scope()
    if scope is None:
        yield
        return
    scope.add(call)
    try:
        yield
    finally:
        scope.discard(call)


def check_cancelled() -> None:
    scope = current_scope()
    if scope is not None and scope.cancelled:
        raise Cancelled("cancelled by the caller")


def sleep(seconds: float) -> None:
    """Sleep, but wake up and raise Cancelled as soon as the current scope is cancelled."""
    scope = current_scope()
    if scope is None:
        time.sleep(seconds)
        return
    scope._event.wait(seconds)
    check_cancelled()
