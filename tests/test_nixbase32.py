from __future__ import annotations

import random
import subprocess

import pytest
from hypothesis import given
from hypothesis import strategies as st

from castore_client import nixbase32
from castore_client.nixbase32 import Nixbase32Error, decode, encode, encoded_len

from .conftest import require_tool

ALPHABET = "0123456789abcdfghijklmnpqrsvwxyz"
# nix-hash accepts only whole digests, so these are the byte lengths it can check for us.
NIX_HASH_TYPES = {16: "md5", 20: "sha1", 32: "sha256", 64: "sha512"}


def nix_to_base32(data: bytes) -> str:
    tool = require_tool("nix-hash")
    result = subprocess.run(
        [tool, "--type", NIX_HASH_TYPES[len(data)], "--to-base32", data.hex()],
        check=True,
        capture_output=True,
        text=True,
    )
    return result.stdout.strip()


# Written by hand: one byte becomes 10 bits, printed as two 5-bit groups, high group first.
HAND_VECTORS = [
    (b"", ""),
    (b"\x00", "00"),
    (b"\x01", "01"),
    (b"\x1f", "0z"),
    (b"\x20", "10"),
    (b"\xff", "7z"),
    (b"\x00\x01", "0080"),  # 0x0100 = 256 = 8 * 32
]


@pytest.mark.parametrize(("data", "text"), HAND_VECTORS)
def test_hand_vectors(data: bytes, text: str) -> None:
    assert encode(data) == text
    assert decode(text) == data


# Produced once by `nix-hash --type ... --to-base32`; kept literal so they run without nix-bin.
NIX_VECTORS = [
    (
        "2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824",
        "094qif9n4cq4fdg459qzbhg1c6wywawwaaivx0k0x8xhbyx4vwic",
    ),
    ("8a12321522fd91efbd60ebb2481af88580f61600", "00bgd045z0d4icpbc2yyz4gx48ak44la"),
    ("0000000000000000000000000000000000000001", "04000000000000000000000000000000"),
    ("0102030405060708090a0b0c0d0e0f10", "0h1w70s30b184hh1q60l2060h1"),
]


@pytest.mark.parametrize(("hex_data", "text"), NIX_VECTORS)
def test_recorded_nix_vectors(hex_data: str, text: str) -> None:
    assert encode(bytes.fromhex(hex_data)) == text
    assert decode(text) == bytes.fromhex(hex_data)


def _oracle_samples() -> list[bytes]:
    rng = random.Random(20240527)
    samples = []
    for size in NIX_HASH_TYPES:
        samples += [bytes(size), b"\xff" * size]
        samples += [rng.randbytes(size) for _ in range(6)]
    return samples


@pytest.mark.parametrize("data", _oracle_samples(), ids=lambda d: f"{len(d)}-{d[:4].hex()}")
def test_encode_matches_nix_hash(data: bytes) -> None:
    expected = nix_to_base32(data)
    assert encode(data) == expected
    assert decode(expected) == data


def test_recorded_vectors_still_match_nix_hash() -> None:
    for hex_data, text in NIX_VECTORS:
        assert nix_to_base32(bytes.fromhex(hex_data)) == text


def test_encoded_len_table() -> None:
    # ceil(8n/5) by hand for the first few lengths, and the digest sizes Nix uses.
    assert [encoded_len(n) for n in range(9)] == [0, 2, 4, 5, 7, 8, 10, 12, 13]
    assert encoded_len(20) == 32
    assert encoded_len(32) == 52
    assert encoded_len(64) == 103


# 8 characters carry exactly 5 bytes, so the impossible lengths are those = 1, 3 or 6 (mod 8).
@pytest.mark.parametrize("length", [1, 3, 6, 9, 11, 14, 17, 19, 22, 33, 51, 54, 102])
def test_decode_rejects_lengths_no_byte_string_has(length: int) -> None:
    with pytest.raises(Nixbase32Error, match="length"):
        decode("0" * length)


@pytest.mark.parametrize("char", ["e", "o", "u", "t", "A", "Z", "-", " ", "é", "\0", "\n"])
def test_decode_rejects_foreign_characters(char: str) -> None:
    text = "0" * 31 + char
    with pytest.raises(Nixbase32Error, match="not a nixbase32 character"):
        decode(text)


@pytest.mark.parametrize(
    "text",
    [
        "80",  # 8 * 32 = 256 does not fit one byte
        "zz",
        "8z",
        "2" + "0" * 51,  # 52 chars hold 260 bits, a 32-byte digest only 256
        "z" * 52,
        "4" + "0" * 102,  # 103 chars hold 515 bits, 64 bytes only 512
    ],
)
def test_decode_rejects_nonzero_leftover_bits(text: str) -> None:
    with pytest.raises(Nixbase32Error, match="bits"):
        decode(text)


def test_largest_values_that_fit_are_accepted() -> None:
    assert decode("7z") == b"\xff"
    assert decode("1" + "z" * 51) == b"\xff" * 32
    assert decode("3" + "z" * 102) == b"\xff" * 64


def test_error_is_a_value_error() -> None:
    assert issubclass(Nixbase32Error, ValueError)
    assert nixbase32.ALPHABET == ALPHABET


@given(st.binary(max_size=300))
def test_round_trip(data: bytes) -> None:
    text = encode(data)
    assert len(text) == encoded_len(len(data))
    assert set(text) <= set(ALPHABET)
    assert decode(text) == data


@given(st.text(alphabet=ALPHABET, max_size=120))
def test_decode_of_alphabet_text_is_canonical_or_rejected(text: str) -> None:
    try:
        data = decode(text)
    except Nixbase32Error:
        return
    assert encode(data) == text


@given(st.text(max_size=120))
def test_decode_of_any_text_raises_only_the_documented_error(text: str) -> None:
    try:
        data = decode(text)
    except Nixbase32Error:
        return
    assert encode(data) == text
