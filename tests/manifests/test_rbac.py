"""Least-privilege RBAC: every rule of every Role is read and checked, in every overlay.

The platform's accounts in `aitasks` (MLflow, Feast apply Job, datastores) use no Kubernetes API: the
platform overlays render no Role. The one Role is the run service account's in the runs namespace
(manifests/runs/base/serviceaccount.yaml), for what KFP and Argo do inside every step pod. The checker
is also exercised on synthetic Roles below so that a Role added later is held to the same rules.
"""

from __future__ import annotations

from typing import Any

import pytest

#: Verbs a namespaced Role of this platform may grant. No escalate/bind/impersonate, no deletecollection.
ALLOWED_VERBS = {"get", "list", "watch", "create", "update", "patch", "delete"}
#: Resources a Role may read only by name (resourceNames) and only with `get`.
BY_NAME_ONLY = {"secrets"}
#: Resources no Role of this platform may touch.
FORBIDDEN_RESOURCES = {
    "pods/exec",
    "pods/attach",
    "pods/portforward",
    "roles",
    "rolebindings",
    "serviceaccounts/token",
    "nodes/proxy",
}


def rule_problems(role: dict[str, Any]) -> list[str]:
    """Every problem of every rule of ``role`` (not just the first)."""
    name = f"{role['kind']}/{role['metadata']['name']}"
    problems: list[str] = []
    rules = role.get("rules") or []
    if role.get("aggregationRule"):
        problems.append(f"{name}: aggregationRule grants whatever other roles grant")
    for i, rule in enumerate(rules):
        where = f"{name} rule {i}"
        verbs = rule.get("verbs") or []
        if not verbs:
            problems.append(f"{where}: no verbs")
        for field in ("verbs", "resources", "apiGroups", "resourceNames", "nonResourceURLs"):
            if any("*" in str(v) for v in rule.get(field) or []):
                problems.append(f"{where}: wildcard in {field}")
        problems += [f"{where}: verb {v!r} not allowed" for v in verbs if v != "*" and v not in ALLOWED_VERBS]
        if "nonResourceURLs" in rule:
            problems.append(f"{where}: nonResourceURLs")
        if not rule.get("resources"):
            problems.append(f"{where}: no explicit resources")
        if "apiGroups" not in rule:
            problems.append(f"{where}: no explicit apiGroups")
        problems += [
            f"{where}: resource {r!r} forbidden" for r in rule.get("resources") or [] if r in FORBIDDEN_RESOURCES
        ]
        for r in set(rule.get("resources") or []) & BY_NAME_ONLY:
            if not rule.get("resourceNames") or set(verbs) - {"get"}:
                problems.append(f"{where}: resource {r!r} only by resourceNames and with get")
    return problems


def test_no_cluster_scoped_rbac(any_docs: list[dict[str, Any]]) -> None:
    kinds = {d["kind"] for d in any_docs}
    assert not kinds & {"ClusterRole", "ClusterRoleBinding"}


def test_every_role_rule_is_explicit_and_least_privilege(any_docs: list[dict[str, Any]]) -> None:
    problems = [p for d in any_docs if d["kind"] == "Role" for p in rule_problems(d)]
    assert not problems, "\n".join(problems)


def test_platform_overlays_bind_nothing(docs: list[dict[str, Any]]) -> None:
    """MLflow, the Feast apply Job and the datastores never call the Kubernetes API."""
    assert not {d["kind"] for d in docs} & {"Role", "RoleBinding"}


def test_bindings_point_at_rendered_roles_and_accounts(any_docs: list[dict[str, Any]]) -> None:
    roles = {d["metadata"]["name"] for d in any_docs if d["kind"] == "Role"}
    accounts = {d["metadata"]["name"]: d for d in any_docs if d["kind"] == "ServiceAccount"}
    for b in (d for d in any_docs if d["kind"] == "RoleBinding"):
        assert b["roleRef"]["kind"] == "Role" and b["roleRef"]["name"] in roles, b["metadata"]["name"]
        for s in b["subjects"]:
            assert s["kind"] == "ServiceAccount" and s["name"] in accounts, s
            assert s.get("namespace") == b["metadata"]["namespace"], s


def test_accounts_without_bindings_mount_no_token(any_docs: list[dict[str, Any]]) -> None:
    bound = {s["name"] for d in any_docs if d["kind"] == "RoleBinding" for s in d["subjects"]}
    for sa in (d for d in any_docs if d["kind"] == "ServiceAccount"):
        if sa["metadata"]["name"] not in bound:
            assert sa.get("automountServiceAccountToken") is False, sa["metadata"]["name"]


def _role(*rules: dict[str, Any]) -> dict[str, Any]:
    return {"kind": "Role", "metadata": {"name": "r"}, "rules": list(rules)}


GOOD = {"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list"]}


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        ({"apiGroups": [""], "resources": ["pods"], "verbs": ["*"]}, "wildcard in verbs"),
        ({"apiGroups": ["*"], "resources": ["pods"], "verbs": ["get"]}, "wildcard in apiGroups"),
        ({"apiGroups": [""], "resources": ["*"], "verbs": ["get"]}, "wildcard in resources"),
        ({"apiGroups": [""], "resources": ["pods"], "verbs": ["escalate"]}, "verb 'escalate' not allowed"),
        ({"apiGroups": [""], "resources": ["secrets"], "verbs": ["get"]}, "only by resourceNames and with get"),
        (
            {"apiGroups": [""], "resources": ["secrets"], "resourceNames": ["s"], "verbs": ["get", "list"]},
            "only by resourceNames and with get",
        ),
        ({"apiGroups": [""], "resources": ["pods/exec"], "verbs": ["create"]}, "resource 'pods/exec' forbidden"),
        ({"apiGroups": [""], "resources": ["pods"], "verbs": []}, "no verbs"),
        ({"resources": ["pods"], "verbs": ["get"]}, "no explicit apiGroups"),
    ],
)
def test_checker_reads_every_rule(bad: dict[str, Any], message: str) -> None:
    assert rule_problems(_role(GOOD)) == []
    # The bad rule comes second: a checker that reads only the first rule misses it.
    problems = rule_problems(_role(GOOD, bad))
    assert any(p.endswith(message) and "rule 1" in p for p in problems), problems
