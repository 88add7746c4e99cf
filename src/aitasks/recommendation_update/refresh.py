"""Incremental refresh of the live ANN index: embed what changed, update in place, rebuild only when due.

One refresh takes the published version ``CURRENT`` points at (its index, the feature snapshot of
every indexed track, the already-played pairs) and today's catalog with fresh track features:

* **new** tracks (not in the index, or deleted earlier and back) and **changed** tracks (any tower
  input differs from the snapshot) are embedded with the champion's item tower and added or updated
  in place (hnswlib ``add_items``; the graph grows with ``resize_index``);
* tracks that left the catalog are **marked deleted** (hnswlib ``mark_deleted``): never returned
  again, their rows reclaimed by the next rebuild;
* the updated index is tuned and checked against brute force on the embeddings of recently active
  listeners (:func:`~aitasks.recommendation_update.index.tune_and_check`), as a full build is.

It **rebuilds** from the whole catalog instead when an incremental update cannot be trusted or would
cost more than it saves, and says why (:attr:`RefreshReport.reasons`):

* nothing was published yet, ``force_rebuild``, the champion (hence the embedding space) or the
  backend/graph settings changed, or the previous version has no feature snapshot;
* more than ``max_changed_fraction`` of the catalog is new or changed (updating most of a graph in
  place is slower than building it and leaves it worse);
* after the update more than ``max_deleted_fraction`` of the stored rows would be deleted ones;
* the updated index's recall@k fell more than ``max_recall_drift`` below the recall its last full
  build reached, or below the floor.

Pure functions of frames, vectors and an embedding callable: the task (:mod:`.tasks`) brings Feast,
the registry and storage; tests bring small deterministic embedders.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, Literal

import numpy as np
import numpy.typing as npt
import polars as pl
from pydantic import BaseModel, ConfigDict, Field

from aitasks.recommendation_update.index import (
    AnnIndex,
    IndexConfig,
    RecallReport,
    build_index,
    require_quality,
    tune_and_check,
)
from aitasks.runtime.errors import DataFormatError, FatalError, FieldIssue, InvalidInputError

if TYPE_CHECKING:
    from aitasks.runtime.settings import Settings

_TASK: Final = "index.refresh"
#: Companion file of a published version: the tower inputs of every indexed track when it was embedded.
TRACKS_FILE: Final = "tracks.parquet"
#: Companion file of a published version written by a refresh: what it did and its recall baseline.
REFRESH_FILE: Final = "refresh.json"
ID_COLUMN: Final = "track_id"

#: Embeds the rows of a track frame (``track_id`` + tower inputs), ``float32 [rows, dim]`` in row order.
Embedder = Callable[[pl.DataFrame], npt.NDArray[np.float32]]


class RefreshConfig(BaseModel):
    """When to update in place and when to rebuild; how to build and check.

    Attributes:
        index: Graph and recall-check settings (a rebuild uses them; an update keeps the graph's own).
        max_deleted_fraction: Rebuild when more than this share of the stored rows would be deleted ones.
        max_recall_drift: Rebuild when recall@k falls more than this below the last full build's.
        max_changed_fraction: Rebuild when more than this share of the catalog is new or changed.
        force_rebuild: Rebuild whatever the thresholds say.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    index: IndexConfig = Field(default_factory=IndexConfig)
    max_deleted_fraction: float = Field(default=0.2, ge=0, le=1)
    max_recall_drift: float = Field(default=0.02, ge=0, le=1)
    max_changed_fraction: float = Field(default=0.5, ge=0, le=1)
    force_rebuild: bool = False


class Previous(BaseModel):
    """What the refresh needs to know about the version it starts from (besides its files)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    version: int = Field(ge=1)
    model_version: int = Field(ge=0)
    backend: str
    m: int
    ef_construction: int
    recall_at_k: float
    #: Recall@k of the last full build in this version's lineage (the drift baseline).
    build_recall_at_k: float


class RefreshReport(BaseModel):
    """What one refresh did."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    mode: Literal["incremental", "rebuild"]
    reasons: list[str] = Field(description="Why a rebuild (empty for an incremental update).")
    base_version: int | None = Field(description="The published version updated (None: nothing was published).")
    catalog: int
    added: int = 0
    updated: int = 0
    restored: int = 0
    deleted: int = 0
    unchanged: int = 0
    stored: int
    live: int
    deleted_fraction: float
    recall_at_k: float
    k: int
    ef_search: int
    queries: int
    build_recall_at_k: float = Field(description="Recall@k of the last full build: the drift baseline.")
    recall_drift: float
    recall_ladder: list[tuple[int, float]]


class Diff(BaseModel):
    """Catalog against the previous snapshot, as track ids."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    new: list[str]
    changed: list[str]
    removed: list[str]
    unchanged: int


def check_catalog(frame: pl.DataFrame, columns: Sequence[str]) -> pl.DataFrame:
    """``frame`` reduced to ``track_id`` + ``columns``, sorted by id; InvalidInputError when unusable."""
    missing = [c for c in (ID_COLUMN, *columns) if c not in frame.columns]
    if missing:
        raise InvalidInputError(_TASK, [FieldIssue("catalog", f"missing columns: {', '.join(missing)}")])
    out = frame.select(ID_COLUMN, *columns)
    issues = []
    if out.height == 0:
        issues.append(FieldIssue("catalog", "no tracks"))
    if out[ID_COLUMN].null_count() or (out[ID_COLUMN].cast(pl.Utf8).str.len_chars() == 0).any():
        issues.append(FieldIssue("catalog.track_id", "empty or missing track ids"))
    dupes = out.height - out[ID_COLUMN].n_unique()
    if dupes:
        issues.append(FieldIssue("catalog.track_id", f"{dupes} duplicate track id(s)"))
    if issues:
        raise InvalidInputError(_TASK, issues)
    return out.sort(ID_COLUMN)


def diff_catalog(previous: pl.DataFrame, current: pl.DataFrame, live_ids: set[str]) -> Diff:
    """New, changed and removed tracks of ``current`` against ``previous`` (same columns, null-aware).

    ``live_ids`` are the ids the index can return now: a track in the snapshot but deleted from the
    index is new again when it comes back.
    """
    columns = [c for c in current.columns if c != ID_COLUMN]
    prev = previous.select(ID_COLUMN, *columns).filter(pl.col(ID_COLUMN).is_in(list(live_ids)))
    joined = current.join(
        prev.with_columns(__known=pl.lit(True)), on=ID_COLUMN, how="left", suffix="__prev", coalesce=True
    ).with_columns(pl.col("__known").fill_null(False))
    same = [pl.col(c).ne_missing(pl.col(f"{c}__prev")) for c in columns]
    differs = pl.any_horizontal(*same) if same else pl.lit(False)
    flagged = joined.select(ID_COLUMN, "__known", differs.alias("__differs"))
    new = flagged.filter(~pl.col("__known"))[ID_COLUMN].to_list()
    changed = flagged.filter(pl.col("__known") & pl.col("__differs"))[ID_COLUMN].to_list()
    removed = sorted(live_ids - set(current[ID_COLUMN].to_list()))
    return Diff(new=new, changed=changed, removed=removed, unchanged=current.height - len(new) - len(changed))


def read_previous_snapshot(directory: Path) -> pl.DataFrame | None:
    """The previous version's track snapshot, None when it has none (a version made by ``index.build``)."""
    path = directory / TRACKS_FILE
    if not path.is_file():
        return None
    try:
        frame = pl.read_parquet(path)
    except Exception as exc:  # polars raises several types for a damaged file
        raise DataFormatError(str(path), f"unreadable track snapshot: {exc}") from None
    if ID_COLUMN not in frame.columns:
        raise DataFormatError(str(path), f"track snapshot lacks {ID_COLUMN}")
    return frame


def build_recall_baseline(directory: Path, fallback: float) -> float:
    """Recall@k of the last full build in the lineage of the version in ``directory``."""
    path = directory / REFRESH_FILE
    if not path.is_file():
        return fallback  # made by index.build: its own recall is the build's
    try:
        return float(json.loads(path.read_text("utf-8"))["build_recall_at_k"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise DataFormatError(str(path), f"unreadable refresh record: {exc}") from None


def _embed(embed: Embedder, frame: pl.DataFrame) -> npt.NDArray[np.float32]:
    if frame.height == 0:
        return np.zeros((0, 0), dtype=np.float32)
    vecs = np.asarray(embed(frame), dtype=np.float32)
    if vecs.ndim != 2 or vecs.shape[0] != frame.height:
        raise DataFormatError("embedder", f"returned shape {vecs.shape} for {frame.height} tracks")
    return vecs


def _build(
    catalog: pl.DataFrame, embed: Embedder, queries: npt.ArrayLike, cfg: RefreshConfig
) -> tuple[AnnIndex, RecallReport]:
    vectors = _embed(embed, catalog)
    index = build_index(vectors, catalog[ID_COLUMN].to_list(), cfg.index)
    report = tune_and_check(index, vectors, queries, cfg.index)
    require_quality(report)
    return index, report


def refresh_index(
    catalog: pl.DataFrame,
    embed: Embedder,
    queries: npt.ArrayLike,
    cfg: RefreshConfig,
    *,
    previous: Previous | None = None,
    index: AnnIndex | None = None,
    snapshot: pl.DataFrame | None = None,
    model_version: int,
) -> tuple[AnnIndex, RefreshReport]:
    """Update ``index`` (the previous version, loaded) to ``catalog``, or rebuild when due.

    Args:
        catalog: ``track_id`` + the tower inputs of every track in today's catalog (fresh features).
        embed: The champion's item tower over such rows.
        queries: Embeddings of recently active listeners (the recall check's queries).
        cfg: Thresholds and index settings.
        previous: The version ``index`` was loaded from (None: nothing was published yet).
        index: That version's index (modified in place when updated incrementally).
        snapshot: That version's track snapshot (same columns as ``catalog``), None when it has none.
        model_version: The champion's version (a different one than ``previous``'s means a rebuild).

    Returns:
        The index to publish and the report.

    Raises:
        InvalidInputError: An unusable catalog (no tracks, missing or duplicate ids).
        IndexQualityError: Even a full rebuild misses the recall floor: nothing to publish.
    """
    columns = [c for c in catalog.columns if c != ID_COLUMN]
    catalog = check_catalog(catalog, columns)
    reasons: list[str] = []
    if previous is None or index is None:
        reasons.append("no published index yet")
    else:
        if cfg.force_rebuild:
            reasons.append("force_rebuild")
        if previous.model_version != model_version:
            reasons.append(f"champion changed: v{previous.model_version} -> v{model_version} (new embedding space)")
        if index.backend != "hnswlib":
            reasons.append(f"{index.backend} has no in-place update here")
        if index.backend != cfg.index.backend or (previous.m, previous.ef_construction) != (
            cfg.index.m,
            cfg.index.ef_construction,
        ):
            reasons.append("backend or graph settings changed")
        if snapshot is None:
            reasons.append(f"v{previous.version} has no track snapshot ({TRACKS_FILE}) to tell changed tracks")
        elif sorted(c for c in snapshot.columns if c != ID_COLUMN) != sorted(columns):
            reasons.append("the tower inputs changed (snapshot columns differ)")
    base = None if previous is None else previous.version
    if not reasons:
        assert index is not None and previous is not None and snapshot is not None
        diff = diff_catalog(snapshot, catalog, {index.ids[r] for r in index.live_rows().tolist()})
        touched = len(diff.new) + len(diff.changed)
        if touched > cfg.max_changed_fraction * catalog.height:
            reasons.append(
                f"{touched} of {catalog.height} tracks new or changed (> max_changed_fraction "
                f"{cfg.max_changed_fraction:g}): a rebuild is cheaper"
            )
        else:
            # Deleted rows after the update: those deleted now, minus the ones that come back.
            back = sum(1 for t in diff.new if (r := index.row_of(t)) is not None and index.is_deleted(r))
            stored = index.size + len(diff.new) - back
            deleted_after = len(index.deleted_rows) - back + len(diff.removed)
            if deleted_after > cfg.max_deleted_fraction * stored:
                reasons.append(
                    f"{deleted_after} of {stored} stored rows would be deleted ones "
                    f"(> max_deleted_fraction {cfg.max_deleted_fraction:g})"
                )
    if not reasons:
        assert index is not None and previous is not None
        todo = catalog.filter(pl.col(ID_COLUMN).is_in([*diff.new, *diff.changed]))
        vectors = _embed(embed, todo)
        if vectors.size and vectors.shape[1] != index.dim:
            raise DataFormatError("embedder", f"dim {vectors.shape[1]} != index dim {index.dim}")
        upd = index.update(vectors, todo[ID_COLUMN].to_list(), num_threads=cfg.index.num_threads)
        dele = index.delete(diff.removed) if diff.removed else None
        report = tune_and_check(index, index.vectors(), queries, cfg.index)
        drift = previous.build_recall_at_k - report.recall_at_k
        if not report.passed:
            reasons.append(f"recall@{report.k} {report.recall_at_k:.4f} after the update is below the floor")
        elif drift > cfg.max_recall_drift:
            reasons.append(
                f"recall@{report.k} {report.recall_at_k:.4f} drifted {drift:.4f} below the last build's "
                f"{previous.build_recall_at_k:.4f} (> max_recall_drift {cfg.max_recall_drift:g})"
            )
        else:
            return index, RefreshReport(
                mode="incremental",
                reasons=[],
                base_version=base,
                catalog=catalog.height,
                added=upd.added,
                updated=upd.updated,
                restored=upd.restored,
                deleted=0 if dele is None else dele.deleted,
                unchanged=diff.unchanged,
                stored=index.size,
                live=index.live,
                deleted_fraction=index.deleted_fraction,
                recall_at_k=report.recall_at_k,
                k=report.k,
                ef_search=report.ef,
                queries=report.queries,
                build_recall_at_k=previous.build_recall_at_k,
                recall_drift=max(0.0, drift),
                recall_ladder=report.ladder,
            )
    built, report = _build(catalog, embed, queries, cfg)
    return built, RefreshReport(
        mode="rebuild",
        reasons=reasons,
        base_version=base,
        catalog=catalog.height,
        added=catalog.height,
        stored=built.size,
        live=built.live,
        deleted_fraction=0.0,
        recall_at_k=report.recall_at_k,
        k=report.k,
        ef_search=report.ef,
        queries=report.queries,
        build_recall_at_k=report.recall_at_k,
        recall_drift=0.0,
        recall_ladder=report.ladder,
    )


def merge_seen(previous: pl.DataFrame | None, events: pl.DataFrame) -> pl.DataFrame:
    """Already-played ``(user_id, track_id, plays)`` pairs: the previous version's plus those in ``events``.

    ``plays`` is the larger of the two counts (the windows overlap, so they are not added).
    """
    fresh = events.group_by("user_id", "track_id").agg(plays=pl.len().cast(pl.Int64))
    if previous is not None and previous.height:
        prev = previous.select("user_id", "track_id", pl.col("plays").cast(pl.Int64))
        fresh = pl.concat([prev, fresh]).group_by("user_id", "track_id").agg(pl.col("plays").max())
    return fresh.sort("user_id", "track_id")


# ------------------------------------------------------------------------------- task plumbing
class NoChampionError(FatalError):
    """The registry has no ``champion`` to embed with: the training pipeline has not promoted one yet."""

    kind = "no_champion"

    def __init__(self, model_name: str) -> None:
        super().__init__(
            f"model {model_name!r} has no 'champion' alias: run reco-training (or `aitasks model promote`) first; "
            "nothing was refreshed"
        )


@dataclass(frozen=True)
class PreviousVersion:
    """The published version a refresh starts from, loaded and verified."""

    previous: Previous
    index: AnnIndex
    snapshot: pl.DataFrame | None
    seen: pl.DataFrame | None
    directory: Path
    ef_search: int
    k: int


def open_previous(root: str, name: str, *, force_rebuild: bool, log: Any = None) -> PreviousVersion | None:
    """The version ``CURRENT`` points at (every file checked against its manifest), None when none exists.

    Raises:
        DataFormatError: The current version (pointer, manifest, a file, the snapshot) is damaged; the
            message says so and what to do. With ``force_rebuild`` a damaged version is skipped instead
            (logged) and the refresh rebuilds from the catalog.
    """
    from aitasks.recommendation_update.publish import NoPublishedIndexError, load_current
    from aitasks.recommendation_update.tasks import SEEN_FILE

    try:
        index, manifest, directory = load_current(root, name)
        snapshot = read_previous_snapshot(directory)
        baseline = build_recall_baseline(directory, manifest.recall_at_k)
        seen = None
        if (directory / SEEN_FILE).is_file():
            try:
                seen = pl.read_parquet(directory / SEEN_FILE, columns=["user_id", "track_id", "plays"])
            except Exception as exc:  # polars raises several types for a damaged file
                raise DataFormatError(str(directory / SEEN_FILE), f"unreadable played pairs: {exc}") from None
    except NoPublishedIndexError:
        return None
    except DataFormatError as exc:
        if force_rebuild:
            if log is not None:
                log.warning("index.refresh_damaged_current", index=name, error=str(exc), note="force_rebuild")
            return None
        raise DataFormatError(
            exc.uri,
            f"{exc.problem}. The current version of index {name!r} is damaged, so nothing was refreshed or "
            f"published: roll back to a good version (`aitasks index rollback {name}`) or rerun with "
            "force_rebuild=true",
        ) from None
    previous = Previous(
        version=manifest.version,
        model_version=manifest.model_version,
        backend=manifest.backend,
        m=manifest.m,
        ef_construction=manifest.ef_construction,
        recall_at_k=manifest.recall_at_k,
        build_recall_at_k=baseline,
    )
    return PreviousVersion(
        previous=previous,
        index=index,
        snapshot=snapshot,
        seen=seen,
        directory=directory,
        ef_search=manifest.ef_search,
        k=manifest.k,
    )


def track_snapshot(items: pl.DataFrame, spec: Any) -> pl.DataFrame:
    """``track_id`` + the item tower's inputs (``spec``: the model's feature spec), as a version records them.

    NaN and null both mean "no value" to the tower: one spelling (null), so the next diff is exact.
    """
    columns = [*spec.item_dense, *(c for c, _ in spec.item_categorical)]
    tracks = items.select(ID_COLUMN, *(pl.col(c) if c in items.columns else pl.lit(None).alias(c) for c in columns))
    return tracks.with_columns(pl.col(c).fill_nan(None) for c in columns if tracks[c].dtype.is_float()).sort(ID_COLUMN)


@dataclass(frozen=True)
class ChampionInputs:
    """Today's catalog as tower inputs, the champion's item tower, listener queries and played pairs."""

    tracks: pl.DataFrame
    embed_items: Embedder
    queries: npt.NDArray[np.float32]
    played: pl.DataFrame
    active_users: int
    model_sha: str


def _read_parquet(path: Path, columns: Sequence[str]) -> pl.DataFrame:
    try:
        frame = pl.read_parquet(path)
    except Exception as exc:  # polars raises several types for a non-Parquet file
        raise DataFormatError(str(path), f"not a readable Parquet file: {exc}") from None
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise DataFormatError(str(path), f"missing columns: {', '.join(missing)}")
    return frame.select(columns)


def champion_inputs(
    settings: Settings,
    model_dir: Path,
    *,
    project: str,
    online_store: Literal["sqlite", "redis"],
    events: Path,
    catalog: Path,
    user_features: Path,
    track_features: Path,
    as_of: datetime,
    active_hours: int,
    max_users: int,
) -> ChampionInputs:
    """Fresh Feast features at ``as_of`` for every catalog track and the recently active listeners.

    Listeners active in the ``active_hours`` before ``as_of`` (most recent first, at most
    ``max_users``) are the recall check's queries; when fewer than 10 were active, the most recent
    listeners of the whole event file are. Genre ids are re-expressed in the champion's vocabulary, so
    the snapshot and the embeddings speak the model's language.

    Raises:
        DataFormatError: Unreadable inputs or no listening events before ``as_of``.
    """
    from aitasks.model_training.dataset import align_genres, tower_inputs
    from aitasks.model_training.recommender import read_vocabularies
    from aitasks.model_training.training_set import read_feature_vocabularies
    from aitasks.model_training.two_tower import load_model
    from aitasks.platform import feature_store as fs
    from aitasks.runtime.hashing import sha256_file

    model, user_vocab, item_vocab = load_model(model_dir)
    spec = model.config.spec
    ev = _read_parquet(events, ("user_id", "track_id", "ts")).filter(pl.col("ts") < as_of)
    if ev.height == 0:
        raise DataFormatError(str(events), f"no listening events before {as_of.isoformat()}")
    cat = _read_parquet(catalog, (ID_COLUMN,)).unique().sort(ID_COLUMN)
    last = (
        ev.group_by("user_id").agg(pl.col("ts").max().alias("last")).sort(["last", "user_id"], descending=[True, False])
    )
    recent = last.filter(pl.col("last") >= as_of - timedelta(hours=active_hours))
    chosen = (recent if recent.height >= 10 else last).head(max_users)

    fcfg = fs.config_for(
        settings=settings,
        project=project,
        user_features=user_features,
        track_features=track_features,
        online_store=online_store,
    )
    fs.apply_repo(fcfg)  # idempotent; points the registry's offline sources at this step's files
    at = pl.lit(as_of).dt.convert_time_zone("UTC").dt.cast_time_unit("us")
    with fs.local_offline(fcfg) as local:
        store = fs.open_store(fcfg, check=False, offline=local)
        items_pd = fs.historical_features(
            fcfg, cat.with_columns(event_timestamp=at).to_pandas(), store=store, partial=True
        )
        users_pd = fs.historical_features(
            fcfg, chosen.select("user_id").with_columns(event_timestamp=at).to_pandas(), store=store, partial=True
        )
    items = pl.from_pandas(items_pd).drop("event_timestamp")
    users = pl.from_pandas(users_pd).drop("event_timestamp")
    model_vocab, set_vocab = read_vocabularies(model_dir), read_feature_vocabularies(user_features, track_features)
    if model_vocab is not None:
        items = align_genres(items, source=set_vocab.genres, target=model_vocab.genres)
        users = align_genres(users, source=set_vocab.genres, target=model_vocab.genres)
    tracks = track_snapshot(items, spec)

    def embed_items(frame: pl.DataFrame) -> npt.NDArray[np.float32]:
        inputs = tower_inputs(
            frame, id_column=ID_COLUMN, vocab=item_vocab, dense=spec.item_dense, categorical=spec.item_categorical
        )
        return np.asarray(model.embed_items(inputs), dtype=np.float32)

    queries = model.embed_users(
        tower_inputs(
            users, id_column="user_id", vocab=user_vocab, dense=spec.user_dense, categorical=spec.user_categorical
        )
    )
    weights = model_dir / "model.safetensors"
    return ChampionInputs(
        tracks=tracks,
        embed_items=embed_items,
        queries=np.asarray(queries, dtype=np.float32),
        played=ev.select("user_id", "track_id"),
        active_users=recent.height,
        model_sha=sha256_file(weights) if weights.is_file() else "",
    )


def write_version_files(
    out: Path, index: AnnIndex, report: RefreshReport, *, tracks: pl.DataFrame, seen: pl.DataFrame
) -> None:
    """Everything a published version holds: index, id map, track snapshot, played pairs, recall, refresh record."""
    from aitasks.recommendation_update.tasks import SEEN_FILE

    out.mkdir(parents=True, exist_ok=True)
    index.save(out)
    tracks.sort(ID_COLUMN).write_parquet(out / TRACKS_FILE)
    seen.write_parquet(out / SEEN_FILE)
    recall = RecallReport(
        recall_at_k=report.recall_at_k,
        k=report.k,
        ef=report.ef_search,
        queries=report.queries,
        ladder=report.recall_ladder,
        floor=0.0,
        passed=True,
    )
    (out / "recall.json").write_text(recall.model_dump_json(indent=2), "utf-8")
    (out / REFRESH_FILE).write_text(report.model_dump_json(indent=2), "utf-8")


def unchanged(report: RefreshReport) -> bool:
    """Whether an incremental refresh found nothing to add, update, restore or delete."""
    return report.mode == "incremental" and not (report.added or report.updated or report.restored or report.deleted)


def reuse_version_files(previous: PreviousVersion, out: Path, *, seen: pl.DataFrame) -> None:
    """The previous version's files, byte for byte, with the played pairs brought up to date.

    A refresh that changed nothing then publishes the same content (no new version), or, when only new
    plays arrived, a version that differs by its ``seen.parquet`` alone.
    """
    import shutil

    from aitasks.recommendation_update.index import IDS_FILE, INDEX_FILE
    from aitasks.recommendation_update.tasks import SEEN_FILE

    out.mkdir(parents=True, exist_ok=True)
    for name in (INDEX_FILE, IDS_FILE, TRACKS_FILE, REFRESH_FILE, "recall.json"):
        if (previous.directory / name).is_file():
            shutil.copyfile(previous.directory / name, out / name)
    if previous.seen is not None and previous.seen.equals(seen) and (previous.directory / SEEN_FILE).is_file():
        shutil.copyfile(previous.directory / SEEN_FILE, out / SEEN_FILE)
    else:
        seen.write_parquet(out / SEEN_FILE)
