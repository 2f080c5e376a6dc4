"""B3Digest: construction, hashing and the `blake3-` / `b3:` text forms (protocol.md section 3).

Expected values come from the blake3 package, the stdlib base64 module or literals written here,
never from castore_client itself.
"""

from __future__ import annotations

import base64

import blake3
import pytest
from hypothesis import given
from hypothesis import strategies as st

from castore_client.digest import EMPTY_DIGEST, B3Digest, hasher
from castore_client.errors import CastoreError, InvalidDigest, InvalidInput

# BLAKE3 of b"", as printed by tvix's own tests (castore proto/tests/directory.rs, castore-go).
EMPTY_HEX = "af1349b9f5f9a1a6a0404dea36dcc9499bcb25c9adc112b7cc9a93cae41f3262"
EMPTY_B64 = "rxNJufX5oaagQE3qNtzJSZvLJcmtwRK3zJqTyuQfMmI="
# Thirty-two 0xff bytes: the base64 uses "/" and ends in "8=", so the standard alphabet and the
# padding both show.
ALL_FF_B64 = "//////////////////////////////////////////8="
COUNTING = bytes(range(32))
COUNTING_B64 = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8="


def b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode("ascii")


# --- the empty digest ------------------------------------------------------------------------


def test_empty_digest_is_blake3_of_nothing() -> None:
    assert blake3.blake3(b"").hexdigest() == EMPTY_HEX  # the literal itself is right
    assert EMPTY_DIGEST.raw == bytes.fromhex(EMPTY_HEX)
    assert B3Digest.of(b"") == EMPTY_DIGEST


def test_empty_digest_text_form() -> None:
    assert str(EMPTY_DIGEST) == "blake3-" + EMPTY_B64


# --- construction ----------------------------------------------------------------------------


def test_raw_is_kept() -> None:
    assert B3Digest(COUNTING).raw == COUNTING


@pytest.mark.parametrize("length", [0, 1, 16, 31, 33, 64])
def test_wrong_length_rejected(length: int) -> None:
    with pytest.raises(InvalidDigest):
        B3Digest(bytes(length))
    with pytest.raises(InvalidDigest):
        B3Digest.from_bytes(bytes(length))


@pytest.mark.parametrize("raw", ["x" * 32, None, 32, list(range(32))])
def test_non_bytes_rejected(raw: object) -> None:
    with pytest.raises(InvalidDigest):
        B3Digest(raw)  # type: ignore[arg-type]


def test_from_bytes_accepts_bytearray_and_memoryview() -> None:
    assert B3Digest.from_bytes(bytearray(COUNTING)).raw == COUNTING
    assert B3Digest.from_bytes(memoryview(COUNTING)).raw == COUNTING  # type: ignore[arg-type]
    assert type(B3Digest.from_bytes(bytearray(COUNTING)).raw) is bytes


def test_invalid_digest_is_invalid_input() -> None:
    assert issubclass(InvalidDigest, InvalidInput)
    assert issubclass(InvalidDigest, CastoreError)


def test_equality_and_hash() -> None:
    a = B3Digest(COUNTING)
    b = B3Digest(bytes(COUNTING))
    assert a == b
    assert hash(a) == hash(b)
    assert a != B3Digest(bytes(32))
    assert {a: 1}[b] == 1


def test_immutable() -> None:
    d = B3Digest(COUNTING)
    with pytest.raises(AttributeError):
        d.raw = bytes(32)  # type: ignore[misc]


# --- hashing ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "data",
    [
        b"Hello World!",  # HELLOWORLD
        b"\x00\x01",  # BLOB_A
        bytes(range(255)) * 4096,  # BLOB_B, 1,044,480 bytes: just under the threaded path
        bytes(range(256)) * 8192 + b"x",  # 2 MiB + 1: takes the multi-threaded path
    ],
    ids=["helloworld", "blob_a", "blob_b", "over_1MiB"],
)
def test_of_matches_blake3(data: bytes) -> None:
    assert B3Digest.of(data).raw == blake3.blake3(data).digest()


def test_known_blob_digests() -> None:
    assert B3Digest.of(b"Hello World!").raw == bytes.fromhex(
        "5ca7815adcb484e9a136c11efe69c1d530176d549b5d18d038eb5280b4b3470c"
    )
    assert B3Digest.of(b"\x00\x01").raw == bytes.fromhex(
        "7b7015bb92cf0b318037702a6cdd81dee41224f734684c2c122cd6359cb1ee63"
    )


def test_of_accepts_bytearray_and_memoryview() -> None:
    expected = blake3.blake3(b"abc").digest()
    assert B3Digest.of(bytearray(b"abc")).raw == expected
    assert B3Digest.of(memoryview(b"abc")).raw == expected


def test_streaming_hasher_matches_one_shot() -> None:
    h = hasher()
    for piece in (b"Hello", b" ", b"World!"):
        h.update(piece)
    assert h.digest() == blake3.blake3(b"Hello World!").digest()


# --- text form -------------------------------------------------------------------------------


def test_text_form_literals() -> None:
    assert str(B3Digest(COUNTING)) == "blake3-" + COUNTING_B64
    assert str(B3Digest(b"\xff" * 32)) == "blake3-" + ALL_FF_B64


def test_text_form_is_padded_standard_base64() -> None:
    text = str(B3Digest(b"\xff" * 32))
    assert text.startswith("blake3-")
    assert text.endswith("=")  # 32 bytes need one padding character
    assert "/" in text and "_" not in text  # standard alphabet, not URL-safe
    assert len(text) == len("blake3-") + 44


def test_repr_shows_text_form() -> None:
    assert repr(B3Digest(COUNTING)) == f"B3Digest(blake3-{COUNTING_B64})"


@pytest.mark.parametrize("prefix", ["blake3-", "b3:"])
def test_parse_both_prefixes(prefix: str) -> None:
    assert B3Digest.parse(prefix + COUNTING_B64).raw == COUNTING
    assert B3Digest.parse(prefix + EMPTY_B64) == EMPTY_DIGEST
    assert B3Digest.parse(prefix + ALL_FF_B64).raw == b"\xff" * 32


def test_legacy_prefix_prints_in_current_form() -> None:
    assert str(B3Digest.parse("b3:" + COUNTING_B64)) == "blake3-" + COUNTING_B64


@pytest.mark.parametrize(
    "text",
    [
        "",
        COUNTING_B64,  # no prefix at all
        "blake3:" + COUNTING_B64,
        "b3-" + COUNTING_B64,
        "BLAKE3-" + COUNTING_B64,
        "B3:" + COUNTING_B64,
        "sha256-" + COUNTING_B64,
        "blake3" + COUNTING_B64,
        " blake3-" + COUNTING_B64,
    ],
)
def test_parse_rejects_unknown_prefix(text: str) -> None:
    with pytest.raises(InvalidDigest):
        B3Digest.parse(text)


@pytest.mark.parametrize("length", [0, 1, 31, 33, 48, 64])
@pytest.mark.parametrize("prefix", ["blake3-", "b3:"])
def test_parse_rejects_wrong_length(prefix: str, length: int) -> None:
    with pytest.raises(InvalidDigest):
        B3Digest.parse(prefix + b64(bytes(length)))


@pytest.mark.parametrize(
    "encoded",
    [
        COUNTING_B64.rstrip("="),  # padding missing
        COUNTING_B64 + "=",  # too much padding
        COUNTING_B64[:-2] + "=" + COUNTING_B64[-2:],  # padding in the middle
        ALL_FF_B64.replace("/", "_"),  # URL-safe alphabet
        "!" + COUNTING_B64[1:],
        "é" + COUNTING_B64[1:],  # non-ASCII
        COUNTING_B64 + "\n",
        COUNTING_B64[:20] + " " + COUNTING_B64[20:],
        COUNTING.hex(),  # hex is not base64 of 32 bytes
        "A",
    ],
)
@pytest.mark.parametrize("prefix", ["blake3-", "b3:"])
def test_parse_rejects_bad_base64(prefix: str, encoded: str) -> None:
    with pytest.raises(InvalidDigest):
        B3Digest.parse(prefix + encoded)


def test_parse_rejects_non_canonical_trailing_bits() -> None:
    # 32 bytes = 256 bits in 43 sextets (258 bits): the last character's low 2 bits must be 0.
    # "8" is 0b111100; "9" is 0b111101 and decodes to the same bytes under a lenient decoder.
    non_canonical = ALL_FF_B64[:-2] + "9="
    with pytest.raises(InvalidDigest):
        B3Digest.parse("blake3-" + non_canonical)


@given(st.binary(min_size=32, max_size=32))
def test_text_round_trip(raw: bytes) -> None:
    digest = B3Digest(raw)
    text = str(digest)
    assert text == "blake3-" + b64(raw)
    assert B3Digest.parse(text) == digest
    assert B3Digest.parse("b3:" + b64(raw)) == digest


@given(st.text(max_size=80))
def test_parse_arbitrary_text_only_raises_invalid_digest(text: str) -> None:
    try:
        digest = B3Digest.parse(text)
    except InvalidDigest:
        return
    assert len(digest.raw) == 32
    assert text.startswith(("blake3-", "b3:"))
