"""Fixtures over the rendered overlays: platform (`aitasks` namespace), runs (where KFP runs execute), or all."""

from __future__ import annotations

from typing import Any

import pytest

from tests.manifests._k8s import ALL_OVERLAYS, OVERLAYS, RUNS_OVERLAYS, load, pod_spec, render, render_path, render_runs


@pytest.fixture(params=OVERLAYS)
def overlay(request: pytest.FixtureRequest) -> str:
    """A platform overlay: ``dev`` or ``prod``."""
    return str(request.param)


@pytest.fixture
def docs(overlay: str) -> list[dict[str, Any]]:
    return render(overlay)


@pytest.fixture(params=RUNS_OVERLAYS)
def runs_overlay(request: pytest.FixtureRequest) -> str:
    """A runs overlay: ``standalone/dev``, ``multi-user/prod``, ..."""
    return str(request.param)


@pytest.fixture
def runs_docs(runs_overlay: str) -> list[dict[str, Any]]:
    return render_runs(runs_overlay)


@pytest.fixture(params=ALL_OVERLAYS)
def any_overlay(request: pytest.FixtureRequest) -> str:
    """Any overlay, as a path under manifests/ (``overlays/dev``, ``runs/standalone/prod``, ...)."""
    return str(request.param)


@pytest.fixture
def any_docs(any_overlay: str) -> list[dict[str, Any]]:
    return load(render_path(any_overlay))


@pytest.fixture
def workloads(docs: list[dict[str, Any]]) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    found = [(d, spec) for d in docs if (spec := pod_spec(d)) is not None]
    assert found, "no workloads rendered"
    return found
