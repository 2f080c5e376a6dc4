"""The one rule every byte handed out passes: it hashes to the digest that names it.

Readers (`chunked_reader`, `blob_readers`) and the disk cache check bytes only through here,
so what "verified" means is written once: the size, when the caller knows it, and the BLAKE3
digest of exactly those bytes.
"""

from __future__ import annotations

import blake3

from .digest import B3Digest
from .errors import DigestMismatch


class Verifier:
    """Checks bytes that arrive in pieces against the digest (and size, if known) naming them.

    `what` names the object in errors ("blob blake3-...", "chunk ... of blob ..."). An excess
    fails as soon as it arrives, so a lying server cannot make us buffer more than `size`.
    """

    def __init__(
        self, digest: B3Digest, size: int | None, what: str, *, expected: int | None = None
    ) -> None:
        """`expected` is how many bytes will come when `size` is not known (for the hasher)."""
        self.digest = digest
        self.size = size
        self.what = what
        self.received = 0
        # Large inputs hash on all cores: hashing sits on every read path.
        big = (size if size is not None else expected or 0) > 1 << 20
        self._hasher = blake3.blake3(max_threads=blake3.blake3.AUTO if big else 1)

    def update(self, piece: bytes | bytearray | memoryview) -> None:
        self.received += len(piece)
        if self.size is not None and self.received > self.size:
            raise DigestMismatch(f"{self.what}: server sent more than {self.size} bytes")
        self._hasher.update(piece)

    def finish(self) -> None:
        if self.size is not None and self.received != self.size:
            raise DigestMismatch(f"{self.what}: expected {self.size} bytes, got {self.received}")
        actual = B3Digest(self._hasher.digest())
        if actual != self.digest:
            raise DigestMismatch(f"{self.what}: content hashes to {actual}")


def verified(data: bytes, digest: B3Digest, size: int | None, what: str) -> bytes:
    """`data` itself, if it is what `digest` (and `size`) name; DigestMismatch otherwise."""
    check = Verifier(digest, size, what, expected=len(data))
    check.update(data)
    check.finish()
    return data
