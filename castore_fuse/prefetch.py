"""Reading ahead across files: when one small file of a directory is read, fetch the next.

Programs that read whole trees (tar, cp -r, rsync, a compiler) read the files of a directory
one after another, in listing order. Each small file costs a round trip of its own, so the
next few small files after the one being read are fetched in the background into the chunk
cache, where their reads find them. Listing alone (find, ls) triggers nothing.

How eager to be depends on the link (`BlobReaders.slow`, measured from the fetches made).
Close to the server, a single read triggers nothing: only two siblings read one after the
other show a walk, since fetching after every first read puts a burst of background requests
in front of whatever a program reads next elsewhere (on loopback, opening one file in each of
many directories got 2-4 times slower), and few fetches run at once. Far from it, a round trip
costs more than the work of a fetch that was not needed: the first read of a directory's file
fetches the next ones, and many run at once, so that a walk of N files waits for about
N / `max_in_flight` round trips instead of N. Far from the server the window also crosses
directories: the first directory entered below a store path brings its whole tree (the
closure), so the order in which a recursive walk (tar, cp -r, grep -r) will read the tree's
files is known, and two of them read in that order fetch the ones after them. Only a walk:
a program's start (an import) reads a few files here and there in a large tree, and fetching
the tree in walk order for it cost an import of numpy at 0 ms a third more time.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from castore_client.blob_readers import BlobReaders
from castore_client.cancel import CancelScope
from castore_client.digest import B3Digest
from castore_client.directory import Directory, DirectoryNode, FileNode
from castore_client.services import ChunkMeta

log = logging.getLogger(__name__)


@dataclass(slots=True, eq=False)
class _Listing:
    """The small files of one listed directory, in listing order, and the last one read."""

    files: tuple[ChunkMeta, ...]
    last_read: int = -2


NEAR_IN_FLIGHT = 4
"""Background fetches at once on a fast link, where they compete with foreground work for CPU."""

MAX_IN_FLIGHT = 32

TREE_WINDOW = 256
"""How far ahead of a read, in small files, a walk through a tree is fetched on a slow link."""

TREE_FILES = 50_000
"""Trees with more small files than this are not indexed for walks (memory per mount)."""

RECENT_LISTINGS = 64
"""Directories listed since the last read that are still indexed at the next one: a walk reads
in the directory it listed last, and a `find` of millions must not be kept for a read."""

MAX_POSITIONS = 200_000
"""Small files whose place among their siblings is remembered; past this the index starts
over (a few MB), so that a long walk does not grow the mount's memory."""

RECENT_TREES = 4
"""Fetched closures kept until a slow link's walk needs their order."""


class SiblingPrefetcher:
    def __init__(
        self,
        readers: BlobReaders,
        *,
        window: int = 64,
        workers: int = NEAR_IN_FLIGHT,
        max_in_flight: int = MAX_IN_FLIGHT,
    ) -> None:
        """`workers` fetches run at once on a fast link, `max_in_flight` on a slow one."""
        self.readers = readers
        self.window = window
        self._near = ThreadPoolExecutor(workers, thread_name_prefix="castore-prefetch")
        self._far = ThreadPoolExecutor(
            max(max_in_flight, workers), thread_name_prefix="castore-prefetch-far"
        )
        self._scope = CancelScope()
        self._position: dict[B3Digest, tuple[_Listing, int]] = {}
        self._unindexed: deque[Directory] = deque(maxlen=RECENT_LISTINGS)
        self._tree_position: dict[B3Digest, tuple[_Listing, int]] = {}
        self._trees: deque[tuple[B3Digest, Mapping[B3Digest, Directory]]] = deque(
            maxlen=RECENT_TREES
        )
        self._pending: set[object] = set()

    def note_directory(self, directory: Directory) -> None:
        """Remember a listed directory, to be indexed when a file is next read.

        Listing a tree (find, ls -R) reads no file, so it should not pay for the index.
        """
        self._unindexed.append(directory)

    def note_tree(self, root: B3Digest, closure: Mapping[B3Digest, Directory]) -> None:
        """Remember a fetched closure, to be put in walk order if a slow link needs it."""
        self._trees.append((root, dict(closure)))

    def _index_trees(self) -> None:
        trees = list(self._trees)
        self._trees.clear()
        if len(self._tree_position) > MAX_POSITIONS:
            self._tree_position.clear()
        for root, closure in trees:
            files = _walk_order(root, closure)
            if files is None:
                log.debug("tree %s has more than %d small files; not indexed", root, TREE_FILES)
                continue
            listing = _Listing(tuple(files))
            for index, meta in enumerate(files):
                self._tree_position.setdefault(meta.digest, (listing, index))

    def _index(self) -> None:
        """Where each small file of the directories listed so far stands among its siblings."""
        unindexed = list(self._unindexed)
        self._unindexed.clear()
        if len(self._position) > MAX_POSITIONS:
            self._position.clear()
        for directory in unindexed:
            small = tuple(
                ChunkMeta(node.digest, node.size)
                for node in directory.files
                if node.size > 0 and self.readers.is_small(node.size)
            )
            listing = _Listing(small)
            for index, meta in enumerate(small):
                self._position[meta.digest] = (listing, index)

    def after_read(self, digest: B3Digest) -> None:
        """A small file was read: if it follows the last one read there, fetch the next ones."""
        if self._unindexed:
            self._index()
        if self.readers.slow:
            if self._trees:
                self._index_trees()
            in_tree = self._tree_position.get(digest)
            if in_tree is not None:
                listing, index = in_tree
                walking = listing.last_read == index - 1
                listing.last_read = index
                if walking:
                    ahead = listing.files[index + 1 : index + 1 + TREE_WINDOW]
                    self._fetch_ahead(ahead, self._far)
                    return
        position = self._position.get(digest)
        if position is None:
            return
        listing, index = position
        far = self.readers.slow
        walking = listing.last_read == index - 1 or (far and listing.last_read == -2)
        listing.last_read = index
        if not walking:
            return
        ahead = listing.files[index + 1 : index + 1 + self.window]
        self._fetch_ahead(ahead, self._far if far else self._near)

    def _fetch_ahead(self, files: tuple[ChunkMeta, ...], pool: ThreadPoolExecutor) -> None:
        for meta in files:
            if self.readers.has(meta.digest) or meta.digest in self._pending:
                continue
            self._pending.add(meta.digest)
            pool.submit(self._fetch, meta)

    def _fetch(self, meta: ChunkMeta) -> None:
        try:
            with self._scope.bound():
                self.readers.fetch_small(meta.digest, meta.size)
        except Exception as exc:  # the read that wants it will report it
            log.debug("prefetch of %s failed: %s", meta.digest, exc)
        finally:
            self._pending.discard(meta.digest)

    def close(self, *, wait: bool = False) -> None:
        """Stop: drop the fetches not yet started and cancel the running ones, or with `wait`
        finish every one asked for.

        Python joins the pool's threads when it exits, so a fetch left waiting on a dead
        server (in a call or in the backoff between retries) would hold up the exit.
        """
        if not wait:
            self._scope.cancel()
        for pool in (self._near, self._far):
            pool.shutdown(wait=wait, cancel_futures=not wait)


def _walk_order(root: B3Digest, closure: Mapping[B3Digest, Directory]) -> list[ChunkMeta] | None:
    """The tree's small files in the order a depth-first walk in listing order reads them
    (each blob once), or None past TREE_FILES."""
    files: list[ChunkMeta] = []
    seen: set[B3Digest] = set()
    stack: list[object] = [root]
    while stack:
        item = stack.pop()
        if isinstance(item, ChunkMeta):
            files.append(item)
            if len(files) > TREE_FILES:
                return None
            continue
        assert isinstance(item, B3Digest)
        directory = closure.get(item)
        if directory is None:
            continue
        later: list[object] = []
        for node in directory.entries():
            if isinstance(node, DirectoryNode):
                later.append(node.digest)
            elif (
                isinstance(node, FileNode)
                and node.size > 0
                and BlobReaders.is_small(node.size)
                and node.digest not in seen
            ):
                seen.add(node.digest)
                later.append(ChunkMeta(node.digest, node.size))
        stack.extend(reversed(later))
    return files
