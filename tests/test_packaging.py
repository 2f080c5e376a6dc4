"""What a user meets first: `castore --version`, and a mount without pyfuse3."""

from __future__ import annotations

import importlib.metadata
import os
import pathlib
import shutil
import subprocess
import sys

import grpc
import pyfuse3
import pytest

from .fuse_harness import REPO_ROOT


def castore(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "castore_fuse", *args],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO_ROOT,
        env=env,
    )


def test_version_names_the_package_and_what_it_runs_on() -> None:
    done = castore("--version")
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0] == f"castore-fuse {importlib.metadata.version('castore-fuse')}"
    assert f"grpcio {grpc.__version__}" in lines
    assert f"pyfuse3 {pyfuse3.__version__}" in lines
    assert any(line.startswith("protocol tvix.castore.v1") for line in lines)
    pkg_config = shutil.which("pkg-config")
    if pkg_config is None:
        if "CI" in os.environ:
            pytest.fail("pkg-config is required when CI is set")
        pytest.skip("pkg-config not found")
    libfuse = subprocess.run(
        [pkg_config, "--modversion", "fuse3"], capture_output=True, text=True, check=True
    ).stdout.strip()
    assert f"libfuse {libfuse}" in lines


def test_a_mount_without_pyfuse3_says_what_to_install_in_one_line(tmp_path: pathlib.Path) -> None:
    # pyfuse3 cannot be uninstalled from the test environment, so a module of that name that
    # fails to import stands in front of it, as a broken or missing build would.
    shadow = tmp_path / "shadow"
    shadow.mkdir()
    (shadow / "pyfuse3.py").write_text("raise ImportError(\"No module named 'pyfuse3'\")\n")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(shadow), str(REPO_ROOT)]))
    (tmp_path / "mnt").mkdir()
    done = castore("mount", "--store", "grpc+http://127.0.0.1:1", str(tmp_path / "mnt"), env=env)
    assert done.returncode == 1
    assert "Traceback" not in done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("castore mount: error: pyfuse3 cannot be imported")
    assert "libfuse3-dev" in lines[0] and "pip install pyfuse3" in lines[0]
    assert not os.path.ismount(tmp_path / "mnt")
