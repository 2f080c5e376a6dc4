"""bench/scale.py at a small size: it builds its store, walks, stats, lists and tars through a
real mount, goes offline, and its JSON records what the mount really showed. The expected
counts are computed here from the parameters passed, not taken from the bench's output. No
timing is asserted: CI machines are too noisy for that, the full-size run is not.

The page cache is not dropped (--no-drop-caches): nothing here is timed, and dropping the
host's whole page cache would slow down whatever else runs on the machine.

A second test feeds the bench's checks a copy of the layout on local disk, read by the same
find, ls and tar, and makes sure that a missing, extra, resized or changed file fails them.
"""

from __future__ import annotations

import importlib.util
import json
import os
import pathlib
import shutil
import subprocess
import sys
from types import ModuleType
from typing import Any

import pytest

from .fuse_harness import processes_mentioning, require_fuse

ROOT = pathlib.Path(__file__).resolve().parent.parent
SCALE = ROOT / "bench" / "scale.py"

FILES, PER_DIR, WIDE = 20_000, 200, 5_000
STEPS = ["find_cold", "find_2", "ls_wide", "stat_all", "tar_10pct", "find_3"]
TARGETS = 6


def run_scale(workdir: pathlib.Path, out: pathlib.Path, *extra: str) -> subprocess.Popen[str]:
    argv = [
        sys.executable,
        str(SCALE),
        *("--files", str(FILES), "--per-dir", str(PER_DIR), "--wide", str(WIDE)),
        *("--workdir", str(workdir), "--json", str(out), "--no-drop-caches"),
        *extra,
    ]
    return subprocess.Popen(
        argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT
    )


def finish(proc: subprocess.Popen[str], timeout: float) -> tuple[str, str]:
    try:
        return proc.communicate(timeout=timeout)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()


def assert_nothing_left(workdir: pathlib.Path) -> None:
    assert str(workdir) not in pathlib.Path("/proc/self/mounts").read_text()
    assert processes_mentioning(str(workdir)) == []
    assert list(workdir.glob("run-*")) == []  # mountpoints, listings and cache removed


def content_size(i: int) -> int:
    """bench/scale.py's documented content: a 33-byte line naming i, 1 to 3 times."""
    return 33 * (1 + i % 3)


@pytest.mark.fuse
@pytest.mark.timeout(300)
def test_scale_small(tmp_path: pathlib.Path) -> None:
    require_fuse()
    workdir = tmp_path / "work"
    out = tmp_path / "scale.json"
    stdout, stderr = finish(run_scale(workdir, out, "--offline"), 240)
    assert "wrote" in stdout, stdout + stderr
    report = json.loads(out.read_text())
    assert report["checks"] == {"ok": True, "failure": None}, stdout + stderr
    assert_nothing_left(workdir)
    stores = list(workdir.glob("store-*/built.json"))
    assert len(stores) == 1  # kept for the next run

    # What was built, from the parameters alone.
    dirs = -(-FILES // PER_DIR)
    groups = -(-dirs // PER_DIR)
    tree_entries = 1 + groups + dirs + FILES  # find TREE: itself, groups, directories, files
    wide_entries = 1 + WIDE
    tar_dirs = range(0, dirs, 10)
    tar_files = [i for d in tar_dirs for i in range(d * PER_DIR, min((d + 1) * PER_DIR, FILES))]
    tar_bytes = sum(content_size(i) for i in tar_files)
    assert (dirs, groups, len(tar_files)) == (100, 1, 2000)

    config = report["config"]
    assert (config["files"], config["per_dir"], config["wide"]) == (FILES, PER_DIR, WIDE)
    assert config["offline"] is True
    assert report["store"]["cached"] is False

    steps = {s["key"]: s for s in report["steps"]}
    assert [s["key"] for s in report["steps"]] == STEPS
    expected_entries = {
        "find_cold": tree_entries,
        "find_2": tree_entries,
        "ls_wide": WIDE,
        "stat_all": tree_entries + wide_entries,
        "tar_10pct": len(tar_files),
        "find_3": tree_entries,
    }
    for key, entries in expected_entries.items():
        step = steps[key]
        assert step["entries"] == entries, (key, step)
        assert step["checked"]["ok"] is True, (key, step)
        assert step["wall_s"] > 0 and step["mount_cpu_s"] >= 0, (key, step)
        assert 0 < step["rss_mib"] <= step["peak_rss_mib"], (key, step)
        assert step["rss_before_mib"] > 0, (key, step)
    for key in ("find_cold", "find_2", "find_3", "stat_all"):
        assert steps[key]["checked"]["entries"] == expected_entries[key], key
    assert steps["ls_wide"]["checked"]["entries"] == WIDE
    assert steps["stat_all"]["checked"]["distinct_inodes"] == tree_entries + wide_entries
    tar = steps["tar_10pct"]["checked"]
    assert tar["files"] == len(tar_files)
    assert tar["directories"] == len(tar_dirs)
    assert tar["bytes_checked"] == tar_bytes
    assert report["peak_rss_mib"]["mount"] >= max(s["peak_rss_mib"] for s in report["steps"])

    targets = report["targets"]
    assert len(targets) == TARGETS
    assert all(t["met"] in (True, False, None) for t in targets)
    assert [t["met"] for t in targets if t["target"] == "every count and byte right"] == [True]
    for line in ("find cold", "ls -l wide (cold)", "tar c 10%", "targets (issue 14):"):
        assert line in stdout, stdout

    # Offline: the server is stopped and a fresh mount on the cache directory walks and reads
    # again everything read before.
    offline = report["offline"]
    assert offline["requested"] is True
    assert offline["result"] == "ok" and offline["ok"] is True, offline
    assert "offline: ok" in stdout
    walk, reread = offline["steps"]
    assert walk["entries"] == tree_entries + wide_entries
    assert walk["checked"]["entries"] == tree_entries + wide_entries
    assert reread["checked"]["bytes_checked"] == tar_bytes

    # A second run reuses the store; a step that cannot finish in time fails the run (exit
    # status 1, the failure in the JSON) and still leaves nothing behind.
    again = tmp_path / "again.json"
    stdout, stderr = finish(run_scale(workdir, again, "--timeout", "0.001"), 120)
    report = json.loads(again.read_text())
    assert report["store"]["cached"] is True, stdout + stderr
    assert report["checks"]["ok"] is False
    assert "did not finish within" in report["checks"]["failure"]
    assert_nothing_left(workdir)


def load_scale() -> ModuleType:
    spec = importlib.util.spec_from_file_location("bench_scale", SCALE)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def test_checks_catch_wrong_trees(tmp_path: pathlib.Path) -> None:
    """The layout written to local disk passes every check; each kind of damage fails one."""
    for tool in ("find", "ls", "tar"):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} not found")
    scale = load_scale()
    lay = scale.Layout(450, 20, 30)
    mnt = tmp_path / "mnt"
    tree, wide = mnt / lay.store_path("tree"), mnt / lay.store_path("wide")
    for i in range(lay.files):
        path = tree / lay.tree_path(i)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(scale.tree_bytes(i))
    wide.mkdir()
    for j in range(lay.wide):
        (wide / f"w{j:08d}").write_bytes(scale.wide_bytes(j))
    members = tmp_path / "members.txt"
    members.write_text("".join(lay.dir_path(d) + "\n" for d in lay.tar_dirs))

    def listing(*argv: str) -> bytes:
        env = {**os.environ, "LC_ALL": "C"}
        return subprocess.run(argv, capture_output=True, check=True, env=env).stdout

    def outcomes() -> dict[str, Any]:
        checks = {
            "find": lambda: scale.check_find(listing("find", str(tree)), mnt, lay, wide=False),
            "stat": lambda: scale.check_stat(
                listing("find", str(tree), str(wide), "-printf", "%y %s %i %p\\n"), mnt, lay
            ),
            "ls": lambda: scale.check_ls(listing("ls", "-l", str(wide)), lay),
            "tar": lambda: scale.run_tar(tree, members, lay, 60)[1],
        }
        results: dict[str, Any] = {}
        for name, check in checks.items():
            try:
                results[name] = check()
            except scale.CheckFailed as exc:
                results[name] = exc
        return results

    clean = outcomes()
    assert clean["find"] == {"entries": 1 + 2 + 23 + 450, "ok": True}
    assert clean["stat"]["entries"] == clean["stat"]["distinct_inodes"] == 476 + 31
    assert clean["ls"] == {"entries": 30, "ok": True}
    assert clean["tar"]["files"] == 60 and clean["tar"]["directories"] == 3

    changed = tree / lay.tree_path(5)  # in directory 0, which the tar step reads
    changed.write_bytes(scale.tree_bytes(5)[:-2] + b"X\n")
    assert isinstance(outcomes()["tar"], scale.WrongBytes)
    changed.write_bytes(scale.tree_bytes(5))

    (tree / lay.tree_path(7)).unlink()
    (tree / lay.dir_path(3) / "extra").write_bytes(b"x")
    (wide / "w00000003").write_bytes(b"resized\n")
    damaged = outcomes()
    assert "f00000007" in str(damaged["find"]) and "extra" in str(damaged["find"])
    assert "f00000007" in str(damaged["tar"])
    assert "w00000003 has size 8" in str(damaged["stat"])
    assert "w00000003 has size 8" in str(damaged["ls"])
    assert all(isinstance(v, scale.CheckFailed) for v in damaged.values())
