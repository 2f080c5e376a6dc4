"""Several servers for one service: failover when one is down, fail-back later."""

from __future__ import annotations

import pathlib
import time

from castore_client.address import parse_address
from castore_client.rpc.blob_client import GrpcBlobService
from castore_client.rpc.channel import open_channel
from castore_client.rpc.endpoint import Endpoint
from castore_client.rpc.retry import RetryPolicy
from castore_client.rpc.server import CastoreServer
from castore_client.stores import open_memory_store

from . import fixtures as fx


def test_calls_fail_over_to_the_next_server_and_back(tmp_path: pathlib.Path) -> None:
    dead = parse_address(f"grpc+unix://{tmp_path}/nobody-listens.sock")
    first = parse_address(f"grpc+unix://{tmp_path}/first.sock")
    second = parse_address(f"grpc+unix://{tmp_path}/second.sock")
    with open_memory_store() as a, open_memory_store() as b:
        digest = a.blobs.put([fx.BLOB_A])
        b.blobs.put([fx.BLOB_A])
        with CastoreServer(b, second):
            endpoint = Endpoint(
                [open_channel(dead), open_channel(second)],
                retry=RetryPolicy(attempts=4, initial_backoff=0.01),
                failback_after=0.5,
            )
            blobs = GrpcBlobService(endpoint, timeout=10)
            assert blobs.stat(digest) == []  # the first server is down: the second answers
            assert endpoint.channel is endpoint.channels[1]
            time.sleep(0.6)
            assert endpoint.channel is endpoint.channels[0]  # fail-back is attempted
            assert blobs.stat(digest) == []  # ...and, still down, moves on again
            endpoint.close()
        with CastoreServer(a, first):
            endpoint = Endpoint([open_channel(first), open_channel(dead)])
            assert GrpcBlobService(endpoint).stat(digest) == []
            assert endpoint.channel is endpoint.channels[0]
            endpoint.close()


def test_a_restarted_server_is_not_noticed_within_the_deadline(tmp_path: pathlib.Path) -> None:
    import threading

    address = parse_address(f"grpc+unix://{tmp_path}/s.sock")
    with open_memory_store() as store:
        digest = store.blobs.put([fx.BLOB_A])
        server = CastoreServer(store, address)
        endpoint = Endpoint(open_channel(address))
        blobs = GrpcBlobService(endpoint, timeout=15)
        assert blobs.stat(digest) == []
        server.stop(0)
        restarted: list[CastoreServer] = []
        timer = threading.Timer(1.0, lambda: restarted.append(CastoreServer(store, address)))
        timer.start()
        try:
            assert blobs.stat(digest) == []  # retried until the server is back
        finally:
            timer.join()
            for s in restarted:
                s.stop(0)
            endpoint.close()


def test_open_services_takes_a_comma_separated_list(tmp_path: pathlib.Path) -> None:
    from castore_client.connect import open_services

    live = parse_address(f"grpc+unix://{tmp_path}/live.sock")
    with open_memory_store() as store, CastoreServer(store, live):
        digest = store.blobs.put([fx.BLOB_A])
        listed = f"grpc+unix://{tmp_path}/dead.sock,{live}"
        with open_services(listed, timeout=10) as services:
            assert services.blobs.stat(digest) == []
