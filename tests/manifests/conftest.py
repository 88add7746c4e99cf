"""Fixtures over the rendered overlays."""

from __future__ import annotations

from typing import Any

import pytest

from tests.manifests._k8s import OVERLAYS, pod_spec, render


@pytest.fixture(params=OVERLAYS)
def overlay(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def docs(overlay: str) -> list[dict[str, Any]]:
    return render(overlay)


@pytest.fixture
def workloads(docs: list[dict[str, Any]]) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    found = [(d, spec) for d in docs if (spec := pod_spec(d)) is not None]
    assert found, "no workloads rendered"
    return found
