"""NetworkPolicies of the `aitasks` namespace: default deny plus explicit, port-scoped allows, and
ingress to MLflow and Redis admitted from the namespaces where runs execute (by selector).

The runs namespace side (egress of step pods) is tested in test_runs.py.
"""

from __future__ import annotations

from typing import Any

from tests.manifests._k8s import (
    PLATFORM_NAMESPACE,
    RUNS_OVERLAYS,
    peer_admits,
    pod_labels,
    pod_spec,
    render_runs,
    selects,
)
from tests.manifests.test_runs import step_pod_labels

MLFLOW = {"app.kubernetes.io/name": "mlflow"}
REDIS = {"app.kubernetes.io/name": "feast-redis"}
FEAST = {"app.kubernetes.io/name": "feast-apply"}
#: Allows without a peer (any destination) on purpose: Postgres (MLflow backend, Feast SQL registry) is
#: external in prod.
PEERLESS_OK = {("allow-mlflow-egress", 5432), ("allow-feast-apply-egress", 5432), ("allow-aitasks-worker-egress", 5432)}


def policies(docs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [d for d in docs if d["kind"] == "NetworkPolicy"]


def allowed_ports(docs: list[dict[str, Any]], labels: dict[str, str], direction: str) -> set[int]:
    """Ports the policies selecting a pod with ``labels`` allow in ``direction`` (ingress/egress)."""
    ports: set[int] = set()
    for p in policies(docs):
        if selects(p["spec"]["podSelector"], labels):
            for rule in p["spec"].get(direction, []):
                ports |= {int(port["port"]) for port in rule["ports"]}
    return ports


def peers_allowing(docs: list[dict[str, Any]], labels: dict[str, str], port: int) -> list[dict[str, Any]]:
    """The `from` peers of ingress rules that let traffic reach ``labels`` on ``port``."""
    out: list[dict[str, Any]] = []
    for p in policies(docs):
        if selects(p["spec"]["podSelector"], labels):
            for rule in p["spec"].get("ingress", []):
                if any(int(x["port"]) == port for x in rule["ports"]):
                    out += rule.get("from", [])
    return out


def runs_namespaces() -> set[str]:
    """The namespaces the runs overlays put their objects in (where KFP runs execute)."""
    return {d["metadata"]["namespace"] for o in RUNS_OVERLAYS for d in render_runs(o)}


def test_default_deny_both_directions(docs: list[dict[str, Any]]) -> None:
    deny = [
        p
        for p in policies(docs)
        if p["spec"]["podSelector"] == {}
        and set(p["spec"].get("policyTypes", [])) == {"Ingress", "Egress"}
        and not p["spec"].get("ingress")
        and not p["spec"].get("egress")
    ]
    assert len(deny) == 1


def test_every_allow_names_its_ports_and_peers(any_docs: list[dict[str, Any]]) -> None:
    for p in policies(any_docs):
        name = p["metadata"]["name"]
        for direction, peer_key in (("ingress", "from"), ("egress", "to")):
            assert direction.capitalize() in p["spec"]["policyTypes"] or not p["spec"].get(direction), name
            for rule in p["spec"].get(direction, []):
                assert rule.get("ports"), f"{name}: a {direction} rule without ports allows every port"
                for port in rule["ports"]:
                    assert isinstance(port.get("port"), int) and port.get("protocol") in {"TCP", "UDP"}, name
                    assert "endPort" not in port, name
                if not rule.get(peer_key):
                    assert all((name, x["port"]) in PEERLESS_OK for x in rule["ports"]), (
                        f"{name}: {direction} rule without {peer_key} peers"
                    )


def test_dns_is_allowed_to_kube_dns_only(docs: list[dict[str, Any]]) -> None:
    dns = next(p for p in policies(docs) if p["metadata"]["name"] == "allow-dns-egress")
    assert dns["spec"]["podSelector"] == {}
    (rule,) = dns["spec"]["egress"]
    assert {(x["protocol"], x["port"]) for x in rule["ports"]} == {("UDP", 53), ("TCP", 53)}
    assert rule["to"][0]["podSelector"]["matchLabels"] == {"k8s-app": "kube-dns"}


def test_component_allows(docs: list[dict[str, Any]]) -> None:
    assert {53, 5432, 443} <= allowed_ports(docs, MLFLOW, "egress")
    assert allowed_ports(docs, MLFLOW, "ingress") == {5000, 4180, 44180}
    assert allowed_ports(docs, REDIS, "ingress") == {6379}
    assert allowed_ports(docs, REDIS, "egress") == {53}
    assert {53, 6379, 443, 4318} <= allowed_ports(docs, FEAST, "egress")
    assert allowed_ports(docs, FEAST, "ingress") == set()
    # MLflow's UI (oauth2-proxy): the ingress controller only; its metrics: Prometheus only.
    ui_peers = peers_allowing(docs, MLFLOW, 4180)
    assert ui_peers and all("namespaceSelector" in p for p in ui_peers)
    peers = peers_allowing(docs, MLFLOW, 44180)
    assert peers and all(
        p["namespaceSelector"]["matchLabels"] == {"kubernetes.io/metadata.name": "monitoring"} for p in peers
    )


def test_no_step_pods_expected_in_the_platform_namespace(docs: list[dict[str, Any]]) -> None:
    """Steps run in the runs namespace: no policy here exists only for them (it would select nothing)."""
    step = step_pod_labels()[0]
    for p in policies(docs):
        selector = p["spec"]["podSelector"]
        if selector and selects(selector, step):
            raise AssertionError(f"{p['metadata']['name']} selects step pods, which never run in aitasks")


def test_mlflow_and_redis_admit_steps_from_every_runs_namespace_only(docs: list[dict[str, Any]]) -> None:
    """Ingress from the runs namespace by namespaceSelector + podSelector, and from nowhere else."""
    namespaces = runs_namespaces()
    assert {"kubeflow", "kubeflow-user-example-com"} <= namespaces
    for target, port in ((MLFLOW, 5000), (REDIS, 6379)):
        peers = peers_allowing(docs, target, port)
        step_peers = [p for p in peers if "podSelector" in p and selects(p["podSelector"], step_pod_labels()[0])]
        assert step_peers, f"nothing admits steps to {target} on {port}"
        for peer in step_peers:
            assert "namespaceSelector" in peer and "podSelector" in peer, peer
        for labels in step_pod_labels():
            for ns in namespaces:
                assert any(peer_admits(p, PLATFORM_NAMESPACE, ns, labels) for p in peers), (
                    f"a step pod in {ns} cannot reach {target} on {port}: add {ns} to the RUNS NAMESPACES lists"
                )
        # Not every pod of a runs namespace (KFP's own pods), and no namespace that runs nothing of ours.
        assert not any(peer_admits(p, PLATFORM_NAMESPACE, "kubeflow", {"app": "ml-pipeline"}) for p in peers)
        assert not any(peer_admits(p, PLATFORM_NAMESPACE, "default", step_pod_labels()[0]) for p in peers)
    # Redis: the Feast apply Job too, from this namespace.
    assert any(peer_admits(p, PLATFORM_NAMESPACE, PLATFORM_NAMESPACE, FEAST) for p in peers_allowing(docs, REDIS, 6379))


def test_every_served_port_is_reachable_by_someone(docs: list[dict[str, Any]]) -> None:
    """A Service port whose pods no ingress allow admits would be dead under default deny."""
    pods = [(pod_labels(d), spec) for d in docs if (spec := pod_spec(d)) is not None]
    for svc in (d for d in docs if d["kind"] == "Service"):
        targets = [(labels, spec) for labels, spec in pods if selects({"matchLabels": svc["spec"]["selector"]}, labels)]
        assert targets, f"Service {svc['metadata']['name']} selects no pod"
        for labels, spec in targets:
            named = {p["name"]: p["containerPort"] for c in spec["containers"] for p in c.get("ports", [])}
            for port in svc["spec"]["ports"]:
                target = port.get("targetPort", port["port"])
                number = named.get(target, target)
                assert number in allowed_ports(docs, labels, "ingress"), (
                    f"Service {svc['metadata']['name']} port {port['name']} is unreachable"
                )
