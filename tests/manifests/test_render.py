"""Manifests render with kubectl kustomize and keep the security defaults."""

from __future__ import annotations

import re
from typing import Any

from tests.manifests._k8s import ALL_OVERLAYS, OVERLAYS, ROOT, render


def test_both_overlays_exist() -> None:
    assert {"dev", "prod"} <= set(OVERLAYS)


def test_every_overlay_renders(any_overlay: str, any_docs: list[dict[str, Any]]) -> None:
    assert any_docs, any_overlay
    for d in any_docs:
        where = f"{any_overlay}: {d['kind']}/{d['metadata']['name']}"
        assert d["metadata"].get("namespace") or d["kind"] == "Namespace", f"{where} has no namespace"


def test_make_lint_renders_every_overlay() -> None:
    """`make lint` renders each overlay for checkov: a new overlay must be added to its lines."""
    makefile = (ROOT / "Makefile").read_text()
    lint = makefile[makefile.index("\nlint:") :].split("\n\n", 1)[0]
    rendered = set(re.findall(r"kubectl kustomize manifests/(\S+) > build/manifests/\S+\.yaml", lint))
    assert rendered == set(ALL_OVERLAYS)


def test_overlay_renders_with_restricted_namespace(overlay: str, docs: list[dict[str, Any]]) -> None:
    kinds = {(d["kind"], d["metadata"]["name"]) for d in docs}
    assert ("Namespace", "aitasks") in kinds
    ns = next(d for d in docs if d["kind"] == "Namespace")
    assert ns["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"
    for d in docs:
        if d["kind"] != "Namespace":
            assert d["metadata"].get("namespace") == "aitasks", f"{d['kind']}/{d['metadata']['name']}"
    # The runner account belongs to the namespace where runs execute (manifests/runs), not here.
    assert not any(d["metadata"]["name"] == "aitasks-pipeline-runner" for d in docs)
    settings = next(d for d in docs if d["kind"] == "ConfigMap" and d["metadata"]["name"] == "aitasks-settings")
    assert settings["data"]["AITASKS_STORAGE_ROOT"].startswith("gs://")
    for key, value in settings["data"].items():
        assert not any(s in key for s in ("PASSWORD", "SECRET", "TOKEN", "KEY")), (
            f"secret-like key {key} in a ConfigMap"
        )
        assert "@" not in value, f"{key} looks like it carries credentials"


def test_expected_components_render(overlay: str, docs: list[dict[str, Any]]) -> None:
    kinds = {(d["kind"], d["metadata"]["name"]) for d in docs}
    for expected in [
        ("Deployment", "mlflow"),
        ("Service", "mlflow"),
        ("Deployment", "feast-redis"),
        ("Service", "feast-redis"),
        ("Job", "feast-apply"),
        ("NetworkPolicy", "default-deny-all"),
        ("PrometheusRule", "aitasks"),
        ("ConfigMap", "aitasks-grafana-dashboard"),
    ]:
        assert expected in kinds, f"{expected} missing in {overlay}"
    assert {k for k, _ in kinds} & {"ServiceMonitor", "PodMonitor"}
    # Postgres runs in the cluster only in dev; prod points the MLflow DSN Secret at a managed instance.
    assert (("StatefulSet", "mlflow-postgres") in kinds) == (overlay == "dev")


def test_prod_differs_from_dev_where_it_must() -> None:
    def cm(overlay: str, name: str) -> Any:
        return next(d for d in render(overlay) if d["kind"] == "ConfigMap" and d["metadata"]["name"] == name)["data"]

    assert "prod" in cm("prod", "aitasks-mlflow")["artifacts-destination"]
    assert "dev" in cm("dev", "aitasks-mlflow")["artifacts-destination"]
    assert "prod" in cm("prod", "aitasks-feast-apply")["FEAST_USER_FEATURES_URI"]
