"""Manifests render with kubectl kustomize and keep the security defaults."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
OVERLAYS = sorted(p.name for p in (ROOT / "manifests" / "overlays").iterdir() if p.is_dir())


def render(overlay: str) -> list[dict]:
    if shutil.which("kubectl") is None:
        pytest.skip("kubectl is not installed")
    out = subprocess.run(
        ["kubectl", "kustomize", str(ROOT / "manifests" / "overlays" / overlay)],
        check=True,
        capture_output=True,
        text=True,
        timeout=60,
    ).stdout
    return [d for d in yaml.safe_load_all(out) if d]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_overlay_renders_with_restricted_namespace(overlay: str) -> None:
    docs = render(overlay)
    kinds = {(d["kind"], d["metadata"]["name"]) for d in docs}
    assert ("Namespace", "aitasks") in kinds
    ns = next(d for d in docs if d["kind"] == "Namespace")
    assert ns["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"
    sa = next(d for d in docs if d["kind"] == "ServiceAccount")
    assert sa["automountServiceAccountToken"] is False
    settings = next(d for d in docs if d["kind"] == "ConfigMap" and d["metadata"]["name"] == "aitasks-settings")
    assert settings["data"]["AITASKS_STORAGE_ROOT"].startswith("gs://")
    for key, value in settings["data"].items():
        assert not any(s in key for s in ("PASSWORD", "SECRET", "TOKEN", "KEY")), (
            f"secret-like key {key} in a ConfigMap"
        )
        assert "@" not in value, f"{key} looks like it carries credentials"
