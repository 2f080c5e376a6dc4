"""gRPC channels to castore servers: the options every client channel gets, and why one that
never connected did not.
"""

from __future__ import annotations

import grpc
import grpc.experimental

from ..address import Address
from ..tls import TlsOptions

MAX_MESSAGE = 64 << 20
# Our own Put messages stay well under real servers' 4 MiB receive limit.
PUT_MESSAGE = 1 << 20

_OPTIONS = [
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


def open_channel(
    address: Address,
    *,
    root_certificates: bytes | None = None,
    private_key: bytes | None = None,
    certificate_chain: bytes | None = None,
) -> grpc.Channel:
    target = address.grpc_target()
    if address.uses_tls:
        creds = grpc.ssl_channel_credentials(root_certificates, private_key, certificate_chain)
        return grpc.secure_channel(target, creds, options=list(_OPTIONS))
    return grpc.insecure_channel(target, options=list(_OPTIONS))


def channel_for(address: Address, tls: TlsOptions | None) -> grpc.Channel:
    """A channel to `address`; `tls` applies to grpc+https addresses only."""
    if tls is None or not address.uses_tls:
        return open_channel(address)
    return open_channel(
        address,
        root_certificates=tls.root_certificates,
        private_key=tls.private_key,
        certificate_chain=tls.certificate_chain,
    )


_PROBE = "/grpc.health.v1.Health/Check"


def tls_failure(channel: grpc.Channel, timeout: float = 5.0) -> str | None:
    """Why a grpc+https channel that never became ready cannot connect, as gRPC last saw it.

    One call without wait_for_ready fails at once with the channel's last connection error,
    which names a TLS handshake failure (CERTIFICATE_VERIFY_FAILED, a wrong host name, ...)
    where waiting for readiness only times out. Any answer at all means the connection works.
    """
    probe = channel.unary_unary(
        _PROBE, request_serializer=_identity, response_deserializer=_identity
    )
    try:
        probe(b"", timeout=timeout)
    except grpc.RpcError as exc:
        if not isinstance(exc, grpc.Call) or exc.code() is not grpc.StatusCode.UNAVAILABLE:
            return None
        details = exc.details() or ""
        marker = "last error: "
        reason = details.split(marker, 1)[1] if marker in details else details
        reason = reason.removesuffix(": OK").strip()
        if reason.endswith("Socket closed"):
            # What a server that requires a client certificate does to a client without an
            # acceptable one, after the handshake looked fine to the client.
            reason += " (the server may require a client certificate)"
        return reason or None
    return None


def _identity(data: bytes) -> bytes:
    return data
