"""Reading ahead across files: when one small file of a directory is read, fetch the next.

Programs that read whole trees (tar, cp -r, rsync, a compiler) read the files of a directory
one after another, in listing order. Each small file costs a round trip of its own, so the
next few small files after the one being read are fetched in the background into the chunk
cache, where their reads find them. Listing alone (find, ls) triggers nothing.

How eager to be depends on the link (`BlobReaders.slow`, measured from foreground fetches).
Close to the server, a single read triggers nothing: only two siblings read one after the
other show a walk, since fetching after every first read puts a burst of background requests
in front of whatever a program reads next elsewhere (on loopback, opening one file in each of
many directories got 2-4 times slower), and few fetches run at once. Far from it, a round trip
costs more than the work of a fetch that was not needed: the first read of a directory's file
fetches the next ones, and many run at once, so that a walk of N files waits for about
N / `max_in_flight` round trips instead of N.
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


NEAR_IN_FLIGHT = 4
"""Background fetches at once on a fast link, where they compete with foreground work for CPU."""

MAX_IN_FLIGHT = 32


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
        far = self.readers.slow
        walking = listing.last_read == index - 1 or (far and listing.last_read == -2)
        listing.last_read = index
        if not walking:
            return
        pool = self._far if far else self._near
        for meta in listing.files[index + 1 : index + 1 + self.window]:
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
