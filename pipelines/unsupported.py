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


def unsupported_locally(name: str) -> list[str]:
    spec, platform = compiled_documents(name)
    lines: list[str] = []
    for executor, body in sorted(spec.get("deploymentSpec", {}).get("executors", {}).items()):
        res = body.get("container", {}).get("resources", {})
        if res:
            lines.append(f"{executor}: resources {res}")
    k8s = platform.get("platforms", {}).get("kubernetes", {}).get("deploymentSpec", {}).get("executors", {})
    for executor, body in sorted(k8s.items()):
        for key in (
            "nodeSelector",
            "tolerations",
            "podMetadata",
            "configMapAsEnv",
            "secretAsEnv",
            "pvcMount",
            "secretAsVolume",
        ):
            if key in body:
                lines.append(f"{executor}: kubernetes {key}")
    return lines
