"""Source trees for import tests: every kind of entry a NAR holds, and the kinds it cannot hold.

Names are bytes throughout, so that non-UTF-8 names survive whatever the file-system encoding
is. Content is reproducible (seeded), so that two trees made alike hold the same blobs.
"""

from __future__ import annotations

import os
import random
import shutil
import socket
import stat
import tempfile
from pathlib import Path

MIB = 1 << 20

BIG_SIZE = 2 * MIB
"""Random, so that FastCDC (min/avg/max 128/256/512 KiB) cuts it into several chunks."""

PADDING_SIZES = (1, 7, 8, 9, 15, 16, 17, 63, 64, 65)
"""Regular-file sizes on either side of the NAR's 8-byte padding boundaries."""

BAD_KINDS = ("socket", "fifo", "device", "unreadable-file", "unreadable-dir")
"""Entries `castore import` must refuse: a NAR cannot hold them, or they cannot be read."""


def write_file(path: bytes | Path, data: bytes, mode: int = 0o644) -> None:
    with open(path, "wb") as f:
        f.write(data)
    os.chmod(path, mode)


def _padding_files(r: bytes) -> None:
    for size in PADDING_SIZES:
        write_file(r + b"/size-%d" % size, bytes(range(size)))
    write_file(r + b"/empty", b"")


def _modes(r: bytes) -> None:
    write_file(r + b"/tool", b"#!/bin/sh\nexit 0\n", 0o755)
    write_file(r + b"/owner-exec-only", b"x", 0o744)
    write_file(r + b"/group-exec-only", b"x", 0o654)  # Nix looks at the owner's bit alone
    write_file(r + b"/read-only", b"ro\n", 0o444)
    write_file(r + b"/empty-executable", b"", 0o755)


def _names(r: bytes) -> None:
    write_file(r + b"/\xff\xfe-not-utf8", b"latin-1 bytes in the name\n")
    write_file(r + b"/caf\xc3\xa9", b"utf-8 name\n")
    write_file(r + b"/with space", b"space\n")
    write_file(r + b"/new\nline", b"newline in the name\n")
    os.mkdir(r + b"/dir-\xe9")
    write_file(r + b"/dir-\xe9/inside", b"in a non-UTF-8 directory\n")
    # Byte order puts upper case first ("B" < "Zebra" < "a" < "apple"); case-insensitive order
    # would not. Kinds interleave: dir "a", file "a-b", symlink "a.b", dir "a0", symlink "ab".
    write_file(r + b"/Zebra", b"upper Z")
    write_file(r + b"/apple", b"lower a")
    write_file(r + b"/B", b"upper B")
    os.mkdir(r + b"/a")
    write_file(r + b"/a/inner", b"in a")
    write_file(r + b"/a-b", b"file a-b")
    os.symlink(b"a", r + b"/a.b")
    os.mkdir(r + b"/a0")
    os.symlink(b"B", r + b"/ab")
    write_file(r + b"/_under", b"_")
    write_file(r + b"/~tilde", b"~")


def _symlinks(r: bytes) -> None:
    os.symlink(b"size-9", r + b"/link-relative")
    os.symlink(b"/nix/store/00000000000000000000000000000000-absent", r + b"/link-absolute")
    os.symlink(b"does-not-exist", r + b"/link-dangling")
    os.symlink(b"\xff-non-utf8-target", r + b"/link-to-non-utf8")
    os.symlink(b"sub", r + b"/link-to-dir")


def _nesting(r: bytes) -> None:
    os.mkdir(r + b"/hollow")
    os.makedirs(r + b"/sub/deeper/deepest")
    os.mkdir(r + b"/sub/empty-inner")
    write_file(r + b"/sub/deeper/deepest/leaf", b"leaf")
    write_file(r + b"/sub/deeper/x", b"x" * 1000, 0o700)
    os.symlink(b"../..", r + b"/sub/deeper/up")
    # The same content twice: one blob, two FileNodes.
    write_file(r + b"/sub/dup-1", b"duplicate content\n" * 64)
    write_file(r + b"/sub/dup-2", b"duplicate content\n" * 64)


def make_full_tree(root: Path, *, seed: int = 2604, big_size: int = BIG_SIZE) -> Path:
    """A directory with every kind of entry `nix-store --dump` accepts; returns `root`."""
    r = os.fsencode(root)
    os.mkdir(r)
    _padding_files(r)
    _modes(r)
    _names(r)
    _symlinks(r)
    _nesting(r)
    write_file(r + b"/big-random", random.Random(seed).randbytes(big_size))
    return root


def make_single(path: Path, kind: str) -> Path:
    """One root of `kind`: file, executable, empty-file, symlink or empty-dir; returns `path`."""
    if kind == "file":
        write_file(path, b"some content that is not a multiple of eight\n")
    elif kind == "executable":
        write_file(path, b"#!/bin/sh\necho hi\n", 0o755)
    elif kind == "empty-file":
        write_file(path, b"")
    elif kind == "symlink":
        os.symlink(b"somewhere/else", path)
    elif kind == "empty-dir":
        os.mkdir(path)
    else:
        raise ValueError(f"unknown kind {kind!r}")
    return path


def make_socket(path: Path) -> None:
    """A unix socket file at `path`, bound in a short directory first: sun_path holds 107 bytes."""
    short = tempfile.mkdtemp(prefix="sk")
    try:
        with socket.socket(socket.AF_UNIX) as sock:
            sock.bind(os.path.join(short, "s"))
        os.rename(os.path.join(short, "s"), path)
    finally:
        shutil.rmtree(short, ignore_errors=True)


def make_device(path: Path) -> None:
    """A character device like /dev/null; raises PermissionError without CAP_MKNOD."""
    os.mknod(path, stat.S_IFCHR | 0o600, os.makedev(1, 3))


def make_bad_entry(path: Path, kind: str) -> None:
    """An entry of one of BAD_KINDS at `path`.

    Root reads "unreadable" entries all the same (CAP_DAC_OVERRIDE); the caller must take that
    capability away from the importer to see them fail.
    """
    if kind == "socket":
        make_socket(path)
    elif kind == "fifo":
        os.mkfifo(path)
    elif kind == "device":
        make_device(path)
    elif kind == "unreadable-file":
        write_file(path, b"secret\n", 0o000)
    elif kind == "unreadable-dir":
        os.mkdir(path)
        write_file(path / "hidden", b"hidden\n")
        os.chmod(path, 0o000)
    else:
        raise ValueError(f"unknown kind {kind!r}")


def make_tree_with_bad_entry(root: Path, kind: str) -> Path:
    """A small tree whose `sub/bad` is an entry of `kind`, after (in byte order) good entries
    that an importer may already have uploaded. Returns the bad entry's path."""
    root.mkdir()
    write_file(root / "a-file", b"uploaded before the bad entry is met\n")
    write_file(root / "big", random.Random(kind).randbytes(300 * 1024))
    (root / "sub").mkdir()
    write_file(root / "sub" / "a-before", b"before\n")
    bad = root / "sub" / "bad"
    make_bad_entry(bad, kind)
    write_file(root / "sub" / "z-after", b"after\n")
    return bad


def make_writable(root: Path) -> None:
    """Undo make_bad_entry's permission changes so that pytest can delete the tree."""
    for dirpath, dirnames, _ in os.walk(root):
        for name in dirnames:
            os.chmod(os.path.join(dirpath, name), 0o755)
