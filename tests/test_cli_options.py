"""Numbers on the command line, and error lines that stay one line.

Every duration and size option takes finite positive values only; anything else is one line on
stderr naming the flag, a non-zero status and no traceback, before anything is connected or
mounted. `--help` says what the default deadline is. An error that quotes a path with a
newline in it is still one line.
"""

from __future__ import annotations

import os
import pathlib
import subprocess
import sys

import pytest

from castore_client.errors import InvalidSize
from castore_client.units import parse_duration, parse_size

from .fuse_harness import REPO_ROOT, is_mounted

GUARD = 60.0
"""Kills a command that does not exit (say, one that tried to connect); it measures nothing."""

BAD_NUMBERS = ["nan", "NaN", "inf", "-inf", "1e999", "-1", "0", "0.0", "abc", "", "12x"]

MOUNT_DURATIONS = ["--timeout", "--connect-timeout"]
MOUNT_SIZES = ["--cache-size", "--memory-cache-size"]


def castore(*args: str, cwd: pathlib.Path = REPO_ROOT) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
    # An address nobody serves: a command that got past its numbers would fail differently.
    env["CASTORE_STORE"] = "grpc+unix:///nonexistent/castore-test.sock"
    return subprocess.run(
        [sys.executable, "-m", "castore_fuse", *args],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        cwd=cwd,
        env=env,
        timeout=GUARD,
    )


def one_line_error(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode != 0, result
    assert "Traceback" not in result.stderr, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    return lines[0]


@pytest.mark.parametrize("value", BAD_NUMBERS)
@pytest.mark.parametrize("flag", MOUNT_DURATIONS + MOUNT_SIZES)
def test_mount_refuses_numbers_that_are_not_finite_and_positive(
    tmp_path: pathlib.Path, flag: str, value: str
) -> None:
    result = castore("mount", f"{flag}={value}", str(tmp_path))
    line = one_line_error(result)
    assert line.startswith(f"castore mount: error: {flag}: "), line
    assert not is_mounted(tmp_path)


@pytest.mark.parametrize("value", ["nan", "inf", "-1", "0"])
@pytest.mark.parametrize("flag", MOUNT_DURATIONS)
def test_import_refuses_the_same_durations(tmp_path: pathlib.Path, flag: str, value: str) -> None:
    (tmp_path / "file").write_bytes(b"x")
    line = one_line_error(castore("import", f"{flag}={value}", str(tmp_path / "file")))
    assert line.startswith(f"castore import: error: {flag}: "), line


def test_help_says_the_default_deadline() -> None:
    from castore_client.deadlines import DEFAULT_DEADLINE

    for command in ("mount", "import"):
        result = castore(command, "--help")
        assert result.returncode == 0, result.stderr
        text = " ".join(result.stdout.split())
        start = text.index("--timeout SECONDS ")
        help_text = text[start : text.index("--connect-timeout SECONDS", start)]
        assert f"default {DEFAULT_DEADLINE:g}" in help_text, help_text


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("30", 30.0), ("2.5", 2.5), ("500ms", 0.5), ("10s", 10.0), ("2m", 120.0), ("1h", 3600.0)],
)
def test_durations_accepted(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", [*BAD_NUMBERS, "1e-9", "1e300", "2G"])
def test_durations_refused(text: str) -> None:
    with pytest.raises(InvalidSize):
        parse_duration(text)


@pytest.mark.parametrize(
    ("text", "size"), [("512M", 512 << 20), ("2G", 2 << 30), ("64KiB", 64 << 10), ("100", 100)]
)
def test_sizes_accepted(text: str, size: int) -> None:
    assert parse_size(text) == size


@pytest.mark.parametrize("text", [*BAD_NUMBERS, "0.1", "5X", "2s"])
def test_sizes_refused(text: str) -> None:
    with pytest.raises(InvalidSize):
        parse_size(text)


def test_a_mountpoint_with_a_newline_is_named_on_one_line(tmp_path: pathlib.Path) -> None:
    missing = tmp_path / "two\nlines"
    line = one_line_error(castore("mount", str(missing)))
    assert "two\\nlines" in line, line


def test_an_import_error_about_a_path_with_a_newline_is_one_line(tmp_path: pathlib.Path) -> None:
    tree = tmp_path / "tree"
    odd = tree / "a\nb"
    odd.mkdir(parents=True)
    os.mkfifo(odd / "fifo\x1bname")
    result = castore("import", "--store", "memory://", str(tree))
    line = one_line_error(result)
    assert "a\\nb/fifo\\x1bname" in line, line
    assert "fifo" in line
