"""`python -m pipelines`: compile, check, upload, schedule apply, run (local or on a KFP backend), demos.

Compiled YAML is deterministic and committed under pipelines/compiled/; `check` fails when it is stale.
`upload`, `schedule apply` and `run --host` talk to a Kubeflow Pipelines backend (pipelines/kfp_api.py):
host from `--host` or `AITASKS_KFP_HOST`, token from `KFP_TOKEN` or the in-cluster service account.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console

from aitasks.cli import CliApp
from pipelines.registry import pipelines

app = CliApp(help="Compile, check and run aitasks pipelines.", no_args_is_help=True)
console = Console()
err = Console(stderr=True)
COMPILED = Path(__file__).resolve().parent / "compiled"


def compile_pipeline(name: str, out: Path) -> Path:
    from kfp import compiler

    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{name}.yaml"
    compiler.Compiler().compile(pipelines()[name], str(path))
    path.write_text(_stable_header(path.read_text("utf-8")), "utf-8")
    return path


def _stable_header(text: str) -> str:
    """Sort the keys of dict defaults in KFP's comment header.

    KFP renders STRUCT defaults there through protobuf maps, whose order follows the process's
    string-hash seed; the YAML body itself is sorted. Without this the file changes run to run.
    """
    import ast

    lines = text.split("\n")
    for i, line in enumerate(lines):
        if not line.startswith("#"):
            break
        head, sep, rest = line.partition("[Default: ")
        if sep and rest.startswith("{") and rest.endswith("]"):
            value = ast.literal_eval(rest[:-1])
            lines[i] = f"{head}{sep}{dict(sorted(value.items()))!r}]"
    return "\n".join(lines)


@app.command("compile")
def compile_cmd(out: Annotated[Path, typer.Option(help="Output directory.")] = COMPILED) -> None:
    """Compile every pipeline to YAML."""
    for name in pipelines():
        console.print(f"compiled {compile_pipeline(name, out)}")


@app.command("check")
def check_cmd() -> None:
    """Fail when a committed compiled pipeline differs from a fresh compile."""
    stale = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in pipelines():
            fresh = compile_pipeline(name, Path(tmp)).read_text()
            committed = COMPILED / f"{name}.yaml"
            if not committed.exists() or committed.read_text() != fresh:
                stale.append(name)
    if stale:
        err.print(f"[red]stale compiled pipelines: {', '.join(stale)} (run `make compile`)[/red]")
        raise typer.Exit(1)
    console.print("compiled pipelines are current")


def _parse_params(items: list[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep:
            raise typer.BadParameter(f"--param takes key=value, got {item!r}")
        try:
            out[key] = json.loads(value)
        except json.JSONDecodeError:
            out[key] = value
    return out


#: Flat parameters of earlier run forms whose name is not the key they became (``-p hnsw_m=32``).
MOVED: dict[str, str] = {
    "train_seed": "training.seed",
    "train_device": "training.device",
    "gate_confidence": "gate.confidence",
    "index_backend": "index.backend",
    "hnsw_m": "index.m",
    "hnsw_ef_construction": "index.ef_construction",
    "feast_project": "feast.project",
    "classifier_name": "classifier.name",
    "classifier_epochs": "classifier.epochs",
    "classifier_clip_seconds": "classifier.clip_seconds",
    "classifier_seed": "classifier.seed",
    "min_classifier_accuracy": "classifier.min_accuracy",
    "report_samples": "report.samples",
    "demo": "synthetic",
}


def check_params(name: str, params: dict[str, Any]) -> None:
    """Refuse, before any run, a parameter ``name`` does not have and a group dict with a bad key or value.

    A flat knob of an earlier form is named with the group key it became (``epochs`` -> ``training.epochs``).
    """
    from aitasks.run_forms import GROUPS, form_issues

    inputs = pipelines()[name].component_spec.inputs or {}
    for key in params:
        if key in inputs:
            continue
        moved = MOVED.get(key, "")
        if moved.partition(".")[0] not in inputs:
            moved = next((f"{g}.{key}" for g in inputs if g in GROUPS and key in GROUPS[g].keys), "")
        hint = ""
        if moved:
            group, _, sub = moved.partition(".")
            hint = f"; it is now {moved}: -p {group}='{{\"{sub}\": ...}}'" if sub else f"; it is now {group}"
        raise typer.BadParameter(f"{name} has no parameter {key!r}{hint}; known: {', '.join(sorted(inputs))}")
    issues = form_issues({k: v for k, v in params.items() if k in inputs})
    if issues:
        raise typer.BadParameter("; ".join(str(i) for i in issues))


def with_dict_defaults(name: str, params: dict[str, Any]) -> dict[str, Any]:
    """``params`` with each dict parameter given in part merged over the pipeline's default.

    KFP replaces a dict parameter whole; ``-p synthetic='{"users": 300}'`` means "300 users, the rest as
    by default", and a run context given in part keeps every other key. Checked first (:func:`check_params`).
    """
    check_params(name, params)
    inputs = pipelines()[name].component_spec.inputs or {}
    out = dict(params)
    for key, value in params.items():
        spec = inputs[key]
        if isinstance(value, dict) and isinstance(spec.default, dict):
            out[key] = {**spec.default, **value}
    return out


def run_local(name: str, params: dict[str, Any], workdir: Path, *, verbose: bool | None = None) -> Any:
    """Run a pipeline with kfp.local: the settings it cannot honour as one table, then one line per step.

    The executors' raw output goes to ``<workdir>/logs/<pipeline>-<time>.log`` (its path is printed;
    on failure its last lines are shown), unless ``verbose`` (default: ``AITASKS_LOCAL_VERBOSE=1``)
    streams it to the terminal as kfp.local does.
    """
    from kfp import local

    from aitasks.runtime.audit import open_audit
    from aitasks.runtime.settings import load_settings
    from pipelines.local_console import quiet_run, unsupported_table
    from pipelines.unsupported import unsupported_locally

    console.print(unsupported_table(unsupported_locally(name)))
    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(workdir / "kfp"))
    full = with_dict_defaults(name, params)
    if verbose is None:
        verbose = os.environ.get("AITASKS_LOCAL_VERBOSE", "") == "1"
    if verbose:
        with run_time_placeholders():
            return pipelines()[name](**full)
    root = (full.get("run_context") or {}).get("storage_root") or load_settings().storage_root
    settings = load_settings(storage_root=root)
    audit = open_audit(settings.resolved_audit_root())
    log = workdir / "logs" / f"{name}-{datetime.now(UTC).strftime('%Y%m%dT%H%M%SZ')}.log"
    with quiet_run(log, audit, root, console), run_time_placeholders():
        return pipelines()[name](**full)


@contextmanager
def run_time_placeholders(created: datetime | None = None) -> Iterator[None]:
    """Resolve the run-time placeholders kfp.local does not know, as the backend does for a one-off run.

    kfp.local 2.17 fails with an IndexError on ``{{$.pipeline_job_schedule_time_utc}}`` and
    ``{{$.pipeline_job_create_time_utc}}`` (the steps' logical-time inputs). A one-off run has no
    schedule (empty) and a creation time (when this local run started), so retries within the run share
    one logical time. The wrapper is removed when the run ends.
    """
    from kfp import dsl
    from kfp.local import placeholder_utils

    when = (created or datetime.now(UTC)).strftime("%Y-%m-%dT%H:%M:%SZ")
    values = {dsl.PIPELINE_JOB_SCHEDULE_TIME_UTC_PLACEHOLDER: "", dsl.PIPELINE_JOB_CREATE_TIME_UTC_PLACEHOLDER: when}
    original = placeholder_utils.resolve_individual_placeholder

    def resolve(element: str, *args: Any, **kwargs: Any) -> str:
        for placeholder, value in values.items():
            element = element.replace(placeholder, value)
        return original(element, *args, **kwargs)

    placeholder_utils.resolve_individual_placeholder = resolve
    try:
        yield
    finally:
        placeholder_utils.resolve_individual_placeholder = original


@app.command("run")
def run_cmd(
    name: str,
    local: Annotated[bool, typer.Option("--local", help="Run with kfp.local on this machine.")] = False,
    verbose: Annotated[
        bool, typer.Option("--verbose", help="With --local: stream the executors' raw logs (default: to a file).")
    ] = False,
    param: Annotated[
        list[str] | None,
        typer.Option(
            "--param",
            "-p",
            help="key=value (JSON values allowed). A group dict given in part keeps its other keys' defaults: "
            "-p training='{\"epochs\": 2}'.",
        ),
    ] = None,
    workdir: Annotated[Path, typer.Option(help="Local outputs directory.")] = Path(".aitasks"),
    host: Annotated[str | None, typer.Option(help="KFP API host (default: $AITASKS_KFP_HOST).")] = None,
    version: Annotated[str, typer.Option(help="Pipeline version: latest, pinned:<name> or a name.")] = "latest",
    experiment: Annotated[str, typer.Option(help="KFP experiment of the run.")] = "adhoc",
    submitter: Annotated[str | None, typer.Option(help="Who runs it (default: CI actor or login).")] = None,
    git_revision: Annotated[
        str | None, typer.Option(help="Recorded git revision (default: the version's upload revision).")
    ] = None,
) -> None:
    """Run a pipeline: submit it to a KFP backend and print the UI link, or `--local` with kfp.local."""
    if name not in pipelines():
        raise typer.BadParameter(f"unknown pipeline {name!r}; known: {', '.join(pipelines())}")
    if not local:
        from rich.markup import escape

        from pipelines import kfp_api

        # Checked here against this checkout's pipeline: a typo fails now, not in a step pod minutes later.
        check_params(name, _parse_params(param or []))
        try:
            client = kfp_api.client_for(host)
            sub = kfp_api.submit_run(
                client,
                name,
                version,
                _parse_params(param or []),
                experiment,
                submitter=submitter or kfp_api.default_submitter(),
                git_revision=git_revision,
            )
        except (kfp_api.KfpApiError, kfp_api.SpecError) as exc:
            err.print(f"[red]error:[/red] {escape(str(exc))}", soft_wrap=True)
            raise typer.Exit(1) from None
        console.print(f"submitted {name} ({sub.pipeline_version}) run {sub.run_id}")
        console.print(sub.url, soft_wrap=True)
        return
    params = _parse_params(param or [])
    check_params(name, params)
    context = dict(params.get("run_context") or {})
    context.setdefault("storage_root", str(workdir.resolve()))
    context.setdefault("submitter", submitter or "local")
    if git_revision:
        context.setdefault("git_revision", git_revision)
    run_local(name, {**params, "run_context": context}, workdir.resolve(), verbose=verbose or None)


@app.command("upload")
def upload_cmd(
    name: Annotated[str | None, typer.Argument(help="Pipeline to upload (or --all).")] = None,
    all_: Annotated[bool, typer.Option("--all", help="Upload every pipeline.")] = False,
    host: Annotated[str | None, typer.Option(help="KFP API host (default: $AITASKS_KFP_HOST).")] = None,
    git_revision: Annotated[str | None, typer.Option(help="Git revision (default: $GITHUB_SHA or HEAD).")] = None,
    package_dir: Annotated[Path, typer.Option(help="Directory of compiled pipelines.")] = COMPILED,
) -> None:
    """Upload compiled pipelines: create if missing, else a version named <content-hash>-<git-revision>."""
    from rich.markup import escape

    from pipelines import kfp_api

    if all_ == (name is not None):
        err.print("[red]error:[/red] give one pipeline NAME or --all")
        raise typer.Exit(2)
    names = list(pipelines()) if all_ else [str(name)]
    unknown = [n for n in names if n not in pipelines()]
    if unknown:
        err.print(f"[red]error:[/red] unknown pipeline {unknown[0]!r}; known: {', '.join(pipelines())}", soft_wrap=True)
        raise typer.Exit(2)
    missing = [n for n in names if not (package_dir / f"{n}.yaml").is_file()]
    if missing:
        err.print(
            f"[red]error:[/red] no compiled package for {', '.join(missing)} in {package_dir} (run `make compile`)",
            soft_wrap=True,
        )
        raise typer.Exit(1)
    revision = git_revision or kfp_api.default_git_revision()
    try:
        client = kfp_api.client_for(host)
        for pipeline in names:
            result = kfp_api.upload(client, pipeline, package_dir / f"{pipeline}.yaml", git_revision=revision)
            what = "uploaded" if result.created else "unchanged"
            console.print(f"{pipeline}: {what} (pipeline {result.pipeline_id}, version {result.version_id})")
    except (kfp_api.KfpApiError, kfp_api.SpecError) as exc:
        err.print(f"[red]error:[/red] {escape(str(exc))}", soft_wrap=True)
        raise typer.Exit(1) from None


schedule_app = CliApp(help="Recurring runs on the KFP backend, from a declarative file.", no_args_is_help=True)
app.add_typer(schedule_app, name="schedule")


@schedule_app.command("apply")
def schedule_apply_cmd(
    file: Annotated[Path, typer.Option(help="Schedules file.")] = COMPILED.parent / "schedules.yaml",
    host: Annotated[str | None, typer.Option(help="KFP API host (default: $AITASKS_KFP_HOST).")] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Show the plan, change nothing.")] = False,
) -> None:
    """Apply a schedules file idempotently: create, recreate (changed), keep (unchanged), delete (removed)."""
    from rich.markup import escape

    from pipelines import kfp_api

    try:
        spec = kfp_api.load_schedules(file)
        report = kfp_api.apply_schedules(kfp_api.client_for(host), spec, dry_run=dry_run)
    except (kfp_api.KfpApiError, kfp_api.SpecError) as exc:
        err.print(f"[red]error:[/red] {escape(str(exc))}", soft_wrap=True)
        raise typer.Exit(1) from None
    verb = "would " if dry_run else ""
    for label, names in (
        ("create", report.created),
        ("recreate", report.recreated),
        ("delete", report.deleted),
        ("keep", report.unchanged),
    ):
        for sched in names:
            why = f" ({', '.join(report.changes[sched])} changed)" if sched in report.changes else ""
            console.print(f"{verb}{label} {sched}{why}")
    console.print(
        f"{'dry run: ' if dry_run else ''}{len(report.created)} created, {len(report.recreated)} recreated, "
        f"{len(report.unchanged)} unchanged, {len(report.deleted)} deleted"
    )


@app.command("demo")
def demo_cmd(
    workdir: Annotated[Path, typer.Option(help="Where the demo writes everything.")] = Path(".demo"),
    events: Annotated[int, typer.Option(help="Synthetic events.")] = 200_000,
) -> None:
    """The main job on embedded defaults: kfp.local, Feast sqlite, local storage; ends with a summary."""
    from pipelines.demo import run_demo

    run_demo(workdir.resolve(), events=events, console=console)


@app.command("demo-audio")
def demo_audio_cmd(
    workdir: Annotated[Path, typer.Option(help="Where the demo writes everything.")] = Path(".demo"),
    tracks: Annotated[int, typer.Option(help="Generated catalog tracks.")] = 48,
) -> None:
    """The audio-analysis pipeline on kfp.local over a generated catalog; ends with a summary."""
    from pipelines.audio_demo import run_audio_demo

    run_audio_demo(workdir.resolve(), console=console, synthetic={"tracks": tracks})


@app.command("demo-cluster")
def demo_cluster_cmd(
    workdir: Annotated[Path, typer.Option(help="Local files: kfp pipeline root, step sandboxes, logs.")] = Path(
        ".demo/cluster"
    ),
    events: Annotated[int, typer.Option(help="Synthetic events.")] = 20_000,
    epochs: Annotated[int, typer.Option(help="Training epochs.")] = 2,
) -> None:
    """reco-training as a cluster runs it: gs:// on a GCS emulator, MLflow server, Feast on PostgreSQL + Redis,
    every step in its own empty working directory. PostgreSQL: AITASKS_DEMO_POSTGRES_URL; Redis: AITASKS_REDIS_URL."""
    from pipelines.cluster_demo import ServiceUnavailable, remove_workdir, run_cluster_demo

    remove_workdir(workdir.resolve())
    try:
        run_cluster_demo(workdir.resolve(), events=events, epochs=epochs, console=console)
    except ServiceUnavailable as exc:
        err.print(f"[red]error:[/red] {exc}", soft_wrap=True)
        raise typer.Exit(1) from None


def main() -> None:
    try:
        rc = app(standalone_mode=False)
        # In non-standalone mode click returns an Exit's code instead of raising it.
        sys.exit(rc if isinstance(rc, int) else 0)
    except typer.Exit as exc:
        sys.exit(exc.exit_code)
    except Exception as exc:
        import click

        if isinstance(exc, click.ClickException):
            exc.show()
            sys.exit(exc.exit_code)
        if "--debug" in sys.argv:
            raise
        err.print(f"[red]error:[/red] {type(exc).__name__}: {exc}")
        sys.exit(1)
