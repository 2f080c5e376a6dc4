"""TLS material for `grpc+https` clients and servers, loaded from PEM files.

gRPC takes certificates and keys as PEM bytes and, given something else, fails late and
vaguely (a handshake error, or a channel that never connects). So the files are read and
checked here, up front, and every error names the file and what is wrong with it: missing,
unreadable, or not the PEM it should be.

Client side (`TlsOptions`): the CA that signs the server's certificate (without one, the
system's roots), and optionally a client certificate and key for servers that require them.
Server side (`ServerTlsOptions`): the server's certificate chain and key, and optionally a CA
whose client certificates the server then requires.
"""

from __future__ import annotations

import base64
import binascii
import os
import re
from dataclasses import dataclass

from .errors import InvalidInput, InvalidTlsConfig

_PEM_BLOCK = re.compile(
    rb"-----BEGIN ([A-Z0-9 ]+)-----\r?\n(.*?)-----END \1-----",
    re.DOTALL,
)
_PEM_HEADER = re.compile(rb"^[A-Za-z-]+:")
MAX_PEM_SIZE = 1 << 20


def pem_labels(data: bytes) -> list[str]:
    """The labels of the well-formed PEM blocks in `data` ("CERTIFICATE", "PRIVATE KEY", ...).

    A block is well formed when its body is base64 (RFC 7468; RFC 1421 headers such as
    `Proc-Type:` are skipped). Text outside blocks is allowed, as in most PEM files.
    """
    labels = []
    for match in _PEM_BLOCK.finditer(data):
        lines = [
            line.strip() for line in match.group(2).splitlines() if not _PEM_HEADER.match(line)
        ]
        body = b"".join(lines)
        try:
            base64.b64decode(body, validate=True)
        except (binascii.Error, ValueError):
            continue
        if body:
            labels.append(match.group(1).decode("ascii"))
    return labels


def read_pem(path: str | os.PathLike[str], kind: str, what: str | None = None) -> bytes:
    """Read a PEM file holding at least one `kind` block ("certificate" or "private key").

    Raises InvalidTlsConfig naming `what` (a flag, say) and the path when the file is missing,
    unreadable, or holds no such PEM block.
    """
    name = os.fspath(path)
    label = f"{what} {name}" if what else name
    try:
        with open(name, "rb") as f:
            data = f.read(MAX_PEM_SIZE + 1)
    except FileNotFoundError:
        raise InvalidTlsConfig(f"{label}: no such file") from None
    except IsADirectoryError:
        raise InvalidTlsConfig(f"{label}: is a directory, not a PEM file") from None
    except OSError as exc:
        raise InvalidTlsConfig(f"{label}: cannot read: {exc.strerror or exc}") from None
    if len(data) > MAX_PEM_SIZE:
        raise InvalidTlsConfig(f"{label}: more than 1 MiB, not a PEM {kind} file")
    labels = pem_labels(data)
    if kind == "certificate":
        wanted = [lab for lab in labels if lab in ("CERTIFICATE", "TRUSTED CERTIFICATE")]
    elif kind == "private key":
        wanted = [lab for lab in labels if lab.endswith("PRIVATE KEY")]
        if "ENCRYPTED PRIVATE KEY" in wanted or b"Proc-Type: 4,ENCRYPTED" in data:
            raise InvalidTlsConfig(
                f"{label}: the private key is encrypted; gRPC needs an unencrypted PEM key"
            )
    else:
        raise InvalidInput(f"unknown PEM kind {kind!r}")
    if not wanted:
        found = f" (it holds {', '.join(sorted(set(labels)))})" if labels else ""
        raise InvalidTlsConfig(f"{label}: not a PEM {kind} file{found}")
    return data


@dataclass(frozen=True, slots=True)
class TlsOptions:
    """What a `grpc+https` client trusts and, optionally, how it proves who it is."""

    root_certificates: bytes | None = None
    private_key: bytes | None = None
    certificate_chain: bytes | None = None

    def __post_init__(self) -> None:
        if (self.private_key is None) != (self.certificate_chain is None):
            raise InvalidTlsConfig(
                "a client certificate and its private key go together (--tls-cert, --tls-key)"
            )

    @classmethod
    def load(
        cls,
        ca: str | os.PathLike[str] | None = None,
        cert: str | os.PathLike[str] | None = None,
        key: str | os.PathLike[str] | None = None,
    ) -> TlsOptions:
        """Read the PEM files; errors name the flag (--tls-ca, ...) and the file."""
        if (cert is None) != (key is None):
            given, missing = (
                ("--tls-cert", "--tls-key") if key is None else ("--tls-key", "--tls-cert")
            )
            raise InvalidTlsConfig(
                f"{given} needs {missing} too (a client certificate and its key)"
            )
        return cls(
            root_certificates=None if ca is None else read_pem(ca, "certificate", "--tls-ca"),
            certificate_chain=None if cert is None else read_pem(cert, "certificate", "--tls-cert"),
            private_key=None if key is None else read_pem(key, "private key", "--tls-key"),
        )


@dataclass(frozen=True, slots=True)
class ServerTlsOptions:
    """A server's identity, and optionally the CA whose client certificates it requires."""

    certificate_chain: bytes
    private_key: bytes
    client_ca: bytes | None = None

    @property
    def requires_client_certificates(self) -> bool:
        return self.client_ca is not None

    @classmethod
    def load(
        cls,
        cert: str | os.PathLike[str],
        key: str | os.PathLike[str],
        client_ca: str | os.PathLike[str] | None = None,
    ) -> ServerTlsOptions:
        """Read the PEM files; errors name the flag (--tls-cert, ...) and the file."""
        return cls(
            certificate_chain=read_pem(cert, "certificate", "--tls-cert"),
            private_key=read_pem(key, "private key", "--tls-key"),
            client_ca=(
                None if client_ca is None else read_pem(client_ca, "certificate", "--tls-client-ca")
            ),
        )
