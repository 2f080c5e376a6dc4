"""The store path name of `castore import PATH`, against `nix-store --add PATH` as the oracle.

Nix names a store path after what follows the last slash of PATH as typed (after one
trailing slash), not after the directory PATH resolves to: `src/tree/.` is `.`. Where Nix's
name is a valid store path name, castore must print the very same store path; where it is not
(`.`, `..`, empty), castore must refuse in one line that says what the name would be, rather
than import under a name Nix would not give. Each nix-store call uses a throwaway store.
"""

from __future__ import annotations

import os
import pathlib
import subprocess
import sys

import pytest

from castore_client.errors import CastoreError
from castore_client.storepath import StorePath

from .conftest import require_tool
from .fuse_harness import REPO_ROOT

GUARD = 90.0

SPELLINGS = [
    "src/tree",
    "src/tree/",
    "src//tree",
    "./src/tree",
    "src/tree/sub/..",
    "src/tree/.",
    "src/tree/./",
    "src/tree/..",
    "src/tree//",
]


@pytest.fixture
def workdir(tmp_path: pathlib.Path) -> pathlib.Path:
    tree = tmp_path / "work" / "src" / "tree"
    (tree / "sub").mkdir(parents=True)
    (tree / "a").write_bytes(b"a file\n")
    (tree / "sub" / "b").write_bytes(b"another\n")
    os.symlink("a", tree / "link")
    return tmp_path / "work"


def nix_add(store: pathlib.Path, path: str, cwd: pathlib.Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [require_tool("nix-store"), "--store", str(store), "--add", path],
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=GUARD,
    )


def castore_import(path: str, cwd: pathlib.Path) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
    return subprocess.run(
        [sys.executable, "-m", "castore_fuse", "import", "--store", "memory://", path],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        cwd=cwd,
        env=env,
        timeout=GUARD,
    )


def valid_store_name(name: str) -> bool:
    try:
        StorePath(bytes(20), name)
    except CastoreError:
        return False
    return True


@pytest.mark.parametrize("spelling", SPELLINGS)
def test_import_names_the_store_path_as_nix_store_add(
    workdir: pathlib.Path, tmp_path: pathlib.Path, spelling: str
) -> None:
    nix = nix_add(tmp_path / "nix-store", spelling, workdir)
    ours = castore_import(spelling, workdir)
    if nix.returncode == 0:
        nix_path = nix.stdout.strip()
        name = nix_path.rpartition("/")[2].partition("-")[2]
    else:
        assert "empty name" in nix.stderr, nix.stderr  # the only refusal expected here
        name = ""
    if valid_store_name(name):
        assert ours.returncode == 0, ours.stderr
        assert ours.stdout.strip() == nix_path
        return
    assert ours.returncode != 0, f"imported as {ours.stdout.strip()}; nix names it {name!r}"
    lines = [line for line in ours.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, ours.stderr
    assert f"names it {name!r}" in lines[0], lines[0]
    assert "Traceback" not in ours.stderr
