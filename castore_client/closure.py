"""Rules for sets of directories that travel together.

A Put sends a closure leaves first; a recursive Get receives it root first. Both directions
are checked here so that the embedded stores, the gRPC server and the gRPC client apply exactly
the same rules (spec section 6). `fetch_closure` is how a reader takes a closure in one request.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from .digest import B3Digest
from .directory import Directory, SizeFormula
from .directory_cache import directory_cost
from .errors import (
    CastoreError,
    DanglingReference,
    MissingDirectory,
    RootCountError,
    SizeMismatch,
    Unavailable,
    UnexpectedDirectory,
)

if TYPE_CHECKING:
    from .services import DirectoryService

log = logging.getLogger(__name__)


@dataclass
class UploadValidator:
    """Checks a leaves-first stream of directories as a server must before accepting it.

    Each directory may reference only directories sent earlier in the same stream, each
    DirectoryNode must announce its child's computed size, and exactly one directory (the
    last) may be left unreferenced.
    """

    formula: SizeFormula = SizeFormula.CURRENT
    _sizes: dict[B3Digest, int] = field(default_factory=dict)
    _unreferenced: set[B3Digest] = field(default_factory=set)
    _last: B3Digest | None = None

    def add(self, directory: Directory) -> B3Digest:
        directory.validate(self.formula)
        for child in directory.directories:
            known = self._sizes.get(child.digest)
            if known is None:
                raise DanglingReference(
                    f"{child.name!r} refers to {child.digest}, which was not sent before it"
                )
            if known != child.size:
                raise SizeMismatch(
                    f"{child.name!r} announces size {child.size}, but {child.digest} has {known}"
                )
            self._unreferenced.discard(child.digest)
        digest = directory.digest
        if digest not in self._sizes:
            self._sizes[digest] = directory.size(self.formula)
            self._unreferenced.add(digest)
        self._last = digest
        return digest

    def finish(self) -> B3Digest:
        """The root digest; raises RootCountError unless exactly one root remains."""
        if self._last is None:
            raise RootCountError("no directories were sent")
        if len(self._unreferenced) != 1 or self._last not in self._unreferenced:
            others = sorted(str(d) for d in self._unreferenced - {self._last})
            raise RootCountError(
                f"a closure has exactly one root, sent last; unreferenced besides the last: "
                f"{', '.join(others) or 'none, and the last one is referenced'}"
            )
        return self._last

    def __len__(self) -> int:
        return len(self._sizes)


@dataclass
class DownloadValidator:
    """Checks a root-first stream of directories as a client must before trusting it.

    Every directory received must be one that is expected (the root, or referenced by an
    earlier one), must hash to that digest, and must have the size its parents announced;
    at the end nothing expected may be missing. Any order that satisfies this is accepted.
    """

    root: B3Digest
    formula: SizeFormula = SizeFormula.CURRENT
    _expected_size: dict[B3Digest, int | None] = field(default_factory=dict)
    _received: dict[B3Digest, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self._expected_size[self.root] = None

    def add(self, directory: Directory) -> B3Digest:
        digest = directory.digest
        if digest not in self._expected_size:
            raise UnexpectedDirectory(
                f"received {digest}, which nothing received before refers to"
                if digest not in self._received
                else f"received {digest} twice"
            )
        directory.validate(self.formula)
        announced = self._expected_size.pop(digest)
        actual = directory.size(self.formula)
        if announced is not None and announced != actual:
            raise SizeMismatch(f"{digest} has size {actual}, but its parent announced {announced}")
        self._received[digest] = actual
        for child in directory.directories:
            previous = self._received.get(child.digest)
            if previous is None:
                previous = self._expected_size.get(child.digest, child.size)
            if previous != child.size:
                raise SizeMismatch(
                    f"{child.digest} is announced with sizes {previous} and {child.size}"
                )
            if child.digest not in self._received:
                self._expected_size[child.digest] = child.size
        return digest

    @property
    def started(self) -> bool:
        return bool(self._received)

    def finish(self) -> None:
        if self._expected_size:
            missing = ", ".join(sorted(str(d) for d in self._expected_size))
            raise MissingDirectory(f"the closure of {self.root} lacks {missing}")


def fetch_closure(
    directories: DirectoryService, digest: B3Digest, limit: int, max_cost: int | None = None
) -> dict[B3Digest, Directory] | None:
    """The closure of `digest` from one recursive Get, root first.

    A closure of more than `limit` directories or, with `max_cost`, of more memory than that
    (by `directory_cache.directory_cost`) comes as its first part: each directory that arrived
    was referenced by one before it, so the part is as verified as the whole, and the caller
    fetches the rest one by one. None (and a debug line) for a missing or invalid member or a
    server that stopped answering part way, so that only the broken part of a tree gives
    errors. A server that gave no answer at all raises Unavailable, since a single Get would
    wait for the same silence.
    """
    found: dict[B3Digest, Directory] = {}
    cost = 0
    stream = directories.get_recursive(digest)
    try:
        for directory in stream:
            found[directory.digest] = directory
            cost += directory_cost(directory)
            if len(found) >= limit or (max_cost is not None and cost >= max_cost):
                log.debug("the closure of %s: keeping its first %d directories", digest, len(found))
                return found
    except Unavailable:
        if not found:
            raise
        log.debug("the closure of %s arrived only in part", digest)
        return None
    except CastoreError as exc:
        log.debug("fetching the closure of %s failed: %s", digest, exc)
        return None
    finally:
        close = getattr(stream, "close", None)
        if close is not None:
            close()
    return found
