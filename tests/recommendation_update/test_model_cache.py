"""Where serving caches a model version: never a relative ``gs:/`` folder in the working directory."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import pytest

from aitasks.recommendation_update import recommend as rec
from aitasks.runtime.settings import Settings


@pytest.fixture
def dests(monkeypatch: pytest.MonkeyPatch) -> list[Path]:
    import aitasks.platform.registry as registry

    seen: list[Path] = []

    def download_model(reg: Any, *, version: int, dest: Path) -> tuple[Any, Path]:
        seen.append(dest)
        return None, dest

    monkeypatch.setattr(registry, "download_model", download_model)
    monkeypatch.setattr(registry, "registry_config", lambda settings, model_name: None)
    return seen


def test_a_gcs_root_caches_under_the_temp_directory(dests: list[Path], tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    rec._model_dir(Settings(storage_root="gs://aitasks-prod/runs"), "reco", 3)
    rec._model_dir(Settings(storage_root="gs://aitasks-dev/runs"), "reco", 3)
    a, b = dests
    assert a.is_absolute() and a.is_relative_to(Path(tempfile.gettempdir()) / "aitasks-model-cache")
    assert a.parts[-3:] == ("models", "reco", "v3")
    assert a != b, "two roots never share a cache folder"
    assert not (tmp_path / "gs:").exists()


def test_a_local_root_caches_beside_its_runs(dests: list[Path], tmp_path: Path) -> None:
    rec._model_dir(Settings(storage_root=str(tmp_path / "store")), "reco", 1)
    assert dests == [tmp_path / "store" / "cache" / "models" / "reco" / "v1"]
