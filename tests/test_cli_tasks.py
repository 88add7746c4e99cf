"""`aitasks tasks list/show` and `--help` read right at any terminal width (issue 15)."""

from __future__ import annotations

import json
import re

import pytest
from hypothesis import given
from hypothesis import strategies as st
from typer.testing import CliRunner

from aitasks.cli import app, first_sentence, shorten, task_summary, wrap_lines
from aitasks.runtime.task import load_builtin_tasks

WIDTHS = (50, 80, 100, 160)


def invoke(*args: str, width: int = 120) -> str:
    result = CliRunner().invoke(app, list(args), env={"COLUMNS": str(width)})
    assert result.exit_code == 0, result.output
    return result.output


words = st.text(alphabet="abcdefghij", min_size=1, max_size=12)


@given(st.lists(words, min_size=1, max_size=40), st.integers(min_value=14, max_value=90), st.integers(1, 3))
def test_wrapped_lines_fit_and_cut_only_between_words(text: list[str], width: int, max_lines: int) -> None:
    lines = wrap_lines(" ".join(text), width, max_lines)
    assert 1 <= len(lines) <= max_lines
    assert all(len(line) <= width for line in lines)
    shown = " ".join(lines).removesuffix("…").split()
    assert shown == text[: len(shown)], "every word shown is whole and in order"
    assert lines[-1].endswith("…") == (len(shown) < len(text))


def test_shorten_keeps_short_text_and_cuts_long_text_at_a_word() -> None:
    assert shorten("Trains  the\nmodel.", 80) == "Trains the model."
    cut = shorten("Decodes every file of the shard and checks it first", 30)
    assert cut == "Decodes every file of the…" and len(cut) <= 30
    assert first_sentence("Uses e.g. soxr. Then more. And more.") == "Uses e.g. soxr."


@pytest.mark.parametrize("width", WIDTHS)
def test_tasks_list_fits_the_width_and_never_splits_a_word(width: int) -> None:
    out = invoke("tasks", "list", width=width)
    tasks = load_builtin_tasks()
    lines = out.splitlines()
    assert all(len(line) <= width for line in lines), max(lines, key=len)
    tokens = set(re.findall(r"[\w.]+", out))
    for name, task in tasks.items():
        assert name in tokens, f"{name} missing or split at width {width}"
        for field in task.params_model.model_fields:
            assert field in tokens, f"{name}: input {field} split at width {width}"
    vocabulary = {w.strip(".,;:()") for t in tasks.values() for w in task_summary(t).split()}
    cut = [w.strip(".,;:()") for w in re.findall(r"(\S+)…", out)]
    assert cut, "long summaries are shortened with an ellipsis"
    assert set(cut) <= vocabulary, f"cut mid-word: {set(cut) - vocabulary}"
    assert ("┃ task" in out) == (width >= 100), "a table when it fits, one block per task otherwise"


def test_tasks_list_json_carries_the_summary() -> None:
    listed = json.loads(invoke("tasks", "list", "--json"))
    train = next(t for t in listed if t["name"] == "model.train")
    assert train["summary"].startswith("Trains a user tower") and train["summary"].endswith(".")
    assert train["inputs"]["properties"]["epochs"]["maximum"] == 1000


def test_tasks_show_gives_real_types_defaults_and_bounds() -> None:
    out = " ".join(invoke("tasks", "show", "model.train", width=160).split())
    assert "auto | cpu | cuda" in out and '"auto"' in out
    assert "integer (>= 1, <= 1000)" in out and "boolean" in out and "(required)" in out
    schema = json.loads(invoke("tasks", "show", "model.train", "--json"))
    assert schema["inputs"]["properties"]["lr_decay"]["enum"] == ["none", "linear", "cosine"]
    result = CliRunner().invoke(app, ["tasks", "show", "model.trian"])
    assert result.exit_code == 2 and "unknown task" in result.output


@pytest.mark.parametrize(
    ("command", "shown", "not_shown"),
    [
        (["audit", "verify"], ["--strict", "--json"], ["<bool>"]),
        (["data", "generate"], ["<parquet|csv|jsonl>", "<int range>"], ["<bool>", "<str>  parquet"]),
        (["submit"], ["--wait", "--no-wait"], ["<bool>"]),
        (["audio", "synth"], ["--planted", "--no-planted"], ["<bool>"]),
        (["tasks", "run"], ["<str> ..."], ["<list[str]>", "<bool>"]),
        ([], ["--debug"], ["<bool>"]),
    ],
)
def test_help_shows_what_each_option_takes(command: list[str], shown: list[str], not_shown: list[str]) -> None:
    out = invoke(*command, "--help", width=160)
    for text in shown:
        assert text in out, f"{command}: {text!r} missing"
    for text in not_shown:
        assert text not in out, f"{command}: {text!r} shown"
