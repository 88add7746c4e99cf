"""Tiny models built once per session (saved with save_pretrained, loaded back through from_pretrained)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

#: Few training steps: the text model only needs to load, generate and be reproducible here.
TEXT_STEPS = 120


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread() -> Iterator[None]:
    """The generator-level tests call torch directly: one thread, as the tasks get from ``num_threads``."""
    from aitasks.platform.compute import torch_threads

    with torch_threads(1):
        yield


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    from aitasks.content_generation.tiny_models import build_all

    return build_all(tmp_path_factory.mktemp("content-models"), seed=0, text_steps=TEXT_STEPS, text_batch=8)


def write_prompts(path: Path, prompts: list[dict[str, Any]]) -> str:
    path.write_text("".join(json.dumps(p) + "\n" for p in prompts), "utf-8")
    return str(path)


#: One prompt of each kind and template, plus two the validation refuses.
PROMPTS: list[dict[str, Any]] = [
    {"id": "title-1", "kind": "text", "template": "playlist_title", "metadata": {"genre": "jazz", "mood": "focus"}},
    {
        "id": "desc-1",
        "kind": "text",
        "template": "playlist_description",
        "metadata": {"genre": "rock", "mood": "long drives", "tracks": ["Blue Hour by Mira Lane"]},
    },
    {
        "id": "blurb-1",
        "kind": "text",
        "template": "track_blurb",
        "metadata": {"title": "Golden River", "artist": "Nova Trio", "genre": "soul", "year": 1999},
    },
    {"id": "cover-1", "kind": "image", "prompt": "album cover, neon city at night"},
    {"id": "cover-2", "kind": "image", "prompt": "album cover, quiet forest"},
    {"id": "clip-1", "kind": "music", "prompt": "calm lo-fi beat with soft piano"},
    {"id": "clip-2", "kind": "music", "prompt": "fast techno loop"},
    {"id": "bad-pii", "kind": "image", "prompt": "cover for joe.doe@example.com"},
    {"id": "bad-term", "kind": "music", "prompt": "a N4Z! march"},
]

#: Small sizes: the whole chain runs in seconds on the tiny models.
#: One torch thread: on a shared 2-core machine more threads cost many times their work (measured).
GENERATION = {"seed": 7, "max_new_tokens": 16, "image_steps": 4, "audio_seconds": 1.0, "num_threads": 1}


@pytest.fixture(autouse=True)
def _inputs_under_the_test_temp_dir(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """Prompt files and tiny models live beside each test's storage root: allow the session's temp dir as input
    root (storage confinement refuses anything else; tests/runtime/test_confinement.py covers the refusal)."""
    monkeypatch.setenv("AITASKS_INPUT_ROOTS", str(tmp_path_factory.getbasetemp()))
