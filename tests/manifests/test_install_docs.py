"""docs/{en,fr,de}/install.md document every Secret the manifests and the compiled pipelines reference
(name, keys, how to create it), every overlay, and the runbooks name the namespaces the overlays use."""

from __future__ import annotations

import re
from typing import Any

import pytest

from tests.manifests._k8s import ALL_OVERLAYS, OVERLAYS, ROOT, RUNS_OVERLAYS, containers, pod_spec, render, render_runs
from tests.manifests.test_runs import executors

DOCS = ROOT / "docs"
LANGS = ("en", "fr", "de")
#: Secrets KFP itself creates in the runs namespace; documented as KFP's, not created by the operator.
KFP_OWNED = {"mlpipeline-minio-artifact"}


def referenced_secrets() -> dict[str, set[str]]:
    """Secret name -> the keys anything reads, over every overlay and every compiled step."""
    out: dict[str, set[str]] = {}

    def add(name: str, key: str | None = None) -> None:
        out.setdefault(name, set()).update([key] if key else [])

    for docs in [render(o) for o in OVERLAYS] + [render_runs(o) for o in RUNS_OVERLAYS]:
        for d in docs:
            if d["kind"] == "Role":
                for rule in d["rules"]:
                    if "secrets" in rule["resources"]:
                        for name in rule.get("resourceNames", []):
                            add(name)
            spec: Any = pod_spec(d)
            if spec is None:
                continue
            for v in spec.get("volumes", []):
                if "secret" in v:
                    for item in v["secret"].get("items", []):
                        add(v["secret"]["secretName"], item["key"])
            for c in containers(spec):
                for e in c.get("env", []):
                    ref = e.get("valueFrom", {}).get("secretKeyRef")
                    if ref:
                        add(ref["name"], ref["key"])
                for src in c.get("envFrom", []):
                    if "secretRef" in src:
                        add(src["secretRef"]["name"])
    for spec in executors().values():
        for ref in spec.get("secretAsEnv", []):
            for k in ref["keyToEnv"]:
                add(ref["secretName"], k["secretKey"])
    return out


def install(lang: str) -> str:
    return (DOCS / lang / "install.md").read_text()


def test_the_collector_finds_the_known_secrets() -> None:
    found = referenced_secrets()
    assert {"aitasks-redis", "aitasks-step-secrets", "aitasks-mlflow-db", "aitasks-mlflow-oauth2-proxy"} <= set(found)
    assert {"pseudonymization-key", "redis-url"} <= found["aitasks-step-secrets"]


@pytest.mark.parametrize("lang", LANGS)
def test_every_secret_is_documented_with_its_keys(lang: str) -> None:
    text = install(lang)
    rows = {m.group(1): m.group(0) for m in re.finditer(r"^\| `([a-z0-9-]+)` \|.*$", text, re.M)}
    for name, keys in referenced_secrets().items():
        assert name in rows, f"docs/{lang}/install.md: Secret {name} is not in the Secrets table"
        for key in keys:
            assert f"`{key}`" in rows[name], f"docs/{lang}/install.md: key {key} of {name} is not documented"
        if name not in KFP_OWNED:
            assert re.search(rf"create secret generic {re.escape(name)}\b", text), (
                f"docs/{lang}/install.md: no kubectl command creates {name}"
            )


@pytest.mark.parametrize("lang", LANGS)
def test_install_names_every_overlay_and_the_kfp_requirements(lang: str) -> None:
    text = install(lang)
    for overlay in ALL_OVERLAYS:
        generic = re.sub(r"/(dev|prod)$", "/<env>", overlay)
        assert f"manifests/{generic}" in text or f"manifests/{overlay}" in text, (lang, overlay)
    for needle in ("mkdir /minio: permission denied", "2.15.0", "#12216", "#10857", "aitasks-pipeline-runner"):
        assert needle in text, (lang, needle)
    assert "kubectl auth can-i" in text and "kubectl -n aitasks get pods" in text


def test_the_documented_egress_indexes_are_right() -> None:
    """install.md patches /spec/egress/8 (Feast registry, 5432) and /spec/egress/9 (API server)."""
    policy = next(d for d in render_runs("standalone/prod") if d["metadata"]["name"] == "aitasks-steps-egress")
    rules = policy["spec"]["egress"]
    assert {p["port"] for p in rules[8]["ports"]} == {5432}
    assert {p["port"] for p in rules[9]["ports"]} == {443, 6443}
    for lang in LANGS:
        assert "/spec/egress/8/to" in install(lang) and "/spec/egress/9/to" in install(lang)


@pytest.mark.parametrize("lang", LANGS)
def test_runbook_namespaces_match_the_overlays(lang: str) -> None:
    text = (DOCS / lang / "runbook.md").read_text()
    namespaces = set(re.findall(r"kubectl -n (\S+)", text))
    assert namespaces <= {'"$RUNS_NS"', "aitasks", "monitoring"}, namespaces
    assert "RUNS_NS=kubeflow" in text and "install.md" in text
    assert "kubeflow-user " not in text and "`kubeflow-user`" not in text


def test_readmes_link_the_install_guide() -> None:
    assert "(docs/en/install.md)" in (ROOT / "README.md").read_text()
    for lang in ("fr", "de"):
        assert "(install.md)" in (DOCS / lang / "README.md").read_text()


def slug(heading: str) -> str:
    """GitHub's anchor of a Markdown heading."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def test_alert_runbook_links_point_at_real_headings() -> None:
    text = (DOCS / "en" / "runbook.md").read_text()
    anchors = {slug(h) for h in re.findall(r"^#+ (.+)$", text, re.M)}
    rules = (ROOT / "manifests" / "base" / "monitoring" / "rules.yaml").read_text()
    links = re.findall(r"runbook: docs/en/runbook\.md#(\S+)", rules)
    assert links
    for anchor in links:
        assert anchor in anchors, f"runbook anchor #{anchor} does not exist"
