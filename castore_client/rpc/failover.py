"""Several servers of one service, tried in order: which one calls go to now."""

from __future__ import annotations

import logging
import threading
import time

import grpc

from ..errors import Unavailable
from .status import SWITCH_SERVER

log = logging.getLogger(__name__)


class Failover:
    """The channels to the servers, and the active one.

    A call that finds its server unreachable moves the next calls (and its own retries) to
    the next server; after `failback_after` seconds away the first is tried again, because it
    is the one the configuration put first.
    """

    def __init__(self, channels: list[grpc.Channel], failback_after: float = 30.0) -> None:
        self.channels = channels
        self.failback_after = failback_after
        self.active = 0
        self._left_primary_at = 0.0
        self._lock = threading.Lock()

    @property
    def channel(self) -> grpc.Channel:
        """The channel calls go to now."""
        if self.active and time.monotonic() - self._left_primary_at > self.failback_after:
            log.info("trying the first server again")
            self.active = 0
        return self.channels[self.active]

    def note_failure(self, code: grpc.StatusCode | None) -> None:
        """Hear how an attempt failed; one that could not reach its server switches."""
        if len(self.channels) < 2 or code not in SWITCH_SERVER:
            return
        with self._lock:
            self.active = (self.active + 1) % len(self.channels)
            if self.active == 1 or self._left_primary_at == 0.0:
                self._left_primary_at = time.monotonic()
        log.warning("server unavailable (%s); switching to server %d", code, self.active + 1)

    def wait_ready(self, timeout: float, address: object = "the server") -> None:
        """Make the first server that accepts a connection active; Unavailable after `timeout`
        seconds, shared among them."""
        share = timeout / len(self.channels)
        for index, channel in enumerate(self.channels):
            try:
                grpc.channel_ready_future(channel).result(timeout=share)
            except grpc.FutureTimeoutError:
                continue
            self.active = index
            return
        raise Unavailable(f"cannot reach {address} within {timeout:g} s")

    def close(self) -> None:
        for channel in self.channels:
            channel.close()
