"""The protocol namespace setting: tvix, snix, and auto-detection."""

from __future__ import annotations

import pytest

from castore_client.address import parse_address
from castore_client.connect import open_services
from castore_client.digest import B3Digest
from castore_client.errors import Rejected
from castore_client.rpc.namespace import Namespace
from castore_client.rpc.server import CastoreServer
from castore_client.services import Services

from . import fixtures as fx


@pytest.mark.parametrize("only", [Namespace.TVIX, Namespace.SNIX])
def test_auto_finds_the_served_namespace(memory_store: Services, only: Namespace) -> None:
    listen = parse_address("grpc+http://127.0.0.1:0")
    with CastoreServer(memory_store, listen, namespaces=(only,)) as server:
        with open_services(server.address, namespace=Namespace.AUTO, timeout=10) as c:
            assert c.blobs.put([fx.BLOB_A]).raw == fx.b3(fx.BLOB_A)
        other = Namespace.SNIX if only is Namespace.TVIX else Namespace.TVIX
        with (
            open_services(server.address, namespace=other, timeout=10) as c,
            pytest.raises(Rejected, match="UNIMPLEMENTED"),
        ):
            c.blobs.stat(B3Digest(fx.b3(fx.BLOB_A)))
