"""Mount lifecycle: checks before mounting, the trio main loop, signals, and a clean unmount.

The filesystem runs in the foreground. SIGINT and SIGTERM end the main loop and the mount is
removed on the way out; `auto_unmount` makes fusermount3 remove it even when this process is
killed outright, so a crash never leaves "Transport endpoint is not connected" behind.

Stopping must not wait for the server. pyfuse3's main loop returns only once every request in
flight has been answered, and a request waiting on a dead or stalled server would hold it for
the whole deadline (57 s were measured with a 60 s --timeout). So the requests still running
`SHUTDOWN_GRACE` seconds after the signal are cancelled: their worker threads cancel their
RPCs, and the kernel fails the waiting system calls when the mount goes away.
"""

from __future__ import annotations

import errno
import faulthandler
import gc
import logging
import os
import re
import signal
import stat
from dataclasses import dataclass

import pyfuse3
import trio

from castore_client.text import printable

from .fs_model import CastoreFilesystem
from .fuse_operations import CastoreOperations
from .systemd import notify

log = logging.getLogger(__name__)

GC_THRESHOLDS = (20_000, 50, 100)

READ_AHEAD_KB = 1024

SHUTDOWN_GRACE = 1.0
"""Seconds the requests in flight at SIGINT/SIGTERM get to finish before they are cancelled:
long enough for reads that are merely busy, short enough to unmount well within 5 s."""


class MountError(Exception):
    """A reason not to mount, phrased for the user."""


@dataclass(frozen=True)
class MountOptions:
    mountpoint: str
    allow_other: bool = False
    fsname: str = "castore"
    debug: bool = False


def check_mountpoint(path: str) -> str:
    """The absolute mountpoint, if it is a directory nothing is mounted on; else MountError.

    Whether something is mounted there is asked before the directory is listed: a castore
    mount without --list-root refuses listings, and that EPERM used to be all the user saw.
    """
    mountpoint = os.path.abspath(path)
    shown = printable(mountpoint)
    dead = MountError(
        f"{shown} is a dead mount (transport endpoint is not connected); "
        f"run: fusermount3 -u {shown}"
    )
    try:
        st = os.stat(mountpoint)
    except FileNotFoundError:
        raise MountError(f"mountpoint {shown} does not exist") from None
    except OSError as exc:
        if exc.errno == errno.ENOTCONN:
            raise dead from None
        raise MountError(f"mountpoint {shown}: {exc.strerror}") from None
    if not stat.S_ISDIR(st.st_mode):
        raise MountError(f"mountpoint {shown} is not a directory")
    mounted = _is_mount_point(mountpoint)
    try:
        # A dead FUSE mount can still stat fine from the kernel's cache; a listing cannot.
        os.listdir(mountpoint)
    except OSError as exc:
        if exc.errno == errno.ENOTCONN:
            raise dead from None
        if not mounted:
            raise MountError(f"mountpoint {shown}: {exc.strerror}") from None
    if mounted:
        raise MountError(f"mountpoint {shown} is busy: something is already mounted there")
    return mountpoint


def _is_mount_point(path: str) -> bool:
    """Whether `path` is in this mount namespace's table, or else looks like a mount point."""
    try:
        with open("/proc/self/mountinfo", "rb") as f:
            table = f.read()
    except OSError:
        return os.path.ismount(path)
    target = os.fsencode(os.path.realpath(path))
    for line in table.splitlines():
        fields = line.split(b" ")
        if len(fields) > 4 and _unescape_mountinfo(fields[4]) == target:
            return True
    return os.path.ismount(path)


def _unescape_mountinfo(field: bytes) -> bytes:
    """The kernel writes space, tab, newline and backslash in mountinfo as octal escapes."""
    return re.sub(rb"\\([0-7]{3})", lambda m: bytes([int(m[1], 8)]), field)


def fuse_options(options: MountOptions) -> set[str]:
    result = {
        "ro",
        "default_permissions",
        "noatime",
        "auto_unmount",
        f"fsname={option_value(options.fsname)}",
        "subtype=castore",
    }
    if options.allow_other:
        result.add("allow_other")
    if options.debug:
        result.add("debug")
    return result


_OPTION_SAFE = re.compile(rb"[A-Za-z0-9._:/@+=\[\]-]")
MAX_FSNAME = 200


def option_value(text: str) -> str:
    """`text` made safe as the value of a mount option.

    libfuse splits options at commas and reads backslashes as escapes, fusermount3 parses them
    again, and the kernel's table escapes whitespace: so anything but a small set of plain
    characters is percent-encoded, which none of them treats specially. An address list
    `A,B` mounted as `fsname=castore:A,B` failed with "unknown option(s): '-o B'".
    """
    out = bytearray()
    for byte in os.fsencode(text):
        piece = bytes([byte])
        piece = piece if _OPTION_SAFE.fullmatch(piece) else b"%%%02X" % byte
        if len(out) + len(piece) > MAX_FSNAME:
            break
        out += piece
    return out.decode("ascii")


def run_mount(fs: CastoreFilesystem, options: MountOptions) -> None:
    """Mount, serve until a signal or an external unmount, then unmount."""
    faulthandler.register(signal.SIGUSR1)
    # A mount holds ever more long-lived objects (inodes, listings, cached attributes) and
    # creates few reference cycles; at Python's default thresholds the collector rescans
    # them all again and again. Measured: a cold find over 10,000 files, mount CPU 220 ->
    # 190 ms.
    gc.set_threshold(*GC_THRESHOLDS)
    ops = CastoreOperations(fs)
    try:
        pyfuse3.init(ops, options.mountpoint, fuse_options(options))
    except RuntimeError as exc:
        raise MountError(f"cannot mount on {options.mountpoint}: {exc}") from None
    try:
        trio.run(_serve, options.mountpoint)
    except BaseException:
        log.exception("the filesystem loop failed")
        raise
    finally:
        # Unmount first: closing the model can wait on a worker thread that is still leaving.
        try:
            pyfuse3.close(unmount=True)
            log.info("unmounted %s", options.mountpoint)
            notify("STOPPING=1", f"STATUS=unmounted {options.mountpoint}")
        finally:
            fs.close()


async def _serve(mountpoint: str) -> None:
    async with trio.open_nursery() as nursery:
        nursery.start_soon(_stop_on_signals, nursery.cancel_scope)
        nursery.start_soon(_announce_when_ready, mountpoint)
        await pyfuse3.main(min_tasks=4, max_tasks=64)
        nursery.cancel_scope.cancel()


async def _stop_on_signals(scope: trio.CancelScope) -> None:
    """The first signal stops taking requests; after the grace (or at a second signal) the
    requests still running are cancelled, which ends the main loop."""
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async for signum in signals:
            log.info("%s: unmounting", signal.Signals(signum).name)
            notify("STOPPING=1", f"STATUS=unmounting ({signal.Signals(signum).name})")
            pyfuse3.terminate()
            break
        with trio.move_on_after(SHUTDOWN_GRACE):
            async for signum in signals:
                log.info("%s again: not waiting any longer", signal.Signals(signum).name)
                break
        log.debug("cancelling the requests still in flight")
        scope.cancel()


async def _announce_when_ready(mountpoint: str) -> None:
    """Log once the kernel routes requests to us, and raise the kernel's readahead.

    stat() of the mountpoint goes through this very filesystem, so it runs on a thread
    while the main loop serves it.
    """
    st = await trio.to_thread.run_sync(os.stat, mountpoint, abandon_on_cancel=True)
    await trio.to_thread.run_sync(_raise_readahead, st.st_dev, abandon_on_cancel=True)
    log.info("ready: castore mounted on %s", mountpoint)
    notify("READY=1", f"STATUS=serving {mountpoint}")


def _raise_readahead(dev: int) -> None:
    """Ask the kernel for 1 MiB reads instead of 128 KiB; only root may, so failing is fine."""
    path = f"/sys/class/bdi/{os.major(dev)}:{os.minor(dev)}/read_ahead_kb"
    try:
        with open(path, "w") as f:
            f.write(str(READ_AHEAD_KB))
    except OSError as exc:
        log.debug("could not raise readahead via %s: %s", path, exc)
