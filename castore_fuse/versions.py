"""What is installed: this package, the libraries a mount needs, and whether it can mount.

`castore --version` prints it, and `castore mount` checks pyfuse3 here first, so that a package
installed without FUSE support says what to install in one line instead of a traceback.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import importlib.metadata

PYFUSE3_MISSING = (
    "pyfuse3 cannot be imported ({reason}); install the Debian packages fuse3, libfuse3-dev "
    "and pkg-config, then `pip install pyfuse3` (or reinstall castore-fuse)"
)


def _distribution(name: str) -> str:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def libfuse_version() -> str:
    """The libfuse3 the process would load, as libfuse reports it."""
    name = ctypes.util.find_library("fuse3") or "libfuse3.so.3"
    try:
        library = ctypes.CDLL(name)
    except OSError:
        return "not found"
    version = getattr(library, "fuse_pkgversion", None)
    if version is None:
        return "unknown"
    version.restype = ctypes.c_char_p
    return str(version().decode("ascii", "replace"))


def pyfuse3_problem() -> str | None:
    """Why pyfuse3 cannot be used, in one line, or None if it can."""
    try:
        import pyfuse3  # noqa: F401
    except ImportError as exc:
        return PYFUSE3_MISSING.format(reason=str(exc).splitlines()[0] if str(exc) else "missing")
    return None


def version_text() -> str:
    from castore_client.rpc.namespace import Namespace

    lines = [
        f"castore-fuse {_distribution('castore-fuse')}",
        f"grpcio {_distribution('grpcio')}",
        f"pyfuse3 {_distribution('pyfuse3')}",
        f"libfuse {libfuse_version()}",
        f"protocol {Namespace.TVIX.value}.castore.v1 (default; --protocol snix for snix)",
    ]
    return "\n".join(lines)
