"""Default-deny NetworkPolicy plus explicit, port-scoped allows for each component."""

from __future__ import annotations

from typing import Any

from tests.manifests._k8s import pod_labels, pod_spec

STEP = {"aitasks.io/pipeline": "reco-training", "aitasks.io/step": "train"}
MLFLOW = {"app.kubernetes.io/name": "mlflow"}
REDIS = {"app.kubernetes.io/name": "feast-redis"}
FEAST = {"app.kubernetes.io/name": "feast-apply"}
#: Allows without a peer (any destination) on purpose: Postgres is external in prod.
PEERLESS_OK = {("allow-mlflow-egress", 5432)}


def selects(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    if any(labels.get(k) != v for k, v in selector.get("matchLabels", {}).items()):
        return False
    for expr in selector.get("matchExpressions", []):
        key, op, values = expr["key"], expr["operator"], expr.get("values", [])
        ok = {
            "Exists": key in labels,
            "DoesNotExist": key not in labels,
            "In": labels.get(key) in values,
            "NotIn": labels.get(key) not in values,
        }[op]
        if not ok:
            return False
    return True


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


def test_every_allow_names_its_ports_and_peers(docs: list[dict[str, Any]]) -> None:
    for p in policies(docs):
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
    assert {53, 5000, 6379, 443} <= allowed_ports(docs, STEP, "egress")
    assert 5432 not in allowed_ports(docs, STEP, "egress"), "only MLflow talks to Postgres"
    assert {53, 5432, 443} <= allowed_ports(docs, MLFLOW, "egress")
    assert allowed_ports(docs, MLFLOW, "ingress") == {5000, 4180, 44180}
    assert allowed_ports(docs, REDIS, "ingress") == {6379}
    assert allowed_ports(docs, REDIS, "egress") == {53}
    assert {53, 6379, 443} <= allowed_ports(docs, FEAST, "egress")
    assert allowed_ports(docs, FEAST, "ingress") == set()
    # MLflow's API: steps only; its UI (oauth2-proxy): the ingress controller only.
    api_peers = peers_allowing(docs, MLFLOW, 5000)
    assert api_peers and all(selects(p["podSelector"], STEP) and "namespaceSelector" not in p for p in api_peers)
    ui_peers = peers_allowing(docs, MLFLOW, 4180)
    assert ui_peers and all("namespaceSelector" in p for p in ui_peers)
    # Prometheus scrapes metrics ports from the monitoring namespace.
    for labels, port in (({"aitasks.io/metrics": "true"}, 9464), (MLFLOW, 44180)):
        peers = peers_allowing(docs, labels, port)
        assert peers and all(
            p["namespaceSelector"]["matchLabels"] == {"kubernetes.io/metadata.name": "monitoring"} for p in peers
        )


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
