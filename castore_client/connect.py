"""Turn addresses into services: a gRPC client, or an embedded store in this process."""

from __future__ import annotations

import logging
from collections.abc import Callable

from .address import Address, parse_address
from .directory import SizeFormula
from .rpc.blob_client import GrpcBlobService
from .rpc.directory_client import GrpcDirectoryService
from .rpc.endpoint import Endpoint, Namespace, open_channel
from .rpc.pathinfo_client import GrpcPathInfoService
from .services import Services
from .stores import EmbeddedStore, open_embedded_store

log = logging.getLogger(__name__)


def open_services(
    blob_address: str | Address,
    directory_address: str | Address | None = None,
    path_info_address: str | Address | None = None,
    *,
    namespace: Namespace = Namespace.TVIX,
    timeout: float | None = None,
    formula: SizeFormula = SizeFormula.CURRENT,
    connect_timeout: float | None = None,
) -> Services:
    """Open the three services; equal addresses share one channel or one embedded store.

    With `connect_timeout`, each gRPC server must accept a connection within that many
    seconds, or Unavailable is raised naming it.
    """
    addresses = [
        a if isinstance(a, Address) else parse_address(a)
        for a in (
            blob_address,
            directory_address or blob_address,
            path_info_address or directory_address or blob_address,
        )
    ]
    closers: list[Callable[[], None]] = []
    embedded: dict[Address, EmbeddedStore] = {}
    endpoints: dict[Address, Endpoint] = {}
    for address in addresses:
        if address.is_grpc and address not in endpoints:
            endpoint = Endpoint(open_channel(address), namespace)
            endpoints[address] = endpoint
            closers.append(endpoint.close)
            if connect_timeout is not None:
                try:
                    endpoint.wait_ready(connect_timeout, address)
                except BaseException:
                    for close in reversed(closers):
                        close()
                    raise
        elif not address.is_grpc and address not in embedded:
            store = open_embedded_store(address, formula)
            embedded[address] = store
            closers.append(store.close)

    blob_addr, dir_addr, info_addr = addresses
    return Services(
        blobs=(
            GrpcBlobService(endpoints[blob_addr], timeout=timeout)
            if blob_addr.is_grpc
            else embedded[blob_addr].blobs
        ),
        directories=(
            GrpcDirectoryService(endpoints[dir_addr], timeout=timeout, formula=formula)
            if dir_addr.is_grpc
            else embedded[dir_addr].directories
        ),
        path_infos=(
            GrpcPathInfoService(endpoints[info_addr], timeout=timeout)
            if info_addr.is_grpc
            else embedded[info_addr].path_infos
        ),
        closers=closers,
    )
