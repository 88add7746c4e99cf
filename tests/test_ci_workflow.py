"""The GitHub Actions workflow: what CI runs, in which order, with which rights, and that its commands exist."""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
WORKFLOW = ROOT / ".github" / "workflows" / "ci.yml"


def _wf() -> dict:
    doc = yaml.safe_load(WORKFLOW.read_text())
    # YAML 1.1 reads the key `on` as True.
    doc["on"] = doc.pop(True, doc.get("on"))
    return doc


def _runs(job: dict) -> list[str]:
    return [s["run"] for s in job["steps"] if "run" in s]


def test_tests_run_through_the_project_ci_entry_point_on_every_push_and_pr() -> None:
    wf = _wf()
    assert set(wf["on"]) == {"push", "pull_request"}
    assert wf["on"]["push"]["branches"] == ["main"]
    test = wf["jobs"]["test"]
    assert any(r.strip() == "bash .ci/run" for r in _runs(test)), "the README's test command via .ci/run"
    assert test["services"]["postgres"]["env"]["POSTGRES_HOST_AUTH_METHOD"] == "trust"
    assert any("redis-server" in r for r in _runs(test))
    assert any("download.pytorch.org/whl/cpu" in r for r in _runs(test)), "CPU torch, not the CUDA build"


def test_images_build_every_family_of_the_table_and_publish_only_from_main() -> None:
    wf = _wf()
    images = wf["jobs"]["images"]
    assert images["needs"] == "test"
    table = json.loads((ROOT / "images" / "images.json").read_text())
    assert sorted(images["strategy"]["matrix"]["family"]) == sorted(table["images"])
    for family in table["images"]:
        assert (ROOT / "images" / family / "Dockerfile").is_file()
    build = next(s for s in images["steps"] if str(s.get("uses", "")).startswith("docker/build-push-action"))
    assert build["with"]["file"] == "images/${{ matrix.family }}/Dockerfile"
    assert "env.PUBLISH == 'true'" in build["with"]["push"] and "exists" in build["with"]["push"]
    assert images["env"]["PUBLISH"] == "${{ github.event_name == 'push' && github.ref == 'refs/heads/main' }}"
    for arg in ("PYTHON_DIGEST", "CUDA_DIGEST", "REVISION"):
        assert arg in build["with"]["build-args"]


def test_upload_runs_after_images_on_main_only_with_the_environment_s_credentials() -> None:
    wf = _wf()
    upload = wf["jobs"]["upload"]
    assert upload["needs"] == "images"
    assert upload["if"] == "github.event_name == 'push' && github.ref == 'refs/heads/main'"
    assert upload["environment"] == "production"
    runs = " ".join(_runs(upload))
    assert "pipelines check" in runs and "pipelines upload --all" in runs and "pipelines schedule apply" in runs


def test_least_privilege_and_no_inline_secrets() -> None:
    wf = _wf()
    assert wf["permissions"] == {"contents": "read"}
    for name, job in wf["jobs"].items():
        perms = job.get("permissions", {})
        assert set(perms) <= {"contents", "id-token"}, name
        if "id-token" in perms:
            assert name == "images", "only the image job federates to the cloud"
    text = WORKFLOW.read_text()
    # Credentials only through the secrets context, never literal.
    assert not re.search(r"(?i)(token|password|secret)\s*:\s*['\"]?[A-Za-z0-9_\-]{12,}", text)
    for step in (s for job in wf["jobs"].values() for s in job["steps"]):
        uses = step.get("uses")
        if uses:
            assert re.match(r"^[\w.-]+/[\w.-]+@v\d+", uses), f"{uses}: pin an action version"


def test_every_pipelines_command_of_the_workflow_exists() -> None:
    import typer.main

    from pipelines.cli import app

    click_app = typer.main.get_command(app)
    for job in _wf()["jobs"].values():
        for run in _runs(job):
            for line in run.splitlines():
                if "-m pipelines" not in line:
                    continue
                argv = shlex.split(line.split("-m pipelines", 1)[1])
                cmd = click_app
                for word in argv:
                    if word.startswith("-") or not hasattr(cmd, "commands"):
                        break
                    assert word in cmd.commands, f"`python -m pipelines {' '.join(argv)}`: no command {word!r}"
                    cmd = cmd.commands[word]
