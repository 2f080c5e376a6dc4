"""`castore SOURCE MOUNTPOINT -o OPTIONS`: the form mount(8) and /etc/fstab use.

`mount -t fuse.castore ADDR /mnt -o ro,list_root` (or `-t fuse` with the source
`/path/to/castore#ADDR`) runs the mount.fuse3 helper, which runs this program with the source,
the mount point and `-o` options. Each option is a `castore mount` flag spelled as a mount
option (`list_root`, `cache_dir=/var/cache/castore`, `timeout=10`): the flags' meanings stay
in one place, the mount command's parser. The options every filesystem takes (`ro`, `noatime`,
`dev`, `nosuid`, `_netdev`, ...) are accepted and change nothing, since a castore mount is
read-only and holds no devices or setuid files; `rw` is refused.

mount(8) waits for the helper to exit, so the mount runs in a child of its own session and
this process exits once the child says it is ready (the systemd notify protocol, on a socket
of our own), or with the child's status if it fails first. The fork happens before gRPC or
any thread exists, so nothing is left half-copied in the child.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import secrets
import select
import socket
import sys
import time
from collections.abc import Callable, Sequence

from .options import UsageError

GENERIC_OPTIONS = frozenset(
    {
        "ro",
        "dev",
        "nodev",
        "suid",
        "nosuid",
        "exec",
        "noexec",
        "atime",
        "noatime",
        "relatime",
        "strictatime",
        "nodiratime",
        "auto",
        "noauto",
        "user",
        "users",
        "nouser",
        "owner",
        "defaults",
        "async",
        "sync",
        "_netdev",
        "nofail",
    }
)

NOT_OPTIONS = frozenset({"--help", "--store"})
"""Flags of `castore mount` that have no mount-option spelling (the source is the store)."""

READY_WAIT = 120.0
"""Seconds the mount may take to become ready before this process gives up waiting."""


def is_fstab_call(argv: Sequence[str], commands: Sequence[str]) -> bool:
    """`SOURCE MOUNTPOINT` or `SOURCE MOUNTPOINT -o OPTIONS`, as mount.fuse3 calls us."""
    if not argv or argv[0].startswith("-") or argv[0] in commands:
        return False
    return len(argv) == 2 or (len(argv) == 4 and argv[2] == "-o")


def mount_arguments(argv: Sequence[str], mount_parser: argparse.ArgumentParser) -> list[str]:
    """The `castore mount ...` arguments the mount-option form stands for."""
    source, mountpoint, *rest = argv
    options = rest[1] if rest else ""
    flags = {flag: action for action in mount_parser._actions for flag in action.option_strings}
    out = ["mount", "--store", source]
    for item in filter(None, options.split(",")):
        name, has_value, value = item.partition("=")
        if name in GENERIC_OPTIONS:
            continue
        if name == "rw":
            raise UsageError("-o rw: a castore mount is read-only")
        flag = "--" + name.replace("_", "-")
        action = flags.get(flag)
        if action is None or flag in NOT_OPTIONS or "-" in name:
            raise UsageError(f"-o {name}: not a castore mount option (see castore mount --help)")
        if action.nargs == 0:
            if has_value:
                raise UsageError(f"-o {name} takes no value")
            out.append(flag)
        else:
            if not has_value:
                raise UsageError(f"-o {name} needs a value: {name}=...")
            out += [flag, value]
    out.append(mountpoint)
    return out


def run_in_background(arguments: list[str], main: Callable[[list[str]], int]) -> int:
    """Run `main(arguments)` (the mount) in a child process; return once it is ready.

    The child writes its output into a pipe that this process copies to its own stderr until
    the mount is ready or fails: a child holding the caller's stdout or stderr would keep
    `$(mount ...)` or a service manager waiting for an end of file that never comes. What the
    mount logs after that is dropped.
    """
    name = f"castore-ready-{os.getpid()}-{secrets.token_hex(4)}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as ready:
        ready.bind("\0" + name)
        output, child_output = os.pipe()
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:
            ready.close()
            os.close(output)
            os.setsid()
            os.environ["NOTIFY_SOCKET"] = "@" + name
            with open(os.devnull, "rb") as devnull:
                os.dup2(devnull.fileno(), 0)
            os.dup2(child_output, 1)
            os.dup2(child_output, 2)
            os.close(child_output)
            logging.raiseExceptions = False  # a write to the closed pipe is no error
            code = 1
            try:
                code = main(arguments)
            finally:
                os._exit(code)
        os.close(child_output)
        try:
            return _wait_ready(ready, output, pid)
        finally:
            os.close(output)


def _wait_ready(ready: socket.socket, output: int, pid: int) -> int:
    deadline = time.monotonic() + READY_WAIT
    open_output = True
    while time.monotonic() < deadline:
        watched = [ready.fileno(), output] if open_output else [ready.fileno()]
        readable, _, _ = select.select(watched, [], [], 0.2)
        if ready.fileno() in readable and b"READY=1" in ready.recv(4096).split(b"\n"):
            return 0
        if output in readable:
            data = os.read(output, 65536)
            if data:
                sys.stderr.buffer.write(data)
                sys.stderr.flush()
            else:
                open_output = False
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            _copy_rest(output)
            return os.waitstatus_to_exitcode(status) or 1
    print(f"castore: the mount did not get ready within {READY_WAIT:.0f} s", file=sys.stderr)
    return 1


def _copy_rest(output: int) -> None:
    with contextlib.suppress(OSError):
        while data := os.read(output, 65536):
            sys.stderr.buffer.write(data)
    sys.stderr.flush()
