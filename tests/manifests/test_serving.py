"""Real-time serving (manifests/base/serving.yaml): the commands the image ships, probes on the endpoints the
processes serve, the network paths they need and no more, scraping, and the serving alerts."""

from __future__ import annotations

import re
from typing import Any

import pytest

from tests.manifests._k8s import PLATFORM_NAMESPACE, find, peer_admits
from tests.manifests.test_network import allowed_ports, peers_allowing
from tests.manifests.test_rules import alert_rules

UPDATER = {"app.kubernetes.io/name": "aitasks-updater", "app.kubernetes.io/component": "serving"}
API = {"app.kubernetes.io/name": "aitasks-recommender", "app.kubernetes.io/component": "serving"}


def container(docs: list[dict[str, Any]], name: str) -> dict[str, Any]:
    (c,) = find(docs, "Deployment", name)["spec"]["template"]["spec"]["containers"]
    return c


@pytest.mark.parametrize(
    ("deployment", "command"), [("aitasks-updater", "serve-updates"), ("aitasks-recommender", "serve-api")]
)
def test_commands_exist_and_probes_hit_the_served_port(
    docs: list[dict[str, Any]], deployment: str, command: str
) -> None:
    from typer.main import get_command

    from aitasks.cli import app

    c = container(docs, deployment)
    assert c["command"][:2] == ["aitasks", command]
    options = {o for p in get_command(app).commands[command].params for o in p.opts}  # type: ignore[attr-defined]
    flags = dict(arg.split("=", 1) for arg in c["command"][2:])
    assert set(flags) <= options, f"aitasks {command} has no option {set(flags) - options}"
    port = int(flags["--port"])
    assert {"name": "http", "containerPort": port} in c["ports"]
    assert c["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    assert c["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
    assert c["securityContext"]["readOnlyRootFilesystem"] is True
    assert any(m["mountPath"] == "/tmp" for m in c["volumeMounts"]), "model and index caches need a writable /tmp"


def test_updater_consumers_are_named_after_their_pod(docs: list[dict[str, Any]]) -> None:
    env = {e["name"]: e for e in container(docs, "aitasks-updater")["env"]}
    assert env["POD_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
    spec = find(docs, "Deployment", "aitasks-updater")["spec"]
    assert spec["replicas"] >= 2, "a second consumer claims a dead one's pending entries"


def test_the_service_fronts_the_api(docs: list[dict[str, Any]]) -> None:
    svc = find(docs, "Service", "aitasks-recommender")
    assert svc["spec"]["selector"] == {"app.kubernetes.io/name": "aitasks-recommender"}
    assert svc["spec"]["ports"][0]["targetPort"] == "http"


def test_serving_reaches_what_it_needs_and_no_more(docs: list[dict[str, Any]]) -> None:
    for pod in (UPDATER, API):
        assert allowed_ports(docs, pod, "egress") == {53, 6379, 5000, 4318, 443, 80, 988}
        for target, port in (
            ({"app.kubernetes.io/name": "feast-redis"}, 6379),
            ({"app.kubernetes.io/name": "mlflow"}, 5000),
        ):
            peers = peers_allowing(docs, target, port)
            assert any(peer_admits(p, PLATFORM_NAMESPACE, PLATFORM_NAMESPACE, pod) for p in peers), (target, port)
            assert not any(peer_admits(p, PLATFORM_NAMESPACE, "default", pod) for p in peers), "same namespace only"
    assert allowed_ports(docs, UPDATER, "ingress") == {8080}
    updater_peers = peers_allowing(docs, UPDATER, 8080)
    assert updater_peers and all(
        p["namespaceSelector"]["matchLabels"]["kubernetes.io/metadata.name"] == "monitoring" for p in updater_peers
    ), "only Prometheus reaches the updater"
    assert allowed_ports(docs, API, "ingress") == {8000}
    client = {"aitasks.io/recommendations-client": "true"}
    api_peers = peers_allowing(docs, API, 8000)
    assert any(peer_admits(p, PLATFORM_NAMESPACE, PLATFORM_NAMESPACE, client) for p in api_peers)
    assert not any(peer_admits(p, PLATFORM_NAMESPACE, PLATFORM_NAMESPACE, {"app": "other"}) for p in api_peers)


def test_both_are_scraped(docs: list[dict[str, Any]]) -> None:
    monitor = find(docs, "PodMonitor", "aitasks-serving")
    assert monitor["spec"]["selector"]["matchLabels"] == {"app.kubernetes.io/component": "serving"}
    assert monitor["spec"]["podMetricsEndpoints"][0] == {"port": "http", "path": "/metrics", "interval": "15s"}


def test_serving_alerts_cover_lag_freshness_and_errors(docs: list[dict[str, Any]]) -> None:
    rules = {r["alert"]: r for r in alert_rules(docs)}
    for name in (
        "AitasksUpdaterConsumerLagHigh",
        "AitasksUpdaterFreshnessSlow",
        "AitasksUpdaterErrorRateHigh",
        "AitasksUpdaterStalled",
        "AitasksRecommenderLatencyHigh",
        "AitasksRecommenderErrorRateHigh",
    ):
        assert name in rules, name
    lag = rules["AitasksUpdaterConsumerLagHigh"]["expr"]
    assert re.search(r"absent\(aitasks_updater_consumer_lag\{", lag), "no updater at all must alert too"
    assert "aitasks_updater_freshness_seconds_bucket" in rules["AitasksUpdaterFreshnessSlow"]["expr"]
    assert "> 1" in rules["AitasksUpdaterFreshnessSlow"]["expr"], "the freshness target: p99 under 1 s"
