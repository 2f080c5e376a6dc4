"""Our clients against our server, over a unix socket and TCP, in both namespaces."""

from __future__ import annotations

import os
import random

import pytest

from castore_client.chunked_reader import ChunkedReader, WholeBlobReader, open_blob
from castore_client.digest import B3Digest
from castore_client.directory import Directory, DirectoryNode, FileNode, SymlinkNode
from castore_client.errors import (
    BlobNotFound,
    DirectoryNotFound,
    PathInfoNotFound,
    RootCountError,
)
from castore_client.pathinfo import NarInfo, PathInfo
from castore_client.services import Services
from castore_client.storepath import StorePath

from . import fixtures as fx

EMPTY = B3Digest(fx.b3(b""))
WITH_KEEP = Directory(files=(FileNode(b".keep", EMPTY, 0),))
COMPLICATED = Directory(
    directories=(DirectoryNode(b"keep", B3Digest(fx.WITH_KEEP_DIGEST), fx.WITH_KEEP_SIZE),),
    files=(FileNode(b".keep", EMPTY, 0),),
    symlinks=(SymlinkNode(b"aa", b"/nix/store/somewhereelse"),),
)


def test_blob_put_returns_the_blake3_digest(client: Services) -> None:
    for blob in (fx.BLOB_A, fx.BLOB_B, fx.HELLOWORLD, b""):
        assert client.blobs.put([blob]).raw == fx.b3(blob)


def test_small_blob_reads_back(client: Services) -> None:
    digest = client.blobs.put([fx.BLOB_A])
    assert client.blobs.stat(digest) == []
    reader = open_blob(client.blobs, digest, len(fx.BLOB_A))
    assert isinstance(reader, WholeBlobReader)
    assert reader.read_at(0, 100) == fx.BLOB_A
    assert reader.read_at(1, 1) == fx.BLOB_A[1:]


def test_empty_blob_reads_back(client: Services) -> None:
    digest = client.blobs.put([])
    assert digest.raw == fx.b3(b"")
    assert open_blob(client.blobs, digest, 0).read_at(0, 10) == b""


def test_unknown_blob_is_not_found(client: Services) -> None:
    with pytest.raises(BlobNotFound):
        client.blobs.stat(B3Digest(fx.b3(b"never stored")))
    with pytest.raises(BlobNotFound):
        b"".join(client.blobs.read(B3Digest(fx.b3(b"never stored"))))


def test_random_reads_of_multi_chunk_blob(client: Services) -> None:
    rng = random.Random(7)
    blob = rng.randbytes(3 << 20)
    digest = client.blobs.put(blob[i : i + 100_000] for i in range(0, len(blob), 100_000))
    chunks = client.blobs.stat(digest)
    assert len(chunks) >= 2
    assert sum(c.size for c in chunks) == len(blob)
    for chunk in chunks:  # a chunk digest can be read like a blob
        data = b"".join(client.blobs.read(chunk.digest))
        assert fx.b3(data) == chunk.digest.raw
    reader = open_blob(client.blobs, digest, len(blob))
    assert isinstance(reader, ChunkedReader)
    for _ in range(200):
        offset = rng.randrange(len(blob) + 10)
        length = rng.choice([0, 1, 4096, 131072, 600_000, rng.randrange(1 << 20)])
        assert reader.read_at(offset, length) == blob[offset : offset + length]


def test_fixture_blob_b_is_chunked_and_reads_back(client: Services) -> None:
    digest = client.blobs.put([fx.BLOB_B])
    reader = open_blob(client.blobs, digest, len(fx.BLOB_B))
    out = b"".join(reader.read_at(o, 128 << 10) for o in range(0, len(fx.BLOB_B), 128 << 10))
    assert out == fx.BLOB_B


def test_directories_put_and_get(client: Services) -> None:
    root = client.directories.put([WITH_KEEP, COMPLICATED])
    assert root.raw == fx.COMPLICATED_DIGEST
    assert client.directories.get(root) == COMPLICATED
    closure = list(client.directories.get_recursive(root))
    assert [d.digest.raw for d in closure] == [fx.COMPLICATED_DIGEST, fx.WITH_KEEP_DIGEST]


def test_unknown_directory_is_not_found(client: Services) -> None:
    with pytest.raises(DirectoryNotFound):
        client.directories.get(B3Digest(fx.b3(b"x")))
    with pytest.raises(DirectoryNotFound):
        list(client.directories.get_recursive(B3Digest(fx.b3(b"x"))))


def test_put_of_two_roots_is_refused_before_sending(client: Services) -> None:
    with pytest.raises(RootCountError):
        client.directories.put([WITH_KEEP, Directory()])


def test_ten_thousand_directories_in_one_stream(memory_store, tmp_path_factory) -> None:  # type: ignore[no-untyped-def]
    """One namespace and transport suffice here: this is about volume, not wire shape."""
    from castore_client.connect import open_services
    from castore_client.rpc.server import CastoreServer

    from .conftest import listen_address

    def chain():
        child: Directory | None = None
        for i in range(10_000):
            nodes: list = [FileNode(b"f%d" % i, EMPTY, 0)]
            if child is not None:
                nodes.append(DirectoryNode(b"d", child.digest, child.size()))
            child = Directory.of(nodes)
            yield child

    listen = listen_address("unix", tmp_path_factory)
    with CastoreServer(memory_store, listen) as server, open_services(server.address) as client:
        root = client.directories.put(chain())
        assert sum(1 for _ in client.directories.get_recursive(root)) == 10_000


def store_path_of(name: str) -> StorePath:
    return StorePath.parse("00000000000000000000000000000000-" + name)


def path_info(node) -> PathInfo:  # type: ignore[no-untyped-def]
    return PathInfo(node=node, narinfo=NarInfo(nar_size=0, nar_sha256=bytes(32)))


def test_path_info_put_get_list(client: Services) -> None:
    sp = store_path_of("test")
    digest = client.blobs.put([fx.HELLOWORLD])
    info = path_info(FileNode(str(sp).encode(), digest, len(fx.HELLOWORLD), True))
    assert client.path_infos.put(info) == info
    assert client.path_infos.get(sp) == info
    assert list(client.path_infos.list()) == [info]
    with pytest.raises(PathInfoNotFound):
        client.path_infos.get(store_path_of("tes"))  # right hash, wrong name
    with pytest.raises(PathInfoNotFound):
        client.path_infos.get(StorePath.parse("10000000000000000000000000000000-test"))


def test_calculate_nar_of_a_file(client: Services) -> None:
    digest = client.blobs.put([fx.HELLOWORLD])
    size, sha = client.path_infos.calculate_nar(FileNode(b"", digest, len(fx.HELLOWORLD)))
    import hashlib
    import struct

    def tok(b: bytes) -> bytes:
        return struct.pack("<Q", len(b)) + b + b"\0" * (-len(b) % 8)

    nar = b"".join(
        tok(t)
        for t in [b"nix-archive-1", b"(", b"type", b"regular", b"contents", fx.HELLOWORLD, b")"]
    )
    assert (size, sha) == (len(nar), hashlib.sha256(nar).digest())


def test_file_store_survives_server_restart(tmp_path, tmp_path_factory) -> None:  # type: ignore[no-untyped-def]
    from castore_client.address import parse_address
    from castore_client.connect import open_services
    from castore_client.rpc.server import CastoreServer
    from castore_client.stores import open_file_store

    blob = os.urandom(2 << 20)
    sock = parse_address(f"grpc+unix://{tmp_path_factory.mktemp('s')}/castore.sock")
    with (
        open_file_store(str(tmp_path / "store")) as store,
        CastoreServer(store, sock),
        open_services(sock, timeout=30) as c,
    ):
        digest = c.blobs.put([blob])
        root = c.directories.put([WITH_KEEP, COMPLICATED])
    with (
        open_file_store(str(tmp_path / "store")) as store,
        CastoreServer(store, sock),
        open_services(sock, timeout=30) as c,
    ):
        assert open_blob(c.blobs, digest, len(blob)).read_at(0, len(blob)) == blob
        assert c.directories.get(root) == COMPLICATED
