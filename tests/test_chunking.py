"""The streaming chunker must cut exactly where fastcdc cuts the whole data, in bounded memory."""

from __future__ import annotations

import random
import tracemalloc
from collections.abc import Iterator

import pytest
from fastcdc import fastcdc
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from castore_client.chunking import CHUNK_AVG, CHUNK_MAX, CHUNK_MIN, Chunker, chunk_stream

KIB = 1024
MIB = 1024 * KIB

# Small sizes give many cut points per test case; the window is still fastcdc's 64 KiB minimum.
SMALL = (256, 1024, 4096)


def reference_cuts(data: bytes, min_size: int, avg_size: int, max_size: int) -> list[int]:
    """Chunk lengths from fastcdc run over the whole buffer: the ground truth."""
    return [c.length for c in fastcdc(data, min_size, avg_size, max_size)]


def split(data: bytes, cuts: list[int]) -> list[bytes]:
    bounds = [0, *sorted(c % (len(data) + 1) for c in cuts), len(data)]
    return [data[a:b] for a, b in zip(bounds, bounds[1:], strict=False)]


def make_data(kind: str, seed: int, size: int) -> bytes:
    """Random data cuts anywhere; zeros and short periods hit max_size or repeat one cut."""
    if kind == "random":
        return random.Random(seed).randbytes(size)
    if kind == "zeros":
        return bytes(size)
    period = random.Random(seed).randbytes(1 + seed % 300)
    return (period * (size // len(period) + 1))[:size]


def chunk_with(chunker: Chunker, pieces: list[bytes]) -> list[bytes]:
    out: list[bytes] = []
    for piece in pieces:
        out += chunker.feed(piece)
    return out + chunker.finish()


data_kinds = st.sampled_from(["random", "random", "random", "zeros", "periodic"])


def test_constants_are_the_real_servers() -> None:
    assert (CHUNK_MIN, CHUNK_AVG, CHUNK_MAX) == (128 * KIB, 256 * KIB, 512 * KIB)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    kind=data_kinds,
    seed=st.integers(0, 2**32),
    size=st.integers(0, 400 * KIB),
    cuts=st.lists(st.integers(0, 2**31), max_size=40),
)
def test_small_parameters_match_whole_buffer(
    kind: str, seed: int, size: int, cuts: list[int]
) -> None:
    data = make_data(kind, seed, size)
    chunks = chunk_with(Chunker(*SMALL), split(data, cuts))
    assert [len(c) for c in chunks] == reference_cuts(data, *SMALL)
    assert b"".join(chunks) == data


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    kind=data_kinds,
    seed=st.integers(0, 2**32),
    size=st.integers(0, 6 * MIB),
    cuts=st.lists(st.integers(0, 2**31), max_size=30),
)
def test_real_parameters_match_whole_buffer(
    kind: str, seed: int, size: int, cuts: list[int]
) -> None:
    data = make_data(kind, seed, size)
    expected = reference_cuts(data, CHUNK_MIN, CHUNK_AVG, CHUNK_MAX)
    pieces = split(data, cuts)
    streamed = list(chunk_stream(pieces))
    assert [len(c) for c in streamed] == expected
    assert b"".join(streamed) == data
    assert [len(c) for c in chunk_with(Chunker(), pieces)] == expected


@pytest.mark.parametrize("delta", [-2, -1, 0, 1, 2])
@pytest.mark.parametrize("kind", ["zeros", "periodic"])
def test_scan_boundary_with_max_size_chunks(kind: str, delta: int) -> None:
    """Max-size chunks are where a window one byte short would cut one byte early.

    Pieces of three max-size chunks plus `delta` put the buffer's end within a byte or two
    of a window's end when a cut is made.
    """
    data = make_data(kind, 0, 5 * MIB + 12345)
    step = 3 * CHUNK_MAX + delta
    chunks = chunk_with(Chunker(), [data[i : i + step] for i in range(0, len(data), step)])
    assert [len(c) for c in chunks] == reference_cuts(data, CHUNK_MIN, CHUNK_AVG, CHUNK_MAX)


def test_one_byte_pieces() -> None:
    data = make_data("random", 7, 300 * KIB)
    chunks = chunk_with(Chunker(*SMALL), [data[i : i + 1] for i in range(len(data))])
    assert [len(c) for c in chunks] == reference_cuts(data, *SMALL)


def test_one_huge_piece_is_sliced() -> None:
    data = make_data("random", 8, 20 * MIB)
    assert [len(c) for c in chunk_stream([data])] == reference_cuts(
        data, CHUNK_MIN, CHUNK_AVG, CHUNK_MAX
    )


def test_memoryview_and_bytearray_pieces() -> None:
    data = make_data("random", 9, 3 * MIB)
    pieces: list[bytes | bytearray | memoryview] = [
        memoryview(data)[: 1 * MIB],
        bytearray(data[1 * MIB : 2 * MIB]),
        data[2 * MIB :],
    ]
    assert b"".join(chunk_stream(pieces)) == data


def test_caller_may_reuse_its_buffer() -> None:
    data = make_data("random", 10, 2 * MIB)
    chunker = Chunker()
    buffer = bytearray(64 * KIB)
    out: list[bytes] = []
    for pos in range(0, len(data), len(buffer)):
        buffer[:] = data[pos : pos + len(buffer)]
        out += chunker.feed(buffer)
        buffer[:] = bytes(len(buffer))
    out += chunker.finish()
    assert b"".join(out) == data
    assert [len(c) for c in out] == reference_cuts(data, CHUNK_MIN, CHUNK_AVG, CHUNK_MAX)


def test_empty_stream_has_no_chunks() -> None:
    assert list(chunk_stream([])) == []
    assert list(chunk_stream([b"", b""])) == []
    assert Chunker().finish() == []


def test_small_stream_is_one_chunk() -> None:
    assert list(chunk_stream([b"\x00\x01"])) == [b"\x00\x01"]


def test_finish_is_final() -> None:
    chunker = Chunker()
    chunker.feed(b"abc")
    assert chunker.finish() == [b"abc"]
    assert chunker.finish() == []
    with pytest.raises(ValueError):
        chunker.feed(b"more")


def _generated(total: int, piece: int) -> Iterator[bytes]:
    rng = random.Random(11)
    for _ in range(total // piece):
        yield rng.randbytes(piece)


def test_memory_stays_bounded() -> None:
    total, piece = 64 * MIB, 1 * MIB
    tracemalloc.start()
    try:
        produced = 0
        for chunk in chunk_stream(_generated(total, piece)):
            assert len(chunk) <= CHUNK_MAX
            produced += len(chunk)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert produced == total
    assert peak < 16 * MIB, f"peak {peak / MIB:.1f} MiB"


@pytest.mark.parametrize(
    "sizes", [(32, 256, 1024), (4096, 1024, 8192), (1024, 4096, 2048), (64, 128, 1024)]
)
def test_impossible_sizes_are_refused(sizes: tuple[int, int, int]) -> None:
    with pytest.raises(ValueError, match="chunk sizes"):
        Chunker(*sizes)


def test_pieces_of_every_buffer_kind_cut_alike() -> None:
    """Views of bytes are kept without copying, other buffers are copied; the cuts agree."""
    data = make_data("random", 12, 3 * MIB + 5)
    expected = reference_cuts(data, CHUNK_MIN, CHUNK_AVG, CHUNK_MAX)
    step = 700 * KIB
    as_views = [memoryview(data)[i : i + step] for i in range(0, len(data), step)]
    as_arrays = [bytearray(data[i : i + step]) for i in range(0, len(data), step)]
    for pieces in (as_views, as_arrays):
        chunks = chunk_with(Chunker(), list(pieces))
        assert [len(c) for c in chunks] == expected
        assert all(type(c) is bytes for c in chunks)
