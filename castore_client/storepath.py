"""Nix store paths: `<32 nixbase32 chars>-<name>` directly under /nix/store.

Name rule, and why it is what it is: the characters are ASCII letters and digits plus
`+ - _ ? = .`, 1..211 of them. A leading `.` is accepted: Nix 2.4 and later (including the
Debian nix-bin 2.8 used as our oracle, which happily adds `.foo`, `.` and `..`) and current snix
accept it, and Nix 2.20 made it official. Like Nix 2.20+ we still refuse the names `.` and `..`
and names starting with `.-` or `..-`, which current Nix rejects. Older tvix servers reject
every leading `.`, so such a path may be refused by them on Put.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass

from . import nixbase32
from .errors import InvalidStorePath

STORE_DIR = "/nix/store"
DIGEST_SIZE = 20
"""Bytes in a store path's hash part: what GetPathInfoRequest.by_output_hash must hold."""
ENCODED_DIGEST_LEN = nixbase32.encoded_len(DIGEST_SIZE)
MAX_NAME_LEN = 211
SHA256_SIZE = 32

_NAME_CHARS = re.compile(r"[A-Za-z0-9+\-_?=.]*")
_BAD_CHAR = re.compile(r"[^A-Za-z0-9+\-_?=.]")


@dataclass(frozen=True, slots=True)
class StorePath:
    digest: bytes
    name: str

    def __post_init__(self) -> None:
        if not isinstance(self.digest, bytes) or len(self.digest) != DIGEST_SIZE:
            got = len(self.digest) if isinstance(self.digest, bytes) else type(self.digest)
            raise InvalidStorePath(f"a store-path digest is {DIGEST_SIZE} bytes, got {got}")
        validate_name(self.name)

    @classmethod
    def parse(cls, basename: str) -> StorePath:
        """Parse `<hash>-<name>`, the form node names and reference names take."""
        if len(basename) < ENCODED_DIGEST_LEN + 2:
            raise InvalidStorePath(
                f"{basename!r}: too short for a store path "
                f"({ENCODED_DIGEST_LEN} hash characters, '-', and a name)"
            )
        if basename[ENCODED_DIGEST_LEN] != "-":
            raise InvalidStorePath(
                f"{basename!r}: expected '-' after the {ENCODED_DIGEST_LEN}-character hash"
            )
        try:
            digest = nixbase32.decode(basename[:ENCODED_DIGEST_LEN])
        except nixbase32.Nixbase32Error as exc:
            raise InvalidStorePath(f"{basename!r}: invalid hash part: {exc}") from None
        return cls(digest, basename[ENCODED_DIGEST_LEN + 1 :])

    @classmethod
    def parse_absolute(cls, path: str) -> StorePath:
        """Parse `/nix/store/<basename>`; paths inside a store path are refused, not truncated."""
        prefix = STORE_DIR + "/"
        if not path.startswith(prefix):
            raise InvalidStorePath(f"{path!r} is not under {STORE_DIR}/")
        basename = path[len(prefix) :]
        if "/" in basename:
            raise InvalidStorePath(f"{path!r} is not directly under {STORE_DIR}/")
        return cls.parse(basename)

    @classmethod
    def from_bytes_name(cls, name: bytes) -> StorePath:
        """Parse a castore node name, which is bytes on the wire."""
        try:
            text = name.decode("ascii")
        except UnicodeDecodeError:
            raise InvalidStorePath(f"{name[:80]!r}: a store-path basename is ASCII only") from None
        return cls.parse(text)

    @classmethod
    def for_source(cls, name: str, nar_sha256: bytes) -> StorePath:
        """The path `nix-store --add` gives a tree with no references whose NAR has this hash."""
        if len(nar_sha256) != SHA256_SIZE:
            raise InvalidStorePath(f"a NAR SHA-256 is {SHA256_SIZE} bytes, got {len(nar_sha256)}")
        validate_name(name)
        fingerprint = f"source:sha256:{nar_sha256.hex()}:{STORE_DIR}:{name}"
        full = hashlib.sha256(fingerprint.encode("ascii")).digest()
        return cls(compress_hash(full, DIGEST_SIZE), name)

    def to_bytes_name(self) -> bytes:
        """The basename as a castore node name."""
        return str(self).encode("ascii")

    @property
    def absolute(self) -> str:
        return f"{STORE_DIR}/{self}"

    def __str__(self) -> str:
        return f"{nixbase32.encode(self.digest)}-{self.name}"


def validate_name(name: str) -> None:
    if not isinstance(name, str):
        raise InvalidStorePath(f"a store-path name is a str, got {type(name).__name__}")
    if not name:
        raise InvalidStorePath("a store-path name must not be empty")
    if len(name) > MAX_NAME_LEN:
        raise InvalidStorePath(
            f"store-path name of {len(name)} characters exceeds {MAX_NAME_LEN}: {name[:40]!r}..."
        )
    if not _NAME_CHARS.fullmatch(name):
        bad = _BAD_CHAR.search(name)
        assert bad is not None
        raise InvalidStorePath(
            f"store-path name {name!r} contains {bad.group()!r} at position {bad.start()}; "
            "allowed are ASCII letters, digits and + - _ ? = ."
        )
    if name in (".", "..") or name.startswith((".-", "..-")):
        raise InvalidStorePath(
            f"store-path name {name!r} is not allowed ('.' and '..' may not be its first "
            "dash-separated component)"
        )


def check_store_hash(digest: bytes) -> bytes:
    """The hash part of a store path as bytes; a wrong type or length is the caller's error.

    The wire protocol looks path infos up by this hash alone, so every store and the server
    apply this one check before they look.
    """
    if not isinstance(digest, bytes | bytearray | memoryview):
        raise InvalidStorePath(f"a store path hash is bytes, got {type(digest).__name__}")
    raw = bytes(digest)
    if len(raw) != DIGEST_SIZE:
        raise InvalidStorePath(f"a store path hash is {DIGEST_SIZE} bytes, got {len(raw)}")
    return raw


def compress_hash(digest: bytes, size: int) -> bytes:
    """Nix's XOR fold: byte i of the input lands on byte i mod `size`."""
    out = bytearray(size)
    for i, byte in enumerate(digest):
        out[i % size] ^= byte
    return bytes(out)
