"""Nix's base-32, the encoding of store-path hashes and of `nix-hash --to-base32`.

It is not RFC 4648 base32: the alphabet omits e, o, u and t, and the bytes are read as one
little-endian number whose 5-bit groups are written most significant first. Decoding is strict
(length, alphabet, unused high bits) so that every byte string has exactly one text form; a
lenient decoder would let two different store-path strings name the same digest.
"""

from __future__ import annotations

from .errors import InvalidInput, Nixbase32Error

__all__ = ["ALPHABET", "Nixbase32Error", "decode", "decoded_len", "encode", "encoded_len"]

ALPHABET = "0123456789abcdfghijklmnpqrsvwxyz"
_VALUES = {char: value for value, char in enumerate(ALPHABET)}


def encoded_len(n: int) -> int:
    """Characters needed for `n` bytes: ceil(8n / 5)."""
    if n < 0:
        raise InvalidInput(f"a byte length cannot be negative, got {n}")
    return (8 * n + 4) // 5


def decoded_len(length: int) -> int:
    """Bytes encoded by `length` characters; raises if no byte length encodes to `length`."""
    n = 5 * length // 8 if length >= 0 else -1
    if n < 0 or encoded_len(n) != length:
        raise Nixbase32Error(f"{length} characters is not the length of any nixbase32 text")
    return n


def encode(data: bytes) -> str:
    value = int.from_bytes(data, "little")
    length = encoded_len(len(data))
    return "".join(ALPHABET[(value >> (5 * k)) & 0x1F] for k in range(length - 1, -1, -1))


def decode(text: str) -> bytes:
    n = decoded_len(len(text))
    value = 0
    for position, char in enumerate(text):
        digit = _VALUES.get(char)
        if digit is None:
            raise Nixbase32Error(f"{char!r} at position {position} is not a nixbase32 character")
        value = (value << 5) | digit
    if value >> (8 * n):
        raise Nixbase32Error(f"{text!r} sets bits beyond the {n} bytes it encodes")
    return value.to_bytes(n, "little")
