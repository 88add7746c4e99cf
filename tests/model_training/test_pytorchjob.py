"""The PyTorchJob manifest (rendered, checked against the CRD's required fields and as a strict core
PodTemplate) and the launcher against a fake CustomObjectsApi that replays status sequences (no cluster)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes.client.exceptions import ApiException

from aitasks.model_training.pytorchjob import (
    SECRET_ENV,
    PyTorchJobConfig,
    PyTorchJobFailedError,
    PyTorchJobLauncher,
    PyTorchJobTimeoutError,
    job_name,
    render_pytorchjob,
)
from aitasks.runtime.errors import FatalError, InvalidInputError, ServiceUnavailableError

GPU_POOL = {"cloud.google.com/gke-accelerator": "nvidia-l4"}
GPU_TAINT = {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}
IMAGE = "europe-docker.pkg.dev/p/aitasks/gpu:0.9.0-0123456789abcdef01234567"


def _cfg(**kw: Any) -> PyTorchJobConfig:
    base: dict[str, Any] = {
        "name": job_name("3f9a0c1d2e4b5a6978c0d1e2f3a4b5c6"),
        "namespace": "kubeflow",
        "image": IMAGE,
        "job_uri": "gs://bucket/aitasks/work/model.train_pytorchjob/key/job.json",
        "replicas": 3,
        "gpus_per_replica": 2,
        "node_selector": GPU_POOL,
        "tolerations": [GPU_TAINT],
        "settings_env": ("AITASKS_STORAGE_ROOT", "AITASKS_MLFLOW_TRACKING_URI"),
    }
    return PyTorchJobConfig(**(base | kw))


# ------------------------------------------------------------------------------------ manifest

#: Required fields of kubeflow.org/v1 PyTorchJob (kubeflow/training-operator,
#: manifests/base/crds/kubeflow.org_pytorchjobs.yaml): spec.pytorchReplicaSpecs; in a replica's pod
#: template spec.containers; container name; port containerPort; env name; and the replica types the
#: operator knows.
REPLICA_TYPES = {"Master", "Worker"}
RESTART_POLICIES = {"Always", "OnFailure", "Never", "ExitCode"}


def crd_problems(job: dict[str, Any]) -> list[str]:
    problems = []
    if job.get("apiVersion") != "kubeflow.org/v1" or job.get("kind") != "PyTorchJob":
        problems.append("not a kubeflow.org/v1 PyTorchJob")
    if not (job.get("metadata") or {}).get("name"):
        problems.append("metadata.name")
    specs = (job.get("spec") or {}).get("pytorchReplicaSpecs")
    if not specs:
        return [*problems, "spec.pytorchReplicaSpecs is required"]
    if "Master" not in specs:
        problems.append("no Master replica (the operator's rendezvous host)")
    for rtype, rs in specs.items():
        where = f"pytorchReplicaSpecs.{rtype}"
        if rtype not in REPLICA_TYPES:
            problems.append(f"{where}: unknown replica type")
        if rs.get("restartPolicy") not in RESTART_POLICIES:
            problems.append(f"{where}.restartPolicy")
        if not isinstance(rs.get("replicas"), int) or rs["replicas"] < 1:
            problems.append(f"{where}.replicas")
        containers = ((rs.get("template") or {}).get("spec") or {}).get("containers")
        if not containers:
            problems.append(f"{where}.template.spec.containers is required")
            continue
        if "pytorch" not in {c.get("name") for c in containers}:
            problems.append(f"{where}: no container named 'pytorch' (the operator injects env and port into it)")
        for c in containers:
            if not c.get("name"):
                problems.append(f"{where}: container without a name")
            problems += [f"{where}: port without containerPort" for p in c.get("ports", []) if "containerPort" not in p]
            problems += [f"{where}: env without name" for e in c.get("env", []) if not e.get("name")]
    return problems


def test_manifest_has_master_workers_gpus_pool_and_the_entry_point() -> None:
    job = render_pytorchjob(_cfg())
    assert crd_problems(job) == []
    specs = job["spec"]["pytorchReplicaSpecs"]
    assert specs["Master"]["replicas"] == 1 and specs["Worker"]["replicas"] == 2
    assert job["spec"]["nprocPerNode"] == "2"  # one process per GPU (torchrun reads PET_NPROC_PER_NODE)
    for rs in specs.values():
        pod = rs["template"]["spec"]
        (c,) = pod["containers"]
        assert c["resources"]["limits"]["nvidia.com/gpu"] == c["resources"]["requests"]["nvidia.com/gpu"] == 2
        assert pod["nodeSelector"] == GPU_POOL and pod["tolerations"] == [GPU_TAINT]
        assert c["command"] == ["python", "-m", "torch.distributed.run"]
        assert c["args"] == ["-m", "aitasks.model_training.distributed", "--job", _cfg().job_uri]
        assert c["image"] == IMAGE
    assert render_pytorchjob(_cfg()) == job  # pure


def test_one_replica_is_a_master_only_and_cpu_jobs_request_no_gpu() -> None:
    job = render_pytorchjob(_cfg(replicas=1, gpus_per_replica=0, procs_per_replica=2, node_selector={}, tolerations=[]))
    assert crd_problems(job) == []
    assert set(job["spec"]["pytorchReplicaSpecs"]) == {"Master"} and job["spec"]["nprocPerNode"] == "2"
    (c,) = job["spec"]["pytorchReplicaSpecs"]["Master"]["template"]["spec"]["containers"]
    assert "nvidia.com/gpu" not in c["resources"]["limits"]
    assert {"name": "AITASKS_TRAIN_DEVICE", "value": "cpu"} in c["env"]


def test_pods_get_the_settings_and_secrets_like_every_step() -> None:
    from pipelines.k8s import SECRET_ENV as STEP_SECRET_ENV
    from pipelines.k8s import SETTINGS_CONFIG_MAP, STEP_SECRETS, settings_env

    assert dict(SECRET_ENV) == STEP_SECRET_ENV
    cfg = _cfg(settings_env=tuple(settings_env()))
    assert (cfg.settings_config_map, cfg.step_secrets) == (SETTINGS_CONFIG_MAP, STEP_SECRETS)
    (c,) = render_pytorchjob(cfg)["spec"]["pytorchReplicaSpecs"]["Master"]["template"]["spec"]["containers"]
    from_cm = {
        e["name"]: e["valueFrom"]["configMapKeyRef"] for e in c["env"] if "configMapKeyRef" in e.get("valueFrom", {})
    }
    from_secret = {
        e["name"]: e["valueFrom"]["secretKeyRef"] for e in c["env"] if "secretKeyRef" in e.get("valueFrom", {})
    }
    assert set(from_cm) == set(settings_env()) and all(r["optional"] for r in from_cm.values())
    assert {r["key"]: n for n, r in from_secret.items()} == STEP_SECRET_ENV
    assert not any("value" in e and "KEY" in e["name"] for e in c["env"])  # no secret value inline


def test_pods_are_restricted_and_mount_no_api_token() -> None:
    for rs in render_pytorchjob(_cfg())["spec"]["pytorchReplicaSpecs"].values():
        pod = rs["template"]["spec"]
        assert pod["automountServiceAccountToken"] is False
        assert pod["securityContext"]["runAsNonRoot"] is True and pod["securityContext"]["runAsUser"] > 0
        (c,) = pod["containers"]
        sc = c["securityContext"]
        assert sc["runAsNonRoot"] is True and sc["runAsUser"] == 10001
        assert sc["readOnlyRootFilesystem"] is True and sc["allowPrivilegeEscalation"] is False
        assert sc["capabilities"] == {"drop": ["ALL"]} and sc["seccompProfile"] == {"type": "RuntimeDefault"}
        volumes = {v["name"]: v for v in pod["volumes"]}
        mounts = {m["mountPath"]: volumes[m["name"]] for m in c["volumeMounts"]}
        assert "emptyDir" in mounts["/tmp"] and mounts["/dev/shm"]["emptyDir"]["medium"] == "Memory"
        assert not any("hostPath" in v for v in pod["volumes"])


def test_pod_templates_are_valid_core_pod_templates(tmp_path: Path) -> None:
    """kubernetes-validate has no PyTorchJob schema (it would warn and pass): validate each replica's
    template as a core v1 PodTemplate, strictly (unknown fields fail)."""
    cli = Path(sys.executable).with_name("kubernetes-validate")
    if not cli.exists():
        if os.environ.get("AITASKS_REQUIRE_SERVICES") in {"1", "true"}:
            pytest.fail("kubernetes-validate is not installed")
        pytest.skip("kubernetes-validate is not installed")
    docs = [
        {"apiVersion": "v1", "kind": "PodTemplate", "metadata": {"name": f"t-{r.lower()}"}, "template": rs["template"]}
        for r, rs in render_pytorchjob(_cfg())["spec"]["pytorchReplicaSpecs"].items()
    ]
    path = tmp_path / "templates.yaml"
    path.write_text(yaml.safe_dump_all(docs, sort_keys=False))
    done = subprocess.run(
        [str(cli), "--strict", "--quiet", str(path)], check=False, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0 and "ERROR" not in done.stdout, done.stdout + done.stderr
    # The checker itself catches an unknown field (so the pass above means something).
    docs[0]["template"]["spec"]["containers"][0]["gpus"] = 1
    path.write_text(yaml.safe_dump_all(docs, sort_keys=False))
    bad = subprocess.run(
        [str(cli), "--strict", "--quiet", str(path)], check=False, capture_output=True, text=True, timeout=300
    )
    assert bad.returncode != 0 or "ERROR" in bad.stdout


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("image", "aitasks/gpu:latest", "immutable tag"),
        ("image", "aitasks/gpu", "immutable tag"),
        ("name", "Bad_Name", "DNS-1123"),
        ("tolerations", [{"key": "k", "operator": "Sometimes"}], "Equal or Exists"),
        ("tolerations", [{"key": "k", "surprise": 1}], "unknown toleration"),
        ("replicas", 0, "greater than or equal to 1"),
    ],
)
def test_bad_config_is_refused_naming_the_field(field: str, value: Any, message: str) -> None:
    with pytest.raises(ValueError, match=message) as info:
        _cfg(**{field: value})
    assert field in str(info.value)


def test_the_crd_checker_catches_what_it_claims() -> None:
    job = render_pytorchjob(_cfg())
    del job["spec"]["pytorchReplicaSpecs"]["Worker"]["template"]["spec"]["containers"][0]["ports"][0]["containerPort"]
    job["spec"]["pytorchReplicaSpecs"]["Master"]["template"]["spec"]["containers"][0]["name"] = "main"
    problems = crd_problems(job)
    assert any("containerPort" in p for p in problems) and any("'pytorch'" in p for p in problems)
    assert crd_problems({"apiVersion": "kubeflow.org/v1", "kind": "PyTorchJob", "metadata": {"name": "x"}, "spec": {}})


# ------------------------------------------------------------------------------------ launcher


def _cond(type_: str, reason: str, message: str = "", t: str = "2026-12-05T10:00:00Z") -> dict[str, str]:
    return {"type": type_, "status": "True", "reason": reason, "message": message, "lastTransitionTime": t}


class FakeCustomObjects:
    """Replays one status per ``get`` call (the last one repeats); records calls; can raise ApiExceptions."""

    def __init__(self, statuses: list[dict[str, Any] | Exception], *, create_error: Exception | None = None) -> None:
        self.statuses = statuses
        self.create_error = create_error
        self.created: list[dict[str, Any]] = []
        self.deleted: list[str] = []
        self.gets = 0
        self.labels = {"aitasks.io/job": ""}

    def create_namespaced_custom_object(self, group: str, version: str, namespace: str, plural: str, body: Any) -> Any:
        assert (group, version, plural) == ("kubeflow.org", "v1", "pytorchjobs")
        if self.create_error is not None:
            raise self.create_error
        self.created.append(body)
        self.labels = dict(body["metadata"]["labels"])
        return body

    def get_namespaced_custom_object(self, group: str, version: str, namespace: str, plural: str, name: str) -> Any:
        item = self.statuses[min(self.gets, len(self.statuses) - 1)]
        self.gets += 1
        if isinstance(item, Exception):
            raise item
        return {"metadata": {"name": name, "labels": self.labels}, "status": item}

    def delete_namespaced_custom_object(self, group: str, version: str, namespace: str, plural: str, name: str) -> Any:
        self.deleted.append(name)
        return {}


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    def sleep(self, s: float) -> None:
        self.now += s


def _launcher(api: FakeCustomObjects, seen: list[dict[str, str]], clock: Clock | None = None) -> PyTorchJobLauncher:
    clock = clock or Clock()
    return PyTorchJobLauncher(api, poll_s=10, on_condition=seen.append, clock=clock, sleep=clock.sleep)


RUNNING = {
    "conditions": [
        _cond("Created", "PyTorchJobCreated"),
        _cond("Running", "PyTorchJobRunning", t="2026-12-05T10:01:00Z"),
    ],
    "replicaStatuses": {"Master": {"active": 1}, "Worker": {"active": 2}},
}


def test_success_streams_each_condition_once_and_deletes_the_job() -> None:
    created = {"conditions": [_cond("Created", "PyTorchJobCreated")]}
    done = {
        "conditions": [*RUNNING["conditions"], _cond("Succeeded", "PyTorchJobSucceeded", t="2026-12-05T11:00:00Z")],
        "replicaStatuses": {"Master": {"succeeded": 1}, "Worker": {"succeeded": 2}},
    }
    api, seen = FakeCustomObjects([{}, created, RUNNING, RUNNING, done]), []
    out = _launcher(api, seen).run(render_pytorchjob(_cfg()), timeout_s=3600)
    assert [c["type"] for c in seen] == ["Created", "Running", "Succeeded"]
    assert out.conditions == seen and not out.adopted and out.deleted
    assert api.deleted == [_cfg().name] and len(api.created) == 1


def test_a_failed_worker_is_an_error_naming_the_replica_and_reason_and_the_job_is_kept() -> None:
    failed = {
        "conditions": [
            *RUNNING["conditions"],
            _cond("Failed", "PyTorchJobFailed", "PyTorchJob x is failed because 1 Worker replica(s) failed.", "t2"),
        ],
        "replicaStatuses": {"Master": {"active": 1}, "Worker": {"active": 1, "failed": 1}},
    }
    api, seen = FakeCustomObjects([RUNNING, failed]), []
    with pytest.raises(PyTorchJobFailedError, match=r"failed \(Worker\): PyTorchJobFailed: .*1 Worker replica") as info:
        _launcher(api, seen).run(render_pytorchjob(_cfg()), timeout_s=3600, cleanup="on_success")
    assert info.value.replicas == ["Worker"] and api.deleted == []  # kept for inspection
    assert seen[-1]["type"] == "Failed"


def test_cleanup_always_deletes_a_failed_job() -> None:
    failed = {
        "conditions": [_cond("Failed", "PyTorchJobFailed", "Master OOMKilled")],
        "replicaStatuses": {"Master": {"failed": 1}},
    }
    api = FakeCustomObjects([failed])
    with pytest.raises(PyTorchJobFailedError, match=r"\(Master\)"):
        _launcher(api, []).run(render_pytorchjob(_cfg()), timeout_s=60, cleanup="always")
    assert api.deleted == [_cfg().name]


def test_a_job_that_never_finishes_times_out_and_is_deleted() -> None:
    api, clock = FakeCustomObjects([RUNNING]), Clock()
    with pytest.raises(PyTorchJobTimeoutError, match=r"within 120 s \(last condition: Running PyTorchJobRunning\)"):
        _launcher(api, [], clock).run(render_pytorchjob(_cfg()), timeout_s=120)
    assert api.deleted == [_cfg().name] and clock.now >= 120


def test_cleanup_never_keeps_even_a_timed_out_job() -> None:
    api = FakeCustomObjects([RUNNING])
    with pytest.raises(PyTorchJobTimeoutError):
        _launcher(api, []).run(render_pytorchjob(_cfg()), timeout_s=30, cleanup="never")
    assert api.deleted == []


def test_a_retry_adopts_its_running_job_instead_of_starting_a_second() -> None:
    done = {"conditions": [_cond("Succeeded", "PyTorchJobSucceeded")]}
    api = FakeCustomObjects([RUNNING, done], create_error=ApiException(status=409, reason="AlreadyExists"))
    api.labels = {"aitasks.io/job": _cfg().name}
    out = _launcher(api, []).run(render_pytorchjob(_cfg()), timeout_s=600)
    assert out.adopted and api.created == []


def test_a_foreign_job_with_the_same_name_is_not_adopted() -> None:
    api = FakeCustomObjects([RUNNING], create_error=ApiException(status=409, reason="AlreadyExists"))
    api.labels = {"owner": "someone-else"}
    with pytest.raises(FatalError, match="not created by aitasks"):
        _launcher(api, []).run(render_pytorchjob(_cfg()), timeout_s=600)


def test_transient_api_errors_are_ridden_out_but_not_forever() -> None:
    done = {"conditions": [_cond("Succeeded", "PyTorchJobSucceeded")]}
    flaky = FakeCustomObjects([ApiException(status=503), ApiException(status=500), done])
    assert _launcher(flaky, []).run(render_pytorchjob(_cfg()), timeout_s=600).conditions[-1]["type"] == "Succeeded"
    down = FakeCustomObjects([ApiException(status=503)])
    with pytest.raises(ServiceUnavailableError, match="reading PyTorchJob"):
        _launcher(down, []).run(render_pytorchjob(_cfg()), timeout_s=600)


def test_a_job_deleted_under_the_launcher_is_an_error() -> None:
    api = FakeCustomObjects([RUNNING, ApiException(status=404)])
    with pytest.raises(FatalError, match="deleted while running"):
        _launcher(api, []).run(render_pytorchjob(_cfg()), timeout_s=600)


def test_refused_create_is_fatal_and_unreachable_api_retryable() -> None:
    with pytest.raises(FatalError, match=r"refused \(403\)"):
        _launcher(FakeCustomObjects([], create_error=ApiException(status=403)), []).submit(render_pytorchjob(_cfg()))
    with pytest.raises(ServiceUnavailableError):
        _launcher(FakeCustomObjects([], create_error=ApiException(status=503)), []).submit(render_pytorchjob(_cfg()))
    with pytest.raises(InvalidInputError, match="PyTorchJob"):
        _launcher(FakeCustomObjects([]), []).submit({"kind": "Job", "apiVersion": "batch/v1"})


def test_job_names_follow_the_idempotency_key() -> None:
    a, b = job_name("ABCDEF0123456789ffff"), job_name("abcdef0123456789ffff")
    assert a == b == "aitasks-train-abcdef0123456789" and len(a) <= 50
    assert job_name("0000000000000000aaaa") != a


def test_the_task_refuses_a_local_storage_root(captured) -> None:  # type: ignore[no-untyped-def]
    """Pods on other nodes cannot read this machine's disk: a clear configuration error, before any submit."""
    from aitasks.model_training.tasks import train_pytorchjob_task
    from aitasks.runtime.errors import ConfigurationError

    ts = captured.root / "store" / "ts" / "MANIFEST.json"
    ts.parent.mkdir(parents=True)
    ts.write_text("{}")
    with pytest.raises(ConfigurationError, match="gs://"):
        train_pytorchjob_task({"training_set_uri": str(ts), "image": IMAGE}, runtime=captured.rt)


# ------------------------------------------------------------------------------------------ RBAC


def test_the_run_account_may_create_get_watch_delete_pytorchjobs_and_nothing_more() -> None:
    """The launcher's calls (create, get, delete; a watch-based client would need watch) are granted by one
    least-privilege rule in the runs namespace; the job's pods get no token (checked above)."""
    from tests.manifests.test_rbac import rule_problems

    root = Path(__file__).resolve().parents[2]
    docs = list(yaml.safe_load_all((root / "manifests/runs/base/serviceaccount.yaml").read_text()))
    (role,) = [d for d in docs if d["kind"] == "Role"]
    assert rule_problems(role) == []
    rules = [r for r in role["rules"] if "kubeflow.org" in r["apiGroups"]]
    assert rules == [
        {"apiGroups": ["kubeflow.org"], "resources": ["pytorchjobs"], "verbs": ["create", "get", "watch", "delete"]}
    ]
    used = {m.split("_")[0] for m in dir(FakeCustomObjects) if m.endswith("_namespaced_custom_object")}
    assert used <= set(rules[0]["verbs"])
