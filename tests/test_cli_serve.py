"""`castore serve` as a user runs it: a subprocess, a ready line, clean signals, clear errors."""

from __future__ import annotations

import pathlib
import signal
import subprocess
import sys
import time

import pytest

from castore_client.chunked_reader import open_blob
from castore_client.connect import open_services

from . import fixtures as fx


def start_serve(*args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "castore_fuse", "serve", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def wait_ready(proc: subprocess.Popen[str], timeout: float = 20) -> str:
    assert proc.stdout is not None
    deadline = time.monotonic() + timeout
    seen = []
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        seen.append(line)
        if "ready on" in line:
            return line
    proc.kill()
    raise AssertionError(f"serve never became ready: {''.join(seen)}")


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_serve_memory_on_unix_socket(tmp_path: pathlib.Path, sig: signal.Signals) -> None:
    address = f"grpc+unix://{tmp_path}/s.sock"
    proc = start_serve("--store", "memory://", "--listen", address)
    try:
        wait_ready(proc)
        with open_services(address, timeout=10) as client:
            assert client.blobs.put([fx.BLOB_A]).raw == fx.b3(fx.BLOB_A)
        proc.send_signal(sig)
        assert proc.wait(10) == 0
    finally:
        proc.kill()


def test_serve_file_store_persists(tmp_path: pathlib.Path) -> None:
    address = f"grpc+unix://{tmp_path}/s.sock"
    store = f"file://{tmp_path}/store"
    for round_ in range(2):
        proc = start_serve("--store", store, "--listen", address)
        try:
            wait_ready(proc)
            with open_services(address, timeout=10) as client:
                if round_ == 0:
                    client.blobs.put([fx.HELLOWORLD])
                else:
                    from castore_client.digest import B3Digest

                    reader = open_blob(client.blobs, B3Digest(fx.b3(fx.HELLOWORLD)))
                    assert reader.read_at(0, 100) == fx.HELLOWORLD
            proc.terminate()
            assert proc.wait(10) == 0
        finally:
            proc.kill()


def run_serve_expecting_error(*args: str) -> str:
    result = subprocess.run(
        [sys.executable, "-m", "castore_fuse", "serve", *args],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    return result.stderr


def test_bad_listen_address_is_one_clear_line() -> None:
    err = run_serve_expecting_error("--store", "memory://", "--listen", "grpc+unix://host/x")
    assert "three slashes" in err


def test_busy_port_is_one_clear_line(tmp_path: pathlib.Path) -> None:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        err = run_serve_expecting_error(
            "--store", "memory://", "--listen", f"grpc+http://127.0.0.1:{port}"
        )
    assert "cannot listen" in err


def test_live_socket_is_not_stolen(tmp_path: pathlib.Path) -> None:
    address = f"grpc+unix://{tmp_path}/s.sock"
    proc = start_serve("--store", "memory://", "--listen", address)
    try:
        wait_ready(proc)
        err = run_serve_expecting_error("--store", "memory://", "--listen", address)
        assert "another server" in err
    finally:
        proc.terminate()
        proc.wait(10)
