"""`castore mount` under systemd's notify protocol, with a real datagram socket as systemd."""

from __future__ import annotations

import logging
import os
import pathlib
import secrets
import signal
import socket
import time
from collections.abc import Iterator

import pytest

from castore_client.rpc.server import CastoreServer
from castore_client.stores import open_memory_store

from .fuse_harness import is_mounted, mount_process, require_fuse, unix_listen_address


@pytest.fixture
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[CastoreServer]:
    with (
        open_memory_store() as store,
        CastoreServer(store, unix_listen_address(tmp_path_factory)) as srv,
    ):
        yield srv


def receive_until(sock: socket.socket, wanted: str, timeout: float) -> list[str]:
    """Every line received until one equals `wanted` (or the time is up)."""
    lines: list[str] = []
    deadline = time.monotonic() + timeout
    while wanted not in lines and time.monotonic() < deadline:
        sock.settimeout(max(deadline - time.monotonic(), 0.01))
        try:
            lines += sock.recv(4096).decode().splitlines()
        except TimeoutError:
            break
    return lines


@pytest.mark.parametrize("kind", ["path", "abstract"])
def test_the_mount_tells_systemd_when_it_is_ready_and_when_it_stops(
    kind: str,
    server: CastoreServer,
    tmp_path: pathlib.Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    require_fuse()
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        if kind == "path":
            address = str(tmp_path / "notify")
            sock.bind(address)
        else:
            name = f"castore-test-{secrets.token_hex(6)}"
            sock.bind("\0" + name)
            address = "@" + name
        monkeypatch.setenv("NOTIFY_SOCKET", address)
        with mount_process(server.address, tmp_path=tmp_path) as mount:
            ready = receive_until(sock, "READY=1", 20)
            assert "READY=1" in ready, ready
            assert f"STATUS=serving {mount.path}" in ready, ready
            assert is_mounted(mount.path)
            os.stat(mount.path)
            mount.signal(signal.SIGTERM)
            assert mount.wait_exit() == 0
            stopping = receive_until(sock, "STOPPING=1", 10)
        assert "STOPPING=1" in stopping, stopping
        assert any(line.startswith("STATUS=unmount") for line in stopping), stopping


def test_without_notify_socket_nothing_is_sent(monkeypatch: pytest.MonkeyPatch) -> None:
    from castore_fuse.systemd import notify

    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    assert notify("READY=1") is False


def test_an_unreachable_notify_socket_is_logged_not_raised(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    from castore_fuse.systemd import notify

    caplog.set_level(logging.DEBUG, logger="castore_fuse.systemd")
    monkeypatch.setenv("NOTIFY_SOCKET", str(tmp_path / "nobody"))
    assert notify("READY=1") is False
    assert "cannot notify systemd" in caplog.text
