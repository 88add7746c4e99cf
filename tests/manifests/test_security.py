"""Restricted Pod Security, resources, probes, pinned images and secret references on every workload."""

from __future__ import annotations

import json
import re
from typing import Any

import pytest

from tests.manifests._k8s import ROOT, containers

Workloads = list[tuple[dict[str, Any], dict[str, Any]]]
SERVER_KINDS = {"Deployment", "StatefulSet", "DaemonSet"}
#: ``<project version>-<24 hex>``: the content tag components/images.py derives and CI pushes.
CONTENT_TAG = re.compile(r"\d+\.\d+\.\d+[0-9A-Za-z.]*-[0-9a-f]{24}")
SECRET_NAME = re.compile(r"PASSWORD|SECRET|TOKEN|CREDENTIAL|PRIVATE|_KEY$|^KEY$|DSN|BACKEND_STORE_URI", re.I)


def _name(doc: dict[str, Any], container: dict[str, Any] | None = None) -> str:
    base = f"{doc['kind']}/{doc['metadata']['name']}"
    return f"{base}:{container['name']}" if container else base


def test_every_container_has_requests_and_limits(workloads: Workloads) -> None:
    for doc, spec in workloads:
        for c in containers(spec):
            res = c.get("resources", {})
            for part in ("requests", "limits"):
                for what in ("cpu", "memory"):
                    assert res.get(part, {}).get(what), f"{_name(doc, c)} lacks {part}.{what}"


def test_every_container_is_restricted(workloads: Workloads) -> None:
    for doc, spec in workloads:
        pod_sc = spec.get("securityContext", {})
        for c in containers(spec):
            sc = c.get("securityContext", {})
            where = _name(doc, c)
            assert sc.get("runAsNonRoot", pod_sc.get("runAsNonRoot")) is True, where
            uid = sc.get("runAsUser", pod_sc.get("runAsUser"))
            assert isinstance(uid, int) and uid > 0, f"{where}: runAsUser must be a numeric non-root uid"
            assert sc.get("readOnlyRootFilesystem") is True, where
            assert sc.get("allowPrivilegeEscalation") is False, where
            assert sc.get("privileged", False) is False, where
            assert sc.get("capabilities", {}).get("drop") == ["ALL"], where
            assert not sc.get("capabilities", {}).get("add"), where
            seccomp = sc.get("seccompProfile", pod_sc.get("seccompProfile", {}))
            assert seccomp.get("type") == "RuntimeDefault", where
            # A read-only root needs a writable /tmp from an emptyDir.
            volumes = {v["name"]: v for v in spec.get("volumes", [])}
            tmp = [m for m in c.get("volumeMounts", []) if m["mountPath"] == "/tmp"]
            assert tmp and "emptyDir" in volumes[tmp[0]["name"]], f"{where}: no emptyDir at /tmp"
        for host in ("hostNetwork", "hostPID", "hostIPC"):
            assert not spec.get(host), f"{_name(doc)} uses {host}"
        assert not any("hostPath" in v for v in spec.get("volumes", [])), f"{_name(doc)} mounts a hostPath"


def test_no_service_account_token_unless_needed(docs: list[dict[str, Any]], workloads: Workloads) -> None:
    accounts = {d["metadata"]["name"]: d for d in docs if d["kind"] == "ServiceAccount"}
    bound = {
        s["name"]
        for d in docs
        if d["kind"] == "RoleBinding"
        for s in d.get("subjects", [])
        if s["kind"] == "ServiceAccount"
    }
    for doc, spec in workloads:
        sa = spec.get("serviceAccountName")
        assert sa in accounts, f"{_name(doc)} runs as {sa!r}, which is not rendered (default account?)"
        if sa not in bound:
            assert spec.get("automountServiceAccountToken") is False, f"{_name(doc)} mounts a token it cannot use"
            assert accounts[sa].get("automountServiceAccountToken") is False, sa


def test_servers_have_probes(workloads: Workloads) -> None:
    for doc, spec in workloads:
        if doc["kind"] in SERVER_KINDS:
            for c in spec["containers"]:
                assert c.get("readinessProbe") and c.get("livenessProbe"), f"{_name(doc, c)} lacks probes"


def test_images_are_pinned_and_aitasks_images_come_from_the_table(workloads: Workloads) -> None:
    table = json.loads((ROOT / "images" / "images.json").read_text())
    ours = set(table["images"].values())
    for doc, spec in workloads:
        for c in containers(spec):
            image = c["image"]
            assert "@sha256:" in image or re.search(r":[\w][\w.-]*$", image.rsplit("/", 1)[-1]), image
            assert not image.endswith(":latest"), image
            assert c.get("imagePullPolicy", "IfNotPresent") != "Always" or "@sha256:" in image
            if image.startswith(table["registry"]):
                # Our images: a name from the table and a content tag CI pushed (components/images.py).
                name, tag = image.split("@", 1)[0].rsplit(":", 1)
                assert name in ours, f"{_name(doc, c)}: {image} is not in images/images.json"
                assert CONTENT_TAG.fullmatch(tag), f"{_name(doc, c)}: {tag} is not a content tag"
    feast = next(spec for doc, spec in workloads if doc["kind"] == "Job" and doc["metadata"]["name"] == "feast-apply")
    assert feast["containers"][0]["image"].startswith(table["images"]["cpu"] + ":")
    assert "aitasks tasks run feast.materialize" in " ".join(feast["containers"][0]["args"])


def test_no_secret_values_in_git(docs: list[dict[str, Any]], workloads: Workloads) -> None:
    for d in docs:
        if d["kind"] == "Secret":
            assert not d.get("data") and not d.get("stringData"), f"Secret {d['metadata']['name']} carries values"
    for doc, spec in workloads:
        for c in containers(spec):
            secret_mounts = [
                m["mountPath"]
                for m in c.get("volumeMounts", [])
                if "secret" in {v["name"]: v for v in spec.get("volumes", [])}.get(m["name"], {})
            ]
            for env in c.get("env", []):
                if env["name"].endswith("_FILE") and "value" in env:
                    # The file form (POSTGRES_PASSWORD_FILE): a path inside a mounted Secret.
                    assert any(env["value"].startswith(m + "/") for m in secret_mounts), (
                        f"{_name(doc, c)}: {env['name']} must point into a mounted Secret"
                    )
                elif SECRET_NAME.search(env["name"]):
                    assert "secretKeyRef" in env.get("valueFrom", {}), (
                        f"{_name(doc, c)}: {env['name']} must come from a Secret reference"
                    )
                assert "://" not in env.get("value", "") or "@" not in env.get("value", ""), env["name"]
            for src in c.get("envFrom", []):
                assert "secretRef" not in src or src["secretRef"].get("name"), src


def test_mlflow_server_shape(workloads: Workloads, docs: list[dict[str, Any]]) -> None:
    _, spec = next((d, s) for d, s in workloads if d["kind"] == "Deployment" and d["metadata"]["name"] == "mlflow")
    by_name = {c["name"]: c for c in spec["containers"]}
    server = by_name["mlflow"]
    assert server["command"][:2] == ["mlflow", "server"]
    args = " ".join(server["args"])
    assert "--serve-artifacts" in args and "--artifacts-destination=" in args
    env = {e["name"]: e for e in server["env"]}
    # --backend-store-uri through its environment form, from a Secret.
    assert env["MLFLOW_BACKEND_STORE_URI"]["valueFrom"]["secretKeyRef"]["name"] == "aitasks-mlflow-db"
    settings = next(d for d in docs if d["kind"] == "ConfigMap" and d["metadata"]["name"] == "aitasks-mlflow")
    assert settings["data"]["artifacts-destination"].startswith("gs://")
    proxy = by_name["oauth2-proxy"]
    assert "--upstream=http://127.0.0.1:5000" in proxy["args"]
    assert all("secretKeyRef" in e["valueFrom"] for e in proxy["env"] if e["name"].startswith("OAUTH2_PROXY_"))


def test_mlflow_flags_exist_in_the_locked_mlflow(workloads: Workloads) -> None:
    """The server's flags are options of the MLflow the image installs (same lock as this venv)."""
    cli = pytest.importorskip("mlflow.cli")
    options = {opt for p in cli.server.params for opt in p.opts}
    _, spec = next((d, s) for d, s in workloads if d["kind"] == "Deployment" and d["metadata"]["name"] == "mlflow")
    for arg in spec["containers"][0]["args"]:
        assert arg.split("=", 1)[0] in options, f"mlflow server has no option {arg}"


def secret_env_names(container: dict[str, Any]) -> set[str]:
    return {e["name"] for e in container.get("env", []) if "secretKeyRef" in e.get("valueFrom", {})}


#: Flags that carry a credential as their value.
CREDENTIAL_FLAG = re.compile(r"--?(requirepass|masterauth|password|pass|client-secret|cookie-secret|token)(=|$)", re.I)


def test_no_secret_in_process_arguments(workloads: Workloads) -> None:
    """Arguments are world-readable (/proc/<pid>/cmdline, `ps`): no Secret's value may be expanded into
    them, nor a credential flag be given a value, in a container or in an exec probe."""
    for doc, spec in workloads:
        for c in containers(spec):
            where = _name(doc, c)
            secret_env = secret_env_names(c)
            words = [*c.get("command", []), *c.get("args", [])]
            for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
                words += c.get(probe, {}).get("exec", {}).get("command", [])
            for word in words:
                for var in secret_env:
                    assert f"$({var})" not in word, f"{where}: Secret env {var} expanded into an argument"
                assert not CREDENTIAL_FLAG.search(word), f"{where}: credential flag in arguments: {word!r}"


def test_redis_reads_its_password_from_a_mounted_secret(workloads: Workloads) -> None:
    doc, spec = next((d, s) for d, s in workloads if d["metadata"]["name"] == "feast-redis")
    redis = next(c for c in spec["containers"] if c["name"] == "redis")
    assert redis["command"] == ["redis-server", "/etc/redis/redis.conf"] and not redis.get("args")
    assert not secret_env_names(redis) and "envFrom" not in redis, "the server gets no Secret as env"
    (init,) = spec["initContainers"]
    assert not secret_env_names(init)
    volumes = {v["name"]: v for v in spec["volumes"]}
    secret_mounts = [m for m in init["volumeMounts"] if "secret" in volumes[m["name"]]]
    assert [volumes[m["name"]]["secret"]["secretName"] for m in secret_mounts] == ["aitasks-redis"]
    assert not any("secret" in volumes[m["name"]] for m in redis["volumeMounts"]), "only the init container mounts it"
    auth = next(m for m in redis["volumeMounts"] if m["mountPath"] == "/run/redis-auth")
    assert volumes[auth["name"]]["emptyDir"]["medium"] == "Memory"
    assert doc["kind"] == "Deployment"
    script = "\n".join(init["args"])
    assert "requirepass" in script and "printf" in script


def test_redis_config_includes_the_rendered_password(docs: list[dict[str, Any]]) -> None:
    cm = next(d for d in docs if d["kind"] == "ConfigMap" and d["metadata"]["name"] == "feast-redis-config")
    conf = cm["data"]["redis.conf"]
    assert "include /run/redis-auth/auth.conf" in conf
    assert "requirepass" not in conf


def test_postgres_reads_its_password_from_a_file(workloads: Workloads) -> None:
    found = [(d, s) for d, s in workloads if d["metadata"]["name"] == "mlflow-postgres"]
    for _, spec in found:
        (pg,) = spec["containers"]
        env = {e["name"]: e for e in pg["env"]}
        assert "POSTGRES_PASSWORD" not in env
        path = env["POSTGRES_PASSWORD_FILE"]["value"]
        volumes = {v["name"]: v for v in spec["volumes"]}
        mount = next(m for m in pg["volumeMounts"] if path.startswith(m["mountPath"] + "/"))
        assert volumes[mount["name"]]["secret"]["secretName"] == "aitasks-postgres"
        assert mount.get("readOnly") is True
