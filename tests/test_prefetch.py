"""Sibling read-ahead: only a walk through a directory's files fetches the files ahead."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from castore_client.blob_readers import BlobReaders
from castore_client.chunk_cache import ChunkCache
from castore_client.digest import B3Digest
from castore_client.directory import Directory, DirectoryNode, FileNode, Node
from castore_client.services import Services
from castore_client.stores import open_memory_store
from castore_fuse.prefetch import SiblingPrefetcher

FILES = 12
WINDOW = 4


@pytest.fixture
def listing() -> Iterator[tuple[SiblingPrefetcher, ChunkCache, list[FileNode]]]:
    store: Services = open_memory_store()
    files = []
    for n in range(FILES):
        content = b"file %d " % n * 50
        digest = store.blobs.put([content])
        files.append(FileNode(b"f%02d" % n, digest, len(content)))
    # A subdirectory among them is not a small file: it is skipped, not counted.
    nodes: list[Node] = [*files, DirectoryNode(b"f03a", B3Digest(bytes(32)), 0)]
    cache = ChunkCache(1 << 20)
    prefetcher = SiblingPrefetcher(BlobReaders(store.blobs, cache), window=WINDOW, workers=2)
    prefetcher.note_directory(Directory.of(nodes))
    yield prefetcher, cache, files
    prefetcher.close()
    store.close()


def settle(prefetcher: SiblingPrefetcher) -> None:
    """Let every fetch asked for finish."""
    prefetcher.close(wait=True)


def cached(cache: ChunkCache, files: list[FileNode]) -> list[int]:
    return [n for n, child in enumerate(files) if child.digest in cache]


@pytest.mark.parametrize(
    ("reads", "fetched"),
    [
        ((0,), []),  # one read is no walk
        ((2, 3), [4, 5, 6, 7]),  # the next sibling: the window after it
        ((8, 9), [10, 11]),  # the window ends at the last small file
        ((0, 5, 2, 9), []),  # jumping around is no walk either
    ],
)
def test_only_a_walk_fetches_ahead(
    listing: tuple[SiblingPrefetcher, ChunkCache, list[FileNode]],
    reads: tuple[int, ...],
    fetched: list[int],
) -> None:
    prefetcher, cache, files = listing
    for n in reads:
        prefetcher.after_read(files[n].digest)
    settle(prefetcher)
    assert cached(cache, files) == fetched
    for n in fetched:
        assert cache.peek(files[n].digest) == b"file %d " % n * 50


@pytest.mark.parametrize(
    ("reads", "fetched"),
    [
        ((0,), [1, 2, 3, 4]),  # far from the server, a first read is reason enough
        ((5,), [6, 7, 8, 9]),  # wherever in the directory it is
        ((0, 5), [1, 2, 3, 4]),  # a jump after the first read is still no walk
    ],
)
def test_a_slow_link_fetches_ahead_at_the_first_read(
    listing: tuple[SiblingPrefetcher, ChunkCache, list[FileNode]],
    reads: tuple[int, ...],
    fetched: list[int],
) -> None:
    prefetcher, cache, files = listing
    for _ in range(4):
        prefetcher.readers.note_fetch_time(0.020)  # a 20 ms round trip
    assert prefetcher.readers.slow
    for n in reads:
        prefetcher.after_read(files[n].digest)
    settle(prefetcher)
    assert cached(cache, files) == fetched


def test_a_slow_link_fetches_ahead_across_the_directories_of_a_tree() -> None:
    """A walk's next files are in the next directory too: on a slow link, once two files are
    read in the closure's walk order, the files after them in that order are fetched."""
    from castore_client.directory import Directory

    with open_memory_store() as store:
        contents = [b"tree file %d " % n * 40 for n in range(6)]
        digests = [store.blobs.put([c]) for c in contents]

        def leaf(first: int) -> Directory:
            return Directory(
                files=tuple(
                    FileNode(b"f%d" % n, digests[n], len(contents[n])) for n in (first, first + 1)
                )
            )

        a, b, c = leaf(0), leaf(2), leaf(4)
        root = Directory(
            directories=(
                DirectoryNode(b"a", a.digest, a.size()),
                DirectoryNode(b"b", b.digest, b.size()),
                DirectoryNode(b"c", c.digest, c.size()),
            )
        )
        cache = ChunkCache(1 << 20)
        readers = BlobReaders(store.blobs, cache)
        prefetcher = SiblingPrefetcher(readers, workers=2)
        prefetcher.note_tree(root.digest, {d.digest: d for d in (root, a, b, c)})
        for _ in range(4):
            readers.note_fetch_time(0.020)
        prefetcher.after_read(digests[1])  # one read in walk order is no walk yet
        prefetcher.after_read(digests[2])  # the next in walk order: directory b
        prefetcher.close(wait=True)
        assert [n for n in range(6) if digests[n] in cache] == [3, 4, 5]
