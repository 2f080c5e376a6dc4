"""Running blocking service calls from trio without stalling the filesystem.

Every service method blocks on the network, so each runs on a worker thread; meanwhile the
other FUSE requests are served. The threads come from a limiter of our own, so a burst of slow
reads cannot starve trio's default pool (which getaddrinfo and trio.Path use).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

import trio

from castore_client.cancel import CancelScope

log = logging.getLogger(__name__)

T = TypeVar("T")

WORKER_THREADS = 32
_limiter: trio.CapacityLimiter | None = None


def _threads() -> trio.CapacityLimiter:
    global _limiter
    if _limiter is None:
        _limiter = trio.CapacityLimiter(WORKER_THREADS)
    return _limiter


async def run_blocking(fn: Callable[..., T], *args: object) -> T:
    """Run `fn(*args)` on a worker thread and return its result.

    Cancellation handling: when the calling task is cancelled, it returns at once; the RPCs
    the thread had started are cancelled through its CancelScope, so the thread ends soon
    after instead of at the RPC deadline, and its limiter token is released then.
    """
    scope = CancelScope()

    def work() -> T:
        with scope.bound():
            return fn(*args)

    try:
        return await trio.to_thread.run_sync(work, abandon_on_cancel=True, limiter=_threads())
    except trio.Cancelled:
        scope.cancel()
        raise


class StreamPump(Generic[T]):
    """Feeds a blocking iterator into a bounded trio channel from a thread of its own.

    The channel's bound is the backpressure: when the consumer stops reading, the thread
    blocks on `send` and stops pulling from the iterator (and the gRPC stream behind it stops
    at its flow-control window). `close()` cancels the producer and its RPCs.

    Items are delivered as `(value, None)`, and a failure of the iterator as `(None, exc)`
    before the channel closes, so the consumer sees errors in order.
    """

    def __init__(self, make_iterator: Callable[[], Iterator[T]], bound: int = 16) -> None:
        self._make_iterator = make_iterator
        self._send, self.receive = trio.open_memory_channel[tuple[T | None, BaseException | None]](
            bound
        )
        self._scope = CancelScope()
        self._token = trio.lowlevel.current_trio_token()
        trio.lowlevel.start_thread_soon(self._pump, lambda outcome: None, name="castore-pump")

    def _pump(self) -> None:
        send = self._send
        try:
            with self._scope.bound():
                try:
                    for item in self._make_iterator():
                        trio.from_thread.run(send.send, (item, None), trio_token=self._token)
                except (trio.BrokenResourceError, trio.ClosedResourceError, trio.RunFinishedError):
                    return
                except Exception as exc:
                    if not self._scope.cancelled:
                        trio.from_thread.run(send.send, (None, exc), trio_token=self._token)
        except (trio.BrokenResourceError, trio.ClosedResourceError, trio.RunFinishedError):
            pass
        finally:
            with contextlib.suppress(trio.RunFinishedError):
                trio.from_thread.run_sync(send.close, trio_token=self._token)

    def close(self) -> None:
        """Stop the producer: its pending send fails, and its RPCs are cancelled."""
        self._scope.cancel()
        self.receive.close()
