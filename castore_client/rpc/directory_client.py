"""DirectoryService over gRPC, with the client-side closure checks of spec section 6."""

from __future__ import annotations

from collections.abc import Iterable, Iterator

from ..closure import DownloadValidator, UploadValidator
from ..codec import decode_named_directory, directory_from_pb, directory_to_pb
from ..digest import B3Digest
from ..directory import Directory, SizeFormula
from ..errors import (
    DigestMismatch,
    DirectoryNotFound,
    DirectoryValidationError,
    ProtocolError,
    Rejected,
)
from ..pb import castore_pb2 as cpb
from ..pb import rpc_directory_pb2 as dpb
from .endpoint import Endpoint
from .status import translated

SERVICE = "castore.v1.DirectoryService"


class _Undecoded:
    """A single Get's answer as the bytes that arrived, which are hashed before decoding."""

    @staticmethod
    def FromString(data: bytes) -> bytes:  # noqa: N802 - the protobuf decoder's name
        return data


class GrpcDirectoryService:
    def __init__(
        self,
        endpoint: Endpoint,
        *,
        timeout: float | None = None,
        formula: SizeFormula = SizeFormula.CURRENT,
    ) -> None:
        self.endpoint = endpoint
        self.timeout = timeout
        self.formula = formula

    def _deadline(self, timeout: float | None) -> float | None:
        return self.timeout if timeout is None else timeout

    def _stream(
        self, digest: B3Digest, recursive: bool, timeout: float | None
    ) -> Iterator[cpb.Directory]:
        request = dpb.GetDirectoryRequest(digest=digest.raw, recursive=recursive)
        return self.endpoint.server_stream(
            SERVICE, "Get", request, cpb.Directory, self._deadline(timeout), idempotent=True
        )

    def get(self, digest: B3Digest, *, timeout: float | None = None) -> Directory:
        request = dpb.GetDirectoryRequest(digest=digest.raw, recursive=False)
        call = self.endpoint.server_stream(
            SERVICE, "Get", request, _Undecoded, self._deadline(timeout), idempotent=True
        )
        try:
            with translated(f"get directory {digest}", DirectoryNotFound):
                messages: list[bytes] = list(call)
        finally:
            _cancel(call)
        if not messages:
            raise DirectoryNotFound(f"directory {digest}: the server sent nothing")
        if len(messages) > 1:
            raise ProtocolError(f"directory {digest}: {len(messages)} answers to a single Get")
        try:
            directory = decode_named_directory(messages[0], digest)
            directory.validate(self.formula)
        except DirectoryValidationError as exc:
            # Name the directory: the rule it breaks does not say which directory broke it.
            raise type(exc)(f"directory {digest}: {exc}") from exc
        return directory

    def get_recursive(
        self, digest: B3Digest, *, timeout: float | None = None
    ) -> Iterator[Directory]:
        call = self._stream(digest, True, timeout)
        validator = DownloadValidator(digest, self.formula)
        try:
            with translated(f"get closure of {digest}", DirectoryNotFound):
                for message in call:
                    directory = directory_from_pb(message)
                    validator.add(directory)
                    yield directory
            if not validator.started:
                raise DirectoryNotFound(f"directory {digest} is not in the store")
            validator.finish()
        finally:
            _cancel(call)

    def put(self, directories: Iterable[Directory], *, timeout: float | None = None) -> B3Digest:
        validator = UploadValidator(self.formula)

        def messages() -> Iterator[cpb.Directory]:
            for directory in directories:
                validator.add(directory)
                yield directory_to_pb(directory)

        try:
            with translated("put directories", DirectoryNotFound):
                response = self.endpoint.client_stream(
                    SERVICE,
                    "Put",
                    messages(),
                    cpb.Directory,
                    dpb.PutDirectoryResponse,
                    self._deadline(timeout),
                )
        except Rejected:
            validator.finish()  # names the reason precisely when it is ours to see
            raise
        root = validator.finish()
        if response.root_digest != root.raw:
            raise DigestMismatch(
                f"put directories: our root is {root}, the server answered "
                f"{response.root_digest.hex() or 'nothing'}"
            )
        return root


def _cancel(call: object) -> None:
    if hasattr(call, "cancel"):
        call.cancel()
