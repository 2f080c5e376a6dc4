"""Telling systemd how the mount is doing (`Type=notify`), when it started us under a unit.

systemd passes a datagram socket in NOTIFY_SOCKET (a path, or `@name` for the abstract
namespace); each message is `KEY=value` lines. Without the variable nothing is sent, and a
failure to send is logged, never raised: the mount works the same without a supervisor.
"""

from __future__ import annotations

import logging
import os
import socket

log = logging.getLogger(__name__)


def notify(*lines: str) -> bool:
    """Send `lines` (e.g. "READY=1", "STATUS=...") to systemd; False if there is nobody."""
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return False
    if address.startswith("@"):
        address = "\0" + address[1:]
    message = "\n".join(line.replace("\n", " ") for line in lines).encode()
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.sendto(message, address)
    except (ConnectionRefusedError, FileNotFoundError) as exc:
        # Nobody listens any more: `castore SOURCE MOUNTPOINT -o ...` waits only for READY.
        log.debug("cannot notify systemd at %s: %s", os.environ["NOTIFY_SOCKET"], exc)
        return False
    except OSError as exc:
        log.warning("cannot notify systemd at %s: %s", os.environ["NOTIFY_SOCKET"], exc)
        return False
    return True
