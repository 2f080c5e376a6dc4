"""Shared fixtures: in-process castore servers over a unix socket and loopback TCP."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator

import pytest

from castore_client.address import Address, parse_address
from castore_client.connect import open_services
from castore_client.rpc.namespace import Namespace
from castore_client.rpc.server import CastoreServer
from castore_client.services import Services
from castore_client.stores import open_memory_store


def require_tool(tool: str) -> str:
    """A missing external tool skips a test locally but fails it in CI, where it must run."""
    path = shutil.which(tool)
    if path is None:
        if "CI" in os.environ:
            pytest.fail(f"{tool} is required when CI is set")
        pytest.skip(f"{tool} not found")
    return path


@pytest.fixture
def memory_store() -> Iterator[Services]:
    with open_memory_store() as store:
        yield store


def listen_address(kind: str, tmp_path_factory: pytest.TempPathFactory) -> Address:
    if kind == "unix":
        return parse_address(f"grpc+unix://{tmp_path_factory.mktemp('sock')}/castore.sock")
    return parse_address("grpc+http://127.0.0.1:0")


@pytest.fixture(params=["unix", "tcp"])
def server(
    request: pytest.FixtureRequest,
    memory_store: Services,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[CastoreServer]:
    """Our gRPC server over an in-memory store, on a unix socket and on 127.0.0.1."""
    with CastoreServer(memory_store, listen_address(request.param, tmp_path_factory)) as srv:
        yield srv


@pytest.fixture(params=[Namespace.TVIX, Namespace.SNIX])
def client(request: pytest.FixtureRequest, server: CastoreServer) -> Iterator[Services]:
    """Clients of `server` in each protocol namespace."""
    with open_services(server.address, namespace=request.param, timeout=30) as services:
        yield services


# CI must be repeatable: the same examples every run, so a red CI is never a dice roll.
# Longer, randomised runs are bench/fuzz's job.
from hypothesis import settings as _hypothesis_settings  # noqa: E402

_hypothesis_settings.register_profile("ci", derandomize=True, print_blob=True)
if "CI" in os.environ:
    _hypothesis_settings.load_profile("ci")
