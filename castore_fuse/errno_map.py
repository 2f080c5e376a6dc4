"""The one place where exceptions become errno values for the kernel.

Filesystem refusals carry their own errno. Everything the store can throw at us (a missing
object, corrupt bytes, an invalid directory, a dead server) is an EIO for the request that
met it: the name exists, we just cannot serve it. Anything unexpected is an EIO too, logged
with its traceback, so that no request can take the mount down.
"""

from __future__ import annotations

import errno
import logging

from castore_client.errors import Cancelled, CastoreError

from .fs_model import FsError

log = logging.getLogger(__name__)


def errno_for(exc: BaseException, operation: str) -> int:
    if isinstance(exc, FsError):
        return exc.errno
    if isinstance(exc, Cancelled):
        return errno.EINTR
    if isinstance(exc, CastoreError):
        log.error("%s: %s: %s", operation, type(exc).__name__, exc)
        return errno.EIO
    if isinstance(exc, OSError) and exc.errno:
        log.error("%s: %s", operation, exc)
        return exc.errno
    log.error("%s failed unexpectedly", operation, exc_info=exc)
    return errno.EIO
