"""When a failed call is made again, and how long to wait first."""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass

import grpc

from ..cancel import sleep as cancel_sleep
from ..deadlines import DEFAULT_DEADLINE
from .status import RETRYABLE, code_of

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RetryPolicy:
    """Retries of idempotent calls: exponential backoff with full jitter.

    A call is retried until its deadline passes, so a server that restarts within it is never
    noticed. `attempts` can bound the tries further (None: as many as the deadline allows);
    a bound alone used to give up after five quick tries, 0.4 s into an outage.
    """

    attempts: int | None = None
    initial_backoff: float = 0.05
    max_backoff: float = 2.0

    def backoff(self, attempt: int) -> float:
        return random.uniform(0, min(self.max_backoff, self.initial_backoff * 2 ** (attempt - 1)))


class Budget:
    """One logical call's deadline and attempt count across its retries.

    Without a timeout the deadline is `DEFAULT_DEADLINE`: no call waits forever. `on_failure`
    hears the status of every failed attempt, retried or not, so that failover can move the
    next attempt to another server.
    """

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
        self.timeout = DEFAULT_DEADLINE if timeout is None else timeout
        self.deadline = time.monotonic() + self.timeout
        self.attempt = 1

    def remaining(self) -> float:
        return max(self.deadline - time.monotonic(), 0.001)

    def retry_after(self, exc: grpc.RpcError) -> bool:
        """Whether to try again; sleeps the backoff first (cancellable)."""
        code = code_of(exc)
        self.on_failure(code)
        if not self.idempotent or code not in RETRYABLE:
            return False
        if self.policy.attempts is not None and self.attempt >= self.policy.attempts:
            return False
        delay = self.policy.backoff(self.attempt)
        if time.monotonic() + delay >= self.deadline:
            return False
        log.debug("retrying after %s (attempt %d, %.2f s)", code, self.attempt, delay)
        cancel_sleep(delay)
        self.attempt += 1
        return True
