"""A fake Kubeflow Pipelines API server speaking the v2beta1 REST protocol over real HTTP.

It serves exactly the endpoints ``kfp.Client`` (kfp 2.17) calls in the CI flow: healthz, pipelines
(list with a ``display_name`` filter, get, upload, upload version, list versions), experiments
(create, list, get), recurring runs (create, list, get, delete) and runs (create, get, list).
JSON shapes follow the v2beta1 protos as the generated ``kfp_server_api`` client reads them
(snake_case fields, ``recurringRuns`` in the recurring-run list, int64 fields as strings, empty
repeated fields omitted). State lives in memory; every request is recorded with its headers so tests
can assert what reached the server (e.g. the ``Authorization`` header).

Usage::

    with FakeKfpServer() as server:
        client = kfp.Client(host=server.url)
"""

from __future__ import annotations

import json
import threading
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from email.parser import BytesParser
from email.policy import default as email_policy
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import yaml

API = "/apis/v2beta1"
_EPOCH = datetime(2026, 1, 1, tzinfo=UTC)


@dataclass(frozen=True)
class RecordedRequest:
    """One request as the server saw it."""

    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]
    body: bytes


class ApiError(Exception):
    """An error answered as a google.rpc.Status JSON body, like grpc-gateway does."""

    def __init__(self, status: HTTPStatus, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


_GRPC_CODE = {
    HTTPStatus.BAD_REQUEST: 3,
    HTTPStatus.NOT_FOUND: 5,
    HTTPStatus.CONFLICT: 6,
    HTTPStatus.UNAUTHORIZED: 16,
    HTTPStatus.METHOD_NOT_ALLOWED: 12,
}


@dataclass
class FakeKfpState:
    """Everything the fake server knows, by id."""

    pipelines: dict[str, dict[str, Any]] = field(default_factory=dict)
    versions: dict[str, dict[str, Any]] = field(default_factory=dict)
    experiments: dict[str, dict[str, Any]] = field(default_factory=dict)
    recurring_runs: dict[str, dict[str, Any]] = field(default_factory=dict)
    runs: dict[str, dict[str, Any]] = field(default_factory=dict)
    clock: int = 0

    def now(self) -> str:
        """A strictly increasing RFC 3339 timestamp, so creation order is well defined."""
        self.clock += 1
        return (_EPOCH + timedelta(seconds=self.clock)).strftime("%Y-%m-%dT%H:%M:%SZ")


def _new_id() -> str:
    return str(uuid.uuid4())


_OPERATIONS = {1: "EQUALS", 2: "NOT_EQUALS", 9: "IS_SUBSTRING"}


def _matches(obj: dict[str, Any], filter_json: str | None) -> bool:
    """Apply a v2beta1 Filter (JSON) to an object; supports the string predicates the client sends."""
    if not filter_json:
        return True
    try:
        spec = json.loads(filter_json)
    except json.JSONDecodeError as exc:
        raise ApiError(HTTPStatus.BAD_REQUEST, f"invalid filter: {exc}") from exc
    for pred in spec.get("predicates", []):
        key = pred.get("key")
        op = pred.get("operation") or pred.get("op")
        op = _OPERATIONS.get(op, op)  # protojson accepts an enum's number or its name
        want = pred.get("stringValue", pred.get("string_value"))
        if want is None:
            raise ApiError(HTTPStatus.BAD_REQUEST, f"fake server supports string predicates only: {pred}")
        have = str(obj.get(key, ""))
        if op == "EQUALS":
            ok = have == want
        elif op == "NOT_EQUALS":
            ok = have != want
        elif op == "IS_SUBSTRING":
            ok = want in have
        else:
            raise ApiError(HTTPStatus.BAD_REQUEST, f"unsupported filter operation {op!r}")
        if not ok:
            return False
    return True


def _page(items: list[dict[str, Any]], query: dict[str, list[str]], key: str) -> dict[str, Any]:
    """Filter, sort and paginate a list response the way the API does (empty repeated fields omitted)."""
    items = [i for i in items if _matches(i, _q(query, "filter"))]
    sort_by = _q(query, "sort_by") or ""
    if sort_by:
        field_name, _, direction = sort_by.partition(" ")
        items = sorted(items, key=lambda i: str(i.get(field_name, "")), reverse=direction.strip() == "desc")
    size = int(_q(query, "page_size") or 20)
    start = int(_q(query, "page_token") or 0)
    page = items[start : start + size]
    out: dict[str, Any] = {"total_size": len(items)}
    if page:
        out[key] = page
    if start + size < len(items):
        out["next_page_token"] = str(start + size)
    return out


def _q(query: dict[str, list[str]], name: str) -> str | None:
    values = query.get(name)
    return values[0] if values else None


def _multipart_file(content_type: str, body: bytes, field_name: str) -> bytes:
    message = BytesParser(policy=email_policy).parsebytes(
        f"Content-Type: {content_type}\r\nMIME-Version: 1.0\r\n\r\n".encode() + body
    )
    if not message.is_multipart():
        raise ApiError(HTTPStatus.BAD_REQUEST, "expected a multipart/form-data body")
    for part in message.iter_parts():
        if part.get_param("name", header="content-disposition") == field_name:
            payload = part.get_payload(decode=True)
            return payload if isinstance(payload, bytes) else b""
    raise ApiError(HTTPStatus.BAD_REQUEST, f"missing multipart field {field_name!r}")


def _pipeline_spec(package: bytes) -> dict[str, Any]:
    """Parse a compiled pipeline package (YAML) as the server does: the first document is the PipelineSpec."""
    try:
        docs = [d for d in yaml.safe_load_all(package.decode("utf-8")) if d is not None]
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise ApiError(HTTPStatus.BAD_REQUEST, f"invalid pipeline spec: {exc}") from exc
    if not docs or not isinstance(docs[0], dict) or "pipelineInfo" not in docs[0] or "root" not in docs[0]:
        raise ApiError(HTTPStatus.BAD_REQUEST, "invalid pipeline spec: no pipelineInfo/root")
    return docs[0]


def _check_cron(cron: str) -> None:
    # The backend parses with robfig/cron and a seconds field: exactly six fields (or a descriptor).
    if not cron.startswith("@") and len(cron.split()) != 6:
        raise ApiError(HTTPStatus.BAD_REQUEST, f"invalid cron schedule {cron!r}: expected 6 fields")


class FakeKfpServer:
    """The fake KFP API server; a context manager that serves on a free localhost port in a thread."""

    def __init__(self, *, required_token: str | None = None) -> None:
        self.state = FakeKfpState()
        self.requests: list[RecordedRequest] = []
        self.required_token = required_token
        self._lock = threading.Lock()
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # --- lifecycle -------------------------------------------------------------------------------
    @property
    def url(self) -> str:
        assert self._httpd is not None, "server not started"
        host, port = self._httpd.server_address[:2]
        return f"http://{host!s}:{port}"

    def start(self) -> FakeKfpServer:
        server = self

        class Handler(_Handler):
            fake = server

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(target=self._httpd.serve_forever, name="fake-kfp", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def __enter__(self) -> FakeKfpServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # --- helpers for tests -----------------------------------------------------------------------
    def calls(self, method: str, path_prefix: str = "") -> list[RecordedRequest]:
        """Recorded requests of one method (e.g. ``POST``) whose path starts with ``API + path_prefix``."""
        return [r for r in self.requests if r.method == method and r.path.startswith(API + path_prefix)]

    def mutations(self) -> list[RecordedRequest]:
        """Every recorded request that could change state."""
        return [r for r in self.requests if r.method in {"POST", "PUT", "PATCH", "DELETE"}]

    # --- routing ---------------------------------------------------------------------------------
    def handle(self, req: RecordedRequest) -> tuple[HTTPStatus, dict[str, Any]]:
        with self._lock:
            self.requests.append(req)
            wanted = f"Bearer {self.required_token}"
            public = req.path == f"{API}/healthz"  # like the backend, health answers without auth
            if self.required_token is not None and not public and req.headers.get("authorization") != wanted:
                raise ApiError(HTTPStatus.UNAUTHORIZED, "missing or invalid bearer token")
            parts = [unquote(p) for p in req.path.removeprefix(API).strip("/").split("/") if p]
            if not req.path.startswith(API + "/") or not parts:
                raise ApiError(HTTPStatus.NOT_FOUND, f"no route for {req.path}")
            handler = getattr(self, f"_{parts[0]}", None)
            if handler is None:
                raise ApiError(HTTPStatus.NOT_FOUND, f"no route for {req.path}")
            result: tuple[HTTPStatus, dict[str, Any]] = handler(req, parts[1:])
            return result

    def _healthz(self, req: RecordedRequest, rest: list[str]) -> tuple[HTTPStatus, dict[str, Any]]:
        return HTTPStatus.OK, {"multi_user": False, "pipeline_store": "database"}

    def _pipelines(self, req: RecordedRequest, rest: list[str]) -> tuple[HTTPStatus, dict[str, Any]]:
        s = self.state
        match req.method, rest:
            case "GET", []:
                return HTTPStatus.OK, _page(list(s.pipelines.values()), req.query, "pipelines")
            case "POST", ["upload"]:
                spec = _pipeline_spec(_multipart_file(req.headers.get("content-type", ""), req.body, "uploadfile"))
                name = _q(req.query, "name") or _q(req.query, "display_name") or spec["pipelineInfo"]["name"]
                display = _q(req.query, "display_name") or name
                if any(p["name"] == name for p in s.pipelines.values()):
                    raise ApiError(HTTPStatus.CONFLICT, f"pipeline with name {name!r} already exists")
                desc = _q(req.query, "description") or ""
                pipeline = {
                    "pipeline_id": _new_id(),
                    "name": name,
                    "display_name": display,
                    "description": desc,
                    "created_at": s.now(),
                    "namespace": _q(req.query, "namespace") or "",
                }
                s.pipelines[pipeline["pipeline_id"]] = pipeline
                # Like the backend: the first version is named after the pipeline and shares its description.
                self._add_version(pipeline["pipeline_id"], name, display, desc, spec)
                return HTTPStatus.OK, pipeline
            case "POST", ["upload_version"]:
                spec = _pipeline_spec(_multipart_file(req.headers.get("content-type", ""), req.body, "uploadfile"))
                pid = _q(req.query, "pipelineid") or ""
                if pid not in s.pipelines:
                    raise ApiError(HTTPStatus.NOT_FOUND, f"pipeline {pid!r} not found")
                name = _q(req.query, "name") or _q(req.query, "display_name")
                if not name:
                    raise ApiError(HTTPStatus.BAD_REQUEST, "pipeline version name is required")
                if any(v["pipeline_id"] == pid and v["name"] == name for v in s.versions.values()):
                    raise ApiError(HTTPStatus.CONFLICT, f"pipeline version {name!r} already exists")
                display = _q(req.query, "display_name") or name
                return HTTPStatus.OK, self._add_version(pid, name, display, _q(req.query, "description") or "", spec)
            case "GET", ["names", name]:
                return HTTPStatus.OK, self._one(
                    s.pipelines, next((k for k, p in s.pipelines.items() if p["name"] == name), "")
                )
            case "GET", [pid]:
                return HTTPStatus.OK, self._one(s.pipelines, pid)
            case "GET", [pid, "versions"]:
                self._one(s.pipelines, pid)
                versions = [v for v in s.versions.values() if v["pipeline_id"] == pid]
                return HTTPStatus.OK, _page([_summary(v) for v in versions], req.query, "pipeline_versions")
            case "GET", [pid, "versions", vid]:
                version = self._one(s.versions, vid)
                if version["pipeline_id"] != pid:
                    raise ApiError(HTTPStatus.NOT_FOUND, f"pipeline version {vid!r} not found")
                return HTTPStatus.OK, version
        raise ApiError(HTTPStatus.NOT_FOUND, f"no route for {req.method} {req.path}")

    def _add_version(self, pid: str, name: str, display: str, desc: str, spec: dict[str, Any]) -> dict[str, Any]:
        version: dict[str, Any] = {
            "pipeline_id": pid,
            "pipeline_version_id": _new_id(),
            "name": name,
            "display_name": display,
            "description": desc,
            "created_at": self.state.now(),
            "pipeline_spec": spec,
        }
        self.state.versions[version["pipeline_version_id"]] = version
        return version

    @staticmethod
    def _one(table: dict[str, dict[str, Any]], key: str) -> dict[str, Any]:
        if key not in table:
            raise ApiError(HTTPStatus.NOT_FOUND, f"{key!r} not found")
        return table[key]

    def _experiments(self, req: RecordedRequest, rest: list[str]) -> tuple[HTTPStatus, dict[str, Any]]:
        s = self.state
        match req.method, rest:
            case "GET", []:
                return HTTPStatus.OK, _page(list(s.experiments.values()), req.query, "experiments")
            case "POST", []:
                body = _json(req.body)
                name = body.get("display_name")
                if not name:
                    raise ApiError(HTTPStatus.BAD_REQUEST, "experiment display_name is required")
                if any(e["display_name"] == name for e in s.experiments.values()):
                    raise ApiError(HTTPStatus.CONFLICT, f"experiment {name!r} already exists")
                exp = {
                    "experiment_id": _new_id(),
                    "display_name": name,
                    "description": body.get("description") or "",
                    "created_at": s.now(),
                    "namespace": body.get("namespace") or "",
                    "storage_state": "AVAILABLE",
                }
                s.experiments[exp["experiment_id"]] = exp
                return HTTPStatus.OK, exp
            case "GET", [eid]:
                return HTTPStatus.OK, self._one(s.experiments, eid)
        raise ApiError(HTTPStatus.NOT_FOUND, f"no route for {req.method} {req.path}")

    def _resolve_reference(self, body: dict[str, Any]) -> None:
        ref = body.get("pipeline_version_reference")
        if ref:
            version = self._one(self.state.versions, ref.get("pipeline_version_id") or "")
            if ref.get("pipeline_id") and ref["pipeline_id"] != version["pipeline_id"]:
                raise ApiError(HTTPStatus.BAD_REQUEST, "pipeline version does not belong to the pipeline")
        elif not body.get("pipeline_spec"):
            raise ApiError(HTTPStatus.BAD_REQUEST, "a pipeline_version_reference or a pipeline_spec is required")
        if body.get("experiment_id"):
            self._one(self.state.experiments, body["experiment_id"])

    def _recurringruns(self, req: RecordedRequest, rest: list[str]) -> tuple[HTTPStatus, dict[str, Any]]:
        s = self.state
        match req.method, rest:
            case "GET", []:
                items = list(s.recurring_runs.values())
                if exp := _q(req.query, "experiment_id"):
                    items = [r for r in items if r.get("experiment_id") == exp]
                return HTTPStatus.OK, _page(items, req.query, "recurringRuns")
            case "POST", []:
                body = _json(req.body)
                if not body.get("display_name"):
                    raise ApiError(HTTPStatus.BAD_REQUEST, "recurring run display_name is required")
                self._resolve_reference(body)
                cron = ((body.get("trigger") or {}).get("cron_schedule") or {}).get("cron")
                periodic = (body.get("trigger") or {}).get("periodic_schedule")
                if cron is None and periodic is None:
                    raise ApiError(HTTPStatus.BAD_REQUEST, "a trigger is required")
                if cron is not None:
                    _check_cron(cron)
                concurrency = int(body.get("max_concurrency") or 1)
                if not 1 <= concurrency <= 10:
                    raise ApiError(HTTPStatus.BAD_REQUEST, "max_concurrency must be between 1 and 10")
                now = s.now()
                mode = body.get("mode") or "ENABLE"
                run = {
                    **{k: v for k, v in body.items() if v is not None},
                    "recurring_run_id": _new_id(),
                    "max_concurrency": str(concurrency),  # int64 travels as a JSON string
                    "mode": mode,
                    "status": "ENABLED" if mode == "ENABLE" else "DISABLED",
                    "created_at": now,
                    "updated_at": now,
                }
                s.recurring_runs[run["recurring_run_id"]] = run
                return HTTPStatus.OK, run
            case "GET", [rid]:
                return HTTPStatus.OK, self._one(s.recurring_runs, rid)
            case "DELETE", [rid]:
                self._one(s.recurring_runs, rid)
                del s.recurring_runs[rid]
                return HTTPStatus.OK, {}
        raise ApiError(HTTPStatus.NOT_FOUND, f"no route for {req.method} {req.path}")

    def _runs(self, req: RecordedRequest, rest: list[str]) -> tuple[HTTPStatus, dict[str, Any]]:
        s = self.state
        match req.method, rest:
            case "GET", []:
                items = list(s.runs.values())
                if exp := _q(req.query, "experiment_id"):
                    items = [r for r in items if r.get("experiment_id") == exp]
                return HTTPStatus.OK, _page(items, req.query, "runs")
            case "POST", []:
                body = _json(req.body)
                if not body.get("display_name"):
                    raise ApiError(HTTPStatus.BAD_REQUEST, "run display_name is required")
                self._resolve_reference(body)
                run = {
                    **{k: v for k, v in body.items() if v is not None},
                    "run_id": _new_id(),
                    "storage_state": "AVAILABLE",
                    "state": "PENDING",
                    "created_at": s.now(),
                }
                s.runs[run["run_id"]] = run
                return HTTPStatus.OK, run
            case "GET", [rid]:
                return HTTPStatus.OK, self._one(s.runs, rid)
        raise ApiError(HTTPStatus.NOT_FOUND, f"no route for {req.method} {req.path}")


def _summary(version: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in version.items() if k != "pipeline_spec"}


def _json(body: bytes) -> dict[str, Any]:
    try:
        value = json.loads(body or b"{}")
    except json.JSONDecodeError as exc:
        raise ApiError(HTTPStatus.BAD_REQUEST, f"invalid JSON body: {exc}") from exc
    if not isinstance(value, dict):
        raise ApiError(HTTPStatus.BAD_REQUEST, "JSON body must be an object")
    return value


class _Handler(BaseHTTPRequestHandler):
    fake: FakeKfpServer

    def log_message(self, format: str, *args: Any) -> None:  # silence the default stderr log
        return

    def _serve(self) -> None:
        url = urlsplit(self.path)
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        req = RecordedRequest(
            method=self.command,
            path=url.path,
            query=parse_qs(url.query, keep_blank_values=True),
            headers={k.lower(): v for k, v in self.headers.items()},
            body=body,
        )
        try:
            status, payload = self.fake.handle(req)
        except ApiError as exc:
            status = exc.status
            payload = {"code": _GRPC_CODE.get(exc.status, 2), "message": exc.message, "details": []}
        except Exception as exc:  # a bug in the fake: answer 500 rather than dropping the connection
            status = HTTPStatus.INTERNAL_SERVER_ERROR
            payload = {"code": 13, "message": f"{type(exc).__name__}: {exc}", "details": []}
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    do_GET = _serve
    do_POST = _serve
    do_DELETE = _serve
    do_PATCH = _serve
