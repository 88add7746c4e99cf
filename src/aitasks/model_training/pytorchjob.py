"""Distributed training on Kubernetes: a Kubeflow Training Operator ``PyTorchJob`` (kubeflow.org/v1).

* :func:`render_pytorchjob` is a pure function from a :class:`PyTorchJobConfig` to the manifest: one
  ``Master`` and ``replicas - 1`` ``Worker`` replicas running the image's
  ``python -m torch.distributed.run -m aitasks.model_training.distributed --job <uri>`` (torchrun reads
  ``PET_NNODES``/``PET_NODE_RANK``/``PET_MASTER_ADDR``/``PET_MASTER_PORT``/``PET_NPROC_PER_NODE``, which
  the operator sets from ``spec.nprocPerNode``), GPU requests (``nvidia.com/gpu``), node selector and
  tolerations, the settings ConfigMap and step Secret as env like every pipeline step, a restricted
  security context (non-root uid, read-only root, no capabilities, no service-account token), an
  emptyDir ``/tmp`` and a memory-backed ``/dev/shm`` (NCCL and gloo move tensors through it; a
  container's default 64 MiB is too small).
* :class:`PyTorchJobLauncher` submits a manifest through a ``CustomObjectsApi``, polls the job,
  reports each new status condition, returns on ``Succeeded``, raises :class:`PyTorchJobFailedError` on
  ``Failed`` (naming the replica type(s) that failed and the operator's reason and message) or
  :class:`PyTorchJobTimeoutError`, and deletes the job per its cleanup policy. A job that already exists
  with the same name (a retry of the same step: the name derives from the idempotency key) is
  adopted rather than submitted twice, so a retry never starts a second training.

The ``kubernetes`` client is imported only by :func:`custom_objects_api`; everything else works on
plain dicts (tests replay status sequences through a fake API).
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final, Literal, Protocol

from pydantic import BaseModel, ConfigDict, Field, field_validator

from aitasks.runtime.errors import FatalError, FieldIssue, InvalidInputError, ServiceUnavailableError
from aitasks.runtime.settings import STEP_SECRET_ENV

__all__ = [
    "GROUP",
    "PLURAL",
    "VERSION",
    "CustomObjects",
    "JobOutcome",
    "PyTorchJobConfig",
    "PyTorchJobFailedError",
    "PyTorchJobLauncher",
    "PyTorchJobTimeoutError",
    "custom_objects_api",
    "job_name",
    "render_pytorchjob",
]

GROUP: Final = "kubeflow.org"
VERSION: Final = "v1"
PLURAL: Final = "pytorchjobs"
KIND: Final = "PyTorchJob"
#: The container name the Training Operator looks for (it injects the rendezvous env and port into it).
CONTAINER: Final = "pytorch"
MASTER_PORT: Final = 23456
#: The uid of the project's images (images/*/Dockerfile ``USER 10001:10001``).
RUN_AS: Final = 10001
_TASK: Final = "model.train_pytorchjob"
_DNS1123 = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
#: Secret key -> env var, as for every pipeline step (one source: the settings module).
SECRET_ENV: Final[Mapping[str, str]] = STEP_SECRET_ENV


def job_name(key: str, prefix: str = "aitasks-train") -> str:
    """A DNS-1123 job name from an idempotency key: the same call (and its retries) gets the same name."""
    digest = re.sub(r"[^a-z0-9]", "", key.lower())[:16] or "job"
    return f"{prefix}-{digest}"


class PyTorchJobConfig(BaseModel):
    """What :func:`render_pytorchjob` renders.

    Attributes:
        name: Job name (DNS-1123, at most 50 characters: the operator appends ``-master-0``/``-worker-N``).
        namespace: Namespace of the job (the runs namespace).
        image: Training image with an immutable tag or digest (never ``latest``).
        job_uri: The :class:`~aitasks.model_training.distributed.JobSpec` JSON every replica reads.
        replicas: Pods: one Master and ``replicas - 1`` Workers.
        gpus_per_replica: ``nvidia.com/gpu`` per pod (0: CPU training with gloo).
        procs_per_replica: Training processes per pod (torchrun ``--nproc-per-node``); None: the GPU
            count, or 1 on CPU.
        cpu, memory, cpu_limit, memory_limit: Requests and limits per pod.
        node_selector: Node selector of every pod (e.g. the GPU pool).
        tolerations: Tolerations of every pod (e.g. the GPU taint).
        service_account: The pods' service account (storage access); no API token is mounted.
        settings_config_map: ConfigMap read as env (``AITASKS_*`` keys), optional like every step's.
        step_secrets: Secret whose keys :data:`SECRET_ENV` maps to env vars, optional.
        settings_env: ConfigMap keys to read (each key is its env var name).
        backoff_limit: Restarts of failed pods before the job fails (the operator's ``backoffLimit``).
        active_deadline_s: The operator stops the job after this many seconds.
        labels: Extra labels of the job and its pods.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str = Field(min_length=1, max_length=50)
    namespace: str = Field(min_length=1, max_length=63)
    image: str = Field(min_length=3)
    job_uri: str = Field(min_length=1)
    replicas: int = Field(default=2, ge=1, le=256)
    gpus_per_replica: int = Field(default=1, ge=0, le=16)
    procs_per_replica: int | None = Field(default=None, ge=1, le=64)
    cpu: str = "4"
    memory: str = "16Gi"
    cpu_limit: str = "8"
    memory_limit: str = "32Gi"
    node_selector: dict[str, str] = Field(default_factory=dict)
    tolerations: list[dict[str, Any]] = Field(default_factory=list)
    service_account: str = "aitasks-pipeline-runner"
    settings_config_map: str = "aitasks-settings"
    step_secrets: str = "aitasks-step-secrets"
    settings_env: tuple[str, ...] = ()
    backoff_limit: int = Field(default=2, ge=0, le=100)
    active_deadline_s: int = Field(default=6 * 3600, ge=60)
    labels: dict[str, str] = Field(default_factory=dict)

    @field_validator("name", "namespace")
    @classmethod
    def _dns(cls, v: str) -> str:
        if not _DNS1123.match(v):
            raise ValueError("must be a DNS-1123 label (lowercase letters, digits, '-')")
        return v

    @field_validator("image")
    @classmethod
    def _pinned(cls, v: str) -> str:
        last = v.rsplit("/", 1)[-1]
        if "@sha256:" not in v and (":" not in last or last.endswith(":latest")):
            raise ValueError("needs an immutable tag or digest (not 'latest')")
        return v

    @field_validator("tolerations")
    @classmethod
    def _tolerations(cls, v: list[dict[str, Any]]) -> list[dict[str, Any]]:
        allowed = {"key", "operator", "value", "effect", "tolerationSeconds"}
        for t in v:
            if set(t) - allowed:
                raise ValueError(f"unknown toleration fields {sorted(set(t) - allowed)}")
            if t.get("operator", "Equal") not in ("Equal", "Exists"):
                raise ValueError("toleration operator must be Equal or Exists")
        return v


def _env(cfg: PyTorchJobConfig) -> list[dict[str, Any]]:
    env: list[dict[str, Any]] = [
        {"name": k, "valueFrom": {"configMapKeyRef": {"name": cfg.settings_config_map, "key": k, "optional": True}}}
        for k in sorted(cfg.settings_env)
    ]
    env += [
        {"name": var, "valueFrom": {"secretKeyRef": {"name": cfg.step_secrets, "key": key, "optional": True}}}
        for key, var in sorted(SECRET_ENV.items())
    ]
    # Workers share the pod's CPUs; torchrun also defaults OMP threads to 1 per process.
    env.append({"name": "PYTHONUNBUFFERED", "value": "1"})
    if cfg.gpus_per_replica == 0:
        env.append({"name": "AITASKS_TRAIN_DEVICE", "value": "cpu"})
    return env


def _replica(cfg: PyTorchJobConfig, count: int, role: str) -> dict[str, Any]:
    resources: dict[str, dict[str, Any]] = {
        "requests": {"cpu": cfg.cpu, "memory": cfg.memory},
        "limits": {"cpu": cfg.cpu_limit, "memory": cfg.memory_limit},
    }
    if cfg.gpus_per_replica:
        # Extended resources: the request must equal the limit.
        resources["requests"]["nvidia.com/gpu"] = cfg.gpus_per_replica
        resources["limits"]["nvidia.com/gpu"] = cfg.gpus_per_replica
    labels = {**cfg.labels, "aitasks.io/job": cfg.name, "aitasks.io/replica": role.lower()}
    container: dict[str, Any] = {
        "name": CONTAINER,
        "image": cfg.image,
        "imagePullPolicy": "IfNotPresent",
        "command": ["python", "-m", "torch.distributed.run"],
        "args": ["-m", "aitasks.model_training.distributed", "--job", cfg.job_uri],
        "env": _env(cfg),
        "ports": [{"name": "pytorchjob-port", "containerPort": MASTER_PORT, "protocol": "TCP"}],
        "resources": resources,
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": RUN_AS,
            "runAsGroup": RUN_AS,
            "readOnlyRootFilesystem": True,
            "allowPrivilegeEscalation": False,
            "privileged": False,
            "capabilities": {"drop": ["ALL"]},
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "volumeMounts": [
            {"name": "tmp", "mountPath": "/tmp"},  # noqa: S108 - an emptyDir mount point, not a temp file
            {"name": "dshm", "mountPath": "/dev/shm"},  # noqa: S108
        ],
    }
    pod: dict[str, Any] = {
        "serviceAccountName": cfg.service_account,
        # The training code needs no Kubernetes API: no token in the pods.
        "automountServiceAccountToken": False,
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": RUN_AS,
            "runAsGroup": RUN_AS,
            "fsGroup": RUN_AS,
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "containers": [container],
        "volumes": [
            {"name": "tmp", "emptyDir": {}},
            {"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": "2Gi"}},
        ],
    }
    if cfg.node_selector:
        pod["nodeSelector"] = dict(sorted(cfg.node_selector.items()))
    if cfg.tolerations:
        pod["tolerations"] = [dict(t) for t in cfg.tolerations]
    return {
        "replicas": count,
        "restartPolicy": "OnFailure",
        "template": {"metadata": {"labels": labels}, "spec": pod},
    }


def render_pytorchjob(cfg: PyTorchJobConfig) -> dict[str, Any]:
    """The ``PyTorchJob`` manifest for ``cfg`` (pure: the same config gives the same dict)."""
    procs = cfg.procs_per_replica or max(cfg.gpus_per_replica, 1)
    replica_specs = {"Master": _replica(cfg, 1, "Master")}
    if cfg.replicas > 1:
        replica_specs["Worker"] = _replica(cfg, cfg.replicas - 1, "Worker")
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": KIND,
        "metadata": {
            "name": cfg.name,
            "namespace": cfg.namespace,
            "labels": {**cfg.labels, "app.kubernetes.io/part-of": "aitasks", "aitasks.io/job": cfg.name},
        },
        "spec": {
            "nprocPerNode": str(procs),
            "runPolicy": {
                "backoffLimit": cfg.backoff_limit,
                "activeDeadlineSeconds": cfg.active_deadline_s,
                "cleanPodPolicy": "None",
            },
            "pytorchReplicaSpecs": replica_specs,
        },
    }


# ------------------------------------------------------------------------------------------ launch


class CustomObjects(Protocol):
    """The part of ``kubernetes.client.CustomObjectsApi`` the launcher uses."""

    def create_namespaced_custom_object(
        self, group: str, version: str, namespace: str, plural: str, body: dict[str, Any]
    ) -> Any: ...

    def get_namespaced_custom_object(self, group: str, version: str, namespace: str, plural: str, name: str) -> Any: ...

    def delete_namespaced_custom_object(
        self, group: str, version: str, namespace: str, plural: str, name: str
    ) -> Any: ...


class PyTorchJobFailedError(FatalError):
    """The job reached ``Failed``; names the replica types that failed and the operator's reason."""

    def __init__(self, name: str, replicas: list[str], reason: str, message: str) -> None:
        self.name, self.replicas, self.reason = name, replicas, reason
        which = ", ".join(replicas) or "no replica reported failed pods"
        super().__init__(f"PyTorchJob {name} failed ({which}): {reason}: {message}")


class PyTorchJobTimeoutError(FatalError):
    """The job did not finish within the launcher's timeout (it is deleted unless cleanup is ``never``)."""


@dataclass
class JobOutcome:
    """How a job ended.

    Attributes:
        name: Job name.
        adopted: The job existed already (a retry re-attached to it instead of submitting a second one).
        conditions: Every condition seen, in order (``type``, ``status``, ``reason``, ``message``).
        replica_statuses: The last ``status.replicaStatuses``.
        deleted: Whether the launcher deleted the job.
    """

    name: str
    adopted: bool
    conditions: list[dict[str, str]] = field(default_factory=list)
    replica_statuses: dict[str, Any] = field(default_factory=dict)
    deleted: bool = False


def _api_status(exc: Exception) -> int | None:
    status = getattr(exc, "status", None)
    return status if isinstance(status, int) else None


class PyTorchJobLauncher:
    """Submit, watch (by polling) and clean up one ``PyTorchJob``.

    Args:
        api: A ``CustomObjectsApi`` (or a fake with the same three methods).
        poll_s: Seconds between status reads.
        on_condition: Called with each new condition (type, status, reason, message): the status stream.
        clock: Monotonic clock (tests inject one).
        sleep: Sleep function (tests inject one).
        max_api_errors: Consecutive failed status reads (5xx, connection) tolerated before giving up.
    """

    def __init__(
        self,
        api: CustomObjects,
        *,
        poll_s: float = 10.0,
        on_condition: Callable[[dict[str, str]], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
        max_api_errors: int = 5,
    ) -> None:
        self.api = api
        self.poll_s = poll_s
        self.on_condition = on_condition
        self.clock = clock
        self.sleep = sleep
        self.max_api_errors = max_api_errors

    def _get(self, ns: str, name: str) -> dict[str, Any]:
        obj = self.api.get_namespaced_custom_object(GROUP, VERSION, ns, PLURAL, name)
        return obj if isinstance(obj, dict) else dict(obj)

    def submit(self, manifest: dict[str, Any]) -> bool:
        """Create the job; returns True when it already existed (adopted: same name, same job label).

        Raises:
            InvalidInputError: The manifest is not a PyTorchJob with name and namespace.
            FatalError: A job of that name exists but was not made by this launcher for this job.
            ServiceUnavailableError: The API server could not be reached (retryable).
        """
        if manifest.get("kind") != KIND or manifest.get("apiVersion") != f"{GROUP}/{VERSION}":
            raise InvalidInputError(_TASK, [FieldIssue("manifest", "is not a kubeflow.org/v1 PyTorchJob")])
        meta = manifest.get("metadata") or {}
        name, ns = meta.get("name"), meta.get("namespace")
        if not name or not ns:
            raise InvalidInputError(_TASK, [FieldIssue("manifest.metadata", "needs name and namespace")])
        try:
            self.api.create_namespaced_custom_object(GROUP, VERSION, ns, PLURAL, manifest)
            return False
        except Exception as exc:
            status = _api_status(exc)
            if status == 409:
                existing = self._get(ns, name)
                label = ((existing.get("metadata") or {}).get("labels") or {}).get("aitasks.io/job")
                if label != name:
                    raise FatalError(f"PyTorchJob {ns}/{name} exists and was not created by aitasks") from None
                return True
            if status is None or status >= 500:
                raise ServiceUnavailableError(f"creating PyTorchJob {ns}/{name}: {exc}") from exc
            raise FatalError(f"creating PyTorchJob {ns}/{name} was refused ({status}): {exc}") from None

    def run(
        self,
        manifest: dict[str, Any],
        *,
        timeout_s: float,
        cleanup: Literal["always", "on_success", "never"] = "on_success",
    ) -> JobOutcome:
        """Submit (or adopt) the job and wait for it to succeed.

        ``cleanup``: ``always`` deletes the job however it ended; ``on_success`` keeps a failed job (and
        its pods, ``cleanPodPolicy: None``) for inspection; ``never`` keeps it. A timed-out job is
        deleted unless ``never`` (it would hold its GPUs).

        Raises:
            PyTorchJobFailedError: The job's ``Failed`` condition became true.
            PyTorchJobTimeoutError: Neither ``Succeeded`` nor ``Failed`` within ``timeout_s``.
            FatalError: The job disappeared while being watched.
            ServiceUnavailableError: The API server failed ``max_api_errors`` reads in a row.
        """
        meta = manifest["metadata"]
        name, ns = str(meta["name"]), str(meta["namespace"])
        outcome = JobOutcome(name=name, adopted=self.submit(manifest))
        seen: set[tuple[str, str, str, str]] = set()
        deadline = self.clock() + timeout_s
        errors = 0
        succeeded = False
        try:
            while True:
                try:
                    obj = self._get(ns, name)
                    errors = 0
                except Exception as exc:
                    status = _api_status(exc)
                    if status == 404:
                        raise FatalError(f"PyTorchJob {ns}/{name} was deleted while running") from None
                    errors += 1
                    if errors >= self.max_api_errors or (status is not None and status < 500):
                        raise ServiceUnavailableError(f"reading PyTorchJob {ns}/{name}: {exc}") from exc
                    obj = None
                if obj is not None:
                    status_doc = obj.get("status") or {}
                    outcome.replica_statuses = dict(status_doc.get("replicaStatuses") or {})
                    for c in status_doc.get("conditions") or []:
                        cond = {k: str(c.get(k, "")) for k in ("type", "status", "reason", "message")}
                        key = (cond["type"], cond["status"], cond["reason"], str(c.get("lastTransitionTime", "")))
                        if key in seen:
                            continue
                        seen.add(key)
                        outcome.conditions.append(cond)
                        if self.on_condition is not None:
                            self.on_condition(cond)
                    final = _final(status_doc)
                    if final is not None and final["type"] == "Succeeded":
                        succeeded = True
                        return outcome
                    if final is not None and final["type"] == "Failed":
                        failed = sorted(r for r, s in outcome.replica_statuses.items() if int(s.get("failed", 0) or 0))
                        raise PyTorchJobFailedError(name, failed, final.get("reason", ""), final.get("message", ""))
                if self.clock() >= deadline:
                    last = outcome.conditions[-1] if outcome.conditions else {"type": "none yet"}
                    raise PyTorchJobTimeoutError(
                        f"PyTorchJob {ns}/{name} did not finish within {timeout_s:g} s "
                        f"(last condition: {last.get('type')} {last.get('reason', '')})".rstrip()
                    )
                self.sleep(self.poll_s)
        except PyTorchJobTimeoutError:
            if cleanup != "never":
                outcome.deleted = self._delete(ns, name)
            raise
        finally:
            if cleanup == "always" or (cleanup == "on_success" and succeeded):
                outcome.deleted = self._delete(ns, name) or outcome.deleted

    def _delete(self, ns: str, name: str) -> bool:
        try:
            self.api.delete_namespaced_custom_object(GROUP, VERSION, ns, PLURAL, name)
            return True
        except Exception as exc:
            if _api_status(exc) == 404:
                return False
            raise ServiceUnavailableError(f"deleting PyTorchJob {ns}/{name}: {exc}") from exc


def _final(status: dict[str, Any]) -> dict[str, str] | None:
    """The terminal condition (``Succeeded`` or ``Failed`` with status True), if any."""
    for c in status.get("conditions") or []:
        if c.get("type") in ("Succeeded", "Failed") and str(c.get("status")) == "True":
            return {k: str(c.get(k, "")) for k in ("type", "status", "reason", "message")}
    return None


def custom_objects_api() -> CustomObjects:
    """A ``CustomObjectsApi`` from the in-cluster service account, else from the local kubeconfig.

    Raises:
        ServiceUnavailableError: Neither configuration could be loaded.
    """
    from kubernetes import client, config

    try:
        config.load_incluster_config()
    except config.ConfigException:
        try:
            config.load_kube_config()
        except (config.ConfigException, FileNotFoundError) as exc:
            raise ServiceUnavailableError(f"no Kubernetes configuration (in-cluster or kubeconfig): {exc}") from None
    api: CustomObjects = client.CustomObjectsApi()
    return api
