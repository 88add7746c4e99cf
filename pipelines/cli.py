"""`python -m pipelines`: compile, check, run (local) and demo.

Compiled YAML is deterministic and committed under pipelines/compiled/; `check` fails when it is stale.
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console

from pipelines.registry import pipelines

app = typer.Typer(help="Compile, check and run aitasks pipelines.", no_args_is_help=True)
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


def run_local(name: str, params: dict[str, Any], workdir: Path) -> Any:
    """Run a pipeline with kfp.local, listing the settings kfp.local cannot honour."""
    from kfp import local

    from pipelines.unsupported import unsupported_locally

    for line in unsupported_locally(name):
        console.print(f"[yellow]not honoured locally:[/yellow] {line}")
    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(workdir / "kfp"))
    return pipelines()[name](**params)


@app.command("run")
def run_cmd(
    name: str,
    local: Annotated[bool, typer.Option("--local", help="Run with kfp.local on this machine.")] = False,
    param: Annotated[list[str] | None, typer.Option("--param", "-p", help="key=value (JSON values allowed).")] = None,
    workdir: Annotated[Path, typer.Option(help="Local outputs directory.")] = Path(".aitasks"),
) -> None:
    """Run a pipeline. `--local` runs it here; submitting to a KFP backend comes with the delivery issue."""
    if name not in pipelines():
        raise typer.BadParameter(f"unknown pipeline {name!r}; known: {', '.join(pipelines())}")
    if not local:
        err.print("[red]only --local runs are available in this version[/red]")
        raise typer.Exit(2)
    params = _parse_params(param or [])
    params.setdefault("storage_root", str(workdir.resolve()))
    run_local(name, params, workdir.resolve())


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

    run_audio_demo(workdir.resolve(), console=console, demo_tracks=tracks)


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
