"""The exceptions every layer of castore-fuse speaks.

Every exception the package raises is one of these. The transport translates gRPC status
codes into them in one place (`castore_client.rpc.status`), the server translates them back
into status codes in one place (the same module), and the filesystem translates them into
errno in one place (`castore_fuse.errno_map`). Nothing outside `rpc/` ever sees a
`grpc.RpcError`.

    CastoreError
    ├── InvalidInput                  the caller's input is malformed (never retried)
    │   ├── InvalidDigest
    │   ├── Nixbase32Error            (also importable from castore_client.nixbase32)
    │   ├── InvalidAddress
    │   ├── InvalidStorePath
    │   ├── InvalidPathInfo
    │   ├── InvalidSize
    │   ├── InvalidTlsConfig
    │   └── ImportFailed
    ├── DirectoryValidationError      a Directory breaks the rules of spec section 4
    │   ├── UnsortedNames, DuplicateName, InvalidName, InvalidNodeDigest,
    │   └── InvalidSymlinkTarget, SizeOverflow
    ├── ClosureError                  a set of directories does not form a valid closure
    │   ├── UnexpectedDirectory, MissingDirectory, DanglingReference,
    │   └── SizeMismatch, RootCountError
    ├── NotFound                      BlobNotFound, DirectoryNotFound, PathInfoNotFound
    ├── CorruptData                   bytes that do not match their digest or declared size
    │   ├── DigestMismatch
    │   └── InvalidChunkList
    ├── ProtocolError                 a peer broke the protocol (bad message shape)
    ├── NarOutOfOrder                 NarEncoder events in an order no NAR has (a RuntimeError)
    ├── UnsupportedStoreVersion       a file store written by a newer castore
    ├── ListenFailed                  a server cannot bind its address (an OSError)
    ├── Rejected                      the server refused a request (invalid argument, ...)
    ├── TooLarge                      a blob is larger than this client may hold to verify it
    ├── CacheDirUnusable              a cache directory that cannot be made or read (an OSError)
    └── Unavailable                   the service could not be reached or timed out
        ├── Cancelled                 the caller gave up on the call (not the server)
        └── StoreClosed               an embedded store was used after close() (a RuntimeError)

`InvalidInput` is also a `ValueError`, so callers that validate arguments the usual way
catch it as such. The other builtin bases keep `except RuntimeError` / `except OSError`
callers working: those are what these errors were before they joined the hierarchy.
"""

from __future__ import annotations


class CastoreError(Exception):
    """Base of every error raised by castore_client."""


class InvalidInput(CastoreError, ValueError):
    """The input given by a caller is malformed."""


class InvalidDigest(InvalidInput):
    pass


class Nixbase32Error(InvalidInput):
    """Text that is not the nixbase32 form of any byte string."""


class InvalidAddress(InvalidInput):
    pass


class InvalidStorePath(InvalidInput):
    pass


class InvalidPathInfo(InvalidInput):
    pass


class InvalidSize(InvalidInput):
    """A size or duration that is not a finite positive number."""


class InvalidTlsConfig(InvalidInput):
    """A TLS file is missing, unreadable or not PEM, or the options do not fit together."""


class ImportFailed(InvalidInput):
    """A path cannot be imported (unsupported file type, unreadable, changed while read)."""


class DirectoryValidationError(CastoreError):
    """A Directory violates the structural rules; the message names the offending entry."""


class UnsortedNames(DirectoryValidationError):
    pass


class DuplicateName(DirectoryValidationError):
    pass


class InvalidName(DirectoryValidationError):
    pass


class InvalidNodeDigest(DirectoryValidationError):
    pass


class InvalidSymlinkTarget(DirectoryValidationError):
    pass


class SizeOverflow(DirectoryValidationError):
    pass


class ClosureError(CastoreError):
    """Directories that each look fine but do not fit together as one closure."""


class UnexpectedDirectory(ClosureError):
    pass


class MissingDirectory(ClosureError):
    pass


class DanglingReference(ClosureError):
    pass


class SizeMismatch(ClosureError):
    pass


class RootCountError(ClosureError):
    pass


class NotFound(CastoreError):
    """The object does not exist in the store."""


class BlobNotFound(NotFound):
    pass


class DirectoryNotFound(NotFound):
    pass


class PathInfoNotFound(NotFound):
    pass


class CorruptData(CastoreError):
    """Received bytes disagree with their digest or declared size; they were not used."""


class DigestMismatch(CorruptData):
    pass


class InvalidChunkList(CorruptData):
    pass


class ProtocolError(CastoreError):
    """A peer sent something the protocol does not allow (wrong message shape or order)."""


class NarOutOfOrder(CastoreError, RuntimeError):
    """A NarEncoder was told of events out of order: a bug in the walk that drives it."""


class UnsupportedStoreVersion(CastoreError):
    """A file store's schema is newer than this program knows; it is left untouched."""


class ListenFailed(CastoreError, OSError):
    """A server cannot bind its listen address (in use, not available, or not permitted)."""


class Rejected(CastoreError):
    """The server answered with an error status that says the request itself was refused."""


class CacheDirUnusable(CastoreError, OSError):
    """The cache directory can neither be created nor read, so there is no cache to start."""


class TooLarge(CastoreError):
    """A blob that can only be verified whole does not fit in the room set aside for that."""


class Unavailable(CastoreError):
    """The service could not be reached, or did not answer before the deadline."""


class Cancelled(Unavailable):
    """The call was cancelled by its caller (not by the server)."""


class StoreClosed(Unavailable, RuntimeError):
    """An embedded store was used after it was closed."""
