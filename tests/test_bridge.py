"""The trio bridge: blocking calls off the event loop, cancellation reaching the RPC,
and bounded streaming."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from concurrent import futures

import grpc
import trio

from castore_client.connect import open_services
from castore_client.digest import B3Digest
from castore_fuse.bridge import StreamPump, run_blocking


def slow_server(seen_cancel: threading.Event) -> tuple[grpc.Server, str]:
    def stat(request: bytes, context: grpc.ServicerContext) -> bytes:
        context.add_callback(seen_cancel.set)
        for _ in range(100):
            if not context.is_active():
                break
            time.sleep(0.1)
        return b""

    server = grpc.server(futures.ThreadPoolExecutor(4))
    handler = grpc.method_handlers_generic_handler(
        "tvix.castore.v1.BlobService",
        {"Stat": grpc.unary_unary_rpc_method_handler(stat, lambda b: b, lambda b: b)},
    )
    server.add_generic_rpc_handlers((handler,))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    return server, f"grpc+http://127.0.0.1:{port}"


async def test_cancelling_a_task_cancels_its_rpc() -> None:
    seen_cancel = threading.Event()
    server, address = slow_server(seen_cancel)
    try:
        with open_services(address) as services:
            started = time.monotonic()
            with trio.move_on_after(0.3):
                await run_blocking(services.blobs.stat, B3Digest(bytes(32)))
            returned = time.monotonic() - started
            assert returned < 5  # the call itself would block for 10 s
            assert await trio.to_thread.run_sync(seen_cancel.wait, 5)
    finally:
        server.stop(0)


async def test_other_requests_proceed_while_one_blocks() -> None:
    release = threading.Event()
    order = []

    async def blocked() -> None:
        await run_blocking(release.wait, 10)
        order.append("blocked")

    async def quick() -> None:
        await run_blocking(lambda: None)
        order.append("quick")
        release.set()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(blocked)
        await trio.sleep(0.05)
        nursery.start_soon(quick)
    assert order == ["quick", "blocked"]


async def test_pump_stops_pulling_when_the_consumer_stops() -> None:
    produced = 0
    finished = threading.Event()

    def numbers() -> Iterator[int]:
        nonlocal produced
        try:
            for i in range(100_000):
                produced += 1
                yield i
        finally:
            finished.set()

    pump = StreamPump(numbers, bound=16)
    taken = []
    async for value, error in pump.receive:
        assert error is None
        taken.append(value)
        if len(taken) == 5:
            break
    await trio.sleep(0.2)
    assert produced <= 5 + 16 + 2  # what was taken, the channel's bound, one in hand
    pump.close()
    assert await trio.to_thread.run_sync(finished.wait, 5)
    assert taken == [0, 1, 2, 3, 4]


async def test_pump_delivers_errors_in_order() -> None:
    def failing() -> Iterator[int]:
        yield 1
        raise ValueError("boom")

    pump = StreamPump(failing)
    got = [item async for item in pump.receive]
    assert got[0] == (1, None)
    assert isinstance(got[1][1], ValueError)
    assert len(got) == 2
