"""`mount -t fuse` and /etc/fstab: a real mount(8) through the mount.fuse3 helper."""

from __future__ import annotations

import os
import pathlib
import shutil
import subprocess
import sys
from collections.abc import Iterator

import pytest

from castore_client.rpc.server import CastoreServer
from castore_client.stores import open_memory_store

from . import fixtures as fx
from .fuse_harness import (
    HELLOWORLD_NAME,
    REPO_ROOT,
    is_mounted,
    populate_fixtures,
    require_fuse,
    unix_listen_address,
    wait_until,
)

CASTORE = pathlib.Path(sys.executable).with_name("castore")


@pytest.fixture
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[CastoreServer]:
    with (
        open_memory_store() as store,
        CastoreServer(store, unix_listen_address(tmp_path_factory)) as srv,
    ):
        populate_fixtures(store)
        yield srv


def require_mount_helper() -> None:
    require_fuse()
    missing = [
        tool for tool in ("mount", "umount", "mount.fuse3") if shutil.which(tool) is None
    ] + ([] if os.geteuid() == 0 else ["root"])
    if missing:
        if "CI" in os.environ:
            pytest.fail(f"mount -t fuse needs {', '.join(missing)} when CI is set")
        pytest.skip(f"mount -t fuse needs {', '.join(missing)}")
    assert CASTORE.exists(), f"the castore script is not next to {sys.executable}"


def mount_t(
    source: str, mountpoint: pathlib.Path, options: str
) -> subprocess.CompletedProcess[str]:
    """What fstab's `SOURCE MOUNTPOINT fuse OPTIONS` does: mount(8) runs mount.fuse3, which
    runs the program named before the `#`."""
    return subprocess.run(
        ["mount", "-t", "fuse", f"{CASTORE}#{source}", str(mountpoint), "-o", options],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO_ROOT,
    )


def test_mount_t_fuse_mounts_with_mount_options(
    server: CastoreServer, tmp_path: pathlib.Path
) -> None:
    require_mount_helper()
    mountpoint = tmp_path / "mnt"
    mountpoint.mkdir()
    try:
        done = mount_t(str(server.address), mountpoint, "ro,list_root,timeout=5,_netdev,nofail")
        assert done.returncode == 0, done.stderr
        # mount(8) returned, so the mount is there and answers, in the background.
        assert is_mounted(mountpoint)
        assert (mountpoint / HELLOWORLD_NAME).read_bytes() == fx.HELLOWORLD
        assert HELLOWORLD_NAME in os.listdir(mountpoint)  # list_root took effect
        mounts = pathlib.Path("/proc/mounts").read_text().splitlines()
        fstype = [line.split()[2] for line in mounts if str(mountpoint) in line]
        assert fstype == ["fuse.castore"]
    finally:
        subprocess.run(["umount", str(mountpoint)], check=False, timeout=30)
    assert wait_until(lambda: not is_mounted(mountpoint), 10)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ("ro,no_such_option", "-o no_such_option: not a castore mount option"),
        ("rw", "-o rw: a castore mount is read-only"),
        ("ro,timeout", "-o timeout needs a value"),
        ("ro,list_root=yes", "-o list_root takes no value"),
    ],
)
def test_bad_mount_options_are_one_line_and_nothing_is_mounted(
    server: CastoreServer, tmp_path: pathlib.Path, options: str, message: str
) -> None:
    require_mount_helper()
    mountpoint = tmp_path / "mnt"
    mountpoint.mkdir()
    try:
        done = mount_t(str(server.address), mountpoint, options)
        mounted = is_mounted(mountpoint)
    finally:
        if is_mounted(mountpoint):
            subprocess.run(["umount", str(mountpoint)], check=False, timeout=30)
    assert done.returncode != 0
    assert message in done.stderr, done.stderr
    ours = [line for line in done.stderr.splitlines() if "castore" in line]
    assert len(ours) == 1 and ours[0].startswith(f"castore: error: {message}"), done.stderr
    assert not mounted


def test_an_unreachable_server_fails_the_mount_command(tmp_path: pathlib.Path) -> None:
    require_mount_helper()
    mountpoint = tmp_path / "mnt"
    mountpoint.mkdir()
    dead = f"grpc+unix://{tmp_path}/nobody.sock"
    try:
        done = mount_t(dead, mountpoint, "ro,connect_timeout=1")
        mounted = is_mounted(mountpoint)
    finally:
        if is_mounted(mountpoint):
            subprocess.run(["umount", str(mountpoint)], check=False, timeout=30)
    assert done.returncode != 0
    assert "castore mount: error:" in done.stderr, done.stderr
    assert not mounted
