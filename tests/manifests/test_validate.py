"""`kubernetes-validate --strict` on the rendered built-in kinds.

CRDs (ServiceMonitor, PodMonitor, PrometheusRule, KEDA's ScaledObject and TriggerAuthentication) have no
schema in kubernetes-validate and are left out here; test_rules.py checks the PrometheusRule,
test_ondemand.py the ScaledObject. Skipped when the CLI is not installed, unless
AITASKS_REQUIRE_SERVICES=1 (CI), where a missing validator is a failure.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

CRD_GROUPS = ("monitoring.coreos.com/", "keda.sh/")


def validator() -> str | None:
    beside = Path(sys.executable).with_name("kubernetes-validate")
    return str(beside) if beside.exists() else shutil.which("kubernetes-validate")


def test_builtin_kinds_validate_strictly(any_overlay: str, any_docs: list[dict[str, Any]], tmp_path: Path) -> None:
    cli = validator()
    if cli is None:
        if os.environ.get("AITASKS_REQUIRE_SERVICES") in {"1", "true"}:
            pytest.fail("kubernetes-validate is not installed (pip install kubernetes-validate)")
        pytest.skip("kubernetes-validate is not installed")
    builtin = [d for d in any_docs if not d["apiVersion"].startswith(CRD_GROUPS)]
    if any_overlay.startswith("overlays/"):
        assert len(builtin) < len(any_docs), "expected the monitoring CRDs to be left out"
    path = tmp_path / f"{any_overlay.replace('/', '-')}.yaml"
    path.write_text(yaml.safe_dump_all(builtin, sort_keys=False))
    done = subprocess.run(
        [cli, "--strict", "--quiet", str(path)], check=False, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "ERROR" not in done.stdout and "Couldn't find schema" not in done.stdout + done.stderr, done.stdout
