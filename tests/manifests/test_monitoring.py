"""Monitors select what rendered objects really carry (a monitor on a label no pod has looks like
monitoring and scrapes nothing)."""

from __future__ import annotations

from typing import Any

from tests.manifests._k8s import pod_labels, pod_spec, selects


def test_every_service_monitor_selects_a_service_with_its_port(docs: list[dict[str, Any]]) -> None:
    services = [d for d in docs if d["kind"] == "Service"]
    monitors = [d for d in docs if d["kind"] == "ServiceMonitor"]
    assert monitors
    for m in monitors:
        chosen = [s for s in services if selects(m["spec"]["selector"], s["metadata"].get("labels", {}))]
        assert chosen, f"ServiceMonitor {m['metadata']['name']} selects no Service"
        for endpoint in m["spec"]["endpoints"]:
            assert any(endpoint["port"] in {p.get("name") for p in s["spec"]["ports"]} for s in chosen), endpoint


def test_every_pod_monitor_selects_a_pod_with_its_port(docs: list[dict[str, Any]]) -> None:
    pods = [(pod_labels(d), spec) for d in docs if (spec := pod_spec(d)) is not None]
    for m in (d for d in docs if d["kind"] == "PodMonitor"):
        chosen = [spec for labels, spec in pods if selects(m["spec"]["selector"], labels)]
        assert chosen, f"PodMonitor {m['metadata']['name']} selects no pod"
        for endpoint in m["spec"]["podMetricsEndpoints"]:
            names = {p.get("name") for spec in chosen for c in spec["containers"] for p in c.get("ports", [])}
            assert endpoint["port"] in names, endpoint


def test_monitors_are_picked_up_by_the_prometheus_release(docs: list[dict[str, Any]]) -> None:
    for d in docs:
        if d["kind"] in {"ServiceMonitor", "PodMonitor", "PrometheusRule"}:
            assert d["metadata"]["labels"]["release"] == "prometheus", d["metadata"]["name"]
