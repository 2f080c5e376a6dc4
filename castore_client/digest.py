"""BLAKE3 digests, the identity of every blob, chunk and directory."""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass

import blake3

from .errors import InvalidDigest

DIGEST_SIZE = 32
TEXT_PREFIX = "blake3-"
LEGACY_TEXT_PREFIX = "b3:"


@dataclass(frozen=True, slots=True)
class B3Digest:
    """A 32-byte BLAKE3-256 digest.

    The text form (`blake3-` + padded standard base64) is what logs, xattrs and the CLI show;
    the older `b3:` form is accepted on input because earlier tvix releases printed it.
    """

    raw: bytes

    def __post_init__(self) -> None:
        if not isinstance(self.raw, bytes) or len(self.raw) != DIGEST_SIZE:
            got = len(self.raw) if isinstance(self.raw, bytes | bytearray) else type(self.raw)
            raise InvalidDigest(f"a digest is {DIGEST_SIZE} bytes, got {got}")

    @classmethod
    def of(cls, data: bytes | bytearray | memoryview) -> B3Digest:
        """Hash `data`; large inputs use all cores, since hashing sits on every read path."""
        hasher = (
            blake3.blake3(max_threads=blake3.blake3.AUTO)
            if len(data) > 1 << 20
            else blake3.blake3()
        )
        hasher.update(data)
        return cls(hasher.digest())

    @classmethod
    def from_bytes(cls, raw: bytes) -> B3Digest:
        return cls(bytes(raw))

    @classmethod
    def parse(cls, text: str) -> B3Digest:
        for prefix in (TEXT_PREFIX, LEGACY_TEXT_PREFIX):
            if text.startswith(prefix):
                encoded = text[len(prefix) :]
                break
        else:
            raise InvalidDigest(f"{text!r}: a digest looks like {TEXT_PREFIX}<base64>")
        try:
            raw = base64.b64decode(encoded, validate=True)
        except (binascii.Error, ValueError) as exc:
            raise InvalidDigest(f"{text!r}: not valid base64 ({exc})") from None
        if base64.b64encode(raw).decode("ascii") != encoded:
            raise InvalidDigest(f"{text!r}: not the canonical base64 of any digest")
        return cls(raw)

    def __str__(self) -> str:
        return TEXT_PREFIX + base64.b64encode(self.raw).decode("ascii")

    def __repr__(self) -> str:
        return f"B3Digest({self})"


def hasher() -> blake3.blake3:
    """A streaming BLAKE3 hasher for data that arrives in pieces."""
    return blake3.blake3()


class BackgroundHasher:
    """BLAKE3 of a stream, computed on a helper thread while the caller goes on."""

    def __init__(self) -> None:
        from .pipeline import OrderedWorker

        self._hasher = blake3.blake3()
        self._worker: OrderedWorker[bytes | memoryview] = OrderedWorker(
            self._hasher.update, name="blob-hasher"
        )

    def update(self, piece: bytes | memoryview) -> None:
        """Queue `piece`; mutable buffers are copied, since the caller may reuse them."""
        if not piece:
            return
        if not isinstance(piece, bytes) and not (isinstance(piece, memoryview) and piece.readonly):
            piece = bytes(piece)
        self._worker.submit(piece)

    def digest(self) -> B3Digest:
        self._worker.finish()
        return B3Digest(self._hasher.digest())

    def __enter__(self) -> BackgroundHasher:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._worker.__exit__(*exc_info)


EMPTY_DIGEST = B3Digest(blake3.blake3(b"").digest())
