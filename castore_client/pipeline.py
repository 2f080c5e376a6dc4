"""An ordered hand-off to one helper thread, for CPU work that releases the GIL.

Hashing (BLAKE3) and file writes release the GIL, so moving them off the thread that receives
and chunks a stream lets a 2-core machine use both cores. Items are processed strictly in
submission order, and a failure in the helper surfaces in the submitter at its next call.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from typing import Generic, TypeVar

T = TypeVar("T")

_STOP = object()


class OrderedWorker(Generic[T]):
    def __init__(self, fn: Callable[[T], object], *, depth: int = 8, name: str = "worker") -> None:
        self._fn = fn
        self._queue: queue.Queue[object] = queue.Queue(depth)
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while (item := self._queue.get()) is not _STOP:
            if self._error is None:
                try:
                    self._fn(item)  # type: ignore[arg-type]
                except BaseException as exc:  # re-raised in the submitting thread
                    self._error = exc

    def submit(self, item: T) -> None:
        self._raise_if_failed()
        self._queue.put(item)

    def finish(self) -> None:
        """Wait until every submitted item is processed; re-raise the helper's failure."""
        if self._thread.is_alive():
            self._queue.put(_STOP)
            self._thread.join()
        self._raise_if_failed()

    def _raise_if_failed(self) -> None:
        if self._error is not None:
            raise self._error

    def __enter__(self) -> OrderedWorker[T]:
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self._thread.is_alive():
            self._queue.put(_STOP)
            self._thread.join()
