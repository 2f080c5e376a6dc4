"""Service addresses as users write them: `grpc+http://host:port`, `grpc+unix:///path`, ...

Parsing is strict and its errors say what is wrong and what would be right, because an address
is the first thing a new user types and the most common thing to get subtly wrong.
"""

from __future__ import annotations

import ipaddress
import urllib.parse
from dataclasses import dataclass

from .errors import InvalidAddress

DEFAULT_ADDRESS = "grpc+http://[::1]:8000"
GRPC_SCHEMES = ("grpc+http", "grpc+https", "grpc+unix")
EMBEDDED_SCHEMES = ("memory", "file")
FORMS = "grpc+http://HOST:PORT, grpc+https://HOST:PORT, grpc+unix:///ABS/PATH, memory://, file:///ABS/PATH"


@dataclass(frozen=True, slots=True)
class Address:
    scheme: str
    host: str | None = None
    port: int | None = None
    path: str | None = None

    @property
    def is_grpc(self) -> bool:
        return self.scheme in GRPC_SCHEMES

    @property
    def uses_tls(self) -> bool:
        return self.scheme == "grpc+https"

    def grpc_target(self) -> str:
        """The target string grpcio understands."""
        if self.scheme == "grpc+unix":
            return f"unix:{self.path}"
        if not self.is_grpc:
            raise InvalidAddress(f"{self} is an embedded store, not a gRPC server")
        host = self.host or ""
        if ":" in host:
            host = f"[{host}]"
        return f"{host}:{self.port}"

    def is_loopback(self) -> bool:
        if self.scheme == "grpc+unix":
            return True
        if self.host in (None, "localhost"):
            return self.host == "localhost"
        try:
            return ipaddress.ip_address(self.host).is_loopback
        except ValueError:
            return False

    def __str__(self) -> str:
        if self.scheme in ("grpc+unix", "file"):
            # Only what parsing would decode or cut off is escaped, so the text parses back.
            path = (self.path or "").replace("%", "%25").replace("?", "%3F").replace("#", "%23")
            return f"{self.scheme}://{path}"
        if self.scheme == "memory":
            return "memory://"
        host = self.host or ""
        if ":" in host:
            host = f"[{host}]"
        return f"{self.scheme}://{host}:{self.port}"


def parse_address(text: str) -> Address:
    """Parse one address; raises InvalidAddress with a message that names the problem."""
    text = text.strip()
    if "://" not in text:
        raise InvalidAddress(f"{text!r} is not an address; use one of {FORMS}")
    scheme, _, rest = text.partition("://")
    scheme = scheme.lower()
    if scheme in ("grpc+http", "grpc+https"):
        return _parse_tcp(text, scheme, rest)
    if scheme in ("grpc+unix", "file"):
        return _parse_path(text, scheme, rest)
    if scheme == "memory":
        if rest.strip("/"):
            raise InvalidAddress(f"{text!r}: memory:// takes nothing after the scheme")
        return Address("memory")
    raise InvalidAddress(f"{text!r}: unknown scheme {scheme!r}; use one of {FORMS}")


def _parse_tcp(text: str, scheme: str, rest: str) -> Address:
    netloc, sep, tail = rest.partition("/")
    if sep and tail or "?" in netloc or "#" in netloc:
        raise InvalidAddress(f"{text!r}: a {scheme} address has no path or query")
    try:
        parsed = urllib.parse.urlsplit(f"//{netloc}")
        host, port = parsed.hostname, parsed.port
    except ValueError as exc:
        raise InvalidAddress(f"{text!r}: {exc}") from None
    if not host:
        raise InvalidAddress(f"{text!r}: no host; expected {scheme}://HOST:PORT")
    if port is None:
        raise InvalidAddress(f"{text!r}: no port; expected {scheme}://HOST:PORT")
    if parsed.username or parsed.password:
        raise InvalidAddress(f"{text!r}: credentials in the address are not supported")
    return Address(scheme, host=host, port=port)


def _parse_path(text: str, scheme: str, rest: str) -> Address:
    host, sep, path = rest.partition("/")
    if host:
        raise InvalidAddress(
            f"{text!r}: {scheme} takes no host; write {scheme}:///ABSOLUTE/PATH (three slashes)"
        )
    path = "/" + path
    if "?" in path or "#" in path:
        raise InvalidAddress(f"{text!r}: a {scheme} address has no query")
    if path == "/" or not sep:
        raise InvalidAddress(f"{text!r}: no path; write {scheme}:///ABSOLUTE/PATH")
    return Address(scheme, path=urllib.parse.unquote(path))
