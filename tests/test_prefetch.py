"""Sibling read-ahead: only a walk through a directory's files fetches the files ahead."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from castore_client.chunk_cache import ChunkCache
from castore_client.digest import B3Digest
from castore_client.directory import DirectoryNode, FileNode
from castore_client.stores import EmbeddedStore, open_memory_store
from castore_fuse.inodes import Child
from castore_fuse.prefetch import SiblingPrefetcher

FILES = 12
WINDOW = 4


@pytest.fixture
def listing() -> Iterator[tuple[SiblingPrefetcher, ChunkCache, list[Child]]]:
    store: EmbeddedStore = open_memory_store()
    children = []
    for n in range(FILES):
        content = b"file %d " % n * 50
        digest = store.blobs.put([content])
        children.append(Child(b"f%02d" % n, 100 + n, FileNode(b"f%02d" % n, digest, len(content))))
    # A subdirectory in the middle is not a small file: it is skipped, not counted.
    children.insert(3, Child(b"sub", 99, DirectoryNode(b"sub", B3Digest(bytes(32)), 0)))
    cache = ChunkCache(1 << 20)
    prefetcher = SiblingPrefetcher(store.blobs, cache, window=WINDOW, workers=2)
    prefetcher.note_directory(tuple(children))
    yield prefetcher, cache, [c for c in children if isinstance(c.node, FileNode)]
    prefetcher.close()
    store.close()


def settle(prefetcher: SiblingPrefetcher) -> None:
    """Let every fetch asked for finish."""
    prefetcher.close(wait=True)


def cached(cache: ChunkCache, files: list[Child]) -> list[int]:
    return [n for n, child in enumerate(files) if child.node.digest in cache]


def test_one_read_fetches_nothing(
    listing: tuple[SiblingPrefetcher, ChunkCache, list[Child]],
) -> None:
    prefetcher, cache, files = listing
    prefetcher.after_read(files[0].ino)
    settle(prefetcher)
    assert cached(cache, files) == []


def test_reading_the_next_sibling_fetches_the_window_after_it(
    listing: tuple[SiblingPrefetcher, ChunkCache, list[Child]],
) -> None:
    prefetcher, cache, files = listing
    prefetcher.after_read(files[2].ino)
    prefetcher.after_read(files[3].ino)
    settle(prefetcher)
    assert cached(cache, files) == [4, 5, 6, 7]
    for n in (4, 5, 6, 7):
        content = cache.peek(files[n].node.digest)
        assert content == b"file %d " % n * 50


def test_jumping_around_fetches_nothing(
    listing: tuple[SiblingPrefetcher, ChunkCache, list[Child]],
) -> None:
    prefetcher, cache, files = listing
    for n in (0, 5, 2, 9):
        prefetcher.after_read(files[n].ino)
    settle(prefetcher)
    assert cached(cache, files) == []


def test_the_window_ends_at_the_last_file(
    listing: tuple[SiblingPrefetcher, ChunkCache, list[Child]],
) -> None:
    prefetcher, cache, files = listing
    prefetcher.after_read(files[8].ino)
    prefetcher.after_read(files[9].ino)
    settle(prefetcher)
    assert cached(cache, files) == [10, 11]
