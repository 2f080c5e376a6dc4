"""Turn addresses into services: a gRPC client, or an embedded store in this process."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .address import Address, parse_address
from .directory import SizeFormula
from .errors import InvalidAddress
from .rpc.blob_client import GrpcBlobService
from .rpc.directory_client import GrpcDirectoryService
from .rpc.endpoint import Endpoint, open_endpoint
from .rpc.namespace import Namespace
from .rpc.pathinfo_client import GrpcPathInfoService
from .services import Services
from .stores import open_embedded_store
from .tls import TlsOptions


@dataclass(frozen=True)
class ClientConfig:
    """How to reach the three services, parsed once and handed to `open_services`.

    Each service has one address, or several gRPC servers of the same service tried in order
    (failover). `timeout` is each call's deadline, retries included (None: the transport's
    default); `connect_timeout` how long each gRPC server may take to accept a connection at
    start-up (None: do not wait); `tls` applies to grpc+https addresses only.
    """

    blobs: tuple[Address, ...]
    directories: tuple[Address, ...]
    path_infos: tuple[Address, ...]
    namespace: Namespace = Namespace.TVIX
    timeout: float | None = None
    connect_timeout: float | None = None
    tls: TlsOptions | None = None

    @classmethod
    def parse(
        cls,
        blob_address: str | Address,
        directory_address: str | Address | None = None,
        path_info_address: str | Address | None = None,
        **options: Any,
    ) -> ClientConfig:
        """Directory and PathInfo addresses default to the one before them."""
        directory_address = directory_address or blob_address
        return cls(
            _group(blob_address),
            _group(directory_address),
            _group(path_info_address or directory_address),
            **options,
        )

    @property
    def uses_tls(self) -> bool:
        return any(a.uses_tls for group in self.groups() for a in group)

    def groups(self) -> tuple[tuple[Address, ...], tuple[Address, ...], tuple[Address, ...]]:
        return self.blobs, self.directories, self.path_infos


def open_services(
    blob_address: str | Address | ClientConfig,
    directory_address: str | Address | None = None,
    path_info_address: str | Address | None = None,
    *,
    namespace: Namespace = Namespace.TVIX,
    timeout: float | None = None,
    formula: SizeFormula = SizeFormula.CURRENT,
    connect_timeout: float | None = None,
    tls: TlsOptions | None = None,
) -> Services:
    """Open the three services; equal addresses share one channel or one embedded store.

    Takes a `ClientConfig`, or the addresses and options to make one. With a connect timeout,
    each gRPC server must accept a connection within that many seconds, or Unavailable is
    raised naming it (and, for grpc+https, the TLS error if the handshake is what failed).
    """
    if isinstance(blob_address, ClientConfig):
        config = blob_address
    else:
        config = ClientConfig.parse(
            blob_address,
            directory_address,
            path_info_address,
            namespace=namespace,
            timeout=timeout,
            connect_timeout=connect_timeout,
            tls=tls,
        )
    return _open(config, formula)


def _open(config: ClientConfig, formula: SizeFormula) -> Services:
    namespace, timeout, connect_timeout, tls = (
        config.namespace,
        config.timeout,
        config.connect_timeout,
        config.tls,
    )
    groups = list(config.groups())
    closers: list[Callable[[], None]] = []
    embedded: dict[Address, Services] = {}
    endpoints: dict[tuple[Address, ...], Endpoint] = {}
    for group in groups:
        first = group[0]
        if first.is_grpc and group not in endpoints:
            try:
                endpoint = open_endpoint(group, namespace, tls, connect_timeout=connect_timeout)
            except BaseException:
                for close in reversed(closers):
                    close()
                raise
            endpoints[group] = endpoint
            closers.append(endpoint.close)
        elif not first.is_grpc and first not in embedded:
            store = open_embedded_store(first, formula)
            embedded[first] = store
            closers.append(store.close)

    blobs, dirs, infos = groups
    return Services(
        blobs=(
            GrpcBlobService(endpoints[blobs], timeout=timeout)
            if blobs[0].is_grpc
            else embedded[blobs[0]].blobs
        ),
        directories=(
            GrpcDirectoryService(endpoints[dirs], timeout=timeout, formula=formula)
            if dirs[0].is_grpc
            else embedded[dirs[0]].directories
        ),
        path_infos=(
            GrpcPathInfoService(endpoints[infos], timeout=timeout)
            if infos[0].is_grpc
            else embedded[infos[0]].path_infos
        ),
        closers=closers,
    )


def _group(address: str | Address) -> tuple[Address, ...]:
    """One address, or several gRPC servers of the same service separated by commas."""
    if isinstance(address, Address):
        return (address,)
    group = tuple(parse_address(part) for part in address.split(",") if part.strip())
    if not group:
        raise InvalidAddress(f"{address!r}: no address")
    if len(group) > 1 and not all(a.is_grpc for a in group):
        raise InvalidAddress(f"{address!r}: only gRPC servers can be listed together")
    return group
