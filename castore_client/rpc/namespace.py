"""The protocol namespace a server speaks, tvix or snix.

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
from collections.abc import Callable

import grpc

from ..errors import InvalidAddress
from .status import code_of

log = logging.getLogger(__name__)


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


class ResolvedNamespace:
    """The namespace calls use: the configured one, or in auto mode what the probe found.

    The probe runs once, at the first call, so that opening the services needs no server.
    """

    def __init__(self, requested: Namespace) -> None:
        self.requested = requested
        self._resolved: Namespace | None = None if requested is Namespace.AUTO else requested
        self._lock = threading.Lock()

    def get(self, channel: Callable[[], grpc.Channel]) -> Namespace:
        """The namespace, probing on `channel()` the first time in auto mode."""
        if self._resolved is None:
            with self._lock:
                if self._resolved is None:
                    found = probe(channel())
                    if found is None:
                        return Namespace.TVIX  # for this call; the next one asks again
                    self._resolved = found
        return self._resolved


def probe(channel: grpc.Channel, timeout: float = 10.0) -> Namespace | None:
    """Which namespace the server behind `channel` speaks, asked with a Stat of a zero digest;
    None while the server cannot be reached."""
    from ..pb import rpc_blobstore_pb2 as bpb

    stat = channel.unary_unary(
        f"/{service_name(Namespace.TVIX, 'castore.v1.BlobService')}/Stat",
        request_serializer=bpb.StatBlobRequest.SerializeToString,
        response_deserializer=bpb.StatBlobResponse.FromString,
    )
    try:
        stat(bpb.StatBlobRequest(digest=bytes(32)), timeout=timeout)
    except grpc.RpcError as exc:
        code = code_of(exc)
        if code is grpc.StatusCode.UNIMPLEMENTED:
            log.info("server does not speak the tvix namespace; using snix")
            return Namespace.SNIX
        if code is grpc.StatusCode.UNAVAILABLE:
            # Decide when the server is up; the call that asked will report the outage.
            return None
    return Namespace.TVIX
