"""The ``aitasks`` command line.

Every command exits non-zero with one clear line on error; ``--debug`` shows the traceback. Exit codes:
0 success, 1 the task or command failed, 2 usage error, 3 invalid input (the field is named), 130
interrupted. Error text is printed as text (never rendered as rich markup or emoji codes), with secrets
redacted and user ids pseudonymised, chained exceptions included. Commands that take longer than a
second show progress.
"""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any, Literal

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table
from rich.text import Text
from typer.core import TyperCommand, TyperGroup
from typer.models import CommandFunctionType

#: Exit codes of every command (also in ``--help`` and the docs).
EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_INVALID_INPUT, EXIT_INTERRUPTED = 0, 1, 2, 3, 130
EXIT_CODES_HELP = (
    "Exit codes: 0 success; 1 the task or command failed; 2 usage error (unknown command or option, "
    "bad option value, unknown task, --params not JSON); 3 invalid input (a task input failed validation: "
    "the field is named); 130 interrupted."
)


def help_type(param: Any, ctx: Any) -> str:
    """What an option takes, as ``--help`` shows it: nothing for a flag, the choices of a choice.

    typer 0.29 shows every option's Python type, so flags read as taking ``<bool>`` and repeatable
    options as ``<list[str]>``. A flag takes no value (``--json``; ``--wait/--no-wait`` is shown as its
    two spellings), a repeatable option is its item type followed by ``...``.
    """
    if getattr(param, "is_bool_flag", False):
        return ""
    shown = str(param.display_type(ctx))
    if shown.startswith("<list[") and shown.endswith("]>"):
        shown = f"<{shown[len('<list[') : -len(']>')]}> ..."
    return shown


def _typed(params: list[Any], ctx: Any) -> list[Any]:
    for param in params:
        if param.param_type_name == "option" and param.metavar is None:
            param.metavar = help_type(param, ctx)
    return params


class TypedCommand(TyperCommand):
    """A command whose ``--help`` shows what each option really takes (:func:`help_type`)."""

    def get_params(self, ctx: Any) -> list[Any]:
        return _typed(super().get_params(ctx), ctx)


class TypedGroup(TyperGroup):
    """A command group whose ``--help`` shows what each option really takes (:func:`help_type`)."""

    def get_params(self, ctx: Any) -> list[Any]:
        return _typed(super().get_params(ctx), ctx)


class CliApp(typer.Typer):
    """``typer.Typer`` whose groups and commands show real option types in ``--help``."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(cls=TypedGroup, **kwargs)

    def command(  # type: ignore[override]
        self, *args: Any, **kwargs: Any
    ) -> Callable[[CommandFunctionType], CommandFunctionType]:
        kwargs.setdefault("cls", TypedCommand)
        return super().command(*args, **kwargs)


app = CliApp(
    help="aitasks: the AI task platform of a music-streaming service.",
    epilog=EXIT_CODES_HELP,
    no_args_is_help=True,
    # Our error boundary prints errors (redacted); typer's pretty tracebacks would show raw values and locals.
    pretty_exceptions_enable=False,
)
tasks_app = CliApp(help="List, show and run registered tasks.", no_args_is_help=True)
audit_app = CliApp(help="Inspect and verify the audit log.", no_args_is_help=True)
data_app = CliApp(help="Synthetic data and data tools.", no_args_is_help=True)
app.add_typer(tasks_app, name="tasks")
app.add_typer(audit_app, name="audit")
index_app = CliApp(help="Published ANN indexes: list versions, roll back, prune.", no_args_is_help=True)
model_app = CliApp(help="Registered models: show the champion, roll the alias back.", no_args_is_help=True)
app.add_typer(data_app, name="data")
app.add_typer(index_app, name="index")
app.add_typer(model_app, name="model")
audio_app = CliApp(help="Audio files: check/analyse them, write a synthetic catalog.", no_args_is_help=True)
app.add_typer(audio_app, name="audio")

# No emoji codes: a path with ``:x:`` in it is shown as it is. Dynamic text goes through ``escape`` or Text.
console = Console(emoji=False)
err_console = Console(stderr=True, emoji=False)
_STATE = {"debug": False}


@app.callback()
def _root(debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks on error.")] = False) -> None:
    _STATE["debug"] = debug


def _schema_summary(model: Any) -> str:
    return ", ".join(f"{n}{'' if f.is_required() else '?'}" for n, f in model.model_fields.items())


_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z(`])")
#: ``tasks list`` shows a table from this terminal width on, one block per task below it.
TABLE_MIN_WIDTH = 100


def first_sentence(text: str) -> str:
    """The first sentence of ``text`` (``e.g.`` and the like do not end one: they are followed by lowercase)."""
    return _SENTENCE_END.split(" ".join(text.split()), maxsplit=1)[0]


def shorten(text: str, width: int) -> str:
    """``text`` in at most ``width`` characters, cut at a word boundary with an ellipsis when it is longer."""
    import textwrap

    text = " ".join(text.split())
    if len(text) <= width:
        return text
    wrapper = textwrap.TextWrapper(
        width=max(width, 2), max_lines=1, placeholder="…", break_long_words=False, break_on_hyphens=False
    )
    return wrapper.fill(text)


def wrap_lines(text: str, width: int, max_lines: int = 2) -> list[str]:
    """``text`` wrapped to ``width`` at word boundaries, at most ``max_lines`` lines; the last line ends with
    an ellipsis when text was left out. A word longer than ``width`` is the only thing ever cut."""
    import textwrap

    lines = textwrap.wrap(" ".join(text.split()), width, break_long_words=False, break_on_hyphens=False)
    if len(lines) > max_lines:
        rest = " ".join(lines[max_lines - 1 :])
        lines = [*lines[: max_lines - 1], shorten(rest, width - 1) if len(rest) > width else rest]
        if not lines[-1].endswith("…"):
            lines[-1] += "…"
    return [line if len(line) <= width else line[: width - 1] + "…" for line in lines]


def task_summary(task: Any) -> str:
    """The English summary of a task: the first sentence of its EN paragraph (else of its docstring)."""
    from aitasks.runtime.docs import parse_languages

    text = parse_languages(task.doc).get("en") or (task.doc.strip().splitlines() or [""])[0]
    return first_sentence(text)


def _input_lines(model: Any, width: int) -> list[str]:
    import textwrap

    return textwrap.wrap(_schema_summary(model), width, break_long_words=False, break_on_hyphens=False)


def _tasks_table(tasks: dict[str, Any], width: int) -> Table:
    """One row per task: name, version, inputs (wrapped between names), summary (at most two lines).

    Column widths are computed here, and cells hold lines already wrapped to them, so rich never
    folds a word: the inputs column is as wide as the longest input name at least.
    """
    name_w = max(len(n) for n in tasks)
    version_w = max(len("version"), *(len(t.version) for t in tasks.values()))
    longest = max(len(f) + 2 for t in tasks.values() for f in t.params_model.model_fields)
    free = width - name_w - version_w - 13  # 5 borders, 2 spaces of padding per column
    inputs_w = max(longest, min(44, free * 2 // 5))
    summary_w = max(16, free - inputs_w)
    table = Table(title="aitasks tasks", expand=False)
    table.add_column("task", no_wrap=True, width=name_w)
    table.add_column("version", no_wrap=True, width=version_w)
    table.add_column("inputs (? optional)", width=inputs_w, no_wrap=True)
    table.add_column("summary", width=summary_w, no_wrap=True)
    for name, t in tasks.items():
        inputs = "\n".join(_input_lines(t.params_model, inputs_w))
        summary = "\n".join(wrap_lines(task_summary(t), summary_w))
        table.add_row(name, t.version, inputs, Text(summary))
    return table


def _tasks_blocks(tasks: dict[str, Any], width: int) -> Text:
    """One block per task for a narrow terminal: name and version, summary, inputs, each wrapped to ``width``."""
    import textwrap

    body = max(20, width - 2)
    out = Text()
    for name, t in tasks.items():
        out.append(name, style="bold")
        out.append(f"  {t.version}\n")
        for line in wrap_lines(task_summary(t), body):
            out.append(f"  {line}\n")
        inputs = textwrap.wrap(
            "inputs: " + _schema_summary(t.params_model),
            body,
            subsequent_indent="  ",
            break_long_words=False,
            break_on_hyphens=False,
        )
        out.append("".join(f"  {line}\n" for line in inputs), style="dim")
    return out


@tasks_app.command("list")
def tasks_list(as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False) -> None:
    """Every registered task with its version, inputs and a one-sentence summary (fits the terminal width)."""
    from aitasks.runtime.task import load_builtin_tasks

    tasks = load_builtin_tasks()
    if as_json:
        out = [
            {
                "name": n,
                "version": t.version,
                "summary": task_summary(t),
                "inputs": t.params_model.model_json_schema(),
                "outputs": t.result_model.model_json_schema(),
                "retry": t.retry.model_dump(),
            }
            for n, t in tasks.items()
        ]
        typer.echo(json.dumps(out, indent=2))
        return
    # A fresh console: the width of the terminal (or $COLUMNS) now, not when the module was imported.
    con = Console(emoji=False, highlight=False)
    width = con.width
    if width >= TABLE_MIN_WIDTH:
        con.print(_tasks_table(tasks, width))
    else:
        con.print(_tasks_blocks(tasks, width), soft_wrap=True, end="")
    con.print(Text("details of one task: aitasks tasks show NAME", style="dim"))


def describe_type(info: Any) -> str:
    """A task input's type as a person reads it: choices of a literal, bounds of a number, optional."""
    import annotated_types as at

    bounds = []
    for m in info.metadata:
        for kind, attr, sign in ((at.Ge, "ge", ">="), (at.Gt, "gt", ">"), (at.Le, "le", "<="), (at.Lt, "lt", "<")):
            if isinstance(m, kind):
                bounds.append(f"{sign} {getattr(m, attr)}")
        if isinstance(m, at.MinLen):
            bounds.append(f"length >= {m.min_length}")
        if isinstance(m, at.MaxLen):
            bounds.append(f"length <= {m.max_length}")
        if getattr(m, "pattern", None):
            bounds.append(f"matching {m.pattern}")
    text = _type_text(info.annotation)
    return text + (f" ({', '.join(bounds)})" if bounds else "")


def _type_text(ann: Any) -> str:
    from typing import Literal, Union, get_args, get_origin

    origin, args = get_origin(ann), get_args(ann)
    if origin is Literal:
        return " | ".join(str(a) for a in args)
    if origin is Union or type(ann).__name__ == "UnionType":
        parts = [_type_text(a) for a in args if a is not type(None)]
        return " | ".join(parts) + (" | null" if type(None) in args else "")
    if origin is Annotated:
        return _type_text(args[0])
    if origin in (list, tuple, set, frozenset):
        return f"list of {_type_text(args[0])}" if args else "list"
    if origin is dict:
        return "object"
    if isinstance(ann, type):
        return {"str": "string", "int": "integer", "float": "number", "bool": "boolean"}.get(ann.__name__, ann.__name__)
    return str(ann).replace("typing.", "")


@tasks_app.command("show")
def tasks_show(
    name: str,
    as_json: Annotated[bool, typer.Option("--json", help="The full JSON schema of inputs and outputs.")] = False,
) -> None:
    """One task: its summary, and each input with type, default and description (``--json``: the schemas)."""
    from pydantic import BaseModel

    from aitasks.runtime.docs import parse_languages
    from aitasks.runtime.task import load_builtin_tasks

    tasks = load_builtin_tasks()
    if name not in tasks:
        raise typer.BadParameter(f"unknown task {name!r}; known: {', '.join(tasks)}")
    t = tasks[name]
    if as_json:
        typer.echo(
            json.dumps(
                {
                    "name": name,
                    "version": t.version,
                    "doc": t.doc,
                    "inputs": t.params_model.model_json_schema(),
                    "outputs": t.result_model.model_json_schema(),
                },
                indent=2,
            )
        )
        return
    con = Console(emoji=False, highlight=False)
    con.print(Text.assemble((name, "bold"), f"  {t.version}"))
    con.print(Text(parse_languages(t.doc).get("en") or t.doc.strip()))
    table = Table(title="inputs", title_justify="left", width=con.width)
    table.add_column("input", no_wrap=True)
    table.add_column("type")
    table.add_column("default")
    table.add_column("description")
    for field, info in t.params_model.model_fields.items():
        value = None if info.is_required() else info.get_default(call_default_factory=True)
        if isinstance(value, BaseModel):
            value = value.model_dump(mode="json")
        default = "(required)" if info.is_required() else json.dumps(value, default=str)
        table.add_row(field, escape(describe_type(info)), escape(shorten(default, 40)), escape(info.description or ""))
    con.print(table)
    con.print(Text(f"outputs: {_schema_summary(t.result_model)}", style="dim"))


@tasks_app.command("run", epilog=EXIT_CODES_HELP)
def tasks_run(
    name: str,
    params: Annotated[str, typer.Option(help="Inputs as JSON, or @file.json.")] = "{}",
    input_root: Annotated[
        list[str] | None,
        typer.Option(
            "--input-root",
            help="Also let the task read inputs under this directory or gs:// prefix (repeatable; '.': the "
            "working directory). Default: only the storage root and AITASKS_INPUT_ROOTS.",
        ),
    ] = None,
) -> None:
    """Run one task with JSON inputs on the settings of the environment (AITASKS_*).

    Inputs are strict: JSON types are taken as they are ("5" or true is not an integer). Inputs must lie
    under the storage root or AITASKS_INPUT_ROOTS; ``--input-root`` adds a root for this run.
    """
    from aitasks.runtime.inputs import loads_json
    from aitasks.runtime.task import get_task

    try:
        task = get_task(name)
    except KeyError:
        raise typer.BadParameter(f"unknown task {name!r} (see `aitasks tasks list`)", param_hint="NAME") from None
    try:
        raw = Path(params[1:]).read_text("utf-8") if params.startswith("@") else params
    except (OSError, UnicodeDecodeError) as exc:
        raise typer.BadParameter(f"cannot read {params[1:]!r}: {exc}", param_hint="--params") from None
    try:
        payload = loads_json(raw)
    except (json.JSONDecodeError, RecursionError) as exc:
        raise typer.BadParameter(f"not valid JSON: {exc}", param_hint="--params") from None
    runtime = None
    if input_root:
        from aitasks.runtime.settings import load_settings
        from aitasks.runtime.task import Runtime

        env_roots = load_settings().input_roots
        runtime = Runtime.create(load_settings(input_roots=(*env_roots, *input_root)))
    with console.status(f"running {escape(name)}…"):
        result = task(payload, runtime=runtime)
    typer.echo(result.model_dump_json(indent=2))


def _open_audit_cli(root: str | None, head_root: str | None) -> Any:
    """The audit log of ``--root``/``--head-root`` or the settings; the key only ever from settings (env/Secret)."""
    from aitasks.runtime.audit import open_audit
    from aitasks.runtime.settings import load_settings

    s = load_settings()
    return open_audit(
        root or s.resolved_audit_root(),
        key=s.audit_key.get_secret_value(),
        head_root=head_root if head_root is not None else (s.audit_head_root or None),
    )


_HEAD_ROOT_HELP = "Where the audit head lives, apart from the log (default: AITASKS_AUDIT_HEAD_ROOT; empty: beside it)."


@audit_app.command("verify")
def audit_verify(
    root: Annotated[str | None, typer.Option(help="Audit directory (default: from settings).")] = None,
    head_root: Annotated[str | None, typer.Option(help=_HEAD_ROOT_HELP)] = None,
    strict: Annotated[
        bool, typer.Option("--strict", help="Also fail when something cannot be proven (dev key, head beside the log).")
    ] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
) -> None:
    """Verify every record's key (HMAC, AITASKS_AUDIT_KEY), the chain and the head.

    Exit 1 on an edited, forged, reordered, deleted or truncated record. Notes say what cannot be proven
    (records keyed with the public dev key; a head kept beside the log cannot prove truncation) and what
    a crash left for the next append to finish; with ``--strict`` an unprovable property fails too.
    """
    from rich.markup import escape

    rep = _open_audit_cli(root, head_root).verify()
    unprovable = [n for n in rep.notes if "not provable" in n or "look the same" in n]
    failed = not rep.ok or (strict and bool(unprovable))
    if as_json:
        typer.echo(json.dumps(rep.to_dict(), sort_keys=True))
    else:
        for n in rep.notes:
            err_console.print(f"[yellow]audit note: {escape(n)}[/yellow]")
        for p in rep.problems:
            err_console.print(f"[red]audit: {escape(p)}[/red]")
        if rep.ok:
            console.print(f"[green]audit chain verified[/green]: {rep.records} records, head seq {rep.head_seq}")
    if failed:
        raise typer.Exit(1)


@audit_app.command("repair")
def audit_repair(
    root: Annotated[str | None, typer.Option(help="Audit directory (default: from settings).")] = None,
    head_root: Annotated[str | None, typer.Option(help=_HEAD_ROOT_HELP)] = None,
) -> None:
    """Finish or undo an append a crash or a full disk interrupted, then verify.

    A partial last line is cut back to the last complete record; an authentic last record the head
    does not cover yet gets its head. Anything else (a record edited, a log shorter than its head) is
    refused: that is not a crash, read `aitasks audit verify`. The next append does the same on its own.
    """
    from rich.markup import escape

    log = _open_audit_cli(root, head_root)
    for line in log.repair() or ["nothing to repair"]:
        console.print(escape(line))
    rep = log.verify()
    for p in rep.problems:
        err_console.print(f"[red]audit: {escape(p)}[/red]")
    if not rep.ok:
        raise typer.Exit(1)
    console.print(f"[green]audit chain verified[/green]: {rep.records} records, head seq {rep.head_seq}")


@audit_app.command("tail")
def audit_tail(
    n: Annotated[int, typer.Option("-n", help="How many records.")] = 20,
    root: Annotated[str | None, typer.Option(help="Audit directory (default: from settings).")] = None,
    run: Annotated[str | None, typer.Option("--run", help="Only this KFP run id.")] = None,
    task: Annotated[str | None, typer.Option("--task", help="Only this task (e.g. audio.analyze).")] = None,
    step: Annotated[str | None, typer.Option("--step", help="Only this pipeline step (KFP task name).")] = None,
    status: Annotated[str | None, typer.Option("--status", help="Only this status (failed, succeeded, ...).")] = None,
    submitter: Annotated[str | None, typer.Option("--submitter", help="Only runs started by this submitter.")] = None,
    text: Annotated[
        bool, typer.Option("--text", help="One readable line per record; a reuse says why it was reused.")
    ] = False,
) -> None:
    """Print the last records (after the filters) as JSON lines: who ran what, when, with which outcome.

    A reused result (status ``idempotent_hit``) carries ``reused``: the key parts that matched (task,
    version, code, inputs, artifacts, state) and the run that committed the result.
    """
    wanted = {"run_id": run, "task": task, "step": step, "status": status, "submitter": submitter}
    records = [
        rec
        for rec in _open_audit_cli(root, None).records()
        if all(v is None or rec.get(k) == v for k, v in wanted.items())
    ]
    for rec in records[-n:] if n > 0 else []:
        typer.echo(_audit_line(rec) if text else json.dumps(rec, sort_keys=True))


def _audit_line(rec: dict[str, Any]) -> str:
    """``seq time task@version status run/step by submitter`` and, for a reuse, why."""
    when = rec.get("ts") or rec.get("time") or ""
    if isinstance(when, int | float):
        when = datetime.fromtimestamp(when, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    line = (
        f"{rec.get('seq', '')} {when} {rec.get('task', '?')}@{rec.get('version', '?')} {rec.get('status', '?')}"
        f" run={rec.get('run_id', '')} step={rec.get('step', '')} by={rec.get('submitter') or rec.get('actor', '')}"
    )
    reused = rec.get("reused")
    if reused:
        parts = reused.get("key_parts", {})
        line += (
            f" | reused the result of run {reused.get('committed_by_run') or '?'}"
            f" committed {reused.get('committed_at') or '?'}: {reused.get('reason', '')}"
            f" (code {parts.get('code', '?')}, inputs {parts.get('inputs', '?')})"
        )
    error = rec.get("error")
    if isinstance(error, dict) and error.get("kind"):
        line += f" | {error['kind']}: {error.get('message', '')}"
    return line


@data_app.command("generate")
def data_generate(
    out: Annotated[Path, typer.Option(help="Output directory.")] = Path(".aitasks/data"),
    seed: Annotated[int, typer.Option(help="Random seed (same seed, same bytes).")] = 7,
    users: Annotated[int, typer.Option(min=1)] = 2_000,
    tracks: Annotated[int, typer.Option(min=1)] = 5_000,
    events: Annotated[int, typer.Option(min=1)] = 200_000,
    days: Annotated[int, typer.Option(min=2)] = 30,
    start: Annotated[str, typer.Option(help="First day, UTC (YYYY-MM-DD).")] = "2026-10-01",
    fmt: Annotated[Literal["parquet", "csv", "jsonl"], typer.Option("--format", help="File format.")] = "parquet",
    dirty_rows: Annotated[
        int, typer.Option(min=0, help="Extra contract-breaking rows mixed in (for quarantine drills).")
    ] = 0,
) -> None:
    """Write a deterministic synthetic catalog and listening events that follow the data contract."""
    from aitasks.data_processing.generator import generate_dataset

    try:
        start_dt = datetime.strptime(start, "%Y-%m-%d").replace(tzinfo=UTC)
    except ValueError:
        raise typer.BadParameter(f"--start must be YYYY-MM-DD, got {start!r}") from None
    with console.status(f"generating {events:,} events…"):
        ds = generate_dataset(
            out,
            seed=seed,
            users=users,
            tracks=tracks,
            events=events,
            start=start_dt,
            days=days,
            fmt=fmt,
            dirty_rows=min(dirty_rows, events),
        )
    console.print(f"[green]wrote[/green] {escape(str(ds))}", soft_wrap=True)


def _settings(storage_root: str | None) -> Any:
    from aitasks.runtime.settings import load_settings

    return load_settings(**({"storage_root": storage_root} if storage_root else {}))


_ROOT_OPT = typer.Option("--storage-root", help="Storage root (default: AITASKS_STORAGE_ROOT).")


@app.command("recommend")
def recommend_cmd(
    user: Annotated[str, typer.Option("--user", help="User id.")],
    k: Annotated[int, typer.Option("--k", min=1, max=1000, help="How many tracks.")] = 10,
    index: Annotated[str, typer.Option(help="Published index name.")] = "reco-tracks",
    project: Annotated[str, typer.Option(help="Feast project.")] = "aitasks",
    storage_root: Annotated[str | None, _ROOT_OPT] = None,
    filter_played: Annotated[
        bool | None,
        typer.Option(
            "--filter-played/--keep-played",
            help="Leave out (or keep) tracks the user already played; default: the serving mode the "
            "model's evaluation recorded.",
        ),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
    api: Annotated[
        str,
        typer.Option(
            "--api",
            envvar="AITASKS_RECOMMEND_API",
            help="Ask a running `aitasks serve-api` at this URL instead of loading model and index here "
            "(no torch or MLflow in this process: well under a second).",
        ),
    ] = "",
) -> None:
    """Top-k tracks for a user: Feast online features, the index's model, the current index."""
    from aitasks.runtime.logging import register_user_id

    register_user_id(user)  # pseudonymised in any log or error line from here on
    if api:
        _recommend_via_api(api, user, k, filter_played, as_json)
        return
    from aitasks.recommendation_update.recommend import recommend

    with console.status("recommending…"):
        rec = recommend(
            _settings(storage_root), user, k=k, index_name=index, project=project, filter_played=filter_played
        )
    if as_json:
        typer.echo(rec.model_dump_json(indent=2))
        return
    flag = "[yellow]popularity fallback[/yellow]" if rec.source == "popularity" else "[green]model[/green]"
    console.print(
        f"{flag} "
        + escape(
            f"({rec.reason}); index {rec.index_name} v{rec.index_version}, model {rec.model_name} "
            f"v{rec.model_version} (champion v{rec.champion_version}); "
            + (f"{rec.filtered_played} played tracks filtered" if rec.filter_played else "played tracks kept")
            + f" ({'your choice' if rec.filter_played_source == 'request' else rec.filter_played_source + ' default'})"
        )
    )
    table = Table("rank", "track", "score")
    for i, item in enumerate(rec.items, 1):
        table.add_row(str(i), escape(item.track_id), f"{item.score:.4f}")
    console.print(table)


_MODEL_SOURCE_OPT = typer.Option(
    "--model-source", help="registry (MLflow, from settings) or dir (a directory of <name>/v<N>/ model versions)."
)
_MODELS_DIR_OPT = typer.Option("--models-dir", help="The model directory of --model-source dir.")


def _model_source(kind: str, directory: str) -> Any:
    from aitasks.serving.model import ModelSource

    if kind not in ("registry", "dir"):
        raise typer.BadParameter("must be registry or dir", param_hint="--model-source")
    if kind == "dir" and not directory:
        raise typer.BadParameter("--model-source dir needs --models-dir", param_hint="--models-dir")
    return ModelSource(kind=kind, directory=directory)  # type: ignore[arg-type]


def _recommend_via_api(api: str, user: str, k: int, filter_played: bool | None, as_json: bool) -> None:
    """``aitasks recommend --api URL``: one GET to the recommendation service."""
    import urllib.error
    import urllib.parse
    import urllib.request

    if not api.startswith(("http://", "https://")):
        raise typer.BadParameter("must be an http:// or https:// URL", param_hint="--api")
    query = {"k": str(k)} | ({} if filter_played is None else {"filter_played": str(filter_played).lower()})
    url = f"{api.rstrip('/')}/v1/users/{urllib.parse.quote(user, safe='')}/recommendations?"
    try:
        with urllib.request.urlopen(url + urllib.parse.urlencode(query), timeout=30) as resp:  # noqa: S310 - http(s) only
            body = json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        detail = json.loads(exc.read() or b"{}").get("detail", exc.reason)
        if exc.code == 422 and isinstance(detail, list):
            from aitasks.runtime.errors import FieldIssue, InvalidInputError

            raise InvalidInputError("reco.recommend", [FieldIssue(d["field"], d["problem"]) for d in detail]) from None
        raise RuntimeError(f"recommendation service answered {exc.code}: {detail}") from None
    if as_json:
        typer.echo(json.dumps(body, indent=2))
        return
    flag = "[yellow]popularity fallback[/yellow]" if body["source"] == "popularity" else "[green]model[/green]"
    console.print(
        f"{flag} "
        + escape(
            f"({body['reason']}); index v{body['index_version']}, model {body['model_name']} v{body['model_version']}; "
            + (f"{body['filtered_played']} played tracks filtered" if body["filter_played"] else "played tracks kept")
        )
    )
    table = Table("rank", "track", "score")
    for i, item in enumerate(body["items"], 1):
        table.add_row(str(i), escape(item["track_id"]), f"{item['score']:.4f}")
    console.print(table)


@app.command("serve-updates")
def serve_updates_cmd(
    project: Annotated[str, typer.Option(help="Feast project whose online store is written.")] = "aitasks",
    events_stream: Annotated[str, typer.Option(help="Stream of listening events.")] = "aitasks:events",
    tracks_stream: Annotated[str, typer.Option(help="Stream of new tracks.")] = "aitasks:tracks",
    dead_letter_stream: Annotated[str, typer.Option(help="Dead-letter stream.")] = "aitasks:events:dead",
    group: Annotated[str, typer.Option(help="Consumer group.")] = "aitasks-updater",
    consumer: Annotated[str, typer.Option(help="Consumer name (default: POD_NAME or host name).")] = "",
    index: Annotated[str, typer.Option(help="Published index whose model embeds users and tracks.")] = "reco-tracks",
    batch_size: Annotated[int, typer.Option(min=1, max=10_000, help="Entries per read.")] = 500,
    block_ms: Annotated[int, typer.Option(min=1, max=60_000, help="How long a read waits.")] = 200,
    claim_idle_ms: Annotated[int, typer.Option(min=100, help="Take over entries idle this long.")] = 30_000,
    port: Annotated[int, typer.Option(min=0, max=65535, help="/healthz, /readyz, /metrics port (0: none).")] = 8080,
    model_source: Annotated[str, _MODEL_SOURCE_OPT] = "registry",
    models_dir: Annotated[str, _MODELS_DIR_OPT] = "",
    storage_root: Annotated[str | None, _ROOT_OPT] = None,
) -> None:
    """Consume listening events and new tracks from Redis Streams; update features, history, embeddings."""
    from aitasks.serving.updater import UpdaterConfig, default_consumer, run_updater

    cfg = UpdaterConfig(
        project=project,
        events_stream=events_stream,
        tracks_stream=tracks_stream,
        dead_letter_stream=dead_letter_stream,
        group=group,
        consumer=consumer or default_consumer(),
        index_name=index,
        batch_size=batch_size,
        block_ms=block_ms,
        claim_idle_ms=claim_idle_ms,
        http_port=port,
    )
    run_updater(_settings(storage_root), cfg, _model_source(model_source, models_dir))


@app.command("serve-api")
def serve_api_cmd(
    project: Annotated[str, typer.Option(help="Feast project of the online store.")] = "aitasks",
    index: Annotated[str, typer.Option(help="Published index name.")] = "reco-tracks",
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=1, max=65535, help="Port.")] = 8000,
    reload_s: Annotated[float, typer.Option(min=0.1, help="How often CURRENT and live tracks are polled.")] = 5.0,
    model_source: Annotated[str, _MODEL_SOURCE_OPT] = "registry",
    models_dir: Annotated[str, _MODELS_DIR_OPT] = "",
    storage_root: Annotated[str | None, _ROOT_OPT] = None,
) -> None:
    """Serve GET /v1/users/{id}/recommendations (FastAPI + uvicorn), with /healthz, /readyz, /metrics."""
    from aitasks.serving.service import ServiceConfig, run_service

    cfg = ServiceConfig(project=project, index_name=index, reload_s=reload_s)
    run_service(_settings(storage_root), cfg, _model_source(model_source, models_dir), host=host, port=port)


@index_app.command("list")
def index_list(
    name: Annotated[str, typer.Option(help="Published index name.")] = "reco-tracks",
    storage_root: Annotated[str | None, _ROOT_OPT] = None,
) -> None:
    """Versions of a published index; the current one is marked."""
    from aitasks.recommendation_update.publish import list_versions, read_current

    root = _settings(storage_root).storage_root
    current = read_current(root, name).version
    table = Table("version", "current", "model", "recall@k", "items", "created")
    for m in list_versions(root, name):
        table.add_row(
            f"v{m.version}",
            "*" if m.version == current else "",
            escape(f"{m.model_name} v{m.model_version}"),
            f"{m.recall_at_k:.4f}",
            str(m.count),
            str(m.created_at),
        )
    console.print(table)


@index_app.command("rollback")
def index_rollback(
    name: Annotated[str, typer.Option(help="Published index name.")] = "reco-tracks",
    to: Annotated[int | None, typer.Option(help="Version to go to (default: the previous one).")] = None,
    storage_root: Annotated[str | None, _ROOT_OPT] = None,
) -> None:
    """Point CURRENT back at an earlier, verified version (atomic switch)."""
    from aitasks.recommendation_update.publish import rollback

    version = rollback(_settings(storage_root).storage_root, name, to=to)
    console.print(Text(f"{name}: CURRENT -> v{version}", style="green"))


@index_app.command("prune")
def index_prune(
    keep: Annotated[int, typer.Option("--keep", min=1, help="How many of the newest versions to keep.")],
    name: Annotated[str, typer.Option(help="Published index name.")] = "reco-tracks",
    storage_root: Annotated[str | None, _ROOT_OPT] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Only say what would be removed.")] = False,
) -> None:
    """Delete old versions: keep the N newest, the current one and its rollback target, never the live one.

    Also removes killed publishers' temp directories and abandoned GCS claims older than
    AITASKS_INDEX_SWEEP_AFTER_S (default one hour).
    """
    from rich.markup import escape

    from aitasks.recommendation_update.publish import prune

    s = _settings(storage_root)
    res = prune(s.storage_root, name, keep=keep, sweep_after_s=s.index_sweep_after_s, dry_run=dry_run)
    verb = "would remove" if dry_run else "removed"
    for v in res.removed:
        console.print(f"{verb} v{v}")
    for v in res.restored:
        console.print(f"[yellow]kept v{v}: it became current while being pruned[/yellow]")
    for leftover in res.swept:
        console.print(f"{verb} leftover {escape(leftover)}")
    console.print(f"[green]{name}: kept {', '.join(f'v{v}' for v in res.kept)}[/green]")


@model_app.command("show")
def model_show(
    name: Annotated[str, typer.Option(help="Registered model name.")] = "reco-two-tower",
    alias: Annotated[str, typer.Option(help="Alias.")] = "champion",
    storage_root: Annotated[str | None, _ROOT_OPT] = None,
) -> None:
    """The version an alias points at, with its lineage tags."""
    from aitasks.platform.registry import get_version, registry_config

    version = get_version(registry_config(_settings(storage_root), model_name=name), alias=alias)
    if version is None:
        err_console.print(Text(f"{name} has no alias {alias!r}", style="red"))
        raise typer.Exit(1)
    typer.echo(version.model_dump_json(indent=2))


@model_app.command("rollback")
def model_rollback(
    name: Annotated[str, typer.Option(help="Registered model name.")] = "reco-two-tower",
    alias: Annotated[str, typer.Option(help="Alias.")] = "champion",
    storage_root: Annotated[str | None, _ROOT_OPT] = None,
) -> None:
    """Move the alias back to the previous champion recorded on the current one."""
    from aitasks.platform.registry import registry_config, rollback_alias

    version = rollback_alias(registry_config(_settings(storage_root), model_name=name), alias=alias)
    console.print(Text(f"{name}: {alias} -> v{version}", style="green"))


def _use_numba_cache() -> None:
    """Keep the loudness kernel's compiled code in the user's cache directory (``$XDG_CACHE_HOME/aitasks/numba``)
    unless ``NUMBA_CACHE_DIR`` is set: a later call loads it instead of compiling (~0.4 s). Only the CLI does
    this; a pipeline step compiles in memory and writes nothing into its home."""
    import os

    if os.environ.get("NUMBA_CACHE_DIR"):
        return
    root = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "aitasks" / "numba"
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError:  # a read-only home: compile in memory
        return
    os.environ["NUMBA_CACHE_DIR"] = str(root)


@audio_app.command("check")
def audio_check(
    files: Annotated[list[Path], typer.Argument(help="Audio files to check and analyse.")],
    max_channels: Annotated[int, typer.Option(help="More channels are refused.")] = 2,
    sample_rate: Annotated[int, typer.Option(help="Analysis sample rate.")] = 22050,
) -> None:
    """Decode, check and analyse files as the pipeline does: the quarantine reason or the flags of each.

    Exits 1 when any file would be quarantined.
    """
    _use_numba_cache()
    from aitasks.audio_analysis.analyze import AnalysisConfig, analyze_file
    from aitasks.audio_analysis.catalog import CatalogEntry
    from aitasks.audio_analysis.decode import DecodeConfig

    settings = _settings(None)
    cfg = AnalysisConfig(
        decode=DecodeConfig(
            sample_rate=sample_rate,
            max_channels=max_channels,
            max_bytes=settings.audio_max_bytes,
            max_duration_s=settings.audio_max_duration_s,
        ),
        spectrogram_frames=0,
    )
    table = Table("file", "verdict", "format", "rate", "ch", "seconds", "flags / reason")
    refused = 0
    for f in files:
        r = analyze_file(f, CatalogEntry(track_id=f.stem or "x", key=f.name, uri=str(f), size=0), cfg)
        if not r.ok:
            refused += 1
            table.add_row(escape(str(f)), f"[red]{escape(r.reason)}[/red]", "", "", "", "", escape(r.detail))
            continue
        flags = escape("; ".join(f"{fl.code}: {fl.reason}" for fl in r.flags)) or "[green]clean[/green]"
        table.add_row(
            escape(str(f)), "ok", escape(r.format), str(r.source_rate), str(r.channels), f"{r.duration_s:.1f}", flags
        )
    console.print(table)
    if refused:
        raise typer.Exit(1)


@audio_app.command("synth")
def audio_synth(
    out: Annotated[Path, typer.Argument(help="Directory of the catalog (created).")],
    tracks: Annotated[int, typer.Option(help="Good tracks.")] = 48,
    seed: Annotated[int, typer.Option(help="Seed.")] = 0,
    planted: Annotated[bool, typer.Option(help="Add the planted problems.")] = True,
) -> None:
    """Write the documented synthetic catalog (and its labelled folder beside it) with truth.json."""
    from aitasks.audio_analysis.demo_catalog import write_demo_catalog

    with console.status(f"writing {tracks} tracks..."):
        truth = write_demo_catalog(out, tracks=tracks, seed=seed, planted=planted)
    console.print(
        Text(f"wrote {out} ({tracks} tracks, planted: {truth['planted']}) and {out.parent / (out.name + '-labelled')}")
    )


@app.command("worker")
def worker_cmd(
    pool: Annotated[str, typer.Option(help="prefork (production: time limits), solo or threads.")] = "prefork",
    concurrency: Annotated[int, typer.Option(min=1, help="Pool processes or threads.")] = 1,
    include: Annotated[list[str] | None, typer.Option("--include", "-I", help="Also import MODULE (tasks).")] = None,
    hostname: Annotated[str, typer.Option(help="Celery node name (default: aitasks-<random>@<host>).")] = "",
    health_dir: Annotated[str, typer.Option(help="Keep liveness/readiness files here (probes).")] = "",
) -> None:
    """Run an on-demand worker on AITASKS_ONDEMAND_QUEUE until stopped (docs/en/ondemand.md)."""
    from aitasks.ondemand.worker import run_worker
    from aitasks.runtime.settings import load_settings

    run_worker(
        load_settings(),
        pool=pool,
        concurrency=concurrency,
        include=include or (),
        hostname=hostname,
        health_dir=health_dir,
    )


@app.command("submit")
def submit_cmd(
    task: str,
    input_file: Annotated[str, typer.Option("--input", help="Inputs: a JSON file, or - for stdin.")],
    wait: Annotated[bool, typer.Option("--wait/--no-wait", help="Wait and print the result (else the id).")] = False,
    timeout: Annotated[float, typer.Option(min=0.1, help="Seconds --wait waits.")] = 600.0,
) -> None:
    """Run a registered task on demand on the workers: enqueue it, then print its result or its id."""
    from aitasks.ondemand import client
    from aitasks.ondemand.app import make_app
    from aitasks.runtime.settings import load_settings

    raw = sys.stdin.read() if input_file == "-" else Path(input_file).read_text()
    try:
        params = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise typer.BadParameter(f"--input is not valid JSON: {exc}") from None
    ondemand = make_app(load_settings())
    sub = client.submit(task, params, app=ondemand)
    if not wait:
        typer.echo(json.dumps({"task_id": sub.task_id, "task": task, "trace_id": sub.trace_id}))
        return
    with console.status(f"waiting for {task} ({sub.task_id})…"):
        typer.echo(json.dumps(client.wait(ondemand, sub.task_id, timeout=timeout), indent=2))


@app.command("docs")
def docs(
    check: Annotated[bool, typer.Option("--check", help="Fail when the rendered docs are stale.")] = False,
    docs_dir: Annotated[Path, typer.Option(help="Docs root.")] = Path("docs"),
) -> None:
    """Render docs/{en,fr,de}/tasks.md from the registry (or check they are current)."""
    from aitasks.runtime.docs import missing_languages, render_all
    from aitasks.runtime.task import load_builtin_tasks

    tasks = load_builtin_tasks()
    lacking = {n: missing_languages(t.doc) for n, t in tasks.items() if missing_languages(t.doc)}
    if lacking:
        for n, langs in lacking.items():
            err_console.print(Text(f"task {n} lacks docstring text for: {', '.join(langs)}", style="red"))
        raise typer.Exit(1)
    stale = []
    for path, text in render_all(tasks, docs_dir).items():
        if check:
            if not path.exists() or path.read_text("utf-8") != text:
                stale.append(str(path))
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text, "utf-8")
            console.print(Text(f"wrote {path}"))
    if stale:
        err_console.print(Text(f"stale task docs (run `make docs`): {', '.join(stale)}", style="red"))
        raise typer.Exit(1)


def exit_code_for(exc: BaseException) -> int:
    """The documented exit code of an error that reached the CLI's boundary."""
    from aitasks.runtime.errors import InvalidInputError, UnsafePathError

    if isinstance(exc, InvalidInputError | UnsafePathError):
        return EXIT_INVALID_INPUT
    return EXIT_FAILED


def _print_error(exc: BaseException) -> None:
    """One line, as text (never markup), redacted; with ``--debug`` the redacted traceback first."""
    from aitasks.runtime.logging import error_summary, format_exception

    if _STATE["debug"] or "--debug" in sys.argv:
        sys.stderr.write(format_exception(exc))
        sys.stderr.flush()
    err_console.print(Text.assemble(("error:", "red"), " ", error_summary(exc)), soft_wrap=True)


def main() -> None:
    """Entry point: one clear line on error, traceback only with --debug; exit codes per ``EXIT_CODES_HELP``."""
    from aitasks.runtime.logging import install_excepthook, scrub_text

    install_excepthook()
    try:
        rc = app(standalone_mode=False)
        # In non-standalone mode click returns an Exit's code instead of raising it.
        sys.exit(rc if isinstance(rc, int) else 0)
    except typer.Exit as exc:
        sys.exit(exc.exit_code)
    except (typer.Abort, KeyboardInterrupt):
        err_console.print("aborted")
        sys.exit(EXIT_INTERRUPTED)
    except typer.TyperException as exc:  # click's usage errors (exit 2) and other command-line errors
        exc.message = scrub_text(exc.message)
        show = getattr(exc, "show", None)
        if show is not None:
            show()
        else:
            err_console.print(Text.assemble(("error:", "red"), " ", exc.message), soft_wrap=True)
        sys.exit(getattr(exc, "exit_code", EXIT_USAGE))
    except Exception as exc:  # the CLI's single error boundary
        _print_error(exc)
        sys.exit(exit_code_for(exc))


if __name__ == "__main__":
    main()
