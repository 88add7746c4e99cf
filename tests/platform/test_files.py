"""Atomic local writes: the old file or the new one, never a torn one, and no temp file left behind."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from aitasks.platform.files import TMP_PREFIX, atomic_path, atomic_write, publish, temp_path


def _leftovers(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if p.name.startswith(TMP_PREFIX))


def test_atomic_write_creates_replaces_and_encodes_text(tmp_path: Path) -> None:
    target = tmp_path / "deep" / "dir" / "out.json"
    atomic_write(target, b"one")
    assert target.read_bytes() == b"one"
    atomic_write(target, "zwei ü")
    assert target.read_text("utf-8") == "zwei ü"
    assert _leftovers(target.parent) == []


def test_a_failing_writer_leaves_the_old_file_and_no_temp_file(tmp_path: Path) -> None:
    target = tmp_path / "model.bin"
    target.write_bytes(b"old")
    with pytest.raises(RuntimeError, match="disk on fire"), atomic_path(target) as tmp:
        tmp.write_bytes(b"half of the new")
        raise RuntimeError("disk on fire")
    assert target.read_bytes() == b"old"
    assert _leftovers(tmp_path) == []


def test_a_failing_writer_creates_nothing_when_there_was_no_file(tmp_path: Path) -> None:
    target = tmp_path / "new.bin"
    with pytest.raises(ValueError), atomic_path(target) as tmp:
        tmp.write_bytes(b"partial")
        raise ValueError
    assert list(tmp_path.iterdir()) == []


def test_the_temp_file_is_hidden_beside_the_target_until_the_block_ends(tmp_path: Path) -> None:
    target = tmp_path / "out.parquet"
    with atomic_path(target) as tmp:
        assert tmp.parent == tmp_path and tmp.name.startswith(TMP_PREFIX) and not tmp.exists()
        tmp.write_bytes(b"data")
        assert not target.exists()
    assert target.read_bytes() == b"data" and _leftovers(tmp_path) == []


def test_exclusive_writes_have_one_winner(tmp_path: Path) -> None:
    target = tmp_path / "marker.json"
    atomic_write(target, b"first", exclusive=True)
    with pytest.raises(FileExistsError):
        atomic_write(target, b"second", exclusive=True)
    assert target.read_bytes() == b"first"
    assert _leftovers(tmp_path) == []


def test_a_writer_that_creates_nothing_publishes_nothing(tmp_path: Path) -> None:
    target = tmp_path / "never.bin"
    target.write_bytes(b"old")
    with pytest.raises(FileNotFoundError), atomic_path(target):
        pass
    assert target.read_bytes() == b"old"


def test_two_phase_publish_for_writers_that_commit_later(tmp_path: Path) -> None:
    target = tmp_path / "events.parquet"
    tmp = temp_path(target)
    tmp.write_bytes(b"rows")
    assert not target.exists()
    publish(tmp, target)
    assert target.read_bytes() == b"rows" and not tmp.exists()


def test_a_killed_writer_leaves_the_old_file(tmp_path: Path) -> None:
    """SIGKILL mid-write (no cleanup at all): the target still holds the complete old content."""
    target = tmp_path / "big.bin"
    target.write_bytes(b"old")
    code = f"""
import os, signal
from pathlib import Path
from aitasks.platform.files import atomic_path
with atomic_path(Path({str(target)!r})) as tmp:
    with open(tmp, "wb") as fh:
        fh.write(b"x" * 100_000)
        fh.flush()
        os.kill(os.getpid(), signal.SIGKILL)
"""
    proc = subprocess.run([sys.executable, "-c", code], check=False, env={**os.environ})
    assert proc.returncode == -9
    assert target.read_bytes() == b"old"
    # The killed writer's temp file is hidden (listings that skip dot files never show it).
    assert all(name.startswith(".") for name in _leftovers(tmp_path))
