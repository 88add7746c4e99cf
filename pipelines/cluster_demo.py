"""`make demo-cluster`: reco-training on kfp.local as a cluster runs it, with steps that share no disk.

kfp.local runs every step in one environment on one disk, so a step that falls back to a local
default (a relative storage root, a sqlite MLflow, a localhost Redis, a file under HOME) passes
locally and fails in a pod. Here the same pipeline runs against real services and every step gets a
disk of its own:

* storage root ``gs://<bucket>/<prefix>`` on a local GCS emulator (``gcp-storage-emulator``, started
  on a free port; every process reaches it through ``STORAGE_EMULATOR_HOST``, where
  google-cloud-storage uses anonymous credentials). The emulator ignores generation preconditions:
  race semantics are tested against an in-process fake, not here;
* model registry: an MLflow server (HTTP) on a fresh PostgreSQL database, artifacts proxied by the
  server into the emulator's bucket;
* Feast: SQL registry on a second fresh PostgreSQL database, Redis online store (keys of a Feast
  project named for this run, deleted at the end);
* every step process: its own empty working directory, HOME and TMPDIR (``pipelines/step_sandbox``
  on ``PYTHONPATH``), so nothing a step leaves behind can reach the next step.

PostgreSQL and Redis are the machine's: ``AITASKS_DEMO_POSTGRES_URL`` (an account that may create
and drop databases; default ``postgresql://postgres@127.0.0.1:5432/postgres``) and
``AITASKS_REDIS_URL`` (default ``redis://127.0.0.1:6379/0``). The databases are created for the run
and dropped afterwards; the emulator keeps its objects in memory.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import date, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from rich.console import Console
from rich.table import Table

#: Admin connection that creates and drops the run's databases.
DEFAULT_POSTGRES_URL = "postgresql://postgres@127.0.0.1:5432/postgres"
DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"
#: The directory whose ``sitecustomize.py`` gives every kfp.local step its own working dir and HOME.
SANDBOX_HOOK_DIR = Path(__file__).resolve().parent / "step_sandbox"
#: MLflow's server can take a minute to become healthy on a loaded 2-core machine (importing MLflow,
#: migrating its PostgreSQL schema): the wait on an idle machine, scaled by the load (start_timeout).
MLFLOW_HEALTH_TIMEOUT_S = 180.0
EMULATOR_START_TIMEOUT_S = 30.0
#: A wait never grows past this many times its base, however loaded the machine.
MAX_LOAD_FACTOR = 4.0
PIPELINE = "reco-training"
START_DATE = date(2026, 10, 1)
DAYS = 30


class ServiceUnavailable(RuntimeError):  # noqa: N818 - reads as what it is at the call site
    """A service the cluster run needs is missing or did not start (the message says which and how to fix it)."""


class ServiceStartTimeout(ServiceUnavailable):
    """A service this run started did not become ready in time; the message names the phase it was stuck in.

    Not "unavailable": tests fail on it rather than skip (the service is there, it was too slow or broken).
    """


def load_per_core() -> float:
    """The 1-minute load average per CPU core (0 where the platform has none)."""
    try:
        return os.getloadavg()[0] / (os.cpu_count() or 1)
    except (OSError, AttributeError):
        return 0.0


def start_timeout(base_s: float) -> float:
    """How long to wait for a service to become ready: ``base_s`` on an idle machine, scaled by the load per
    core (up to :data:`MAX_LOAD_FACTOR` times), or ``AITASKS_SERVICE_START_TIMEOUT_S`` when set."""
    override = os.environ.get("AITASKS_SERVICE_START_TIMEOUT_S", "").strip()
    if override:
        return float(override)
    return base_s * min(MAX_LOAD_FACTOR, max(1.0, load_per_core()))


@dataclass
class StartLog:
    """When each phase of a service's start was reached, in seconds since it was spawned: says what was slow."""

    service: str
    timeout_s: float
    started: float = field(default_factory=time.monotonic)
    phases: dict[str, float] = field(default_factory=dict)
    load_at_start: float = field(default_factory=load_per_core)

    def reached(self, phase: str) -> None:
        self.phases.setdefault(phase, round(time.monotonic() - self.started, 1))

    @property
    def elapsed_s(self) -> float:
        return round(time.monotonic() - self.started, 1)

    def describe(self) -> str:
        steps = ", ".join(f"{phase} after {t:.1f} s" for phase, t in self.phases.items()) or "no phase reached"
        return f"{steps}; load {self.load_at_start:.1f} per core at start, {load_per_core():.1f} now"

    def summary(self) -> str:
        return f"{self.service} ready in {self.elapsed_s:.1f} s ({self.describe()})"

    def timed_out(self, waiting_for: str, log: Path) -> ServiceStartTimeout:
        return ServiceStartTimeout(
            f"{self.service} not ready within {self.timeout_s:.0f} s: still waiting for {waiting_for} "
            f"({self.describe()}; AITASKS_SERVICE_START_TIMEOUT_S sets the wait). Last log lines:\n{_tail(log)}"
        )


@dataclass(frozen=True)
class RunningService:
    """A started service: its URL, its log file and how its start went."""

    url: str
    log: Path
    start: StartLog


def _port_open(port: int) -> bool:
    with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
        return True
    return False


@dataclass(frozen=True)
class LocalCluster:
    """The services of one run and where its local files go.

    Attributes:
        storage_root: ``gs://<bucket>/<prefix>`` on the emulator.
        emulator_host: ``http://127.0.0.1:<port>`` (``STORAGE_EMULATOR_HOST``).
        mlflow_url: The MLflow server's URL.
        feast_registry: The Feast SQL registry (a PostgreSQL URL).
        redis_url: The Redis of the online store.
        feast_project: The Feast project of this run (its Redis keys end with this name).
        workdir: Everything local: ``kfp/`` (kfp.local's pipeline root), ``steps/`` (one sandbox per
            step process), ``tmp/`` (the launcher's temp files), ``mlflow-server/`` (the server's logs).
        mlflow_start_s: How long the MLflow server took to become healthy.
    """

    storage_root: str
    emulator_host: str
    mlflow_url: str
    feast_registry: str
    redis_url: str
    feast_project: str
    workdir: Path
    mlflow_start_s: float = 0.0

    @property
    def pipeline_root(self) -> Path:
        return self.workdir / "kfp"

    @property
    def sandboxes(self) -> Path:
        return self.workdir / "steps"

    @property
    def tmp(self) -> Path:
        return self.workdir / "tmp"

    def env(self) -> dict[str, str]:
        """What every step process gets, as a cluster's ConfigMap and Secret would give it."""
        path = os.environ.get("PYTHONPATH", "")
        return {
            "AITASKS_STORAGE_ROOT": self.storage_root,
            "AITASKS_MLFLOW_TRACKING_URI": self.mlflow_url,
            "AITASKS_FEAST_REGISTRY": self.feast_registry,
            "AITASKS_FEAST_ONLINE_STORE": "redis",
            "AITASKS_REDIS_URL": self.redis_url,
            "STORAGE_EMULATOR_HOST": self.emulator_host,
            "AITASKS_STEP_SANDBOX": str(self.sandboxes),
            "PYTHONPATH": os.pathsep.join(p for p in (str(SANDBOX_HOOK_DIR), path) if p),
            "TMPDIR": str(self.tmp),
        }


def free_port() -> int:
    """A TCP port nothing listens on right now (bound then released)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def redact(url: str) -> str:
    """``url`` without its password."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.netloc.rsplit("@", 1)[1]
    return urlunsplit(parts._replace(netloc=f"{parts.username or ''}:***@{host}"))


def _tail(path: Path, chars: int = 1500) -> str:
    try:
        return path.read_text("utf-8", errors="replace")[-chars:]
    except OSError:
        return "<no log>"


def _stop(proc: subprocess.Popen[bytes]) -> None:
    """Stop a service started in its own session, with every process of its group."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=5)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)  # a worker that outlived its parent


def _script(name: str) -> list[str]:
    """A console script of this interpreter's environment."""
    path = Path(sys.executable).with_name(name)
    if not path.is_file():
        raise ServiceUnavailable(f"{name} is not installed in {Path(sys.executable).parent} (run `make install`)")
    return [str(path)]


@contextlib.contextmanager
def gcs_emulator(workdir: Path, bucket: str) -> Iterator[str]:
    """A ``gcp-storage-emulator`` on a free localhost port with ``bucket`` created; yields its URL."""
    workdir.mkdir(parents=True, exist_ok=True)
    port = free_port()
    log = workdir / "gcs-emulator.log"
    argv = [*_script("gcp-storage-emulator"), "start", "--host", "127.0.0.1", "--port", str(port)]
    argv += ["--default-bucket", bucket, "--in-memory"]
    with log.open("wb") as out:
        proc = subprocess.Popen(argv, cwd=workdir, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    started = StartLog("gcp-storage-emulator", start_timeout(EMULATOR_START_TIMEOUT_S))
    try:
        while True:
            if proc.poll() is not None:
                raise ServiceUnavailable(f"gcp-storage-emulator exited with {proc.returncode}:\n{_tail(log)}")
            if "port open" in started.phases or _port_open(port):
                started.reached("port open")
                try:
                    with urllib.request.urlopen(f"{url}/storage/v1/b/{bucket}", timeout=2) as resp:  # noqa: S310
                        if resp.status == 200:
                            started.reached(f"bucket {bucket} answered")
                            break
                except (urllib.error.URLError, OSError):
                    pass
            if started.elapsed_s > started.timeout_s:
                phase = "the bucket to answer" if "port open" in started.phases else "its port to open"
                raise started.timed_out(phase, log)
            time.sleep(0.1)
        yield url
    finally:
        _stop(proc)


def _admin_connect(admin_url: str) -> Any:
    import psycopg

    try:
        return psycopg.connect(admin_url, autocommit=True, connect_timeout=5)
    except psycopg.Error as exc:
        where = f"{urlsplit(admin_url).hostname}:{urlsplit(admin_url).port or 5432}"
        raise ServiceUnavailable(
            f"PostgreSQL unreachable at {where} ({type(exc).__name__}); start it or set AITASKS_DEMO_POSTGRES_URL "
            f"to an account that may create databases"
        ) from None


@contextlib.contextmanager
def postgres_database(admin_url: str, name: str) -> Iterator[str]:
    """A fresh database ``name`` on the server of ``admin_url``, dropped on exit; yields its URL."""
    with _admin_connect(admin_url) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        parts = urlsplit(admin_url)
        yield urlunsplit(parts._replace(path=f"/{name}"))
    finally:
        with _admin_connect(admin_url) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@contextlib.contextmanager
def mlflow_server(workdir: Path, backend: str, artifacts: str, env: dict[str, str]) -> Iterator[RunningService]:
    """``mlflow server`` (one worker) on ``backend`` proxying artifacts to ``artifacts``.

    Waits until ``/health`` answers, for :func:`start_timeout` of :data:`MLFLOW_HEALTH_TIMEOUT_S`; a timeout
    names the phase it was stuck in (the port not open yet: MLflow still importing or migrating its
    database; open but ``/health`` not answering) with the load and the log's last lines.
    """
    workdir.mkdir(parents=True, exist_ok=True)
    port = free_port()
    log = workdir / "mlflow-server.log"
    argv = [*_script("mlflow"), "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1"]
    argv += ["--backend-store-uri", backend.replace("postgresql://", "postgresql+psycopg://", 1)]
    argv += ["--serve-artifacts", "--artifacts-destination", artifacts]
    argv += ["--allowed-hosts", f"127.0.0.1:{port},localhost:{port}"]
    started = StartLog("mlflow server", start_timeout(MLFLOW_HEALTH_TIMEOUT_S))
    with log.open("wb") as out:
        proc = subprocess.Popen(
            argv,
            cwd=workdir,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            env={**os.environ, **env, "HOME": str(workdir)},
        )
    url = f"http://127.0.0.1:{port}"
    try:
        while True:
            if proc.poll() is not None:
                raise ServiceUnavailable(f"mlflow server exited with {proc.returncode}:\n{_tail(log)}")
            if "port open" in started.phases or _port_open(port):
                started.reached("port open")
                with contextlib.suppress(OSError), urllib.request.urlopen(f"{url}/health", timeout=5) as resp:  # noqa: S310
                    if resp.status == 200:
                        started.reached("/health answered")
                        break
            if started.elapsed_s > started.timeout_s:
                waiting = (
                    "/health to answer (the port is open)"
                    if "port open" in started.phases
                    else "its port to open (importing MLflow, migrating the backend database)"
                )
                raise started.timed_out(waiting, log)
            time.sleep(0.25)
        yield RunningService(url=url, log=log, start=started)
    finally:
        _stop(proc)


def check_redis(url: str) -> None:
    """Raise :class:`ServiceUnavailable` with one clear line when Redis does not answer PING."""
    import redis

    client = redis.Redis.from_url(url, socket_connect_timeout=3, socket_timeout=3)
    try:
        client.ping()
    except redis.exceptions.RedisError as exc:
        raise ServiceUnavailable(
            f"Redis unreachable at {redact(url)} ({type(exc).__name__}); start it or set AITASKS_REDIS_URL"
        ) from None
    finally:
        client.close()


def delete_feast_keys(url: str, project: str) -> int:
    """Delete the online-store keys of Feast ``project`` (Feast's Redis keys end with the project name)."""
    import redis

    client = redis.Redis.from_url(url, socket_connect_timeout=3, socket_timeout=10)
    try:
        keys = list(client.scan_iter(match=f"*{project}", count=1000))
        for i in range(0, len(keys), 500):
            client.delete(*keys[i : i + 500])
        return len(keys)
    finally:
        client.close()


@contextlib.contextmanager
def environment(values: dict[str, str]) -> Iterator[None]:
    """``os.environ`` updated with ``values`` (kfp.local's step processes inherit it), restored on exit."""
    saved = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, old in saved.items():
            if old is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = old


@contextlib.contextmanager
def local_cluster(
    workdir: Path,
    *,
    postgres_url: str | None = None,
    redis_url: str | None = None,
    bucket: str = "aitasks-cluster",
    console: Console | None = None,
) -> Iterator[LocalCluster]:
    """Start the services, set the environment the steps inherit, and tear everything down on exit.

    Raises:
        ServiceUnavailable: PostgreSQL or Redis unreachable, or the emulator or MLflow did not start.
    """
    con = console or Console(stderr=True)
    postgres_url = postgres_url or os.environ.get("AITASKS_DEMO_POSTGRES_URL") or DEFAULT_POSTGRES_URL
    redis_url = redis_url or os.environ.get("AITASKS_REDIS_URL") or DEFAULT_REDIS_URL
    check_redis(redis_url)
    _admin_connect(postgres_url).close()
    tag = uuid.uuid4().hex[:10]
    project = f"cluster_{tag}"
    for sub in ("kfp", "steps", "tmp"):
        (workdir / sub).mkdir(parents=True, exist_ok=True)
    with contextlib.ExitStack() as stack:
        t0 = time.monotonic()
        emulator = stack.enter_context(gcs_emulator(workdir / "gcs-emulator", bucket))
        con.print(f"GCS emulator on {emulator} (bucket {bucket}) in {time.monotonic() - t0:.1f} s")
        mlflow_db = stack.enter_context(postgres_database(postgres_url, f"aitasks_mlflow_{tag}"))
        feast_db = stack.enter_context(postgres_database(postgres_url, f"aitasks_feast_{tag}"))
        stack.callback(delete_feast_keys, redis_url, project)
        mlflow = stack.enter_context(
            mlflow_server(
                workdir / "mlflow-server",
                mlflow_db,
                f"gs://{bucket}/mlflow-artifacts",
                {"STORAGE_EMULATOR_HOST": emulator},
            )
        )
        mlflow_url, mlflow_start_s = mlflow.url, mlflow.start.elapsed_s
        con.print(f"MLflow server on {mlflow_url} (PostgreSQL backend): {mlflow.start.summary()}")
        cluster = LocalCluster(
            storage_root=f"gs://{bucket}/runs-{tag}",
            emulator_host=emulator,
            mlflow_url=mlflow_url,
            feast_registry=feast_db,
            redis_url=redis_url,
            feast_project=project,
            workdir=workdir,
            mlflow_start_s=round(mlflow_start_s, 1),
        )
        stack.enter_context(environment(cluster.env()))
        yield cluster


def run_pipeline(cluster: LocalCluster, pipeline: str, params: dict[str, Any], console: Console) -> dict[str, Any]:
    """Run ``pipeline`` on kfp.local against ``cluster``; return this run's audit summary (from ``gs://``).

    Returns:
        ``{"elapsed_s", "run", "results", "audit_ok", "audit_problems"}``: ``run`` is
        :func:`~aitasks.runtime.run_summary.summarize_run` of this run's records, ``results`` the
        committed result of each task.
    """
    from aitasks.runtime.audit import open_audit
    from aitasks.runtime.run_summary import summarize_run
    from pipelines.cli import run_local

    audit = open_audit(cluster.storage_root + "/audit")
    before = len(audit.records())
    context = {"storage_root": cluster.storage_root, "submitter": "demo-cluster", **params.pop("run_context", {})}
    console.rule(f"[bold]{pipeline} on kfp.local, steps sharing no disk[/bold]")
    t0 = time.perf_counter()
    feast = {"project": cluster.feast_project, "online_store": "redis", **params.pop("feast", {})}
    run_local(pipeline, {"run_context": context, "feast": feast, **params}, cluster.pipeline_root.parent)
    elapsed = time.perf_counter() - t0
    records = audit.records()[before:]
    run = summarize_run(records, run_id=None, storage_root=cluster.storage_root)
    results = {t: {"status": e["status"], **e.get("result", {})} for t, e in run["tasks"].items()}
    verify = audit.verify()
    return {
        "elapsed_s": round(elapsed, 1),
        "run": run,
        "results": results,
        "audit_ok": verify.ok,
        "audit_records": verify.records,
        "audit_problems": verify.problems,
    }


def registered_versions(mlflow_url: str, name: str) -> list[int]:
    """Version numbers of registered model ``name``, read over the MLflow server's REST API."""
    query = urllib.parse.urlencode({"filter": f"name='{name}'", "max_results": 1000})
    url = f"{mlflow_url}/api/2.0/mlflow/model-versions/search?{query}"
    with urllib.request.urlopen(url, timeout=30) as resp:  # noqa: S310 - the server's http URL
        body = json.load(resp)
    return sorted(int(v["version"]) for v in body.get("model_versions", []))


def reco_params(*, events: int, users: int, tracks: int, epochs: int) -> dict[str, Any]:
    """The demo's reco-training parameters (synthetic data over a fixed month)."""
    return {
        "synthetic": {
            "events": events,
            "users": users,
            "tracks": tracks,
            "days": DAYS,
            "start_date": START_DATE.isoformat(),
        },
        "as_of": (START_DATE + timedelta(days=DAYS)).isoformat() + "T00:00:00+00:00",
        "training": {"epochs": epochs},
    }


def summarize(cluster: LocalCluster, outcome: dict[str, Any], model_name: str) -> dict[str, Any]:
    """The facts a person checks first, as JSON-able data."""
    res = outcome["results"]
    ingest, evaluation = res.get("data.ingest", {}), res.get("model.evaluate", {})
    registered, promoted = res.get("model.register", {}), res.get("model.promote", {})
    built, published = res.get("index.build", {}), res.get("index.publish", {})
    model, pop = evaluation.get("model") or {}, evaluation.get("popularity") or {}
    return {
        "pipeline": PIPELINE,
        "elapsed_s": outcome["elapsed_s"],
        "storage_root": cluster.storage_root,
        "services": {
            "storage": f"GCS emulator {cluster.emulator_host}",
            "mlflow": cluster.mlflow_url,
            "feast_registry": redact(cluster.feast_registry),
            "online_store": redact(cluster.redis_url),
        },
        "tasks": {t: r["status"] for t, r in res.items()},
        "failed": outcome["run"]["failed"],
        "ingest": {k: ingest.get(k) for k in ("input_rows", "good_rows", "quarantined_rows")},
        "recall_at_10": {"model": model.get("recall_at_10"), "popularity": pop.get("recall_at_10")},
        "blessed": evaluation.get("blessed"),
        "model": {
            "name": registered.get("model_name"),
            "version": registered.get("version"),
            "new_version": bool(registered.get("created")) and registered.get("status") == "succeeded",
            "champion": promoted.get("version") if promoted else None,
            "versions_on_server": registered_versions(cluster.mlflow_url, model_name),
        },
        "index": {
            "name": published.get("name"),
            "version": published.get("version"),
            "new_version": bool(published.get("created")) and published.get("status") == "succeeded",
            "recall_at_10_vs_exact": built.get("recall_at_k"),
        },
        "local_storage_roots": local_storage_roots(cluster),
        "steps": len(list(cluster.sandboxes.glob("step-*"))),
        "audit": {"verified": outcome["audit_ok"], "records": outcome["audit_records"]},
    }


def local_storage_roots(cluster: LocalCluster) -> list[str]:
    """Any ``.aitasks`` directory a step created in its sandbox: a local fallback (must be empty)."""
    return sorted(str(p) for p in cluster.sandboxes.glob("step-*/**/.aitasks"))


def _fmt(x: Any) -> str:
    return "n/a" if x is None else f"{x:.4f}" if isinstance(x, float) else str(x)


def _print(con: Console, s: dict[str, Any]) -> None:
    table = Table(title=f"aitasks demo-cluster summary ({s['elapsed_s']:.0f} s)", show_header=False)
    table.add_column("what", style="bold")
    table.add_column("value")
    table.add_row("storage", f"{s['storage_root']} ({s['services']['storage']})")
    table.add_row("services", f"MLflow {s['services']['mlflow']}; Feast registry {s['services']['feast_registry']}")
    table.add_row("steps", f"{s['steps']} step processes, each in its own empty working dir and HOME")
    table.add_row("tasks", ", ".join(f"{t}: {st}" for t, st in s["tasks"].items()))
    ing = s["ingest"]
    table.add_row(
        "ingest", f"{ing['input_rows']} rows in, {ing['good_rows']} good, {ing['quarantined_rows']} quarantined"
    )
    rec = s["recall_at_10"]
    table.add_row(
        "recall@10", f"model {_fmt(rec['model'])} vs popularity {_fmt(rec['popularity'])}; blessed: {s['blessed']}"
    )
    m, ix = s["model"], s["index"]
    table.add_row(
        "model",
        f"{m['name']} v{m['version']} ({'new version' if m['new_version'] else 'existing version'}); "
        f"champion v{m['champion']}; versions on the MLflow server: {m['versions_on_server']}",
    )
    table.add_row(
        "index",
        f"{ix['name']} v{ix['version']} ({'new' if ix['new_version'] else 'unchanged'}); "
        f"recall@10 vs exact {_fmt(ix['recall_at_10_vs_exact'])}",
    )
    local = s["local_storage_roots"]
    table.add_row("local fallbacks", "none" if not local else "[red]" + ", ".join(local) + "[/red]")
    table.add_row("audit", f"{'verified' if s['audit']['verified'] else 'BROKEN'}: {s['audit']['records']} records")
    con.print(table)


def run_cluster_demo(
    workdir: Path,
    *,
    events: int = 20_000,
    users: int = 300,
    tracks: int = 800,
    epochs: int = 2,
    console: Console | None = None,
) -> dict[str, Any]:
    """Start the services, run reco-training once, print the summary and write ``summary.json``.

    Raises:
        ServiceUnavailable: A service is missing (one clear line).
        SystemExit: The run failed or left a local storage root behind.
    """
    from pipelines.reco_training import MODEL_NAME

    con = console or Console()
    workdir.mkdir(parents=True, exist_ok=True)
    with local_cluster(workdir, console=con) as cluster:
        params = reco_params(events=events, users=users, tracks=tracks, epochs=epochs)
        outcome = run_pipeline(cluster, PIPELINE, params, con)
        summary = summarize(cluster, outcome, MODEL_NAME)
    (workdir / "summary.json").write_text(json.dumps(summary, indent=2, sort_keys=True, default=str))
    _print(con, summary)
    con.print(f"summary: {workdir / 'summary.json'}; step sandboxes: {cluster.sandboxes}")
    if summary["failed"] or not summary["audit"]["verified"] or summary["local_storage_roots"]:
        raise SystemExit(
            f"demo-cluster incomplete: failed={summary['failed']} audit_ok={summary['audit']['verified']} "
            f"local storage roots={summary['local_storage_roots']}"
        )
    return summary


def remove_workdir(workdir: Path) -> None:
    """Remove a previous run's local files (pipeline root, sandboxes) before a new run."""
    for sub in ("kfp", "steps", "tmp", "gcs-emulator", "mlflow-server"):
        shutil.rmtree(workdir / sub, ignore_errors=True)
