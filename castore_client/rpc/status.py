"""The one place where gRPC status codes become castore errors (and back, for the server).

It also holds the one table of status codes that mean "try again", and what the other rules
of the transport (translation, failover) derive from it.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import grpc

from ..cancel import current_scope
from ..errors import (
    Cancelled,
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

# The server is down, did not answer in time, or is out of capacity: the same call may
# succeed if made again a little later.
RETRYABLE = frozenset(
    {
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
    }
)

# What the caller sees as Unavailable: whatever a retry could cure, and CANCELLED that the
# caller did not ask for (the server or the connection gave up on the call). The caller's own
# cancellation is Cancelled, told apart in error_from_rpc.
UNAVAILABLE = RETRYABLE | {grpc.StatusCode.CANCELLED}

# What moves calls to the next server: the server could not be reached or did not answer.
# RESOURCE_EXHAUSTED is an answer (a busy server, or a message over a size limit, which another
# server of the same service would refuse as well), so it is retried where it happened.
SWITCH_SERVER = RETRYABLE - {grpc.StatusCode.RESOURCE_EXHAUSTED}


def code_of(exc: grpc.RpcError) -> grpc.StatusCode | None:
    """The status of a failed call; None for an RpcError that is not a finished call."""
    return exc.code() if isinstance(exc, grpc.Call) else None


def details_of(exc: grpc.RpcError) -> str:
    return (exc.details() if isinstance(exc, grpc.Call) else None) or str(exc)


def error_from_rpc(exc: grpc.RpcError, what: str, not_found: type[NotFound]) -> CastoreError:
    """Translate a failed call about `what` (e.g. "blob blake3-...") into a castore error."""
    code = code_of(exc) or grpc.StatusCode.UNKNOWN
    message = f"{what}: {code.name}: {details_of(exc)}"
    scope = current_scope()
    if code is grpc.StatusCode.CANCELLED and scope is not None and scope.cancelled:
        return Cancelled(f"{what}: cancelled by the caller")
    if code is grpc.StatusCode.NOT_FOUND:
        return not_found(message)
    if code in UNAVAILABLE:
        return Unavailable(message)
    if code is grpc.StatusCode.UNIMPLEMENTED:
        return Rejected(message + " (does the server speak this protocol namespace?)")
    return Rejected(message)


@contextlib.contextmanager
def translated(what: str, not_found: type[NotFound]) -> Iterator[None]:
    """Raise the castore error for a failed call made in the block (see error_from_rpc)."""
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
