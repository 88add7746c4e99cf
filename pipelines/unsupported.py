"""What kfp.local cannot honour, read from the compiled pipeline rather than silently ignored."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import yaml


def compiled_documents(name: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """(PipelineSpec, kubernetes platform spec) of a freshly compiled pipeline."""
    from pipelines.cli import compile_pipeline

    with tempfile.TemporaryDirectory() as tmp:
        docs = list(yaml.safe_load_all(compile_pipeline(name, Path(tmp)).read_text()))
    spec = docs[0]
    platform = docs[1] if len(docs) > 1 else {}
    return spec, platform


def unsupported_locally(name: str) -> dict[str, dict[str, str]]:
    """Per step (executor name without ``exec-``): each setting kfp.local ignores, in short form.

    ``resources`` reads ``cpu request-limit / memory request-limit`` (and the accelerator); each kubernetes
    setting reads ``yes`` (a node selector shows its value).
    """
    spec, platform = compiled_documents(name)
    rows: dict[str, dict[str, str]] = {}
    for executor, body in sorted(spec.get("deploymentSpec", {}).get("executors", {}).items()):
        res = body.get("container", {}).get("resources", {})
        if res:
            short = (
                f"{res.get('resourceCpuRequest', '?')}-{res.get('resourceCpuLimit', '?')} / "
                f"{res.get('resourceMemoryRequest', '?')}-{res.get('resourceMemoryLimit', '?')}"
            )
            accel = res.get("accelerator", {})
            if accel:
                count = accel.get("resourceCount", accel.get("count", "?"))
                short += f" + {count} {accel.get('resourceType', accel.get('type', 'gpu'))}"
            rows.setdefault(executor.removeprefix("exec-"), {})["resources"] = short
    k8s = platform.get("platforms", {}).get("kubernetes", {}).get("deploymentSpec", {}).get("executors", {})
    for executor, body in sorted(k8s.items()):
        row = rows.setdefault(executor.removeprefix("exec-"), {})
        for key in ("nodeSelector", "tolerations", "podMetadata", "configMapAsEnv", "secretAsEnv", "pvcMount"):
            if key in body:
                value = body[key]
                labels = value.get("labels") if isinstance(value, dict) else None
                row[key] = ",".join(f"{v}" for v in labels.values()) if key == "nodeSelector" and labels else "yes"
    return rows
