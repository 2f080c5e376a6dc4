"""Reading ahead across files: when one small file of a directory is read, fetch the next.

Programs that read whole trees (tar, cp -r, rsync, a compiler) read the files of a directory
one after another, in listing order. Each small file costs a round trip of its own, so the
next few small files after the one being read are fetched in the background into the chunk
cache, where their reads find them. Listing alone (find, ls) triggers nothing, and neither
does a single read: only two siblings read one after the other show a walk. Fetching after
every first read would put a burst of background requests in front of whatever a program
reads next elsewhere (opening one file in each of many directories got 2-4 times slower).
"""

from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from castore_client.blob_readers import BlobReaders
from castore_client.cancel import CancelScope
from castore_client.directory import FileNode
from castore_client.services import ChunkMeta

from .inodes import Child

log = logging.getLogger(__name__)


@dataclass(slots=True, eq=False)
class _Listing:
    """The small files of one listed directory, in listing order, and the last one read."""

    files: tuple[ChunkMeta, ...]
    last_read: int = -2


class SiblingPrefetcher:
    def __init__(
        self,
        readers: BlobReaders,
        *,
        window: int = 32,
        workers: int = 4,
    ) -> None:
        self.readers = readers
        self.window = window
        self._pool = ThreadPoolExecutor(workers, thread_name_prefix="castore-prefetch")
        self._scope = CancelScope()
        self._position: dict[int, tuple[_Listing, int]] = {}
        self._unindexed: list[tuple[Child, ...]] = []
        self._pending: set[object] = set()

    def note_directory(self, children: tuple[Child, ...]) -> None:
        """Remember a listed directory's children, to be indexed when a file is next read.

        Listing a tree (find, ls -R) reads no file, so it should not pay for the index.
        """
        self._unindexed.append(children)

    def _index(self) -> None:
        """Where each small file of the directories listed so far stands among its siblings."""
        unindexed, self._unindexed = self._unindexed, []
        for children in unindexed:
            small = tuple(
                (child.ino, ChunkMeta(child.node.digest, child.node.size))
                for child in children
                if isinstance(child.node, FileNode)
                and child.node.size > 0
                and self.readers.is_small(child.node.size)
            )
            listing = _Listing(tuple(meta for _, meta in small))
            for index, (ino, _) in enumerate(small):
                self._position[ino] = (listing, index)

    def after_read(self, ino: int) -> None:
        """A small file was read: if it follows the last one read there, fetch the next ones."""
        if self._unindexed:
            self._index()
        position = self._position.get(ino)
        if position is None:
            return
        listing, index = position
        walking = listing.last_read == index - 1
        listing.last_read = index
        if not walking:
            return
        for meta in listing.files[index + 1 : index + 1 + self.window]:
            if self.readers.has(meta.digest) or meta.digest in self._pending:
                continue
            self._pending.add(meta.digest)
            self._pool.submit(self._fetch, meta)

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
        self._pool.shutdown(wait=wait, cancel_futures=not wait)
