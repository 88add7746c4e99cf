"""Helpers: render the kustomize overlays (kubectl kustomize, offline) and walk the objects.

Two kinds of overlay:
- platform overlays, ``manifests/overlays/<env>``: the services in the ``aitasks`` namespace;
- runs overlays, ``manifests/runs/<mode>/<env>``: what the namespace where KFP runs execute needs
  (``standalone``: ``kubeflow``; ``multi-user``: a profile namespace).
"""

from __future__ import annotations

import functools
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
MANIFESTS = ROOT / "manifests"
#: Platform overlays by environment name (``dev``, ``prod``), relative to manifests/overlays.
OVERLAYS = sorted(p.name for p in (MANIFESTS / "overlays").iterdir() if p.is_dir())
#: Runs overlays as ``<mode>/<env>`` paths relative to manifests/runs.
RUNS_MODES = ("standalone", "multi-user")
RUNS_OVERLAYS = sorted(
    f"{mode}/{env.name}" for mode in RUNS_MODES for env in (MANIFESTS / "runs" / mode).iterdir() if env.is_dir()
)
#: Every overlay, as a path relative to manifests/ (what `make lint` renders).
ALL_OVERLAYS = [f"overlays/{o}" for o in OVERLAYS] + [f"runs/{o}" for o in RUNS_OVERLAYS]
WORKLOAD_KINDS = {"Deployment", "StatefulSet", "DaemonSet", "Job", "CronJob", "Pod", "ReplicaSet"}
#: The namespace of the platform services.
PLATFORM_NAMESPACE = "aitasks"


@functools.cache
def render_path(relative: str) -> str:
    """``kubectl kustomize manifests/<relative>``."""
    if shutil.which("kubectl") is None:
        pytest.skip("kubectl is not installed")
    return subprocess.run(
        ["kubectl", "kustomize", str(MANIFESTS / relative)],
        check=True,
        capture_output=True,
        text=True,
        timeout=60,
    ).stdout


def render_text(overlay: str) -> str:
    """A platform overlay (``dev``, ``prod``) as YAML text."""
    return render_path(f"overlays/{overlay}")


def load(text: str) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(text) if d]


def render(overlay: str) -> list[dict[str, Any]]:
    """A platform overlay (``dev``, ``prod``) as objects."""
    return load(render_text(overlay))


def render_runs(overlay: str) -> list[dict[str, Any]]:
    """A runs overlay (``standalone/dev``, ``multi-user/prod``, ...) as objects."""
    return load(render_path(f"runs/{overlay}"))


def env_of(overlay: str) -> str:
    """``dev`` or ``prod`` of a platform or runs overlay name."""
    return overlay.rsplit("/", 1)[-1]


def find(docs: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    found = [d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name]
    assert len(found) == 1, f"expected one {kind}/{name}, found {len(found)}"
    return found[0]


def pod_spec(doc: dict[str, Any]) -> Any:
    """The pod spec (a dict) of a workload object, or None for other kinds."""
    kind = doc["kind"]
    if kind not in WORKLOAD_KINDS:
        return None
    if kind == "Pod":
        return doc["spec"]
    if kind == "CronJob":
        return doc["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    return doc["spec"]["template"]["spec"]


def pod_labels(doc: dict[str, Any]) -> Any:
    if doc["kind"] == "Pod":
        return doc["metadata"].get("labels", {})
    if doc["kind"] == "CronJob":
        return doc["spec"]["jobTemplate"]["spec"]["template"]["metadata"].get("labels", {})
    return doc["spec"]["template"]["metadata"].get("labels", {})


def containers(spec: dict[str, Any]) -> Iterator[dict[str, Any]]:
    yield from spec.get("initContainers", [])
    yield from spec.get("containers", [])


def selects(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    """Whether a Kubernetes label selector (matchLabels + matchExpressions) selects ``labels``."""
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


def namespace_labels(name: str) -> dict[str, str]:
    """The labels Kubernetes puts on every namespace (since 1.22): its name."""
    return {"kubernetes.io/metadata.name": name}


def peer_admits(peer: dict[str, Any], own_namespace: str, namespace: str, labels: dict[str, str]) -> bool:
    """Whether a NetworkPolicy peer (from/to entry) in ``own_namespace`` matches a pod with ``labels``
    in ``namespace``. ipBlock peers never match a pod here."""
    if "ipBlock" in peer:
        return False
    if "namespaceSelector" in peer:
        if not selects(peer["namespaceSelector"], namespace_labels(namespace)):
            return False
    elif namespace != own_namespace:
        return False
    return "podSelector" not in peer or selects(peer["podSelector"], labels)
