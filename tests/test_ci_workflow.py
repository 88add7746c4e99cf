"""The GitHub Actions workflow: what CI runs, in which order, with which rights, and that its commands exist."""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
from pathlib import Path

import yaml

from tests.conftest import skip_or_fail

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


def _step(job: dict, uses: str) -> dict:
    return next(s for s in job["steps"] if str(s.get("uses", "")).startswith(uses + "@"))


def _named(job: dict, name: str) -> dict:
    return next(s for s in job["steps"] if s.get("name") == name)


def test_images_build_every_family_of_the_table_and_publish_only_from_main() -> None:
    wf = _wf()
    images = wf["jobs"]["images"]
    assert images["needs"] == "test"
    table = json.loads((ROOT / "images" / "images.json").read_text())
    assert sorted(images["strategy"]["matrix"]["family"]) == sorted(table["images"])
    for family in table["images"]:
        assert (ROOT / "images" / family / "Dockerfile").is_file()
    build = _step(images, "docker/build-push-action")
    assert build["with"]["file"] == "images/${{ matrix.family }}/Dockerfile"
    assert build["with"]["push"] == "${{ env.PUBLISH == 'true' }}"
    assert images["env"]["PUBLISH"] == "${{ github.event_name == 'push' && github.ref == 'refs/heads/main' }}"
    for arg in ("PYTHON_DIGEST", "CUDA_DIGEST", "REVISION"):
        assert arg in build["with"]["build-args"]


def test_images_build_and_push_the_content_tag_the_pipelines_name_and_never_overwrite_one() -> None:
    images = _wf()["jobs"]["images"]
    assert images["env"]["FAMILY"] == "${{ matrix.family }}"
    uri = _named(images, "Image URI (content tag)")
    # The one function the components call at compile time, run as a stdlib-only script.
    assert 'python3 components/images.py uri "$FAMILY"' in uri["run"]
    build = _step(images, "docker/build-push-action")
    outputs = "${{ steps." + uri["id"] + ".outputs"
    assert build["with"]["tags"] == f"{outputs}.uri }}}}"
    assert f"VERSION={outputs}.tag }}}}" in build["with"]["build-args"]
    # The committed YAML (what `upload` sends) names exactly this image.
    named = _named(images, "The committed pipelines name this image")
    assert "pipelines/compiled/" in named["run"] and "exit 1" in named["run"]
    # An existing tag is never pushed again: it holds the same content hash.
    exists = next(s for s in images["steps"] if s.get("id") == "exists")
    assert exists["if"] == "env.PUBLISH == 'true'"
    assert "imagetools inspect" in exists["run"] and "exit 1" in exists["run"], "an unknown registry error stops"
    assert build["if"] == "steps.exists.outputs.exists != 'true'"
    steps = images["steps"]
    assert steps.index(uri) < steps.index(named) < steps.index(exists) < steps.index(build)


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


# ---- supply chain and script injection (what zizmor audits, checked here without it) ------------------
def _steps() -> list[dict]:
    return [s for job in _wf()["jobs"].values() for s in job["steps"]]


def test_every_action_is_pinned_by_a_full_commit_sha_with_its_release_in_a_comment() -> None:
    uses = [s["uses"] for s in _steps() if "uses" in s]
    assert uses
    for ref in uses:
        assert re.fullmatch(r"[\w.-]+/[\w./-]+@[0-9a-f]{40}", ref), f"{ref}: pin a full commit SHA"
    lines = [line for line in WORKFLOW.read_text().splitlines() if re.match(r"\s*(- )?uses:", line)]
    assert len(lines) == len(uses)
    for line in lines:
        assert re.search(r"@[0-9a-f]{40} # v\d+\.\d+\.\d+$", line), f"{line.strip()}: say which release"
    # One SHA per action: two steps of one action never run different code.
    pins: dict[str, set[str]] = {}
    for ref in uses:
        action, _, sha = ref.partition("@")
        pins.setdefault(action, set()).add(sha)
    assert all(len(v) == 1 for v in pins.values()), pins


def test_service_images_are_pinned_by_digest() -> None:
    for name, job in _wf()["jobs"].items():
        for service in job.get("services", {}).values():
            assert re.search(r"@sha256:[0-9a-f]{64}$", service["image"]), f"{name}: {service['image']}"


def test_checkouts_do_not_persist_credentials() -> None:
    checkouts = [s for s in _steps() if s.get("uses", "").startswith("actions/checkout@")]
    assert len(checkouts) == len(_wf()["jobs"])
    for step in checkouts:
        assert step.get("with", {}).get("persist-credentials") is False


def test_no_expression_is_expanded_inside_a_script() -> None:
    """`${{ ... }}` in `run:` is pasted into the shell before it runs; values reach scripts through env."""
    for job_name, job in _wf()["jobs"].items():
        for step in job["steps"]:
            assert "${{" not in step.get("run", ""), f"{job_name}: {step.get('name', step['run'][:40])}"


def _zizmor() -> str:
    found = next((str(p) for p in [ROOT / ".venv-tools" / "bin" / "zizmor"] if os.access(p, os.X_OK)), None)
    found = found or shutil.which("zizmor")
    if found is None:
        skip_or_fail("zizmor not installed (make .venv-tools/bin/zizmor)")
    assert found is not None
    return found


def _zizmor_run(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [_zizmor(), "--offline", "--persona=pedantic", "--no-progress", str(path)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_zizmor_finds_nothing_in_the_workflows() -> None:
    proc = _zizmor_run(WORKFLOW.parent)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_zizmor_still_reports_what_this_workflow_fixed(tmp_path: Path) -> None:
    bad = tmp_path / ".github" / "workflows" / "bad.yml"
    bad.parent.mkdir(parents=True)
    bad.write_text(
        "on: push\npermissions: {}\njobs:\n  a:\n    runs-on: ubuntu-24.04\n    steps:\n"
        "      - uses: actions/checkout@v4\n"
        "      - run: echo ${{ github.event.head_commit.message }}\n"
    )
    proc = _zizmor_run(bad.parent)
    assert proc.returncode != 0
    for audit in ("unpinned-uses", "artipacked", "template-injection"):
        assert audit in proc.stdout, proc.stdout


def test_make_lint_runs_zizmor_offline_from_the_pinned_tools_venv() -> None:
    makefile = (ROOT / "Makefile").read_text()
    lint = makefile.split("\nlint:", 1)[1].split("\n\n", 1)[0]
    assert "$(ZIZMOR)" in lint.splitlines()[0], "the lint target depends on the tools venv"
    assert re.search(r"^\t\$\(ZIZMOR\) --offline .*\.github/workflows/", lint, re.M)
    assert re.search(r'pip install .*"zizmor==\d+\.\d+\.\d+"', makefile), "zizmor pinned in the tools venv"
