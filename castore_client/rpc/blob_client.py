"""BlobService over gRPC."""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator

from ..digest import B3Digest, BackgroundHasher
from ..errors import BlobNotFound, DigestMismatch, InvalidChunkList
from ..pb import rpc_blobstore_pb2 as bpb
from ..services import ChunkMeta
from .blob_chunk import BlobChunkCodec
from .channel import PUT_MESSAGE
from .endpoint import Endpoint
from .status import translated

log = logging.getLogger(__name__)

SERVICE = "castore.v1.BlobService"


class GrpcBlobService:
    def __init__(self, endpoint: Endpoint, *, timeout: float | None = None) -> None:
        self.endpoint = endpoint
        self.timeout = timeout

    def _deadline(self, timeout: float | None) -> float | None:
        return self.timeout if timeout is None else timeout

    def stat(self, digest: B3Digest, *, timeout: float | None = None) -> list[ChunkMeta]:
        request = bpb.StatBlobRequest(digest=digest.raw, send_chunks=True)
        with translated(f"stat blob {digest}", BlobNotFound):
            response = self.endpoint.unary(
                SERVICE,
                "Stat",
                request,
                bpb.StatBlobResponse,
                self._deadline(timeout),
                idempotent=True,
            )
        chunks = []
        for chunk in response.chunks:
            if len(chunk.digest) != 32:
                raise InvalidChunkList(
                    f"blob {digest}: a chunk digest of {len(chunk.digest)} bytes"
                )
            chunks.append(ChunkMeta(B3Digest(chunk.digest), chunk.size))
        return chunks

    def read(
        self, digest: B3Digest, *, timeout: float | None = None
    ) -> Iterator[bytes | memoryview]:
        request = bpb.ReadBlobRequest(digest=digest.raw)
        call = self.endpoint.server_stream(
            SERVICE, "Read", request, BlobChunkCodec, self._deadline(timeout), idempotent=True
        )
        return _pieces(call, digest)

    def put(self, data: Iterable[bytes], *, timeout: float | None = None) -> B3Digest:
        def messages(hasher: BackgroundHasher) -> Iterator[bytes]:
            for piece in data:
                if isinstance(piece, bytes) and len(piece) <= PUT_MESSAGE:
                    parts: Iterable[bytes] = (piece,)
                else:
                    view = memoryview(piece)
                    parts = (
                        bytes(view[i : i + PUT_MESSAGE]) for i in range(0, len(view), PUT_MESSAGE)
                    )
                for part in parts:
                    hasher.update(part)
                    yield part

        with BackgroundHasher() as hasher:
            with translated("put blob", BlobNotFound):
                response = self.endpoint.client_stream(
                    SERVICE,
                    "Put",
                    messages(hasher),
                    BlobChunkCodec,
                    bpb.PutBlobResponse,
                    self._deadline(timeout),
                )
            ours = hasher.digest()
        if response.digest != ours.raw:
            raise DigestMismatch(
                f"put blob {ours}: the server computed {response.digest.hex() or 'nothing'}"
            )
        return ours


def _pieces(call: Iterator[bytes | memoryview], digest: B3Digest) -> Iterator[bytes | memoryview]:
    """Pass pieces on; closing the generator early cancels the stream on the server."""
    try:
        with translated(f"read blob {digest}", BlobNotFound):
            for piece in call:
                if piece:
                    yield piece
    finally:
        if hasattr(call, "cancel"):
            call.cancel()
