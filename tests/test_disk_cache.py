"""The on-disk chunk cache: verified in and out, atomic, bounded across processes."""

from __future__ import annotations

import os
import pathlib
import subprocess
import sys

import pytest

from castore_client.chunk_cache import ChunkCache
from castore_client.digest import B3Digest
from castore_client.disk_cache import DiskChunkCache, parse_size

from . import fixtures as fx


def chunk(n: int, size: int = 1000) -> tuple[B3Digest, bytes]:
    data = bytes([n % 256]) * size + n.to_bytes(4, "little")
    return B3Digest(fx.b3(data)), data


def test_put_then_get(tmp_path: pathlib.Path) -> None:
    cache = DiskChunkCache(tmp_path, 1 << 20)
    digest, data = chunk(1)
    assert cache.get(digest) is None
    cache.put(digest, data)
    assert cache.get(digest) == data
    assert DiskChunkCache(tmp_path, 1 << 20).get(digest) == data  # another instance sees it


def test_corrupt_file_is_a_miss_and_removed(tmp_path: pathlib.Path) -> None:
    cache = DiskChunkCache(tmp_path, 1 << 20)
    digest, data = chunk(2)
    cache.put(digest, data)
    path = tmp_path / digest.raw.hex()[:2] / digest.raw.hex()
    path.write_bytes(b"rot" + data[3:])
    assert cache.get(digest) is None
    assert not path.exists()


def test_limit_is_never_exceeded(tmp_path: pathlib.Path) -> None:
    cache = DiskChunkCache(tmp_path, 10_000)
    for n in range(40):
        cache.put(*chunk(n))
        assert cache.total_bytes() <= 10_000
    assert cache.get(chunk(39)[0]) is not None  # the newest survive


def test_limit_holds_with_several_processes(tmp_path: pathlib.Path) -> None:
    script = (
        "import sys; sys.path.insert(0, {root!r})\n"
        "from castore_client.disk_cache import DiskChunkCache\n"
        "from castore_client.digest import B3Digest\n"
        "c = DiskChunkCache({dir!r}, 50_000)\n"
        "for n in range(200):\n"
        "    data = bytes([{w}]) * 997 + n.to_bytes(4, 'little')\n"
        "    c.put(B3Digest.of(data), data)\n"
    )
    root = str(pathlib.Path(__file__).resolve().parent.parent)
    procs = [
        subprocess.Popen([sys.executable, "-c", script.format(root=root, dir=str(tmp_path), w=w)])
        for w in range(4)
    ]
    assert [p.wait(60) for p in procs] == [0, 0, 0, 0]
    total = sum(f.stat().st_size for f in tmp_path.glob("*/*") if not f.name.startswith("."))
    assert 0 < total <= 50_000
    assert int((tmp_path / ".size").read_text()) == total


def test_memory_cache_falls_back_to_disk(tmp_path: pathlib.Path) -> None:
    digest, data = chunk(3)
    fetches = []
    first = ChunkCache(1 << 20, DiskChunkCache(tmp_path, 1 << 20))
    assert first.get(digest, lambda: fetches.append(1) or data) == data
    second = ChunkCache(1 << 20, DiskChunkCache(tmp_path, 1 << 20))  # a new mount
    assert second.get(digest, lambda: fetches.append(2) or data) == data
    assert fetches == [1]


@pytest.mark.parametrize(
    ("text", "value"), [("512M", 512 << 20), ("2G", 2 << 30), ("1.5K", 1536), ("100", 100)]
)
def test_parse_size(text: str, value: int) -> None:
    assert parse_size(text) == value


@pytest.mark.parametrize("text", ["", "abc", "-1G", "0"])
def test_parse_size_rejects(text: str) -> None:
    with pytest.raises(ValueError):
        parse_size(text)


def test_no_temporary_files_left(tmp_path: pathlib.Path) -> None:
    cache = DiskChunkCache(tmp_path, 1 << 20)
    for n in range(10):
        cache.put(*chunk(n))
    assert not [p for p in tmp_path.rglob(".tmp-*")]
    assert os.path.exists(tmp_path / ".size")
