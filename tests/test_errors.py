"""Every error the package raises belongs to the one hierarchy in castore_client.errors."""

from __future__ import annotations

import inspect
import sqlite3
from pathlib import Path

import pytest

from castore_client import errors, nixbase32
from castore_client.errors import (
    CastoreError,
    InvalidInput,
    NarOutOfOrder,
    StoreClosed,
    UnsupportedStoreVersion,
)
from castore_client.nar import NarEncoder, NarHasher, render_nar
from castore_client.stores import open_file_store
from castore_client.tls import read_pem


def test_every_class_in_errors_is_a_castore_error() -> None:
    classes = [c for _, c in inspect.getmembers(errors, inspect.isclass)]
    assert classes
    for cls in classes:
        assert issubclass(cls, CastoreError), cls


def test_nixbase32_error_is_invalid_input_under_its_old_name() -> None:
    assert nixbase32.Nixbase32Error is errors.Nixbase32Error
    with pytest.raises(InvalidInput):
        nixbase32.decode("e" * 32)
    with pytest.raises(InvalidInput):
        nixbase32.encoded_len(-1)


def test_nar_misuse_is_a_castore_error() -> None:
    with pytest.raises(NarOutOfOrder):
        NarHasher().finish()
    with pytest.raises(NarOutOfOrder):
        NarEncoder().end_directory()
    with pytest.raises(InvalidInput):
        NarEncoder().regular(-1)
    with pytest.raises(InvalidInput):
        list(render_nar(object(), lambda d: [], lambda d: None))  # type: ignore[arg-type]


def test_unknown_pem_kind_is_invalid_input(tmp_path: Path) -> None:
    pem = tmp_path / "x.pem"
    pem.write_bytes(b"")
    with pytest.raises(InvalidInput, match="unknown PEM kind"):
        read_pem(pem, "public key")


def test_file_store_used_after_close(tmp_path: Path) -> None:
    store = open_file_store(tmp_path / "store")
    store.close()
    with pytest.raises(StoreClosed, match="is closed"):
        store.path_infos.get_by_hash(bytes(20))
    store.close()  # closing twice is harmless


def test_file_store_written_by_a_newer_version(tmp_path: Path) -> None:
    open_file_store(tmp_path / "store").close()
    db = sqlite3.connect(tmp_path / "store" / "meta.sqlite")
    db.execute("PRAGMA user_version=99")
    db.close()
    with pytest.raises(UnsupportedStoreVersion, match="schema version 99"):
        open_file_store(tmp_path / "store")
