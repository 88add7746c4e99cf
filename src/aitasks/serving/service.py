"""``aitasks serve-api``: the recommendation HTTP service (FastAPI + uvicorn).

``GET /v1/users/{user_id}/recommendations?k=10&filter_played=true&exclude=t1,t2&fallback=true``

One request: one pipelined Redis read (the user's Feast ``user_features`` row, decoded without the
Feast SDK; the updater's recent history; the updater's embedding of that row), the user tower when the
stored embedding is missing or older than the row, the HNSW index plus the live-added tracks, then the
filters. A user neither known to the model nor with online features gets the model's popularity list,
flagged ``source: "popularity"`` (``fallback=false``: 404 instead).

Hot reload: a background thread polls ``CURRENT`` (every ``reload_s``); a new version is loaded beside
the one serving (index verified against its manifest, its model loaded), then one reference is
swapped. Requests hold the snapshot they started with, so none is dropped or served half old, half
new. Live-added tracks (``items:<model>:v<N>``, written by the updater) are polled the same way into a
small exact-search overlay whose results are merged by score with the index's: the published HNSW
graph is never mutated under readers (hnswlib cannot resize concurrently with queries), and the
hourly ``reco-refresh`` folds the tracks into the next version.

Errors: 422 for a bad id / ``k`` / filter (the field is named), 404 for a cold user with
``fallback=false``, 503 when nothing is published yet, the online store is unreachable or not
materialized. ``/healthz`` (process up), ``/readyz`` (a snapshot is loaded and Redis answers),
``/metrics`` (Prometheus), ``/docs`` and ``/openapi.json``. Every request logs one JSON line with its
trace id (from a W3C ``traceparent`` header, else a new one), echoed in the ``traceparent`` response
header; user ids are pseudonymised by the platform's log redaction.
"""

from __future__ import annotations

import dataclasses
import re
import struct
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Final, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from aitasks.data_processing.contract import ID_PATTERN
from aitasks.serving.model import ModelSource, ServingModel, load_serving_model
from aitasks.serving.online import USER_FIELDS, Keys, decode_user_row

_ID = re.compile(ID_PATTERN)
_MAX_EXCLUDE: Final = 1000


class ServiceConfig(BaseModel):
    """How the service finds what it serves.

    Attributes:
        project: Feast project of the online store (and of the updater's keys).
        index_name: The published index.
        prefix: The updater's key prefix (default ``aitasks:rt:<project>:``).
        reload_s: How often ``CURRENT`` and the live tracks are polled.
        filter_played_default: Whether played tracks are left out when a request does not say.
        ready_cache_s: How long a positive check of the online store's materialization is trusted.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    project: str = Field(default="aitasks", pattern=r"^[A-Za-z][A-Za-z0-9_]{0,62}$")
    index_name: str = Field(default="reco-tracks", pattern=r"^[a-z][a-z0-9_-]{0,62}$")
    prefix: str = Field(default="", max_length=200)
    reload_s: float = Field(default=5.0, gt=0)
    filter_played_default: bool = True
    ready_cache_s: float = Field(default=2.0, ge=0)


class Item(BaseModel):
    track_id: str
    score: float


class RecommendationResponse(BaseModel):
    """The answer for one user, with where it came from."""

    user_id: str
    items: list[Item]
    source: Literal["model", "popularity"] = Field(description="model, or the popularity fallback (cold user).")
    reason: str
    index_version: int
    model_name: str
    model_version: int
    embedding: Literal["updater", "computed", "none"] = Field(
        description="updater: the updater's embedding of the current feature row; computed: by this request."
    )
    features_as_of: str | None = Field(description="Time of the online feature row (ISO 8601), None without one.")
    filter_played: bool
    filtered_played: int
    excluded: int
    live_items: int = Field(description="Live-added tracks searched beside the index.")


@dataclass(frozen=True)
class LiveItems:
    """Tracks announced after the index version was built: exact search over their vectors."""

    seq: int = -1
    ids: tuple[str, ...] = ()
    matrix: np.ndarray = dataclasses.field(default_factory=lambda: np.zeros((0, 1), dtype=np.float32))


@dataclass(frozen=True)
class Snapshot:
    """Everything one request needs, immutable; the service swaps whole snapshots."""

    index: Any  # AnnIndex
    manifest: Any  # IndexManifest
    model: ServingModel
    seen: dict[str, frozenset[str]]
    lock: threading.Lock
    live: LiveItems = LiveItems()

    def search(self, vec: np.ndarray, k: int, banned: set[str]) -> list[tuple[str, float]]:
        with self.lock:  # AnnIndex adjusts ef per call: one query at a time per index
            hits: list[tuple[str, float]] = self.index.query(vec[None, :], min(k, self.index.size), exclude=[banned])[0]
        live = self.live
        if live.ids:
            scores = live.matrix @ vec
            extra = [(t, float(s)) for t, s in zip(live.ids, scores.tolist(), strict=True) if t not in banned]
            hits = sorted([*hits, *extra], key=lambda h: -h[1])
        return hits[:k]


class ProblemError(Exception):
    """An HTTP error with a clear message (FastAPI turns it into ``{"detail": ...}``)."""

    def __init__(self, status: int, detail: Any) -> None:
        super().__init__(str(detail))
        self.status, self.detail = status, detail


class Recommender:
    """The service's state: the Redis client, the current snapshot and its reloader."""

    def __init__(self, settings: Any, config: ServiceConfig, source: ModelSource, client: Any, telemetry: Any) -> None:
        self.settings, self.cfg, self.source, self.client, self.telemetry = settings, config, source, client, telemetry
        self.keys = Keys(config.project, config.prefix)
        self.snapshot: Snapshot | None = None
        self._stop = threading.Event()
        self._ready_at = -1e18
        self.metrics = _metrics(telemetry.registry)
        self.log = _logger()

    # ------------------------------------------------------------------------------------ reloading

    def reload(self) -> bool:
        """Load a newly published version and new live tracks; returns whether the snapshot changed."""
        from aitasks.recommendation_update.publish import load_version, read_pointer

        pointer = read_pointer(self.settings.storage_root, self.cfg.index_name)
        current = self.snapshot
        changed = False
        if pointer is not None and (current is None or current.manifest.version != pointer.version):
            index, manifest, directory = load_version(self.settings.storage_root, self.cfg.index_name, pointer.version)
            model = current.model if current is not None else None
            if model is None or (model.name, model.version) != (manifest.model_name, manifest.model_version):
                model = load_serving_model(self.settings, self.source, manifest.model_name, manifest.model_version)
            current = Snapshot(index, manifest, model, _read_seen(directory), threading.Lock())
            changed = True
            self.metrics["index_version"].set(manifest.version)
            self.metrics["model_version"].set(model.version)
            self.log.info("snapshot_loaded", index_version=manifest.version, model=model.key)
        if current is not None:
            live = self._live(current)
            if live is not current.live:
                current = dataclasses.replace(current, live=live)
                changed = True
        if changed:
            self.snapshot = current  # one reference swap: requests in flight keep theirs
        return changed

    def _live(self, snap: Snapshot) -> LiveItems:
        key = snap.model.key
        seq = int(self.client.get(self.keys.items_seq(key)) or 0)
        if seq == snap.live.seq:
            return snap.live
        raw = self.client.hgetall(self.keys.items(key))
        indexed = set(snap.index.ids)
        ids = sorted(t.decode() for t in raw if t.decode() not in indexed)
        dim = snap.index.dim
        matrix = np.zeros((len(ids), dim), dtype=np.float32)
        for i, t in enumerate(ids):
            vec = np.frombuffer(raw[t.encode()], dtype="<f4")
            if vec.shape == (dim,):
                matrix[i] = vec
        self.metrics["live_items"].set(len(ids))
        return LiveItems(seq, tuple(ids), matrix)

    def reload_forever(self) -> None:
        while not self._stop.wait(self.cfg.reload_s):
            try:
                if self.reload():
                    self.metrics["reloads"].labels("loaded").inc()
            except Exception as exc:  # keep serving the old snapshot; the next poll tries again
                self.metrics["reloads"].labels("failed").inc()
                self.log.warning("reload_failed", error=f"{type(exc).__name__}: {exc}")

    def start(self) -> None:
        try:
            self.reload()
        except Exception as exc:
            self.log.warning("initial_load_failed", error=f"{type(exc).__name__}: {exc}")
        threading.Thread(target=self.reload_forever, name="reloader", daemon=True).start()

    def stop(self) -> None:
        self._stop.set()

    # ------------------------------------------------------------------------------------- serving

    def store_ready(self) -> bool:
        now = time.monotonic()
        if now - self._ready_at < self.cfg.ready_cache_s:
            return True
        if self.client.exists(self.keys.sentinel):
            self._ready_at = now
            return True
        return False

    def recommend(
        self, user_id: str, k: int, filter_played: bool | None, exclude: Sequence[str], fallback: bool
    ) -> RecommendationResponse:
        import redis

        snap = self.snapshot
        if snap is None:
            raise ProblemError(503, f"no version of index {self.cfg.index_name!r} is loaded yet (nothing published?)")
        model = snap.model
        want_filter = self.cfg.filter_played_default if filter_played is None else filter_played
        try:
            if not self.store_ready():
                raise ProblemError(503, "online store holds no complete materialization (run feast.materialize)")
            pipe = self.client.pipeline(transaction=False)
            pipe.hmget(self.keys.user_row(user_id), USER_FIELDS)
            pipe.get(self.keys.emb(model.key, user_id))
            if want_filter:
                pipe.zrange(self.keys.hist(user_id), 0, -1)
            replies = pipe.execute()
        except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError) as exc:
            raise ProblemError(503, f"online store unreachable ({type(exc).__name__})") from None
        decoded = decode_user_row(replies[0])
        ts_us, row = (decoded[0], decoded[1]) if decoded is not None else (None, None)
        played: set[str] = set()
        if want_filter:
            played = {t.decode() for t in replies[2]} | set(snap.seen.get(user_id, ()))
        banned = played | set(exclude)
        known = model.knows_user(user_id)
        common: dict[str, Any] = {
            "user_id": user_id,
            "index_version": snap.manifest.version,
            "model_name": model.name,
            "model_version": model.version,
            "features_as_of": None if ts_us is None else _iso(ts_us),
            "filter_played": want_filter,
            "filtered_played": len(played),
            "excluded": len(exclude),
            "live_items": len(snap.live.ids),
        }
        if not known and row is None:
            if not fallback:
                raise ProblemError(404, f"user {user_id!r} is unknown to the model and has no online features")
            items = [Item(track_id=t, score=0.0) for t in model.popular if t not in banned][:k]
            self.metrics["requests"].labels("popularity").inc()
            return RecommendationResponse(
                **common,
                items=items,
                source="popularity",
                reason="cold user: not in the model's vocabulary and no online features; most played tracks",
                embedding="none",
            )
        stored = replies[1]
        vec: np.ndarray | None = None
        how: Literal["updater", "computed"] = "computed"
        # The updater's embedding is used only when it was made from the row just read.
        fits = stored is not None and ts_us is not None and len(stored) == 8 + 4 * snap.index.dim
        if fits and struct.unpack_from("<q", stored)[0] == ts_us:
            vec, how = np.frombuffer(stored, dtype="<f4", offset=8), "updater"
        if vec is None:
            vec = model.embed_users([user_id], [row])[0]
        hits = snap.search(np.ascontiguousarray(vec, dtype=np.float32), k, banned)
        reason = (
            "known user"
            if known and row is not None
            else ("user without online features: id embedding only" if known else "new user: online features only")
        )
        self.metrics["requests"].labels("model").inc()
        return RecommendationResponse(
            **common,
            items=[Item(track_id=t, score=s) for t, s in hits],
            source="model",
            reason=reason,
            embedding=how,
        )


def _iso(ts_us: int) -> str:
    from aitasks.serving.feast_codec import ts_datetime

    return ts_datetime(ts_us).isoformat()


def _read_seen(directory: Any) -> dict[str, frozenset[str]]:
    """The index version's played pairs (``seen.parquet``), by user; empty when the version has none."""
    import polars as pl

    from aitasks.recommendation_update.tasks import SEEN_FILE

    path = directory / SEEN_FILE
    if not path.is_file():
        return {}
    frame = pl.read_parquet(path, columns=["user_id", "track_id"]).group_by("user_id").agg(pl.col("track_id"))
    return {u: frozenset(t) for u, t in zip(frame["user_id"].to_list(), frame["track_id"].to_list(), strict=True)}


def _metrics(registry: Any) -> dict[str, Any]:
    from prometheus_client import Counter, Gauge, Histogram

    return {
        "http": Counter(
            "aitasks_api_http_requests", "HTTP requests by route and status code.", ["route", "code"], registry=registry
        ),
        "latency": Histogram(
            "aitasks_api_request_duration_seconds",
            "Wall time of recommendation requests.",
            registry=registry,
            buckets=(0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
        ),
        "requests": Counter(
            "aitasks_api_recommendations", "Answers by source (model, popularity).", ["source"], registry=registry
        ),
        "reloads": Counter("aitasks_api_reloads", "Snapshot reloads by outcome.", ["outcome"], registry=registry),
        "index_version": Gauge("aitasks_api_index_version", "Index version being served.", registry=registry),
        "model_version": Gauge("aitasks_api_model_version", "Model version being served.", registry=registry),
        "live_items": Gauge(
            "aitasks_api_live_items", "Live-added tracks searched beside the index.", registry=registry
        ),
    }


def _logger() -> Any:
    from aitasks.runtime.logging import get_logger

    return get_logger(component="serve-api")


def create_app(rec: Recommender) -> Any:
    """The FastAPI application over ``rec``."""
    from fastapi import FastAPI, Query, Request
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse, PlainTextResponse, Response

    from aitasks.runtime.telemetry import current_traceparent, parent_context

    app = FastAPI(
        title="aitasks recommendations",
        version="1.0.0",
        description="Top-k tracks for a listener: online features, the champion's user tower, the current index.",
    )
    tracer = rec.telemetry.tracer

    @app.middleware("http")
    async def trace_and_log(request: Request, call_next: Any) -> Any:
        start = time.perf_counter()
        route = request.url.path if not request.url.path.startswith("/v1/users/") else "/v1/users/{id}/recommendations"
        with tracer.start_as_current_span(
            "GET " + route, context=parent_context(request.headers.get("traceparent"))
        ) as span:
            parent = current_traceparent(span)
            response = await call_next(request)
            response.headers["traceparent"] = parent
        took = time.perf_counter() - start
        rec.metrics["http"].labels(route, str(response.status_code)).inc()
        if route.startswith("/v1/"):
            rec.metrics["latency"].observe(took)
            rec.log.info(
                "request",
                route=route,
                status=response.status_code,
                duration_ms=round(took * 1000, 3),
                trace_id=parent.split("-")[1],
            )
        return response

    @app.exception_handler(ProblemError)
    async def problem(_request: Request, exc: ProblemError) -> Any:
        return JSONResponse(status_code=exc.status, content={"detail": exc.detail})

    @app.exception_handler(RequestValidationError)
    async def invalid(_request: Request, exc: RequestValidationError) -> Any:
        issues = [
            {"field": ".".join(str(p) for p in e["loc"][1:]) or str(e["loc"][0]), "problem": e["msg"]}
            for e in exc.errors()
        ]
        return JSONResponse(status_code=422, content={"detail": issues})

    @app.get("/v1/users/{user_id}/recommendations", response_model=RecommendationResponse)
    async def recommendations(
        user_id: str,
        k: int = Query(10, ge=1, le=1000, description="How many tracks."),
        filter_played: bool | None = Query(None, description="Leave out tracks the user played (default: on)."),
        exclude: str = Query("", max_length=70_000, description="Comma-separated track ids to leave out."),
        fallback: bool = Query(True, description="Popularity list for a cold user (false: 404)."),
    ) -> RecommendationResponse:
        """Top-``k`` tracks for ``user_id``; cold users get the popularity list (``source: popularity``)."""
        issues = []
        if not _ID.match(user_id):
            issues.append({"field": "user_id", "problem": "must be 1-64 characters of letters, digits, '_' or '-'"})
        excluded = [t for t in exclude.split(",") if t] if exclude else []
        if len(excluded) > _MAX_EXCLUDE:
            issues.append({"field": "exclude", "problem": f"at most {_MAX_EXCLUDE} track ids"})
        bad = [t for t in excluded if not _ID.match(t)]
        if bad:
            issues.append({"field": "exclude", "problem": f"{len(bad)} id(s) break the id rule, first {bad[0][:70]!r}"})
        if issues:
            raise ProblemError(422, issues)
        from aitasks.runtime.logging import register_user_id

        register_user_id(user_id)
        return rec.recommend(user_id, k, filter_played, excluded, fallback)

    @app.get("/healthz", response_class=PlainTextResponse)
    async def healthz() -> str:
        return "ok\n"

    @app.get("/readyz", response_class=PlainTextResponse)
    async def readyz() -> Any:
        try:
            ok = rec.snapshot is not None and bool(rec.client.ping())
        except Exception:
            ok = False
        return PlainTextResponse("ready\n" if ok else "not ready\n", status_code=200 if ok else 503)

    @app.get("/metrics")
    async def metrics() -> Any:
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        return Response(generate_latest(rec.telemetry.registry), media_type=CONTENT_TYPE_LATEST)

    return app


def build(
    settings: Any, config: ServiceConfig, source: ModelSource, *, telemetry: Any = None
) -> tuple[Any, Recommender]:
    """The app and its recommender (Redis from settings; no Feast or MLflow import at start-up)."""
    from aitasks.platform.feature_store.config import RedisOnline
    from aitasks.platform.feature_store.store import redis_client
    from aitasks.runtime.telemetry import Telemetry, default_telemetry

    store = RedisOnline(
        connection_string=settings.redis_url,
        connect_timeout_s=settings.redis_connect_timeout_s,
        socket_timeout_s=settings.redis_socket_timeout_s,
    )
    if telemetry is None:
        telemetry = (
            default_telemetry(settings.trace_exporter, settings.otlp_endpoint)
            if settings.trace_exporter != "none"
            else Telemetry()
        )
    rec = Recommender(settings, config, source, redis_client(store), telemetry)
    return create_app(rec), rec


def run_service(settings: Any, config: ServiceConfig, source: ModelSource, *, host: str, port: int) -> None:
    """Serve until SIGTERM/SIGINT (uvicorn drains in-flight requests before it exits)."""
    import uvicorn

    app, rec = build(settings, config, source)
    rec.start()
    try:
        uvicorn.run(app, host=host, port=port, log_level="warning", access_log=False)
    finally:
        rec.stop()
