"""The CLI's error boundary (issue 14, findings 3, 4 and 8).

Exit codes: 2 usage, 3 invalid input (the field named), 1 task failure. Error text is printed as text,
never as rich markup, and never carries a secret or a raw user id, chained causes included (each
command runs in a cold subprocess, as a person or CI would run it).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from aitasks.runtime.logging import pseudonymize
from tests.runtime._leaky import encodings

REPO = Path(__file__).resolve().parents[1]
SECRET = "CanarySecret-7f3a9c2e51d0"
USER = "listener-canary-4242"
HOSTILE = "x[/x]y[bold]z:x:w[link=e.vil]"


def _env(tmp_path: Path) -> dict[str, str]:
    return {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(REPO / "src"), str(REPO)]),
        "AITASKS_STORAGE_ROOT": str(tmp_path / "store"),
    }


def cli(tmp_path: Path, *args: str, plugin: bool = False) -> subprocess.CompletedProcess[str]:
    """``aitasks ARGS`` in a fresh process; ``plugin`` registers the test tasks first."""
    code = "import sys\n"
    if plugin:
        code += "import tests.runtime._leaky\n"
    code += "from aitasks.cli import main\nsys.argv = ['aitasks', *sys.argv[1:]]\nmain()\n"
    return subprocess.run(
        [sys.executable, "-c", code, *args],
        check=False,
        cwd=tmp_path,
        env=_env(tmp_path),
        capture_output=True,
        text=True,
        timeout=180,
    )


def _error_lines(out: subprocess.CompletedProcess[str]) -> list[str]:
    return [line for line in out.stderr.splitlines() if line.startswith("error:")]


def test_help_lists_the_exit_codes(tmp_path: Path) -> None:
    out = cli(tmp_path, "--help")
    assert out.returncode == 0
    text = " ".join(out.stdout.split())
    for code in ("0", "1", "2", "3"):
        assert f"{code} " in text
    assert "usage" in text.lower() and "invalid input" in text.lower()


@pytest.mark.parametrize(
    "args",
    [
        ("no-such-command",),
        ("tasks", "run"),
        ("tasks", "run", "no.such.task"),
        ("tasks", "run", "data.drift", "--params", "{not json"),
        ("tasks", "run", "data.drift", "--params", "@missing.json"),
        ("tasks", "run", "data.drift", "--bogus-option"),
    ],
)
def test_usage_errors_exit_2(tmp_path: Path, args: tuple[str, ...]) -> None:
    out = cli(tmp_path, *args)
    assert out.returncode == 2, out.stderr
    assert "Traceback" not in out.stderr


def test_invalid_input_exits_3_and_names_the_field(tmp_path: Path) -> None:
    out = cli(tmp_path, "tasks", "run", "data.drift", "--params", '{"features_uri": "/nope", "psi_threshold": -1}')
    assert out.returncode == 3, out.stderr
    [line] = _error_lines(out)
    assert "psi_threshold" in line and "Traceback" not in out.stderr


@pytest.mark.parametrize(
    ("value", "field"),
    [('"5"', "warmup_days"), ("true", "warmup_days"), ("5.5", "warmup_days"), ("9" * 5000, "warmup_days")],
)
def test_inputs_are_strict_and_huge_integers_name_their_field(tmp_path: Path, value: str, field: str) -> None:
    params = '{"features_uri": "/nope", "warmup_days": ' + value + "}"
    out = cli(tmp_path, "tasks", "run", "data.drift", "--params", params)
    assert out.returncode == 3, out.stderr
    [line] = _error_lines(out)
    assert field in line and "Traceback" not in out.stderr


def test_markup_in_a_uri_is_printed_as_text(tmp_path: Path) -> None:
    uri = str(tmp_path / HOSTILE)
    out = cli(tmp_path, "tasks", "run", "data.drift", "--params", json.dumps({"features_uri": uri}))
    assert out.returncode == 3, out.stderr
    assert "MarkupError" not in out.stderr and "Traceback" not in out.stderr
    [line] = _error_lines(out)
    assert HOSTILE in line, "shown, not rendered"


def test_markup_in_an_output_path_is_printed_as_text(tmp_path: Path) -> None:
    out_dir = tmp_path / HOSTILE
    out = cli(
        tmp_path,
        "data",
        "generate",
        "--out",
        str(out_dir),
        "--users",
        "3",
        "--tracks",
        "3",
        "--events",
        "20",
        "--days",
        "2",
        "--format",
        "jsonl",
    )
    assert out.returncode == 0, out.stderr
    assert HOSTILE in out.stdout


def test_task_failure_exits_1_with_one_redacted_line(tmp_path: Path) -> None:
    out = cli(
        tmp_path,
        "tasks",
        "run",
        "test.leaky",
        "--params",
        json.dumps({"token": SECRET, "user_id": USER}),
        plugin=True,
    )
    assert out.returncode == 1, out.stderr
    [line] = _error_lines(out)
    assert "FatalError: denied for" in line and "[/x] [bold]" in line
    assert pseudonymize(USER) in line
    text = out.stdout + out.stderr
    assert [n for n, form in encodings(SECRET).items() if form in text] == [] and USER not in text


def test_debug_traceback_is_redacted_chain_included(tmp_path: Path) -> None:
    out = cli(
        tmp_path,
        "--debug",
        "tasks",
        "run",
        "test.leaky",
        "--params",
        json.dumps({"token": SECRET, "user_id": USER}),
        plugin=True,
    )
    assert out.returncode == 1, out.stderr
    assert "Traceback" in out.stderr and "ValueError: inner" in out.stderr
    text = out.stdout + out.stderr
    assert [n for n, form in encodings(SECRET).items() if form in text] == [] and USER not in text
