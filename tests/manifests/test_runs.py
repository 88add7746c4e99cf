"""The namespace where KFP runs execute: what every runs overlay puts there, for each KFP mode.

Step pods are the ones the compiled pipelines describe (pipelines/compiled/*.yaml, the kubernetes
platform spec: pod labels, ConfigMap and Secret env). The tests build those pods and check that the
rendered NetworkPolicies select them, let them reach every service their settings name, and leave
KFP's own pods alone.
"""

from __future__ import annotations

import functools
import ipaddress
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

from tests.manifests._k8s import (
    PLATFORM_NAMESPACE,
    ROOT,
    RUNS_MODES,
    RUNS_OVERLAYS,
    env_of,
    find,
    peer_admits,
    selects,
)

COMPILED = ROOT / "pipelines" / "compiled"
#: Labels of KFP's own pods, which no aitasks policy may select (a policy selecting them would cut
#: them off): the API server, MLMD, a driver pod, the UI.
KFP_POD_LABELS = [
    {"app": "ml-pipeline", "application-crd-id": "kubeflow-pipelines"},
    {"component": "metadata-grpc-server"},
    {"workflows.argoproj.io/workflow": "reco-training-abcde", "pipelines.kubeflow.org/v2_component": "true"},
    {"app": "ml-pipeline-ui"},
]
#: KFP services a step pod's launcher talks to, in `kubeflow`: (pod labels, port).
KFP_SERVICES = [
    ({"app": "ml-pipeline"}, 8887),  # API server gRPC (cache, run/task records)
    ({"component": "metadata-grpc-server"}, 8080),  # MLMD
    ({"app": "minio"}, 9000),  # object store (MinIO)
    ({"app": "seaweedfs"}, 8333),  # object store (SeaweedFS; Service port 9000 targets 8333)
]


@functools.cache
def executors() -> dict[str, dict[str, Any]]:
    """``<pipeline>/<executor>`` -> its kubernetes platform spec, for every compiled pipeline."""
    out: dict[str, dict[str, Any]] = {}
    for path in sorted(COMPILED.glob("*.yaml")):
        docs = [d for d in yaml.safe_load_all(path.read_text()) if d]
        platform = next((d for d in docs if "platforms" in d), None)
        assert platform, f"{path.name}: no kubernetes platform spec"
        for name, spec in platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"].items():
            out[f"{path.stem}/{name}"] = spec
    assert out, "no compiled pipelines"
    return out


def step_pod_labels() -> list[dict[str, str]]:
    """The pod labels of every compiled step."""
    labels = [spec.get("podMetadata", {}).get("labels", {}) for spec in executors().values()]
    assert all(labels), "a compiled step has no pod labels"
    return labels


def runner_account() -> str:
    from pipelines.kfp_api import RUN_SERVICE_ACCOUNT

    return RUN_SERVICE_ACCOUNT


def policies(docs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [d for d in docs if d["kind"] == "NetworkPolicy"]


def _ip_in(block: dict[str, Any], ip: str) -> bool:
    address = ipaddress.ip_address(ip)
    if address not in ipaddress.ip_network(block["cidr"]):
        return False
    return not any(address in ipaddress.ip_network(e) for e in block.get("except", []))


def egress_allows(
    docs: list[dict[str, Any]],
    source: dict[str, str],
    *,
    port: int,
    protocol: str = "TCP",
    namespace: str | None = None,
    labels: dict[str, str] | None = None,
    ip: str | None = None,
) -> bool:
    """Whether the policies let a pod with ``source`` labels (in the policies' namespace) open
    ``protocol``/``port`` to a pod (``namespace`` + ``labels``) or an address (``ip``)."""
    selecting = [p for p in policies(docs) if "Egress" in p["spec"]["policyTypes"]]
    selecting = [p for p in selecting if selects(p["spec"]["podSelector"], source)]
    if not selecting:
        return True  # no egress policy selects the pod: everything is allowed
    for p in selecting:
        own = p["metadata"]["namespace"]
        for rule in p["spec"].get("egress", []):
            if not any(int(x["port"]) == port and x.get("protocol", "TCP") == protocol for x in rule["ports"]):
                continue
            for peer in rule.get("to", []):
                if ip is not None and "ipBlock" in peer and _ip_in(peer["ipBlock"], ip):
                    return True
                if namespace is not None and peer_admits(peer, own, namespace, labels or {}):
                    return True
    return False


def _service(url: str) -> tuple[str, int]:
    """``http://name.namespace:port/...`` -> (namespace, port)."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    assert host.count(".") >= 1, f"{url}: use <service>.<namespace> (steps run outside that namespace)"
    assert parts.port, f"{url}: name the port"
    return host.split(".")[1], parts.port


def test_compiled_steps_use_the_objects_the_runs_overlays_render() -> None:
    """Every compiled step reads the ConfigMap and the Secret these manifests are built around."""
    for name, spec in executors().items():
        maps = {m["configMapName"] for m in spec.get("configMapAsEnv", [])}
        secrets = {s["secretName"]: s for s in spec.get("secretAsEnv", [])}
        assert maps == {"aitasks-settings"}, name
        assert set(secrets) == {"aitasks-step-secrets"}, name
        keys = {k["secretKey"]: k["envVar"] for k in secrets["aitasks-step-secrets"]["keyToEnv"]}
        assert {"pseudonymization-key": "AITASKS_PSEUDONYMIZATION_KEY", "redis-url": "AITASKS_REDIS_URL"}.items() <= (
            keys.items()
        )


def test_every_mode_has_dev_and_prod() -> None:
    assert {f"{m}/{e}" for m in RUNS_MODES for e in ("dev", "prod")} <= set(RUNS_OVERLAYS)


def test_runs_objects_exist_in_the_runs_namespace(runs_overlay: str, runs_docs: list[dict[str, Any]]) -> None:
    mode = runs_overlay.split("/", maxsplit=1)[0]
    namespaces = {d["metadata"].get("namespace") for d in runs_docs}
    assert len(namespaces) == 1, f"{runs_overlay}: objects in {namespaces}"
    (namespace,) = namespaces
    if mode == "standalone":
        assert namespace == "kubeflow"
    else:
        assert namespace not in {"kubeflow", PLATFORM_NAMESPACE, None}, "multi-user runs go to a profile namespace"
    kinds = {(d["kind"], d["metadata"]["name"]) for d in runs_docs}
    assert {
        ("ConfigMap", "aitasks-settings"),
        ("ServiceAccount", runner_account()),
        ("Role", "aitasks-pipeline-runner"),
        ("RoleBinding", "aitasks-pipeline-runner"),
        ("NetworkPolicy", "aitasks-steps-egress"),
        ("NetworkPolicy", "aitasks-steps-deny-ingress"),
    } <= kinds
    # The namespace belongs to KFP or its profile controller: never created, labelled or deleted by
    # us (`kubectl delete -k` must not take `kubeflow` with it). Secrets are created outside git.
    assert not {k for k, _ in kinds} & {"Namespace", "Secret"}
    assert all(d["metadata"]["labels"]["app.kubernetes.io/part-of"] == "aitasks" for d in runs_docs)


def test_runner_account(runs_overlay: str, runs_docs: list[dict[str, Any]]) -> None:
    sa = find(runs_docs, "ServiceAccount", runner_account())
    # GCS through Workload Identity, per environment.
    gsa = sa["metadata"]["annotations"]["iam.gke.io/gcp-service-account"]
    assert gsa.endswith(f"@aitasks-{env_of(runs_overlay)}.iam.gserviceaccount.com"), gsa
    # KFP's driver, launcher and Argo's wait container need the token (see serviceaccount.yaml).
    assert sa["automountServiceAccountToken"] is True
    binding = find(runs_docs, "RoleBinding", "aitasks-pipeline-runner")
    role_ref = {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "aitasks-pipeline-runner"}
    assert binding["roleRef"] == role_ref
    ns = sa["metadata"]["namespace"]
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": runner_account(), "namespace": ns}]
    role = find(runs_docs, "Role", "aitasks-pipeline-runner")
    rules = {
        (tuple(r["apiGroups"]), tuple(r["resources"]), tuple(r.get("resourceNames", [])), tuple(sorted(r["verbs"])))
        for r in role["rules"]
    }
    assert rules == {
        (("argoproj.io",), ("workflowtaskresults",), (), ("create", "patch")),
        (("",), ("pods",), (), ("get",)),
        (("",), ("configmaps",), ("kfp-launcher",), ("get",)),
        (("",), ("secrets",), ("mlpipeline-minio-artifact",), ("get",)),
        # model.train_pytorchjob: its own jobs only; never updated.
        (("kubeflow.org",), ("pytorchjobs",), (), ("create", "delete", "get", "watch")),
    }


def test_policies_select_step_pods_only(runs_docs: list[dict[str, Any]]) -> None:
    """Every compiled step pod is selected by both step policies; KFP's own pods by none."""
    for p in policies(runs_docs):
        assert p["spec"]["podSelector"], f"{p['metadata']['name']}: a namespace-wide policy would cut KFP's pods"
        for labels in KFP_POD_LABELS:
            assert not selects(p["spec"]["podSelector"], labels), (p["metadata"]["name"], labels)
    for labels in step_pod_labels():
        chosen = {p["metadata"]["name"] for p in policies(runs_docs) if selects(p["spec"]["podSelector"], labels)}
        assert chosen == {"aitasks-steps-egress", "aitasks-steps-deny-ingress"}, labels
    deny = find(runs_docs, "NetworkPolicy", "aitasks-steps-deny-ingress")
    assert deny["spec"]["policyTypes"] == ["Ingress"] and not deny["spec"].get("ingress")


def test_steps_reach_every_service_their_settings_name(runs_docs: list[dict[str, Any]]) -> None:
    settings = find(runs_docs, "ConfigMap", "aitasks-settings")["data"]
    targets = {
        "AITASKS_MLFLOW_TRACKING_URI": {"app.kubernetes.io/name": "mlflow"},
        "AITASKS_PUSHGATEWAY_URL": {"app.kubernetes.io/name": "prometheus-pushgateway"},
        "AITASKS_OTLP_ENDPOINT": {"app.kubernetes.io/name": "opentelemetry-collector"},
    }
    for step in step_pod_labels():
        for key, labels in targets.items():
            namespace, port = _service(settings[key])
            assert egress_allows(runs_docs, step, port=port, namespace=namespace, labels=labels), (key, step)
        # Redis: the URL is in the Secret; the Service is feast-redis in `aitasks` (manifests/base/redis.yaml).
        assert egress_allows(
            runs_docs, step, port=6379, namespace=PLATFORM_NAMESPACE, labels={"app.kubernetes.io/name": "feast-redis"}
        )
        dns = {"k8s-app": "kube-dns"}
        for protocol in ("UDP", "TCP"):
            assert egress_allows(runs_docs, step, port=53, protocol=protocol, namespace="kube-system", labels=dns)
        for labels, port in KFP_SERVICES:
            assert egress_allows(runs_docs, step, port=port, namespace="kubeflow", labels=labels), (labels, port)
        assert egress_allows(runs_docs, step, port=443, ip="142.250.74.91")  # storage.googleapis.com
        for port in (80, 988):  # GKE metadata server (Workload Identity)
            assert egress_allows(runs_docs, step, port=port, ip="169.254.169.254")
        assert egress_allows(runs_docs, step, port=5432, ip="10.20.0.5")  # Feast SQL registry (managed PostgreSQL)
        assert egress_allows(runs_docs, step, port=443, ip="10.0.0.1")  # a private API server endpoint
        assert egress_allows(runs_docs, step, port=6443, ip="172.16.0.2")


def test_steps_reach_nothing_else(runs_docs: list[dict[str, Any]]) -> None:
    step = step_pod_labels()[0]
    mlflow = {"app.kubernetes.io/name": "mlflow"}
    assert not egress_allows(runs_docs, step, port=5432, namespace=PLATFORM_NAMESPACE, labels={})  # MLflow's Postgres
    assert not egress_allows(runs_docs, step, port=4180, namespace=PLATFORM_NAMESPACE, labels=mlflow)
    assert not egress_allows(runs_docs, step, port=5000, namespace="default", labels=mlflow)
    assert not egress_allows(runs_docs, step, port=6379, namespace="kubeflow", labels={"app": "cache"})
    assert not egress_allows(runs_docs, step, port=8888, namespace="kubeflow", labels={"app": "seaweedfs"})
    assert not egress_allows(runs_docs, step, port=22, ip="142.250.74.91")
    assert not egress_allows(runs_docs, step, port=80, ip="142.250.74.91")
    assert not egress_allows(runs_docs, step, port=3306, ip="10.20.0.5")
    assert not egress_allows(runs_docs, step, port=5432, ip="142.250.74.91")


@pytest.mark.parametrize("env", ["dev", "prod"])
def test_modes_differ_only_in_namespace(env: str) -> None:
    from tests.manifests._k8s import render_runs

    def strip(docs: list[dict[str, Any]]) -> list[dict[str, Any]]:
        out = []
        for doc in docs:
            d = yaml.safe_load(yaml.safe_dump(doc))
            d["metadata"].pop("namespace", None)
            for s in d.get("subjects", []):
                s.pop("namespace", None)
            out.append(d)
        return out

    assert strip(render_runs(f"standalone/{env}")) == strip(render_runs(f"multi-user/{env}"))
