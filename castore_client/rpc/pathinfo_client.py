"""PathInfoService over gRPC."""

from __future__ import annotations

from collections.abc import Iterator

from ..codec import node_to_pb, path_info_from_pb, path_info_to_pb
from ..directory import Node
from ..errors import PathInfoNotFound
from ..pathinfo import PathInfo, expect_store_path
from ..pb import pathinfo_pb2 as ppb
from ..pb import rpc_pathinfo_pb2 as rppb
from ..storepath import StorePath
from .endpoint import Endpoint
from .status import translated

SERVICE = "store.v1.PathInfoService"


class GrpcPathInfoService:
    def __init__(self, endpoint: Endpoint, *, timeout: float | None = None) -> None:
        self.endpoint = endpoint
        self.timeout = timeout

    def _deadline(self, timeout: float | None) -> float | None:
        return self.timeout if timeout is None else timeout

    def get_by_hash(self, digest: bytes, *, timeout: float | None = None) -> PathInfo:
        request = rppb.GetPathInfoRequest(by_output_hash=digest)
        with translated(f"get path info {digest.hex()}", PathInfoNotFound):
            response = self.endpoint.unary(
                SERVICE, "Get", request, ppb.PathInfo, self._deadline(timeout), idempotent=True
            )
        return path_info_from_pb(response)

    def get(self, store_path: StorePath, *, timeout: float | None = None) -> PathInfo:
        return expect_store_path(self.get_by_hash(store_path.digest, timeout=timeout), store_path)

    def list(self, *, timeout: float | None = None) -> Iterator[PathInfo]:
        call = self.endpoint.server_stream(
            SERVICE,
            "List",
            rppb.ListPathInfoRequest(),
            ppb.PathInfo,
            self._deadline(timeout),
            idempotent=True,
        )
        try:
            with translated("list path infos", PathInfoNotFound):
                for message in call:
                    yield path_info_from_pb(message)
        finally:
            if hasattr(call, "cancel"):
                call.cancel()

    def put(self, path_info: PathInfo, *, timeout: float | None = None) -> PathInfo:
        with translated(f"put path info {path_info.store_path}", PathInfoNotFound):
            response = self.endpoint.unary(
                SERVICE, "Put", path_info_to_pb(path_info), ppb.PathInfo, self._deadline(timeout)
            )
        return path_info_from_pb(response)

    def calculate_nar(self, node: Node, *, timeout: float | None = None) -> tuple[int, bytes]:
        with translated("calculate NAR", PathInfoNotFound):
            response = self.endpoint.unary(
                SERVICE,
                "CalculateNAR",
                node_to_pb(node),
                rppb.CalculateNARResponse,
                self._deadline(timeout),
            )
        return response.nar_size, response.nar_sha256
