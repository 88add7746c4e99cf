"""The on-demand workers (manifests/base/ondemand-worker.yaml): the command the image ships, the
autoscaler on the queue the workers consume, the settings that pass both production guards, the network
paths they need."""

from __future__ import annotations

from typing import Any

import pytest

from aitasks.ondemand.app import ondemand_problems
from aitasks.runtime.settings import Settings
from tests.manifests._k8s import PLATFORM_NAMESPACE, find, peer_admits, render
from tests.manifests.test_network import allowed_ports, peers_allowing
from tests.manifests.test_settings import SECRET_VALUES, resolve

WORKER = {"app.kubernetes.io/name": "aitasks-worker", "app.kubernetes.io/component": "ondemand-worker"}
#: Stand-ins for the keys of the Secret aitasks-ondemand (created outside git; docs/en/install.md).
ONDEMAND_SECRET = {
    "broker-url": "amqps://aitasks:s3cr3t@rabbitmq.rabbitmq:5671/aitasks",
    "result-backend-url": "redis://:s3cr3t@feast-redis.aitasks:6379/1",
    "management-url": "http://aitasks:s3cr3t@rabbitmq.rabbitmq:15672/aitasks",
}


def worker_container(docs: list[dict[str, Any]]) -> dict[str, Any]:
    (container,) = find(docs, "Deployment", "aitasks-worker")["spec"]["template"]["spec"]["containers"]
    return container


def test_the_autoscaler_scales_the_worker_on_its_queue(docs: list[dict[str, Any]]) -> None:
    deployment = find(docs, "Deployment", "aitasks-worker")
    assert "replicas" not in deployment["spec"], "the ScaledObject's HPA owns the replica count"
    scaled = find(docs, "ScaledObject", "aitasks-worker")
    assert scaled["spec"]["scaleTargetRef"]["name"] == "aitasks-worker"
    assert 1 <= scaled["spec"]["minReplicaCount"] <= scaled["spec"]["maxReplicaCount"]
    (trigger,) = scaled["spec"]["triggers"]
    assert trigger["type"] == "rabbitmq" and trigger["metadata"]["mode"] == "QueueLength"
    # protocol http: the management API counts unacknowledged messages too (calls in progress keep their pods).
    assert trigger["metadata"]["protocol"] == "http"
    queue = find(docs, "ConfigMap", "aitasks-ondemand")["data"]["AITASKS_ONDEMAND_QUEUE"]
    assert trigger["metadata"]["queueName"] == queue, "the autoscaler watches the queue the workers consume"
    auth = find(docs, "TriggerAuthentication", trigger["authenticationRef"]["name"])
    (ref,) = auth["spec"]["secretTargetRef"]
    assert (ref["parameter"], ref["name"], ref["key"]) == ("host", "aitasks-ondemand", "management-url")


def test_the_worker_runs_the_command_the_image_ships(docs: list[dict[str, Any]]) -> None:
    from typer.main import get_command

    from aitasks.cli import app

    c = worker_container(docs)
    assert c["command"][:2] == ["aitasks", "worker"]
    options = {o for p in get_command(app).commands["worker"].params for o in p.opts}  # type: ignore[attr-defined]
    flags = dict(arg.split("=", 1) for arg in c["command"][2:])
    assert set(flags) <= options, f"aitasks worker has no option {set(flags) - options}"
    assert flags["--pool"] == "prefork", "time limits need the prefork pool"
    health = flags["--health-dir"]
    assert c["readinessProbe"]["exec"]["command"] == ["test", "-e", f"{health}/ready"]
    assert f"{health}/alive" in " ".join(c["livenessProbe"]["exec"]["command"])
    env = {e["name"]: e for e in c["env"]}
    port = int(env["AITASKS_METRICS_PORT"]["value"])
    assert {"name": "metrics", "containerPort": port} in c["ports"]
    assert env["PROMETHEUS_MULTIPROC_DIR"]["value"].startswith("/tmp/"), "writable: the root is read-only"


@pytest.mark.parametrize("overlay", ["prod"])
def test_the_worker_passes_both_production_guards(overlay: str, monkeypatch: pytest.MonkeyPatch) -> None:
    docs = render(overlay)
    c = worker_container(docs)
    env: dict[str, str] = {}
    for src in c["envFrom"]:
        env |= find(docs, "ConfigMap", src["configMapRef"]["name"])["data"]
    for e in c["env"]:
        ref = e.get("valueFrom", {}).get("secretKeyRef")
        if ref:
            env[e["name"]] = {"aitasks-step-secrets": SECRET_VALUES, "aitasks-ondemand": ONDEMAND_SECRET}[ref["name"]][
                ref["key"]
            ]
        else:
            env[e["name"]] = e["value"]
    settings_env = {k: v for k, v in env.items() if k.startswith("AITASKS_")}
    fields = {f"AITASKS_{name.upper()}" for name in Settings.model_fields}
    assert set(find(docs, "ConfigMap", "aitasks-ondemand")["data"]) <= fields
    settings = resolve(settings_env, monkeypatch)
    assert settings.env == "production"
    assert settings.production_problems() == []
    assert ondemand_problems(settings) == []
    assert settings.ondemand_queue == "aitasks" and settings.metrics_port > 0


def test_the_worker_reaches_what_it_needs_and_no_more(docs: list[dict[str, Any]]) -> None:
    assert {53, 5672, 6379, 5000, 4318, 443} <= allowed_ports(docs, WORKER, "egress")
    assert allowed_ports(docs, WORKER, "ingress") == {9464}
    for target, port in (
        ({"app.kubernetes.io/name": "feast-redis"}, 6379),
        ({"app.kubernetes.io/name": "mlflow"}, 5000),
    ):
        peers = peers_allowing(docs, target, port)
        assert any(peer_admits(p, PLATFORM_NAMESPACE, PLATFORM_NAMESPACE, WORKER) for p in peers), (target, port)
        assert not any(peer_admits(p, PLATFORM_NAMESPACE, "default", WORKER) for p in peers), "same namespace only"
    metrics = peers_allowing(docs, WORKER, 9464)
    assert metrics and all(
        p["namespaceSelector"]["matchLabels"]["kubernetes.io/metadata.name"] == "monitoring" for p in metrics
    )
