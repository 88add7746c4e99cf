"""The capacity model: docs/{en,fr,de}/scale.md rendered from the bench snapshot and the volumes.

Every figure on the pages is a unit cost from the committed snapshot ``bench/results/reference.json`` (a
record of ``python -m bench``, named with the command that produced it) times a stated volume of
``bench/volumes.yaml``. The prose of each language is a Jinja template in ``bench/scale/<lang>.md.j2``;
the numbers are filled in here, formatted per language, each followed by its source tags: ``[R3]`` (a
record, listed under "Sources" with its value, baseline and command) and ``[V]`` (the volumes table).
A unit cost the snapshot does not hold (a bench not merged or not run yet) is rendered as "not measured"
and listed under "Missing records"; nothing is estimated in its place.

``python -m bench scale`` renders (``make scale``), ``python -m bench scale --check`` fails when a committed
page differs from what the snapshot and the volumes give (``make check``). ``make bench-reference`` refreshes
the snapshot from ``bench/results/latest.json``.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
REFERENCE = ROOT / "bench" / "results" / "reference.json"
VOLUMES = ROOT / "bench" / "volumes.yaml"
TEMPLATES = ROOT / "bench" / "scale"
LANGS = ("en", "fr", "de")
GIB = 2**30

#: Unit costs the model uses: key -> (benchmark, metric, label of the bench that produces it). The command
#: of a record is ``python -m bench --only <label>``. Records other branches add are named here too: until
#: the snapshot holds them, their lines read "not measured".
UNITS: dict[str, tuple[str, str, str]] = {
    "audio": ("audio.analysis", "x_realtime_per_core", "audio"),
    "audio_pool": ("audio.analysis_pool", "x_realtime_per_core_steady", "audio"),
    "ann_qps": ("ann_index", "qps_single_query[hnswlib vs numpy]", "ann"),
    "ann_batch": ("ann_index", "qps_batch[hnswlib vs numpy]", "ann"),
    "ann_memory": ("ann_memory", "rss_bytes_per_item", "ann_memory"),
    "ann_file": ("ann_memory", "file_bytes_per_item", "ann_memory"),
    "feast_p99": ("feast_online", "get_online_features_p99[redis]", "feast"),
    "feast_p50": ("feast_online", "get_online_features_p50[redis]", "feast"),
    "redis_ops": ("redis_server", "hgetall_ops_per_s[P1]", "redis"),
    "redis_ops_p16": ("redis_server", "hgetall_ops_per_s[P16]", "redis"),
    "train": ("two_tower_training", "examples_per_s", "training"),
    "ddp": ("two_tower_ddp", "examples_per_s[2_procs]", "training_ddp"),
    "train_gpu": ("two_tower_training", "examples_per_s[gpu]", "training"),
    "updater": ("serving", "updater events/s (batch 500)", "serving"),
    "serving_p99": ("serving", "api p99", "serving"),
    "serving_rps": ("serving", "api requests/s", "serving"),
    "startup_audio": ("startup", "step_to_ready_s[audio]", "startup"),
    "startup_data": ("startup", "step_to_ready_s[data_processing]", "startup"),
    "startup_training": ("startup", "step_to_ready_s[training]", "startup"),
    "startup_reco": ("startup", "step_to_ready_s[recommendation]", "startup"),
    "startup_content": ("startup", "step_to_ready_s[content_generation]", "startup"),
    "startup_numpy": ("startup", "import_numpy_s", "startup"),
}

#: Units of the figures, per language.
UNIT_NAMES: dict[str, dict[str, str]] = {
    "core-h": {"en": "core-hours", "fr": "heures-cœur", "de": "Kernstunden"},
    "h": {"en": "h", "fr": "h", "de": "h"},
    "min": {"en": "min", "fr": "min", "de": "min"},
    "days": {"en": "days", "fr": "jours", "de": "Tage"},
    "s": {"en": "s", "fr": "s", "de": "s"},
    "ms": {"en": "ms", "fr": "ms", "de": "ms"},
    "GB": {"en": "GB", "fr": "Go", "de": "GB"},
    "GiB": {"en": "GiB", "fr": "Gio", "de": "GiB"},
    "B": {"en": "bytes", "fr": "octets", "de": "Byte"},
    "x": {"en": "× realtime", "fr": "× temps réel", "de": "× Echtzeit"},
    "cores": {"en": "cores", "fr": "cœurs", "de": "Kerne"},
    "pods": {"en": "pods", "fr": "pods", "de": "Pods"},
    "shards": {"en": "shard(s)", "fr": "shard(s)", "de": "Shard(s)"},
    "primaries": {"en": "primaries", "fr": "primaires", "de": "Primaries"},
    "items": {"en": "items", "fr": "éléments", "de": "Elemente"},
    "keys": {"en": "keys", "fr": "clés", "de": "Schlüssel"},
    "iterations": {"en": "iterations", "fr": "itérations", "de": "Iterationen"},
    "consumers": {"en": "consumers", "fr": "consommateurs", "de": "Consumer"},
    "ops/s": {"en": "ops/s", "fr": "ops/s", "de": "Ops/s"},
    "q/s": {"en": "queries/s", "fr": "requêtes/s", "de": "Anfragen/s"},
    "req/s": {"en": "requests/s", "fr": "requêtes/s", "de": "Anfragen/s"},
    "ex/s": {"en": "examples/s", "fr": "exemples/s", "de": "Beispiele/s"},
    "events/s": {"en": "events/s", "fr": "événements/s", "de": "Ereignisse/s"},
    "epochs/day": {"en": "epochs/day", "fr": "époques/jour", "de": "Epochen/Tag"},
    "examples": {"en": "examples", "fr": "exemples", "de": "Beispiele"},
    "%": {"en": "%", "fr": "%", "de": "%"},
    "": {"en": "", "fr": "", "de": ""},
}
NOT_MEASURED = {"en": "not measured", "fr": "non mesuré", "de": "nicht gemessen"}


class MissingRecordError(Exception):
    """A unit cost the snapshot does not hold."""


@dataclass
class Figure:
    """One number of the pages, with what it was computed from."""

    key: str
    value: float | None
    unit: str
    how: str = ""
    sources: tuple[str, ...] = ()  #: UNITS keys
    volumes: tuple[str, ...] = ()  #: volume paths (``catalog.tracks``)
    missing: tuple[str, ...] = ()  #: UNITS keys the snapshot lacks


@dataclass
class Model:
    """Everything a template shows: figures, the bottleneck table, the snapshot's facts."""

    figures: dict[str, Figure]
    bottlenecks: list[dict[str, Any]]
    meta: dict[str, Any]
    volumes: dict[str, Any]
    records: dict[tuple[str, str], dict[str, Any]]
    source_order: list[str] = field(default_factory=list)

    @property
    def missing(self) -> list[str]:
        """UNITS keys some figure needed and the snapshot lacks (sorted, unique)."""
        return sorted({m for f in self.figures.values() for m in f.missing})


class _Calc:
    """Reads unit costs and volumes for one figure, remembering which it used."""

    def __init__(self, records: Mapping[tuple[str, str], dict[str, Any]], volumes: Mapping[str, Any]) -> None:
        self.records, self.volumes_doc = records, volumes
        self.used: list[str] = []
        self.vols: list[str] = []

    def u(self, key: str, path: str = "value") -> float:
        bench, metric, _ = UNITS[key]
        rec = self.records.get((bench, metric))
        if rec is None:
            raise MissingRecordError(key)
        if key not in self.used:
            self.used.append(key)
        node: Any = rec
        for part in path.split("."):
            if not isinstance(node, Mapping) or part not in node:
                raise MissingRecordError(key)
            node = node[part]
        return float(node)

    def v(self, path: str) -> float:
        node: Any = self.volumes_doc
        for part in path.split("."):
            node = node[part]
        if path not in self.vols:
            self.vols.append(path)
        return float(node)


def load_snapshot(path: Path = REFERENCE) -> tuple[dict[tuple[str, str], dict[str, Any]], dict[str, Any]]:
    """(records by (benchmark, metric), run facts) of a snapshot file (``{"meta", "records"}``)."""
    doc = json.loads(path.read_text("utf-8"))
    records = doc["records"] if isinstance(doc, dict) else doc
    return {(r["benchmark"], r["metric"]): r for r in records}, (doc.get("meta", {}) if isinstance(doc, dict) else {})


def load_volumes(path: Path = VOLUMES) -> dict[str, Any]:
    import yaml

    doc: dict[str, Any] = yaml.safe_load(path.read_text("utf-8"))
    return doc


def _log_scale(n_from: float, n_to: float) -> float:
    """HNSW insert and search cost grow with log(n): the factor from ``n_from`` items to ``n_to``."""
    return math.log(n_to) / math.log(n_from)


def compute(records: Mapping[tuple[str, str], dict[str, Any]], vol: Mapping[str, Any]) -> Model:
    """Every figure of the pages, from the snapshot's records and the volumes."""
    figs: dict[str, Figure] = {}

    def fig(key: str, unit: str, fn: Callable[[_Calc], tuple[float, str]]) -> None:
        calc = _Calc(records, vol)
        try:
            value, how = fn(calc)
            figs[key] = Figure(key, value, unit, how, tuple(calc.used), tuple(calc.vols))
        except MissingRecordError as exc:
            figs[key] = Figure(key, None, unit, "", tuple(calc.used), tuple(calc.vols), (str(exc.args[0]),))

    # ---- audio --------------------------------------------------------------------------------------------
    def audio_hours(c: _Calc) -> float:
        return c.v("catalog.tracks") * c.v("catalog.minutes_per_track") / 60

    fig("audio_hours", "h", lambda c: (audio_hours(c), "tracks × minutes / 60"))
    fig("audio_x", "x", lambda c: (c.u("audio"), "record"))
    fig("audio_core_h", "core-h", lambda c: (audio_hours(c) / c.u("audio"), "audio hours / (× realtime per core)"))

    def pool_eff(c: _Calc) -> float:
        """The pool's per-core efficiency, at most 1: a pool cannot beat one process per core; a measured
        ratio above 1 is the noise of the single-process baseline and would overstate the capacity."""
        return min(c.u("audio_pool", "ratio"), 1.0)

    fig(
        "audio_pool_eff",
        "%",
        lambda c: (100 * pool_eff(c), "pool per core / one process per core, at most 100 %"),
    )

    def cluster_cores(c: _Calc) -> float:
        return c.v("cluster.audio_parallelfor_width") * c.v("cluster.cores_per_audio_pod")

    fig("audio_cores", "cores", lambda c: (cluster_cores(c), "ParallelFor width × cores per pod"))
    fig(
        "audio_wall_days",
        "days",
        lambda c: (
            audio_hours(c) / c.u("audio") / (cluster_cores(c) * pool_eff(c)) / 24,
            "core-hours / (cores × pool efficiency) / 24",
        ),
    )
    fig(
        "audio_iterations",
        "iterations",
        lambda c: (math.ceil(c.v("catalog.tracks") / c.v("catalog.tracks_per_shard")), "tracks / tracks per shard"),
    )

    def daily_core_h(c: _Calc) -> float:
        return c.v("catalog.new_tracks_per_day") * c.v("catalog.minutes_per_track") / 60 / c.u("audio")

    fig("audio_daily_core_h", "core-h", lambda c: (daily_core_h(c), "new tracks × minutes / 60 / (× realtime)"))
    fig(
        "audio_daily_wall_min",
        "min",
        lambda c: (
            60 * daily_core_h(c) / (cluster_cores(c) * pool_eff(c)),
            "daily core-hours / (cores × pool efficiency) × 60",
        ),
    )
    fig(
        "audio_daily_pods",
        "pods",
        lambda c: (
            math.ceil(
                daily_core_h(c)
                / (c.v("cluster.daily_pass_window_h") * c.v("cluster.cores_per_audio_pod") * pool_eff(c))
            ),
            "daily core-hours / (window × cores per pod × pool efficiency)",
        ),
    )
    fig("startup_audio", "s", lambda c: (c.u("startup_audio"), "record"))
    fig(
        "audio_startup_share",
        "%",
        lambda c: (
            100
            * math.ceil(c.v("catalog.tracks") / c.v("catalog.tracks_per_shard"))
            * c.u("startup_audio")
            * c.v("cluster.cores_per_audio_pod")
            / 3600
            / (audio_hours(c) / c.u("audio")),
            "iterations × start-up × cores per pod / audio core-hours",
        ),
    )

    # ---- ANN index ----------------------------------------------------------------------------------------
    def n_items(c: _Calc) -> float:
        return c.v("catalog.tracks")

    fig(
        "ann_raw_gb",
        "GB",
        lambda c: (n_items(c) * c.v("embeddings.dim") * c.v("embeddings.bytes_per_value") / 1e9, "N × dim × 4 B"),
    )
    fig("ann_bytes_item", "B", lambda c: (c.u("ann_memory"), "record"))
    fig("ann_file_bytes_item", "B", lambda c: (c.u("ann_file"), "record"))
    fig("ann_total_gb", "GB", lambda c: (n_items(c) * c.u("ann_memory") / 1e9, "N × bytes per item (RSS)"))

    def shard_budget(c: _Calc) -> float:
        return c.v("cluster.ann_node_memory_gib") * GIB * c.v("cluster.ann_memory_headroom")

    def shards(c: _Calc, g: float = 1.0) -> int:
        return max(1, math.ceil(g * n_items(c) * c.u("ann_memory") / shard_budget(c)))

    fig("ann_shards", "shards", lambda c: (shards(c), "total / (node RAM × headroom)"))
    fig("ann_shard_gib", "GiB", lambda c: (n_items(c) * c.u("ann_memory") / shards(c) / GIB, "total / shards"))
    fig("ann_items_shard", "items", lambda c: (n_items(c) / shards(c), "N / shards"))

    def bench_items(c: _Calc) -> float:
        return c.u("ann_qps", "params.items")

    def build_h(c: _Calc) -> float:
        per_item_thread_s = c.u("ann_qps", "params.hnswlib_build_s") * c.u("ann_qps", "params.build_threads")
        per_item_thread_s /= bench_items(c)
        n_shard = n_items(c) / shards(c)
        return (
            n_shard
            * per_item_thread_s
            * _log_scale(bench_items(c), n_shard)
            / c.v("cluster.ann_build_threads_per_shard")
            / 3600
        )

    fig("ann_build_h", "h", lambda c: (build_h(c), "items per shard × build thread-s per item × log factor / threads"))
    fig("ann_qps_core", "q/s", lambda c: (c.u("ann_qps"), "record (100k items, 1 thread)"))

    def qps_shard(c: _Calc) -> float:
        return c.u("ann_qps") / _log_scale(bench_items(c), n_items(c) / shards(c))

    fig("ann_qps_shard_core", "q/s", lambda c: (qps_shard(c), "record / log factor (items per shard vs 100k)"))
    fig(
        "ann_query_cores",
        "cores",
        lambda c: (
            c.v("serving.peak_requests_per_s") * shards(c) / qps_shard(c),
            "peak requests/s × shards (fan-out) / queries/s per core per shard",
        ),
    )
    fig("ann_merge_items", "", lambda c: (shards(c) * c.v("serving.k"), "shards × k"))

    # ---- Feast online store on Redis ----------------------------------------------------------------------
    fig("feast_keys", "keys", lambda c: (c.v("users.total"), "one hash per user entity"))
    fig("feast_bytes_user", "B", lambda c: (c.u("feast_p99", "params.redis_bytes_per_user"), "record (MEMORY USAGE)"))

    def redis_data_gb(c: _Calc, g: float = 1.0) -> float:
        return g * c.v("users.total") * c.u("feast_p99", "params.redis_bytes_per_user") / 1e9

    fig("redis_data_gb", "GB", lambda c: (redis_data_gb(c), "users × bytes per user"))
    fig(
        "redis_total_gb",
        "GB",
        lambda c: (redis_data_gb(c) * (1 + c.v("cluster.redis_replicas")), "data × (1 + replicas)"),
    )

    def peak_reads(c: _Calc, g: float = 1.0) -> float:
        return g * c.v("serving.peak_requests_per_s") * c.v("serving.online_reads_per_request")

    fig("redis_peak_ops", "ops/s", lambda c: (peak_reads(c), "peak requests/s × reads per request"))

    fig("redis_ops_shard", "ops/s", lambda c: (c.u("redis_ops"), "record"))
    fig("redis_ops_shard_p16", "ops/s", lambda c: (c.u("redis_ops_p16"), "record"))

    def primaries(c: _Calc, g: float = 1.0) -> int:
        by_memory = math.ceil(redis_data_gb(c, g) * 1e9 / (c.v("cluster.redis_shard_memory_gib") * GIB))
        by_ops = math.ceil(peak_reads(c, g) / c.u("redis_ops"))
        return max(by_memory, by_ops)

    fig(
        "redis_primaries_mem",
        "primaries",
        lambda c: (
            math.ceil(redis_data_gb(c) * 1e9 / (c.v("cluster.redis_shard_memory_gib") * GIB)),
            "data / memory per primary",
        ),
    )
    fig(
        "redis_primaries_ops",
        "primaries",
        lambda c: (math.ceil(peak_reads(c) / c.u("redis_ops")), "peak ops/s / ops/s per primary"),
    )
    fig("redis_primaries", "primaries", lambda c: (primaries(c), "max(by memory, by ops/s)"))
    fig("feast_p99_ms", "ms", lambda c: (c.u("feast_p99"), "record"))
    fig("feast_p50_ms", "ms", lambda c: (c.u("feast_p50"), "record"))
    fig("redis_hgetall_p99_ms", "ms", lambda c: (c.u("feast_p99", "baseline_value"), "record (baseline)"))
    fig(
        "feast_client_cores",
        "cores",
        lambda c: (peak_reads(c) * c.u("feast_p50") / 1000, "peak reads/s × Feast p50 (s of client CPU per read)"),
    )

    # ---- training -----------------------------------------------------------------------------------------
    def per_core(c: _Calc) -> float:
        return c.u("train") / c.u("train", "params.threads")

    def epoch_examples(c: _Calc, g: float = 1.0) -> float:
        return g * c.v("events.plays_per_day") * c.v("events.training_fraction") * c.v("events.training_window_days")

    fig("train_ex_core", "ex/s", lambda c: (per_core(c), "record / threads"))
    fig("train_epoch_examples", "examples", lambda c: (epoch_examples(c), "plays/day × fraction × window days"))
    fig("train_epoch_core_h", "core-h", lambda c: (epoch_examples(c) / per_core(c) / 3600, "examples / (ex/s/core)"))
    fig(
        "train_epoch_h_one_worker",
        "h",
        lambda c: (
            epoch_examples(c) / (per_core(c) * c.v("cluster.cores_per_training_worker")) / 3600,
            "examples / (ex/s/core × cores per worker)",
        ),
    )
    # DDP: 2 processes vs 1 on the same cores (ratio of the record): the efficiency applied to every worker.
    fig("ddp_eff", "%", lambda c: (100 * c.u("ddp", "ratio"), "record: 2 processes / 1 process, same cores"))

    def epoch_h_ddp(c: _Calc, g: float = 1.0) -> float:
        workers = c.v("cluster.training_workers")
        rate = per_core(c) * c.v("cluster.cores_per_training_worker") * workers * c.u("ddp", "ratio")
        return epoch_examples(c, g) / rate / 3600

    fig("train_epoch_h_ddp", "h", lambda c: (epoch_h_ddp(c), "examples / (ex/s/core × cores × workers × efficiency)"))
    fig(
        "train_epochs_day",
        "epochs/day",
        lambda c: (c.v("cluster.training_window_h") / epoch_h_ddp(c), "window / epoch hours"),
    )
    fig("train_gpu", "ex/s", lambda c: (c.u("train_gpu"), "record"))

    # ---- real-time updater and serving --------------------------------------------------------------------
    def peak_events(c: _Calc, g: float = 1.0) -> float:
        return g * c.v("events.plays_per_day") / 86400 * c.v("events.peak_to_mean")

    fig("events_peak", "events/s", lambda c: (peak_events(c), "plays/day / 86400 × peak-to-mean"))
    fig("updater_events", "events/s", lambda c: (c.u("updater"), "record"))
    fig(
        "updater_consumers",
        "consumers",
        lambda c: (math.ceil(peak_events(c) / c.u("updater")), "peak events/s / events/s per consumer"),
    )
    fig("serving_p99", "ms", lambda c: (c.u("serving_p99"), "record"))
    fig("serving_rps", "req/s", lambda c: (c.u("serving_rps"), "record"))

    # ---- start-up -----------------------------------------------------------------------------------------
    for fam in ("audio", "data", "training", "reco", "content"):
        fig(f"startup_{fam}", "s", lambda c, fam=fam: (c.u(f"startup_{fam}"), "record"))
        fig(
            f"startup_{fam}_minus_numpy",
            "s",
            lambda c, fam=fam: (c.u(f"startup_{fam}") - c.u("startup_numpy"), "record − import numpy"),
        )
    fig("startup_numpy", "s", lambda c: (c.u("startup_numpy"), "record"))

    # ---- the first bottleneck at 10x and 100x -------------------------------------------------------------
    engines: list[tuple[str, str, str, Callable[[_Calc, float], float]]] = [
        (
            "audio_daily",
            "cluster.daily_pass_window_h",
            "h",
            lambda c, g: g * daily_core_h(c) / (cluster_cores(c) * pool_eff(c)),
        ),
        (
            "argo",
            "cluster.argo_max_iterations",
            "iterations",
            lambda c, g: math.ceil(g * c.v("catalog.tracks") / c.v("catalog.tracks_per_shard")),
        ),
        ("ann_fanout", "cluster.max_fanout_shards", "shards", shards),
        ("redis", "cluster.redis_max_primaries", "primaries", primaries),
        ("training", "cluster.training_window_h", "h", epoch_h_ddp),
        (
            "updater",
            "cluster.updater_max_consumers",
            "consumers",
            lambda c, g: math.ceil(peak_events(c, g) / c.u("updater")),
        ),
    ]
    growth = [1.0, *(float(g) for g in vol.get("growth", [10, 100]))]
    rows: list[dict[str, Any]] = []
    for name, limit_path, unit, demand in engines:
        row: dict[str, Any] = {"engine": name, "unit": unit}
        fig(f"limit_{name}", unit, lambda c, p=limit_path: (c.v(p), "volume"))
        row["limit"] = f"limit_{name}"
        row["at"] = []
        for g in growth:
            key = f"need_{name}_{g:g}x"
            fig(key, unit, lambda c, d=demand, g=g: (d(c, g), f"demand at {g:g}×"))
            util_key = f"util_{name}_{g:g}x"
            fig(util_key, "%", lambda c, d=demand, g=g, p=limit_path: (100 * d(c, g) / c.v(p), "need / limit"))
            row["at"].append({"growth": g, "need": key, "util": util_key})
        rows.append(row)
    return Model(figs, rows, {}, dict(vol), dict(records))


def first_bottleneck(model: Model, growth: float) -> tuple[str | None, float | None, list[str]]:
    """(engine with the highest need/limit at ``growth`` among the measured, its %, the engines not measured)."""
    best: tuple[str | None, float | None] = (None, None)
    unmeasured: list[str] = []
    for row in model.bottlenecks:
        at = next(a for a in row["at"] if a["growth"] == growth)
        util = model.figures[at["util"]].value
        if util is None:
            unmeasured.append(row["engine"])
        elif best[1] is None or util > best[1]:
            best = (row["engine"], util)
    return best[0], best[1], unmeasured


# ---- formatting ----------------------------------------------------------------------------------------------


def fmt_number(x: float, lang: str) -> str:
    """Three significant digits, grouped thousands, per language (1,230,000 / 1 230 000 / 1.230.000)."""
    if x == 0:
        return "0"
    if not math.isfinite(x):
        return "∞"
    digits = 3 - math.floor(math.log10(abs(x))) - 1
    rounded = round(x, digits)
    decimals = max(0, digits)
    text = f"{rounded:,.{decimals}f}"
    if "." in text:  # 3.50 -> 3.5, 64.0 -> 64
        text = text.rstrip("0").rstrip(".")
    if lang == "fr":
        return text.replace(",", "\u202f").replace(".", ",")
    if lang == "de":
        return text.replace(",", "\x00").replace(".", ",").replace("\x00", ".")
    return text


class _FigureText:
    """A figure in one language: ``str()`` is value, unit and source tags; ``.how`` the formula."""

    def __init__(self, fig: Figure, lang: str, tag: Callable[[str], str]) -> None:
        self.fig, self.lang, self._tag = fig, lang, tag

    @property
    def n(self) -> str:
        return NOT_MEASURED[self.lang] if self.fig.value is None else fmt_number(self.fig.value, self.lang)

    @property
    def tags(self) -> str:
        refs = [self._tag(k) for k in self.fig.sources if k not in self.fig.missing]
        if self.fig.volumes:
            refs.append("V")
        return f"[{', '.join(refs)}]" if refs else ""

    @property
    def how(self) -> str:
        return self.fig.how

    @property
    def measured(self) -> bool:
        return self.fig.value is not None

    def __str__(self) -> str:
        if self.fig.value is None:
            missing = ", ".join(f"`{UNITS[m][0]} / {UNITS[m][1]}`" for m in self.fig.missing)
            return f"*{NOT_MEASURED[self.lang]}* ({missing})"
        unit = UNIT_NAMES[self.fig.unit][self.lang]
        sep = "" if self.fig.unit in ("%", "") else "\u00a0"
        return f"{self.n}{sep}{unit} {self.tags}".rstrip()


class _Figures:
    def __init__(self, model: Model, lang: str) -> None:
        self._model, self._lang = model, lang

    def __getattr__(self, key: str) -> _FigureText:
        try:
            fig = self._model.figures[key]
        except KeyError:
            raise AttributeError(f"no figure {key!r} in the capacity model") from None
        return _FigureText(fig, self._lang, self._tag)

    def __getitem__(self, key: str) -> _FigureText:
        return self.__getattr__(key)

    def _tag(self, unit_key: str) -> str:
        order = self._model.source_order
        if unit_key not in order:
            order.append(unit_key)
        return f"R{order.index(unit_key) + 1}"


def _volume_rows(vol: Mapping[str, Any], prefix: str = "") -> Iterator[tuple[str, Any]]:
    for k, v in vol.items():
        path = f"{prefix}{k}"
        if isinstance(v, Mapping):
            yield from _volume_rows(v, path + ".")
        else:
            yield path, v


def render(model: Model, lang: str, meta: Mapping[str, Any]) -> str:
    """One language's page."""
    import jinja2

    model.source_order.clear()
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(TEMPLATES)),
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
        autoescape=False,  # Markdown, not HTML
    )
    env.filters["num"] = lambda x: fmt_number(float(x), lang) if isinstance(x, int | float) else str(x)
    figures = _Figures(model, lang)
    template = env.get_template(f"{lang}.md.j2")
    growth = [1.0, *(float(g) for g in model.volumes.get("growth", [10, 100]))]
    context = {
        "F": figures,
        "bottlenecks": model.bottlenecks,
        "first": {g: first_bottleneck(model, g) for g in growth[1:]},
        "growth": growth,
        "meta": meta,
        "vol": model.volumes,
    }
    body = template.render(context)
    labels: Any = template.make_module(context)  # the template's {% set %} labels (section titles)
    lines = [body.rstrip(), "", f"## {labels.SOURCES}", ""]
    for i, key in enumerate(model.source_order, 1):
        bench, metric, label = UNITS[key]
        rec = model.records[(bench, metric)]
        lines.append(
            f"- **R{i}** `{bench} / {metric}` = {fmt_number(rec['value'], lang)} {rec['unit']} "
            f"({labels.BASELINE} {rec['baseline']} = {fmt_number(rec['baseline_value'], lang)}, "
            f"ratio {fmt_number(rec['ratio'], lang)}); `python -m bench --only {label}`"
        )
    lines += ["", f"## {labels.VOLUMES}", "", "`bench/volumes.yaml` [V]:", ""]
    lines += ["| | |", "|---|---|"]
    for path, v in _volume_rows(model.volumes):
        shown = ", ".join(fmt_number(float(x), lang) for x in v) if isinstance(v, list) else fmt_number(float(v), lang)
        lines.append(f"| `{path}` | {shown} |")
    missing = model.missing
    lines += ["", f"## {labels.MISSING}", ""]
    if missing:
        lines.append(labels.MISSING_INTRO)
        lines.append("")
        for key in missing:
            bench, metric, label = UNITS[key]
            lines.append(f"- `{bench} / {metric}` (`python -m bench --only {label}`)")
    else:
        lines.append(labels.NONE_MISSING)
    return "\n".join(lines) + "\n"


def header(lang: str) -> str:
    return (
        "<!-- Rendered by `python -m bench scale` (make scale) from bench/results/reference.json, "
        f"bench/volumes.yaml and bench/scale/{lang}.md.j2. Do not edit: `make check` fails when stale. -->\n"
    )


def pages(reference: Path = REFERENCE, volumes: Path = VOLUMES) -> dict[str, tuple[str, list[str]]]:
    """lang -> (page text, missing UNITS keys)."""
    records, meta = load_snapshot(reference)
    vol = load_volumes(volumes)
    out = {}
    for lang in LANGS:
        model = compute(records, vol)
        out[lang] = (header(lang) + render(model, lang, meta), model.missing)
    return out


def doc_path(lang: str, docs: Path | None = None) -> Path:
    return (docs or ROOT / "docs") / lang / "scale.md"


def render_all(docs: Path | None = None, reference: Path = REFERENCE) -> list[tuple[Path, list[str]]]:
    written = []
    for lang, (text, missing) in pages(reference).items():
        path = doc_path(lang, docs)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, "utf-8")
        written.append((path, missing))
    return written


def check_all(docs: Path | None = None, reference: Path = REFERENCE) -> list[str]:
    """One line per committed page that differs from what the snapshot and the volumes render."""
    stale = []
    for lang, (text, _missing) in pages(reference).items():
        path = doc_path(lang, docs)
        if not path.exists():
            stale.append(f"{path}: missing")
        elif path.read_text("utf-8") != text:
            stale.append(f"{path}: stale")
    return stale
