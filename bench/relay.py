#!/usr/bin/env python3
"""A delay relay on 127.0.0.1: a stand-in for a network with a round trip of --rtt-ms.

This kernel has no netem qdisc, so bench/compare puts one of these in front of each server.
Every chunk of bytes read from one side is held for half the round trip and then written to
the other side, in the order it was read. Each direction is a timestamped queue with its own
reader and writer thread: the reader never waits for the writer, so the delay adds latency and
no bandwidth limit (the queue holds up to --max-queued bytes per direction, rate x delay is
far below that at the rates this machine reaches; past it the reader waits, as a full socket
buffer would make it). TCP itself only ever sees loopback: connections are accepted and
made at once, and congestion windows grow at loopback speed, so what the delay costs is the
round trips of the application protocols (HTTP/2 and SSH windows, request pipelines).

It stops by itself: at --lifetime, when the process that started it goes away, or on SIGTERM.

    python bench/relay.py --target-port PORT --rtt-ms 20 [--port 0] [--lifetime 14400]
    python bench/relay.py --role source --size-mib 256     (a byte source for the link rate)

Both print `ready PORT` once listening.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import os
import select
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator

MIB = 1 << 20
CHUNK = 256 * 1024
MAX_QUEUED = 256 * MIB
MAX_CONNECTIONS = 64


class Direction:
    """Bytes from `src` to `dst`, each chunk released `delay` seconds after it was read."""

    def __init__(self, src: socket.socket, dst: socket.socket, delay: float, max_queued: int):
        self.src, self.dst, self.delay, self.max_queued = src, dst, delay, max_queued
        self.queue: collections.deque[tuple[float, bytes]] = collections.deque()
        self.queued = 0
        self.cond = threading.Condition()
        self.stopped = False
        self.failed = False

    def stop(self) -> None:
        with self.cond:
            self.stopped = True
            self.cond.notify_all()

    def read(self) -> None:
        """Until EOF or an error; an empty chunk in the queue stands for the EOF."""
        try:
            while True:
                data = self.src.recv(CHUNK)
                with self.cond:
                    while self.queued >= self.max_queued and not self.stopped:
                        self.cond.wait(1.0)
                    if self.stopped:
                        return
                    self.queue.append((time.monotonic() + self.delay, data))
                    self.queued += len(data)
                    self.cond.notify_all()
                if not data:
                    return
        except OSError:
            with self.cond:
                self.failed = True
                self.cond.notify_all()

    def write(self) -> None:
        """Send each chunk once its time has come; every chunk due by then goes in one go."""
        try:
            while True:
                with self.cond:
                    while not self.queue and not self.stopped and not self.failed:
                        self.cond.wait(1.0)
                    if self.stopped or (self.failed and not self.queue):
                        return
                    due = self.queue[0][0]
                wait = due - time.monotonic()
                if wait > 0:
                    time.sleep(wait)
                now = time.monotonic()
                ready: list[bytes] = []
                with self.cond:
                    while self.queue and self.queue[0][0] <= now:
                        ready.append(self.queue.popleft()[1])
                    self.queued -= sum(len(d) for d in ready)
                    self.cond.notify_all()
                for data in ready:
                    if not data:
                        self.dst.shutdown(socket.SHUT_WR)
                        return
                    self.dst.sendall(data)
        except OSError:
            self.failed = True


class Relay:
    """Accepts on 127.0.0.1:`port` and relays each connection to 127.0.0.1:`target_port`."""

    def __init__(
        self,
        target_port: int,
        rtt_ms: float,
        port: int = 0,
        max_queued: int = MAX_QUEUED,
        max_connections: int = MAX_CONNECTIONS,
    ) -> None:
        self.target_port = target_port
        self.delay = rtt_ms / 2000
        self.max_queued = max_queued
        self.max_connections = max_connections
        self.listener = socket.create_server(("127.0.0.1", port))
        self.listener.settimeout(0.5)
        self.port: int = self.listener.getsockname()[1]
        self.stopping = threading.Event()
        self.lock = threading.Lock()
        self.open: set[socket.socket] = set()
        self.accepter = threading.Thread(target=self.accept_loop, name="relay-accept", daemon=True)

    def start(self) -> Relay:
        self.accepter.start()
        return self

    def stop(self) -> None:
        self.stopping.set()
        self.accepter.join(5)
        self.listener.close()
        with self.lock:
            for sock in self.open:
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)

    def __enter__(self) -> Relay:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def accept_loop(self) -> None:
        while not self.stopping.is_set():
            try:
                client, _ = self.listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            with self.lock:
                full = len(self.open) >= 2 * self.max_connections
            if full:
                client.close()
                continue
            try:
                server = socket.create_connection(("127.0.0.1", self.target_port), timeout=10)
            except OSError:
                client.close()
                continue
            threading.Thread(
                target=self.serve, args=(client, server), name="relay-conn", daemon=True
            ).start()

    def serve(self, client: socket.socket, server: socket.socket) -> None:
        for sock in (client, server):
            sock.settimeout(None)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        with self.lock:
            self.open.update((client, server))
        up = Direction(client, server, self.delay, self.max_queued)
        down = Direction(server, client, self.delay, self.max_queued)
        threads = [
            threading.Thread(target=fn, daemon=True)
            for fn in (up.read, up.write, down.read, down.write)
        ]
        for t in threads:
            t.start()
        # One side gone for good (an error, not an orderly half-close) ends both directions.
        while any(t.is_alive() for t in threads):
            if up.failed or down.failed or self.stopping.is_set():
                up.stop()
                down.stop()
                for sock in (client, server):
                    with contextlib.suppress(OSError):
                        sock.shutdown(socket.SHUT_RDWR)
            for t in threads:
                t.join(0.5)
        with self.lock:
            self.open.difference_update((client, server))
        client.close()
        server.close()


# --------------------------------------------------------------------------------------------
# A byte source, to measure the link rate through a relay


class Source:
    """Sends `size` bytes to each connection, then closes it."""

    def __init__(self, size: int, port: int = 0) -> None:
        self.size = size
        self.block = os.urandom(MIB)
        self.listener = socket.create_server(("127.0.0.1", port))
        self.listener.settimeout(0.5)
        self.port: int = self.listener.getsockname()[1]
        self.stopping = threading.Event()

    def serve_forever(self) -> None:
        while not self.stopping.is_set():
            try:
                conn, _ = self.listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            with conn:
                view = memoryview(self.block)
                with contextlib.suppress(OSError):
                    for offset in range(0, self.size, MIB):
                        conn.sendall(view[: min(MIB, self.size - offset)])


def receive_all(port: int, limit: int) -> tuple[int, float]:
    """Bytes received from 127.0.0.1:`port` until EOF (at most `limit`), and the seconds taken
    from the connect to the last byte."""
    buf = bytearray(MIB)
    got = 0
    start = time.perf_counter()
    with socket.create_connection(("127.0.0.1", port), timeout=60) as s:
        while got < limit:
            n = s.recv_into(buf)
            if not n:
                break
            got += n
    return got, time.perf_counter() - start


# --------------------------------------------------------------------------------------------
# As a process: pinned with taskset, stopped with the block that started it


@contextlib.contextmanager
def background(
    argv: list[str], cpu: int | None, log: str | os.PathLike[str], ready_timeout: float = 30
) -> Iterator[tuple[subprocess.Popen[bytes], int]]:
    """Run `python bench/relay.py argv` (on CPU `cpu`); yield it and the port it listens on."""
    pin = ["taskset", "-c", str(cpu)] if cpu is not None else []
    command = [*pin, sys.executable, __file__, "--parent", str(os.getpid()), *argv]
    with open(log, "ab") as err:
        proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=err)
    try:
        assert proc.stdout is not None
        line = b""
        deadline = time.monotonic() + ready_timeout
        while not line.endswith(b"\n"):
            left = deadline - time.monotonic()
            if left <= 0 or proc.poll() is not None:
                raise RuntimeError(f"relay {argv} did not start; see {log}")
            if select.select([proc.stdout], [], [], left)[0]:
                piece = os.read(proc.stdout.fileno(), 100)
                if not piece:
                    raise RuntimeError(f"relay {argv} exited; see {log}")
                line += piece
        word, port = line.split()
        if word != b"ready":
            raise RuntimeError(f"relay {argv} said {line!r}")
        yield proc, int(port)
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--role", choices=("relay", "source"), default="relay")
    parser.add_argument("--port", type=int, default=0, help="where to listen (0: any free port)")
    parser.add_argument("--target-port", type=int, help="relay: the server on 127.0.0.1")
    parser.add_argument("--rtt-ms", type=float, default=0.0, help="relay: the round trip")
    parser.add_argument("--size-mib", type=int, default=256, help="source: bytes per connection")
    parser.add_argument("--lifetime", type=float, default=4 * 3600, help="seconds, then exit")
    parser.add_argument("--parent", type=int, help="exit when this process is no longer ours")
    args = parser.parse_args()
    if args.role == "relay" and args.target_port is None:
        parser.error("--target-port is needed")
    if args.rtt_ms < 0 or args.lifetime <= 0:
        parser.error("need --rtt-ms >= 0 and --lifetime > 0")

    done = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: done.set())
    signal.signal(signal.SIGINT, lambda *_: done.set())
    stop: list[threading.Event] = []
    if args.role == "relay":
        relay = Relay(args.target_port, args.rtt_ms, args.port).start()
        port = relay.port
    else:
        source = Source(args.size_mib * MIB, args.port)
        threading.Thread(target=source.serve_forever, daemon=True).start()
        stop.append(source.stopping)
        port = source.port
    print(f"ready {port}", flush=True)
    deadline = time.monotonic() + args.lifetime
    while not done.wait(0.5):
        if time.monotonic() > deadline:
            print(f"relay: lifetime of {args.lifetime:.0f} s reached, exiting", file=sys.stderr)
            break
        if args.parent is not None and os.getppid() != args.parent:
            print("relay: the process that started me is gone, exiting", file=sys.stderr)
            break
    if args.role == "relay":
        relay.stop()
    for event in stop:
        event.set()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
