"""What the commands share: verbosity, the one-line error, the store's address and TLS flags.

The client commands (mount, import) describe how to reach the store with the same flags and
environment variables; `client_config` turns them into one `ClientConfig`, parsed once, so
every command reads an address, a deadline or a TLS file the same way and names the same flag
when it is wrong.
"""

from __future__ import annotations

import argparse
import os
from typing import TYPE_CHECKING, TypeAlias

from castore_client.address import DEFAULT_ADDRESS, Address
from castore_client.deadlines import DEFAULT_CONNECT_TIMEOUT, DEFAULT_DEADLINE
from castore_client.errors import InvalidAddress, InvalidSize, InvalidTlsConfig, Unavailable
from castore_client.tls import read_pem
from castore_client.units import parse_duration, parse_size

if TYPE_CHECKING:
    from castore_client.connect import ClientConfig
    from castore_client.services import Services
    from castore_client.tls import TlsOptions

Subparsers: TypeAlias = "argparse._SubParsersAction[argparse.ArgumentParser]"

STORE_ENV = "CASTORE_STORE"

# Each service's flag and environment variable, in ClientConfig's order; both override --store.
SERVICE_FLAGS = (
    ("BlobService", "--blob-service-addr", "BLOB_SERVICE_ADDR"),
    ("DirectoryService", "--directory-service-addr", "DIRECTORY_SERVICE_ADDR"),
    ("PathInfoService", "--path-info-service-addr", "PATH_INFO_SERVICE_ADDR"),
)

CERT_HELP = "PEM certificate (chain) this process presents to its peer (with --tls-key)"
KEY_HELP = "PEM private key of --tls-cert"


class UsageError(Exception):
    """A user-facing error: printed as one line, exit status 1."""


def add_command(
    subparsers: Subparsers, name: str, *, help: str, description: str
) -> argparse.ArgumentParser:
    """A subcommand's parser, with the -v every command takes."""
    parser = subparsers.add_parser(name, help=help, description=description)
    parser.add_argument(
        "-v", "--verbose", action="count", default=0, help="more log output (repeatable)"
    )
    return parser


def add_identity_options(group: argparse._ArgumentGroup) -> None:
    """--tls-cert and --tls-key mean the same in every command: who this process is."""
    group.add_argument("--tls-cert", metavar="FILE", help=CERT_HELP)
    group.add_argument("--tls-key", metavar="FILE", help=KEY_HELP)


def add_client_options(parser: argparse.ArgumentParser) -> None:
    """The flags of a command that talks to a store: addresses, protocol, deadlines, TLS."""
    addresses = parser.add_argument_group(
        "addresses",
        f"Environment: {STORE_ENV} stands for --store; "
        + ", ".join(env for _, _, env in SERVICE_FLAGS)
        + " for the per-service flags (flags win over the environment).",
    )
    addresses.add_argument(
        "--store",
        metavar="ADDR",
        help=(
            f"address of all three services (default {DEFAULT_ADDRESS}); several gRPC "
            "servers separated by commas are used in order, with failover"
        ),
    )
    for service, flag, _ in SERVICE_FLAGS:
        addresses.add_argument(flag, metavar="ADDR", help=f"{service} address")
    addresses.add_argument(
        "--protocol",
        default="tvix",
        choices=["tvix", "snix", "auto"],
        help="gRPC package names to speak (default tvix; auto asks the server)",
    )
    addresses.add_argument(
        "--timeout",
        metavar="SECONDS",
        help="how long a remote call may wait for the server, retries included (for a stream: "
        "for each message); a dead server gives EIO after it, a restart within it goes "
        f"unnoticed (default {DEFAULT_DEADLINE:g}; also e.g. 500ms, 2m)",
    )
    addresses.add_argument(
        "--connect-timeout",
        metavar="SECONDS",
        help=f"how long to wait for the server at startup (default {DEFAULT_CONNECT_TIMEOUT:g})",
    )
    tls = parser.add_argument_group(
        "TLS",
        "For grpc+https addresses; without --tls-ca the system's CA certificates apply. "
        "--tls-cert and --tls-key are for servers that require a client certificate.",
    )
    tls.add_argument(
        "--tls-ca", metavar="FILE", help="PEM CA certificate(s) to verify the server with"
    )
    add_identity_options(tls)


def client_config(args: argparse.Namespace) -> ClientConfig:
    """The store the command talks to, from its flags and the environment."""
    from castore_client.connect import ClientConfig
    from castore_client.rpc.namespace import Namespace

    blobs, directories, path_infos = _service_addresses(args)
    tls = _client_tls(args, (blobs, directories, path_infos))
    return ClientConfig(
        blobs,
        directories,
        path_infos,
        namespace=Namespace.parse(args.protocol),
        timeout=duration_option("--timeout", args.timeout, DEFAULT_DEADLINE),
        connect_timeout=duration_option(
            "--connect-timeout", args.connect_timeout, DEFAULT_CONNECT_TIMEOUT
        ),
        tls=tls,
    )


def duration_option(flag: str, text: str | None, default: float) -> float:
    """A duration flag's value in seconds; the error names the flag."""
    if text is None:
        return default
    try:
        return parse_duration(text)
    except InvalidSize as exc:
        raise UsageError(f"{flag}: {exc}") from None


def size_option(flag: str, text: str) -> int:
    """A size flag's value in bytes; the error names the flag."""
    try:
        return parse_size(text)
    except InvalidSize as exc:
        raise UsageError(f"{flag}: {exc}") from None


def open_client(config: ClientConfig) -> Services:
    """`open_services`, with the flag that may help when the server turns the client away."""
    from castore_client.connect import open_services

    try:
        return open_services(config)
    except Unavailable as exc:
        message = str(exc)
        has_certificate = config.tls is not None and config.tls.certificate_chain is not None
        if "client certificate" in message and "--tls-cert" not in message and not has_certificate:
            message += "; give one with --tls-cert FILE --tls-key FILE"
        raise UsageError(message) from None


def read_pem_option(flag: str, path: str, kind: str) -> bytes:
    """The PEM file given to `flag`; an error names the flag, then the file and the problem."""
    try:
        return read_pem(path, kind)
    except InvalidTlsConfig as exc:
        raise UsageError(f"{flag} {exc}") from None


def _service_addresses(
    args: argparse.Namespace,
) -> tuple[tuple[Address, ...], tuple[Address, ...], tuple[Address, ...]]:
    """--store sets all three; per-service flags, then their environment variables, override.

    Each distinct text is parsed once, and an error names where the text came from.
    """
    store = _first((("--store", args.store), (STORE_ENV, os.environ.get(STORE_ENV))))
    store = store or ("the default address", DEFAULT_ADDRESS)
    picks = [
        _first(((flag, getattr(args, _dest(flag))), (env, os.environ.get(env)))) or store
        for _, flag, env in SERVICE_FLAGS
    ]
    parsed: dict[str, tuple[Address, ...]] = {}
    for source, text in picks:
        if text not in parsed:
            parsed[text] = _parse_group(source, text)
    blobs, directories, path_infos = (parsed[text] for _, text in picks)
    return blobs, directories, path_infos


def _dest(flag: str) -> str:
    return flag.removeprefix("--").replace("-", "_")


def _first(candidates: tuple[tuple[str, str | None], ...]) -> tuple[str, str] | None:
    for source, text in candidates:
        if text:
            return source, text
    return None


def _parse_group(source: str, text: str) -> tuple[Address, ...]:
    """One service's address, or its failover list separated by commas."""
    from castore_client.connect import ClientConfig

    try:
        return ClientConfig.parse(text).blobs
    except InvalidAddress as exc:
        raise UsageError(f"{source}: {exc}") from None


def _client_tls(
    args: argparse.Namespace, groups: tuple[tuple[Address, ...], ...]
) -> TlsOptions | None:
    """--tls-ca, --tls-cert and --tls-key, loaded; only a grpc+https address can use them."""
    from castore_client.tls import TlsOptions

    given = [
        flag
        for flag, value in (
            ("--tls-ca", args.tls_ca),
            ("--tls-cert", args.tls_cert),
            ("--tls-key", args.tls_key),
        )
        if value is not None
    ]
    if not given:
        return None
    if not any(address.uses_tls for group in groups for address in group):
        shown = dict.fromkeys(",".join(str(a) for a in group) for group in groups)
        raise UsageError(
            f"{given[0]} applies to grpc+https addresses only, and none is given "
            f"({', '.join(shown)})"
        )
    if (args.tls_cert is None) != (args.tls_key is None):
        present, missing = (
            ("--tls-cert", "--tls-key") if args.tls_key is None else ("--tls-key", "--tls-cert")
        )
        raise UsageError(f"{present} needs {missing} too (a client certificate and its key)")
    return TlsOptions(
        root_certificates=_optional_pem("--tls-ca", args.tls_ca, "certificate"),
        certificate_chain=_optional_pem("--tls-cert", args.tls_cert, "certificate"),
        private_key=_optional_pem("--tls-key", args.tls_key, "private key"),
    )


def _optional_pem(flag: str, path: str | None, kind: str) -> bytes | None:
    return None if path is None else read_pem_option(flag, path, kind)
