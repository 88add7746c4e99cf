"""Talk to a Kubeflow Pipelines backend (v2beta1 API through ``kfp.Client``): upload, schedules, runs.

The CI flow (FIELD_NOTES): ``get_pipeline_id`` → ``upload_pipeline`` / ``upload_pipeline_version`` →
``create_experiment`` → ``create_recurring_run``. Recurring runs cannot be updated, so a changed schedule
is created anew and the old one deleted. Who started a run, from which git revision and pipeline version,
travel into the run inside the pipelines' ``run_context`` parameter (``submitter``, ``git_revision``,
``pipeline_version``; the backend does not record them), so every task's audit record answers "who ran
what".

Nothing here reads the environment or creates a client at import time.
"""

from __future__ import annotations

import contextlib
import getpass
import hashlib
import io
import json
import os
import re
import subprocess
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

if TYPE_CHECKING:
    import kfp

#: The service-account token kubelet mounts into every pod (used when no other token is given).
SA_TOKEN_PATH = Path("/var/run/secrets/kubernetes.io/serviceaccount/token")
#: Recurring runs whose display name starts with this are ours: `schedule apply` may delete them.
MANAGED_PREFIX = "aitasks-"
DEFAULT_SCHEDULES = Path(__file__).resolve().parent / "schedules.yaml"
HOST_ENV = "AITASKS_KFP_HOST"
TOKEN_ENV = "KFP_TOKEN"  # noqa: S105 - the variable's name, not a secret
_PAGE = 100


class KfpApiError(RuntimeError):
    """The KFP API could not be reached or refused a request; the message is one line, without secrets."""


class SpecError(ValueError):
    """A schedules file or a request is invalid before anything reaches the API."""


# --- client ----------------------------------------------------------------------------------------


def resolve_host(host: str | None = None) -> str:
    """The KFP API host: the argument, else ``AITASKS_KFP_HOST``, else kfp's own ``KF_PIPELINES_ENDPOINT``."""
    from aitasks.runtime.settings import load_settings

    resolved = host or load_settings().kfp_host or os.environ.get("KF_PIPELINES_ENDPOINT")
    if not resolved:
        raise SpecError(f"no KFP host: pass --host or set {HOST_ENV}")
    return resolved.rstrip("/")


def resolve_token(token: str | None = None) -> str | None:
    """The bearer token: explicit, else ``KFP_TOKEN``, else the in-cluster service-account token when mounted."""
    if token:
        return token
    if env := os.environ.get(TOKEN_ENV):
        return env
    if SA_TOKEN_PATH.is_file():
        return SA_TOKEN_PATH.read_text("utf-8").strip() or None
    return None


def client_for(host: str | None = None, *, token: str | None = None) -> kfp.Client:
    """A ``kfp.Client`` for ``host`` with bearer-token auth (see :func:`resolve_token`); never logs the token.

    Raises:
        KfpApiError: the API is unreachable or answers the health check with an error.
    """
    import kfp

    url = resolve_host(host)
    bearer = resolve_token(token)
    _probe(url, bearer)
    with api_errors(f"connect to {url}"), _quiet():
        return kfp.Client(host=url, existing_token=bearer)


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    """Never follow a redirect with the bearer token attached."""

    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


def _probe(url: str, bearer: str | None, timeout_s: float = 10.0) -> None:
    """One quick healthz call: kfp.Client retries a failing healthz 5 times, 5 s apart, logging tracebacks."""
    import urllib.error

    if not url.startswith(("http://", "https://")):
        return  # kfp.Client adds https:// itself (with a warning); let it
    try:
        request = urllib.request.Request(f"{url}/apis/v2beta1/healthz")  # noqa: S310 - http(s) checked above
        if bearer:
            request.add_header("Authorization", f"Bearer {bearer}")
        with urllib.request.build_opener(_NoRedirect()).open(request, timeout=timeout_s) as resp:
            resp.read()
    except urllib.error.HTTPError as exc:
        if exc.code >= 500 or exc.code == 404:
            raise KfpApiError(f"connect to {url}: KFP API health check answered {exc.code} {exc.reason}") from None
        # 3xx/401/403: health sits behind a login proxy or auth here; the real client will tell.
    except (urllib.error.URLError, OSError, TimeoutError) as exc:
        reason = getattr(exc, "reason", exc)
        raise KfpApiError(f"connect to {url}: cannot reach the KFP API ({reason})") from None


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """kfp.Client prints 'details' links on stdout; the CLI prints its own lines instead."""
    with contextlib.redirect_stdout(io.StringIO()):
        yield


@contextlib.contextmanager
def api_errors(action: str) -> Iterator[None]:
    """Turn kfp_server_api / urllib3 failures into one-line :class:`KfpApiError` messages."""
    import urllib3
    from kfp_server_api.exceptions import ApiException

    try:
        yield
    except (KfpApiError, SpecError):
        raise
    except ApiException as exc:
        raise KfpApiError(f"{action}: KFP API answered {exc.status} {exc.reason}: {_api_message(exc)}") from None
    except urllib3.exceptions.MaxRetryError as exc:
        reason = type(exc.reason).__name__ if exc.reason is not None else "no answer"
        raise KfpApiError(f"{action}: cannot reach the KFP API ({reason})") from None
    except (urllib3.exceptions.HTTPError, OSError, TimeoutError) as exc:
        raise KfpApiError(f"{action}: cannot reach the KFP API ({type(exc).__name__})") from None


def _api_message(exc: Any) -> str:
    body = getattr(exc, "body", None) or ""
    try:
        decoded = json.loads(body)
    except (TypeError, ValueError):
        return str(body)[:200].replace("\n", " ") or "no details"
    if isinstance(decoded, dict):
        return str(decoded.get("message") or decoded.get("error") or decoded)[:200]
    return str(decoded)[:200]


def run_url(client: kfp.Client, run_id: str) -> str:
    """The UI link of a run, with the host the client uses for its own links."""
    # `_get_url_prefix` honours KF_PIPELINES_UI_ENDPOINT / ui_host like kfp's printed links do.
    return f"{client._get_url_prefix()}/#/runs/details/{run_id}"


# --- defaults for who and what ---------------------------------------------------------------------


def default_git_revision(cwd: Path | None = None) -> str:
    """``GITHUB_SHA`` in CI, else ``git rev-parse HEAD``, else ``unknown``."""
    if sha := os.environ.get("GITHUB_SHA"):
        return sha
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, check=True, timeout=10
        )
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return out.stdout.strip() or "unknown"


def default_submitter() -> str:
    """``ci:<actor>`` in GitHub Actions, else ``AITASKS_ACTOR`` when set, else ``user:<login>``."""
    if os.environ.get("GITHUB_ACTIONS") == "true":
        return f"ci:{os.environ.get('GITHUB_ACTOR', 'unknown')}"
    if actor := os.environ.get("AITASKS_ACTOR"):
        return actor
    try:
        return f"user:{getpass.getuser()}"
    except (KeyError, OSError):
        return "user:unknown"


# --- upload ----------------------------------------------------------------------------------------


class UploadResult(NamedTuple):
    pipeline_id: str
    version_id: str
    created: bool


def content_hash(package_path: Path) -> str:
    """SHA-256 of the compiled package (compiles are byte-identical, so equal code gives equal hashes)."""
    return hashlib.sha256(Path(package_path).read_bytes()).hexdigest()


def version_name(package_path: Path, git_revision: str) -> str:
    """``<content-sha256[:12]>-<git_revision[:12]>``."""
    rev = re.sub(r"[^A-Za-z0-9._-]", "-", git_revision)[:12] or "unknown"
    return f"{content_hash(package_path)[:12]}-{rev}"


def _revision_of(version: Any) -> str:
    """The git revision a version was uploaded from: from its name, else its description, else its name."""
    if match := re.fullmatch(r"[0-9a-f]{12}-(.+)", version.name or ""):
        return match.group(1)
    if match := re.search(r"\bgit:(\S+?)\)?(\s|$)", version.description or ""):
        return match.group(1)
    return str(version.name or "unknown")


def _versions(client: kfp.Client, pipeline_id: str) -> list[Any]:
    out: list[Any] = []
    token = ""
    while True:
        page = client.list_pipeline_versions(pipeline_id, page_token=token, page_size=_PAGE)
        out.extend(page.pipeline_versions or [])
        token = page.next_page_token or ""
        if not token:
            return out


def _latest(versions: list[Any]) -> Any:
    # Stable on ties: the later one in the server's order wins.
    return max(enumerate(versions), key=lambda iv: (iv[1].created_at is not None, iv[1].created_at, iv[0]))[1]


def upload(
    client: kfp.Client, name: str, package_path: Path, *, git_revision: str, description: str = ""
) -> UploadResult:
    """Create pipeline ``name`` if missing, else add a version ``<content-hash>-<git-revision>``.

    Uploading content already present (a version whose name starts with its hash, or whose
    description carries it) is a no-op that returns that version with ``created=False``.
    """
    from kfp_server_api.exceptions import ApiException

    digest = content_hash(package_path)[:12]
    vname = version_name(package_path, git_revision)
    marker = f"content-sha256:{digest}"
    note = f"{marker} git:{git_revision}"
    with api_errors(f"upload {name}"), _quiet():
        pipeline_id = client.get_pipeline_id(name)
        if pipeline_id is None:
            # The backend names the first version after the pipeline and gives it this description.
            created = client.upload_pipeline(
                str(package_path), pipeline_name=name, description=f"{description} ({note})".strip()
            )
            first = _latest(_versions(client, created.pipeline_id))
            return UploadResult(created.pipeline_id, first.pipeline_version_id, True)
        if same := _same_content(client, pipeline_id, digest):
            return UploadResult(pipeline_id, same, False)
        try:
            version = client.upload_pipeline_version(
                str(package_path), vname, pipeline_id=pipeline_id, description=note
            )
        except ApiException as exc:
            # 409: a concurrent upload (another CI job) added this content first; that is our no-op.
            if exc.status == 409 and (same := _same_content(client, pipeline_id, digest)):
                return UploadResult(pipeline_id, same, False)
            raise
        return UploadResult(pipeline_id, version.pipeline_version_id, True)


def _same_content(client: kfp.Client, pipeline_id: str, digest: str) -> str | None:
    """The id of a version holding content ``digest`` (by name prefix, or the marker in its description)."""
    marker = f"content-sha256:{digest}"
    for existing in _versions(client, pipeline_id):
        if (existing.name or "").startswith(digest) or marker in (existing.description or ""):
            return str(existing.pipeline_version_id)
    return None


def _resolve_version(client: kfp.Client, pipeline: str, pipeline_id: str, policy: str) -> Any:
    """``latest`` (newest upload) or ``pinned:<version name>`` (a bare version name is taken as pinned)."""
    versions = _versions(client, pipeline_id)
    if not versions:
        raise KfpApiError(f"pipeline {pipeline!r} has no versions")
    if policy in {"", "latest"}:
        return _latest(versions)
    wanted = policy.removeprefix("pinned:")
    for version in versions:
        if version.name == wanted:
            return version
    raise KfpApiError(f"pipeline {pipeline!r} has no version {wanted!r}")


def _pipeline_id(client: kfp.Client, pipeline: str) -> str:
    pipeline_id = client.get_pipeline_id(pipeline)
    if pipeline_id is None:
        raise KfpApiError(f"pipeline {pipeline!r} is not uploaded (run `python -m pipelines upload {pipeline}`)")
    return str(pipeline_id)


# --- schedules -------------------------------------------------------------------------------------

_CRON_FIELDS = (("seconds", 0, 59), ("minutes", 0, 59), ("hours", 0, 23), ("day of month", 1, 31),
                ("month", 1, 12), ("day of week", 0, 6))  # fmt: skip
_MONTHS = ("JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC")
_DAYS = ("SUN", "MON", "TUE", "WED", "THU", "FRI", "SAT")
_NAMES = {
    "month": {m: i + 1 for i, m in enumerate(_MONTHS)},
    "day of week": {d: i for i, d in enumerate(_DAYS)},
}


def validate_cron(cron: str) -> str:
    """Check a 6-field cron expression (seconds first), as the KFP backend (robfig/cron) reads it.

    Raises:
        SpecError: with the field at fault.
    """
    parts = cron.split()
    if len(parts) != 6:
        raise SpecError(
            f"cron {cron!r} has {len(parts)} fields; KFP needs 6, seconds first (e.g. '0 0 3 * * *' = daily 03:00)"
        )
    for text, (label, low, high) in zip(parts, _CRON_FIELDS, strict=True):
        for item in text.split(","):
            _check_cron_item(cron, item, label, low, high)
    return " ".join(parts)


def _check_cron_item(cron: str, item: str, label: str, low: int, high: int) -> None:
    base, _, step = item.partition("/")
    if step and (not step.isdigit() or int(step) == 0):
        raise SpecError(f"cron {cron!r}: bad step {step!r} in the {label} field")
    if base in {"*", "?"}:
        if base == "?" and label not in {"day of month", "day of week"}:
            raise SpecError(f"cron {cron!r}: '?' only fits day of month or day of week")
        return
    for bound in base.split("-", 1):
        value = _NAMES.get(label, {}).get(bound.upper()) if not bound.isdigit() else int(bound)
        if value is None or not low <= value <= high:
            raise SpecError(f"cron {cron!r}: {bound!r} is not a valid {label} ({low}-{high})")


#: The Kubernetes ServiceAccount every run's step pods run as (created by the manifests in the namespace
#: where runs execute; GCS access through Workload Identity, no API token).
RUN_SERVICE_ACCOUNT = "aitasks-pipeline-runner"


class Schedule(BaseModel):
    """One recurring run, as declared in pipelines/schedules.yaml."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(pattern=rf"^{MANAGED_PREFIX}[a-z0-9][a-z0-9-]*$")
    pipeline: str = Field(min_length=1)
    #: ``latest`` (the newest uploaded version when applied) or ``pinned:<version name>``.
    version: str = Field(default="latest", pattern=r"^(latest|pinned:\S+)$")
    cron: str
    parameters: dict[str, Any] = Field(default_factory=dict)
    experiment: str = "scheduled"
    max_concurrency: int = Field(default=1, ge=1, le=10)
    catchup: bool = False
    enabled: bool = True
    description: str = ""
    service_account: str = Field(default=RUN_SERVICE_ACCOUNT, pattern=r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")

    @field_validator("cron")
    @classmethod
    def _cron(cls, value: str) -> str:
        return validate_cron(value)


class ScheduleSpec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    schedules: list[Schedule] = Field(default_factory=list)

    @model_validator(mode="after")
    def _unique(self) -> ScheduleSpec:
        names = [s.name for s in self.schedules]
        if dupes := sorted({n for n in names if names.count(n) > 1}):
            raise ValueError(f"duplicate schedule names: {', '.join(dupes)}")
        return self


def load_schedules(path: Path = DEFAULT_SCHEDULES) -> ScheduleSpec:
    """Read and validate a schedules file.

    Raises:
        SpecError: one line naming the schedule and field at fault.
    """
    try:
        raw = yaml.safe_load(Path(path).read_text("utf-8")) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise SpecError(f"cannot read schedules file {path}: {exc}") from None
    return parse_schedules(raw, source=str(path))


def parse_schedules(raw: Any, *, source: str = "schedules") -> ScheduleSpec:
    try:
        return ScheduleSpec.model_validate(raw)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        if first["loc"][:1] == ("schedules",) and len(first["loc"]) > 1 and isinstance(raw, dict):
            index = first["loc"][1]
            items = raw.get("schedules") or []
            if isinstance(index, int) and index < len(items) and isinstance(items[index], dict):
                where = f"{items[index].get('name', index)}: {'.'.join(str(p) for p in first['loc'][2:])}"
        message = str(first["msg"]).removeprefix("Value error, ")
        raise SpecError(f"{source}: {where}: {message}") from None


@dataclass
class ApplyReport:
    """What `apply_schedules` did (or, with dry_run, would do), by schedule name."""

    dry_run: bool = False
    created: list[str] = field(default_factory=list)
    recreated: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)
    deleted: list[str] = field(default_factory=list)
    #: For each recreated schedule, the fields that differed.
    changes: dict[str, list[str]] = field(default_factory=dict)

    @property
    def changed(self) -> bool:
        return bool(self.created or self.recreated or self.deleted)


def _norm(value: Any) -> Any:
    """Parameters after a JSON / protobuf Value round trip: numbers are doubles, maps unordered."""
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return value
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, dict):
        return {str(k): _norm(v) for k, v in sorted(value.items())}
    if isinstance(value, list | tuple):
        return [_norm(v) for v in value]
    return str(value)


def with_run_context(params: dict[str, Any], **context: str) -> dict[str, Any]:
    """``params`` with its ``run_context`` parameter completed: every key present, ``context`` filled in.

    The run context travels as one dict pipeline parameter (see ``aitasks.runtime.step.RunContextParams``);
    values already in ``params["run_context"]`` win over ``context``. An unknown key is refused.
    """
    from aitasks.runtime.step import RUN_CONTEXT_KEYS

    given = params.get("run_context") or {}
    if not isinstance(given, dict):
        raise SpecError(f"run_context must be a mapping, got {type(given).__name__}")
    unknown = sorted(set(given) - set(RUN_CONTEXT_KEYS))
    if unknown:
        raise SpecError(f"run_context: unknown key(s) {', '.join(unknown)}; known: {', '.join(RUN_CONTEXT_KEYS)}")
    merged = {**dict.fromkeys(RUN_CONTEXT_KEYS, ""), **context, **given}
    return {**params, "run_context": merged}


def _schedule_params(schedule: Schedule, version: Any) -> dict[str, Any]:
    """The schedule's parameters plus who (the schedule) and what (the version's git revision)."""
    return with_run_context(
        dict(schedule.parameters),
        submitter=f"schedule:{schedule.name}",
        git_revision=_revision_of(version),
        pipeline_version=str(version.name),
    )


def _desired(schedule: Schedule, pipeline_id: str, version: Any, experiment_id: str | None) -> dict[str, Any]:
    params = _schedule_params(schedule, version)
    return {
        "pipeline_id": pipeline_id,
        "pipeline_version_id": version.pipeline_version_id,
        "experiment_id": experiment_id,
        "cron": schedule.cron,
        "max_concurrency": schedule.max_concurrency,
        "no_catchup": not schedule.catchup,
        "enabled": schedule.enabled,
        "parameters": _norm(params),
        "service_account": schedule.service_account,
    }


def _actual(run: Any) -> dict[str, Any]:
    ref = run.pipeline_version_reference
    cron = run.trigger.cron_schedule.cron if run.trigger and run.trigger.cron_schedule else None
    return {
        "pipeline_id": ref.pipeline_id if ref else None,
        "pipeline_version_id": (ref.pipeline_version_id if ref else None) or run.pipeline_version_id,
        "experiment_id": run.experiment_id,
        "cron": " ".join(cron.split()) if cron else None,
        "max_concurrency": int(run.max_concurrency or 1),
        "no_catchup": bool(run.no_catchup),
        "enabled": str(run.mode) != "DISABLE",
        "parameters": _norm((run.runtime_config.parameters if run.runtime_config else None) or {}),
        "service_account": run.service_account or "",
    }


def _recurring_runs(client: kfp.Client) -> list[Any]:
    out: list[Any] = []
    token = ""
    while True:
        page = client.list_recurring_runs(page_token=token, page_size=_PAGE)
        out.extend(page.recurring_runs or [])
        token = page.next_page_token or ""
        if not token:
            return out


def _experiment_id(client: kfp.Client, name: str, *, create: bool) -> str | None:
    if create:
        return str(client.create_experiment(name).experiment_id)
    try:
        return str(client.get_experiment(experiment_name=name).experiment_id)
    except ValueError:  # kfp raises ValueError('No experiment is found with name ...')
        return None


@dataclass
class _Step:
    schedule: Schedule
    pipeline_id: str
    version: Any
    keep: Any | None
    stale: list[Any]


def apply_schedules(client: kfp.Client, spec: ScheduleSpec, *, dry_run: bool = False) -> ApplyReport:
    """Make the backend's managed recurring runs match ``spec``, idempotently.

    Recurring runs are matched by display name. Unchanged ones are left alone; ones whose definition
    differs are created anew, then the old one deleted (recurring runs cannot be updated); managed ones
    (name prefix ``aitasks-``) absent from the spec are deleted. The whole plan is computed before the
    first write, so a missing pipeline or version changes nothing. With ``dry_run`` nothing is written.
    """
    report = ApplyReport(dry_run=dry_run)
    with api_errors("apply schedules"), _quiet():
        existing: dict[str, list[Any]] = {}
        for run in _recurring_runs(client):
            if (run.display_name or "").startswith(MANAGED_PREFIX):
                existing.setdefault(run.display_name, []).append(run)
        experiments: dict[str, str | None] = {}
        steps: list[_Step] = []
        for schedule in spec.schedules:  # plan: reads only
            pipeline_id = _pipeline_id(client, schedule.pipeline)
            version = _resolve_version(client, schedule.pipeline, pipeline_id, schedule.version)
            if schedule.experiment not in experiments:
                experiments[schedule.experiment] = _experiment_id(client, schedule.experiment, create=False)
            want = _desired(schedule, pipeline_id, version, experiments[schedule.experiment])
            current = existing.pop(schedule.name, [])
            keep = next((r for r in current if _actual(r) == want), None)
            steps.append(_Step(schedule, pipeline_id, version, keep, [r for r in current if r is not keep]))
            if keep is not None:
                report.unchanged.append(schedule.name)
            elif current:
                report.recreated.append(schedule.name)
                have = _actual(current[0])
                report.changes[schedule.name] = sorted(k for k in want if want[k] != have[k])
            else:
                report.created.append(schedule.name)
        report.deleted = sorted(existing)
        if dry_run:
            return report
        for step in steps:  # apply
            sched = step.schedule
            if step.keep is None:
                if experiments[sched.experiment] is None:
                    experiments[sched.experiment] = str(client.create_experiment(sched.experiment).experiment_id)
                client.create_recurring_run(
                    experiment_id=experiments[sched.experiment],
                    job_name=sched.name,
                    description=sched.description or f"managed by aitasks: {sched.pipeline}",
                    cron_expression=sched.cron,
                    max_concurrency=sched.max_concurrency,
                    no_catchup=not sched.catchup,
                    params=_schedule_params(sched, step.version),
                    pipeline_id=step.pipeline_id,
                    version_id=step.version.pipeline_version_id,
                    enabled=sched.enabled,
                    service_account=sched.service_account,
                )
            for run in step.stale:  # after the replacement exists, so the schedule never lapses
                client.delete_recurring_run(run.recurring_run_id)
        for name in report.deleted:
            for run in existing[name]:
                client.delete_recurring_run(run.recurring_run_id)
    return report


# --- one-off runs ----------------------------------------------------------------------------------


class RunSubmission(NamedTuple):
    run_id: str
    url: str
    pipeline_version: str


def submit_run(
    client: kfp.Client,
    pipeline: str,
    version: str | None,
    params: dict[str, Any],
    experiment: str,
    *,
    submitter: str,
    git_revision: str | None = None,
    service_account: str = RUN_SERVICE_ACCOUNT,
) -> RunSubmission:
    """Submit a one-off run of an uploaded pipeline and return its id and UI link.

    ``submitter``, ``git_revision`` and the chosen version's name (``pipeline_version``) are passed
    into the run as the pipelines' parameters of the same name, so each task's audit record says who
    ran what. ``git_revision=None`` takes the revision the chosen pipeline version was uploaded from.
    ``version``: ``None``/``latest``, ``pinned:<name>`` or a name.
    """
    for reserved, option in (
        ("submitter", "--submitter"),
        ("git_revision", "--git-revision"),
        ("pipeline_version", "--version"),
    ):
        if reserved in params or reserved in (params.get("run_context") or {}):
            raise SpecError(f"set {reserved} with {option}, not as a parameter")
    with api_errors(f"run {pipeline}"), _quiet():
        pipeline_id = _pipeline_id(client, pipeline)
        chosen = _resolve_version(client, pipeline, pipeline_id, version or "latest")
        revision = git_revision or _revision_of(chosen)
        experiment_id = client.create_experiment(experiment).experiment_id
        run = client.run_pipeline(
            experiment_id=experiment_id,
            job_name=f"{pipeline} {chosen.name} by {submitter}",
            params=with_run_context(params, submitter=submitter, git_revision=revision, pipeline_version=chosen.name),
            pipeline_id=pipeline_id,
            version_id=chosen.pipeline_version_id,
            service_account=service_account,
        )
    return RunSubmission(run.run_id, run_url(client, run.run_id), chosen.name)
