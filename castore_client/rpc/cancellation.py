"""gRPC calls registered with the caller's CancelScope (castore_client.cancel) while they run,
so that cancelling the scope from another thread stops them at once.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

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


class StreamCall:
    """A server stream's response iterator, registered with the current CancelScope.

    `start` opens the stream; it is called again (after `budget` allowed a retry) when an
    attempt fails before its first message.
    """

    def __init__(self, start: Callable[[], Any], budget: Budget) -> None:
        self._start = start
        self._budget = budget
        self._received = False
        self._scope = current_scope()
        self._call = self._begin()

    def _begin(self) -> Any:
        call = self._start()
        if self._scope is not None:
            self._scope.add(call)
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
                    self._scope.discard(self._call)
                self._call = self._begin()
            except BaseException:
                self._release()
                raise

    def cancel(self) -> bool:
        self._release()
        return bool(self._call.cancel())

    def _release(self) -> None:
        if self._scope is not None:
            self._scope.discard(self._call)
            self._scope = None
