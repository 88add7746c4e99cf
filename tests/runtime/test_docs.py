"""Every task is documented in EN, FR and DE, and the rendered docs are current."""

from __future__ import annotations

from pathlib import Path

import pytest

from aitasks.runtime.docs import LANGUAGES, missing_languages, parse_languages, render_all
from aitasks.runtime.task import load_builtin_tasks

ROOT = Path(__file__).resolve().parents[2]


def test_parse_languages() -> None:
    doc = "Summary.\n\nEN: One\n  two.\nFR: Un\nDE: Eins\n\nArgs:\n    x: ignored\n"
    assert parse_languages(doc) == {"en": "One two.", "fr": "Un", "de": "Eins"}
    assert missing_languages("EN: only english") == ["fr", "de"]


@pytest.mark.parametrize("name", sorted(load_builtin_tasks()))
def test_task_has_all_languages(name: str) -> None:
    task = load_builtin_tasks()[name]
    assert missing_languages(task.doc) == [], f"{name} lacks {missing_languages(task.doc)}"
    texts = parse_languages(task.doc)
    assert len({texts[lang] for lang in LANGUAGES}) == 3, "the three texts are translations, not copies"


def test_rendered_docs_are_current() -> None:
    for path, text in render_all(load_builtin_tasks(), ROOT / "docs").items():
        assert path.exists() and path.read_text("utf-8") == text, f"{path} is stale: run `make docs`"
