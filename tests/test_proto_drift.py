"""The committed generated code must be exactly what scripts/gen_proto.py produces."""

from __future__ import annotations

import importlib.util
import pathlib

ROOT = pathlib.Path(__file__).resolve().parent.parent


def test_generated_code_matches_protos(tmp_path: pathlib.Path) -> None:
    spec = importlib.util.spec_from_file_location("gen_proto", ROOT / "scripts" / "gen_proto.py")
    assert spec is not None and spec.loader is not None
    gen = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gen)
    fresh = {p.name: p.read_bytes() for p in gen.generate(tmp_path)}
    committed = {
        p.name: p.read_bytes()
        for p in (ROOT / "castore_client" / "pb").iterdir()
        if p.is_file() and p.suffix in (".py", ".pyi")
    }
    assert sorted(fresh) == sorted(committed), (
        "generated file set differs; run scripts/gen_proto.py"
    )
    drifted = [name for name in fresh if fresh[name] != committed[name]]
    assert not drifted, f"regenerate with scripts/gen_proto.py: {drifted}"


def test_wire_names_are_the_tvix_packages() -> None:
    from castore_client.pb import (
        castore_pb2,
        pathinfo_pb2,
        rpc_blobstore_pb2,
        rpc_directory_pb2,
        rpc_pathinfo_pb2,
    )

    assert castore_pb2.Directory.DESCRIPTOR.full_name == "tvix.castore.v1.Directory"
    assert pathinfo_pb2.PathInfo.DESCRIPTOR.full_name == "tvix.store.v1.PathInfo"
    services = {
        rpc_blobstore_pb2.DESCRIPTOR.services_by_name["BlobService"].full_name,
        rpc_directory_pb2.DESCRIPTOR.services_by_name["DirectoryService"].full_name,
        rpc_pathinfo_pb2.DESCRIPTOR.services_by_name["PathInfoService"].full_name,
    }
    assert services == {
        "tvix.castore.v1.BlobService",
        "tvix.castore.v1.DirectoryService",
        "tvix.store.v1.PathInfoService",
    }
