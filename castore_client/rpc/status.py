"""The one place where gRPC status codes become castore errors (and back, for the server)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import grpc

from ..cancel import Cancelled, current_scope
from ..errors import (
    CastoreError,
    ClosureError,
    CorruptData,
    DirectoryValidationError,
    InvalidInput,
    NotFound,
    ProtocolError,
    Rejected,
    Unavailable,
)

UNAVAILABLE_CODES = frozenset(
    {
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        grpc.StatusCode.CANCELLED,
    }
)


def error_from_rpc(exc: grpc.RpcError, what: str, not_found: type[NotFound]) -> CastoreError:
    """Translate a failed call about `what` (e.g. "blob blake3-...") into a castore error."""
    code = exc.code() if isinstance(exc, grpc.Call) else grpc.StatusCode.UNKNOWN
    details = (exc.details() if isinstance(exc, grpc.Call) else None) or str(exc)
    message = f"{what}: {code.name}: {details}"
    scope = current_scope()
    if code is grpc.StatusCode.CANCELLED and scope is not None and scope.cancelled:
        return Cancelled(f"{what}: cancelled by the caller")
    if code is grpc.StatusCode.NOT_FOUND:
        return not_found(message)
    if code in UNAVAILABLE_CODES:
        return Unavailable(message)
    if code is grpc.StatusCode.UNIMPLEMENTED:
        return Rejected(message + " (does the server speak this protocol namespace?)")
    return Rejected(message)


@contextlib.contextmanager
def translated(what: str, not_found: type[NotFound]) -> Iterator[None]:
    try:
        yield
    except grpc.RpcError as exc:
        raise error_from_rpc(exc, what, not_found) from None


def status_for(exc: BaseException) -> grpc.StatusCode:
    """The status a server answers with for a store error (spec sections 5-7)."""
    if isinstance(exc, NotFound):
        return grpc.StatusCode.NOT_FOUND
    if isinstance(exc, InvalidInput):
        return grpc.StatusCode.INVALID_ARGUMENT
    if isinstance(exc, DirectoryValidationError | ClosureError | CorruptData | ProtocolError):
        return grpc.StatusCode.INTERNAL
    if isinstance(exc, Unavailable):
        return grpc.StatusCode.UNAVAILABLE
    return grpc.StatusCode.INTERNAL
