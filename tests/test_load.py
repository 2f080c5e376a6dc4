"""Load, briefly: 32 readers over random ranges of multi-chunk files, every byte compared.

bench/soak.py runs the same for a minute and longer; here it is a few seconds, enough to
catch races, wrong bytes under concurrency and leaked handles.
"""

from __future__ import annotations

import importlib.util
import pathlib
import random
import sys

import pytest

from castore_client.directory import FileNode
from castore_client.pathinfo import NarInfo, PathInfo
from castore_client.stores import open_memory_store

from .fuse_harness import mount_process, require_fuse, unix_listen_address

pytestmark = pytest.mark.fuse

ROOT = pathlib.Path(__file__).resolve().parent.parent


def load_soak():  # type: ignore[no-untyped-def]
    spec = importlib.util.spec_from_file_location("soak", ROOT / "bench" / "soak.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["soak"] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_32_readers_get_the_right_bytes(
    tmp_path: pathlib.Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    require_fuse()
    from castore_client.rpc.server import CastoreServer

    soak = load_soak()
    rng = random.Random(3)
    sources = [rng.randbytes(3 << 20) for _ in range(8)]
    with open_memory_store() as store:
        names = []
        for i, data in enumerate(sources):
            digest = store.blobs.put([data])
            assert len(store.blobs.stat(digest)) >= 2  # multi-chunk, as the issue asks
            name = f"{i:032d}-load{i}"
            node = FileNode(name.encode(), digest, len(data))
            store.path_infos.put(PathInfo(node=node, narinfo=NarInfo(0, bytes(32))))
            names.append(name)
        with (
            CastoreServer(store, unix_listen_address(tmp_path_factory)) as server,
            mount_process(server.address, tmp_path=tmp_path) as mount,
        ):
            paths = [mount.path / n for n in names]
            paths[0].stat()
            before = soak.process_figures(mount.proc.pid)
            outcome = soak.hammer(paths, sources, readers=32, seconds=4)
            after = soak.process_figures(mount.proc.pid)
            assert outcome.errors == []
            assert outcome.reads > 100
            assert after["open_fds"] <= before["open_fds"] + 2  # no descriptor per read left
            assert after["threads"] <= before["threads"] + 48  # bounded by the thread limiters
            assert mount.alive(), mount.log()
