"""bench/relay.py, the delay relay bench/compare --rtt-ms puts in front of each server.

What the latency figures rest on: bytes arrive intact and in order in both directions, a round
trip through the relay takes at least the round trip it was given (a check of the relay, not
of anything's speed), half-closes pass through, and the relay process stops by itself.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import pathlib
import random
import socket
import threading
import time
from collections.abc import Iterator
from types import ModuleType

ROOT = pathlib.Path(__file__).resolve().parent.parent


def load_relay() -> ModuleType:
    spec = importlib.util.spec_from_file_location("bench_relay", ROOT / "bench" / "relay.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


relay = load_relay()


@contextlib.contextmanager
def echo_server() -> Iterator[int]:
    """Echoes every connection back until the peer half-closes, then closes its side."""
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(0.2)
    stopping = threading.Event()

    def echo(conn: socket.socket) -> None:
        with conn:
            while data := conn.recv(65536):
                conn.sendall(data)

    def serve() -> None:
        while not stopping.is_set():
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            threading.Thread(target=echo, args=(conn,), daemon=True).start()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield listener.getsockname()[1]
    finally:
        stopping.set()
        thread.join(5)
        listener.close()


def test_bytes_arrive_intact_and_in_order_both_ways() -> None:
    rng = random.Random(13)
    payload = os.urandom(6 << 20)
    with (
        echo_server() as port,
        relay.Relay(port, rtt_ms=2) as r,
        socket.create_connection(("127.0.0.1", r.port), timeout=30) as s,
    ):

        def send() -> None:
            offset = 0
            while offset < len(payload):
                n = rng.choice((1, 7, 4096, 65536, 300_000))
                s.sendall(payload[offset : offset + n])
                offset += n
            s.shutdown(socket.SHUT_WR)

        sender = threading.Thread(target=send)
        sender.start()
        received = bytearray()
        while data := s.recv(1 << 20):
            received += data
        sender.join(30)
    # The echo server closed after our half-close, and the relay passed both EOFs on.
    assert len(received) == len(payload)
    assert bytes(received) == payload


def test_a_round_trip_takes_at_least_the_given_rtt() -> None:
    rtt_ms = 30
    with (
        echo_server() as port,
        relay.Relay(port, rtt_ms=rtt_ms) as r,
        socket.create_connection(("127.0.0.1", r.port), timeout=30) as s,
    ):
        for i in range(5):
            start = time.monotonic()
            s.sendall(bytes([i]))
            assert s.recv(1) == bytes([i])
            assert time.monotonic() - start >= rtt_ms / 1000


def test_several_connections_are_kept_apart() -> None:
    with echo_server() as port, relay.Relay(port, rtt_ms=1) as r:
        socks = [socket.create_connection(("127.0.0.1", r.port), timeout=30) for _ in range(4)]
        try:
            for round_ in range(3):
                for n, s in enumerate(socks):
                    s.sendall(b"conn %d round %d;" % (n, round_))
                for n, s in enumerate(socks):
                    want = b"conn %d round %d;" % (n, round_)
                    got = b""
                    while len(got) < len(want):
                        got += s.recv(len(want) - len(got))
                    assert got == want
        finally:
            for s in socks:
                s.close()


def test_the_process_relays_then_stops_by_itself(tmp_path: pathlib.Path) -> None:
    argv = ["--target-port", "0", "--rtt-ms", "2", "--lifetime", "1.5"]
    with echo_server() as port:
        argv[1] = str(port)
        with relay.background(argv, None, tmp_path / "relay.log") as (proc, relay_port):
            with socket.create_connection(("127.0.0.1", relay_port), timeout=10) as s:
                s.sendall(b"hello")
                assert s.recv(5) == b"hello"
            proc.wait(10)  # the lifetime ends it, not the block
            assert proc.returncode == 0
    assert "lifetime" in (tmp_path / "relay.log").read_text()


def test_the_link_rate_source_sends_what_it_says() -> None:
    source = relay.Source(3 << 20)
    thread = threading.Thread(target=source.serve_forever, daemon=True)
    thread.start()
    try:
        with relay.Relay(source.port, rtt_ms=4) as r:
            got, seconds = relay.receive_all(r.port, 1 << 30)
        assert got == 3 << 20
        assert seconds >= 0.002  # the bytes came back through one delayed direction
    finally:
        source.stopping.set()
        thread.join(5)
        source.listener.close()
