"""`aitasks audio check|synth`: the CLI a person uses to ask why a file was quarantined."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from tests.audio_analysis import crafted


def run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "aitasks.cli", *args],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
        env={**os.environ, "COLUMNS": "250", **(env or {})},  # rich wraps table cells to the terminal width
    )


def test_check_names_the_reason_and_exits_1_on_a_bad_file(tmp_path: Path) -> None:
    good = crafted.write(tmp_path / "song.flac", crafted.music(12, seed=1))
    (tmp_path / "notes.wav").write_text("not audio")
    out = run("audio", "check", str(good), str(tmp_path / "notes.wav"))
    assert out.returncode == 1, out.stderr
    assert "unknown_format" in out.stdout and "FLAC" in out.stdout and "clean" in out.stdout
    ok = run("audio", "check", str(good))
    assert ok.returncode == 0, ok.stdout + ok.stderr


def test_synth_writes_a_catalog_with_its_truth(tmp_path: Path) -> None:
    out = run("audio", "synth", str(tmp_path / "cat"), "--tracks", "2", "--no-planted")
    assert out.returncode == 0, out.stderr
    truth = json.loads((tmp_path / "cat" / "truth.json").read_text())
    assert sorted(truth["labels"]) == ["t_000000", "t_000001"] and truth["planted"] == {}
    assert (tmp_path / "cat-labelled" / "labels.csv").exists()


def test_check_keeps_the_compiled_loudness_kernel_in_the_user_cache(tmp_path: Path) -> None:
    """The CLI caches numba's compiled kernel under $XDG_CACHE_HOME/aitasks/numba (a step never does)."""
    good = crafted.write(tmp_path / "song.flac", crafted.music(3, seed=2))
    env = {k: v for k, v in os.environ.items() if k != "NUMBA_CACHE_DIR"} | {"XDG_CACHE_HOME": str(tmp_path / "xdg")}
    out = subprocess.run(
        [sys.executable, "-m", "aitasks.cli", "audio", "check", str(good)],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
        env=env,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert list((tmp_path / "xdg" / "aitasks" / "numba").rglob("*.nbi")), "no compiled kernel cached"
