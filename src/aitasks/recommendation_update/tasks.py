"""Platform tasks of the recommendation-update family: build the ANN index, publish it.

The index is built from the item tower's embeddings of the catalog snapshot, tuned and checked
against exact search on real user queries (the held-out users' embeddings), and published into a
versioned layout with an atomically switched ``CURRENT`` pointer.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal

from pydantic import Field

from aitasks.platform.registry import MODEL_NAME_PATTERN
from aitasks.runtime.retry import SERVICE_RETRY, RetryPolicy
from aitasks.runtime.task import (
    AsOfTime,
    InputArtifact,
    LogicalTimeParams,
    Metric,
    OutputArtifact,
    PublishLocation,
    Runtime,
    TaskContext,
    TaskModel,
    ai_task,
    current_hour,
)

#: Index names: the directory under ``<root>/indexes/``.
INDEX_NAME_PATTERN = r"^[a-z][a-z0-9_-]{0,62}$"
#: File of a published index version listing the (user, track) pairs already played.
SEEN_FILE = "seen.parquet"


if TYPE_CHECKING:
    from aitasks.recommendation_update.index import IndexConfig


class BuildIndexParams(TaskModel):
    model_uri: InputArtifact = Field(description="Model bundle (its MANIFEST.json).")
    training_set_uri: InputArtifact = Field(description="Training-set bundle: catalog snapshot and user queries.")
    backend: Literal["hnswlib", "voyager"] = Field(default="hnswlib", description="HNSW implementation.")
    m: int = Field(default=16, ge=2, le=128, description="HNSW graph degree.")
    ef_construction: int = Field(default=200, ge=8, le=4096, description="HNSW build beam width.")
    k: int = Field(default=10, ge=1, le=1000, description="k of the recall check.")
    recall_floor: float = Field(default=0.95, gt=0, le=1, description="Refuse to publish below this recall@k.")
    target_recall: float = Field(default=0.97, gt=0, le=1, description="ef_search is tuned to reach this.")
    sample_queries: int = Field(default=1000, ge=10, le=1_000_000, description="User queries in the check.")
    seed: int = Field(default=0, ge=0, le=2**31 - 1, description="Seed of the query sample.")


def _index_config(params: BuildIndexParams | RefreshIndexParams) -> IndexConfig:
    """The index build and recall-check settings of ``index.build`` and of ``index.refresh``'s rebuilds
    (``target_recall`` never below the floor)."""
    from aitasks.recommendation_update.index import IndexConfig

    return IndexConfig(
        backend=params.backend,
        m=params.m,
        ef_construction=params.ef_construction,
        k=params.k,
        recall_floor=params.recall_floor,
        target_recall=max(params.target_recall, params.recall_floor),
        sample_queries=params.sample_queries,
        seed=params.seed,
    )


class BuildIndexResult(TaskModel):
    index_uri: OutputArtifact
    backend: str
    count: Annotated[int, Metric(name="items")]
    dim: int
    ef_search: Annotated[int, Metric()]
    recall_at_k: Annotated[float, Metric()]
    k: int
    queries: int
    recall_ladder: list[tuple[int, float]]

    def artifact_metadata(self, field: str) -> dict[str, Any]:
        return {"backend": self.backend, "ef_search": self.ef_search}


@ai_task(name="index.build", version="1.1.0", retry=RetryPolicy(max_attempts=2))
def build_index_task(params: BuildIndexParams, ctx: TaskContext) -> BuildIndexResult:
    """Build the HNSW index of track embeddings and check its recall against exact search.

    EN: Embeds the catalog snapshot with the model's item tower and builds an inner-product HNSW index
    (hnswlib by default, Voyager as an alternative). Samples real user queries (the held-out users'
    embeddings), computes their exact top-k by brute force, tunes ef_search to the smallest value that
    reaches the target recall and refuses the index (error, nothing published) when recall@k stays below
    the floor (default 0.95).
    FR: Plonge l'instantané du catalogue avec la tour titre du modèle et construit un index HNSW en produit
    scalaire (hnswlib par défaut, Voyager en alternative). Échantillonne de vraies requêtes d'auditeurs
    (les plongements des auditeurs réservés), calcule leur top-k exact par force brute, règle ef_search
    sur la plus petite valeur qui atteint le rappel visé et refuse l'index (erreur, rien n'est publié)
    quand le recall@k reste sous le plancher (0,95 par défaut).
    DE: Bettet den Katalogstand mit dem Titel-Turm des Modells ein und baut einen HNSW-Index für das
    Skalarprodukt (standardmäßig hnswlib, alternativ Voyager). Zieht echte Hörer-Anfragen (die Embeddings
    der zurückgehaltenen Hörer), berechnet ihr exaktes Top-k per Brute Force, stellt ef_search auf den
    kleinsten Wert, der den Ziel-Recall erreicht, und verweigert den Index (Fehler, nichts
    veröffentlicht), wenn recall@k unter der Untergrenze bleibt (standardmäßig 0,95).
    """
    from aitasks.model_training.recommender import embed_for_holdout, load_holdout
    from aitasks.recommendation_update.index import build_index, require_quality, tune_and_check
    from aitasks.runtime.bundle import open_bundle, publish_bundle

    cfg = _index_config(params)
    with (
        open_bundle(params.training_set_uri, ctx.storage, kind="training_set") as (ts_dir, _),
        open_bundle(params.model_uri, ctx.storage, kind="model") as (model_dir, model_manifest),
        tempfile.TemporaryDirectory(prefix="aitasks-index-") as tmp,
    ):
        holdout = load_holdout(ts_dir, exclude_seen=False)
        queries, items = embed_for_holdout(model_dir, ts_dir, holdout)
        index = build_index(items, holdout.item_ids, cfg)
        report = tune_and_check(index, items, queries, cfg)
        require_quality(report)
        out = Path(tmp)
        index.save(out)
        shutil.copyfile(ts_dir / "history.parquet", out / SEEN_FILE)
        # The tower inputs of every indexed track: the hourly refresh tells changed tracks by them.
        _write_track_snapshot(model_dir, ts_dir, out)
        (out / "recall.json").write_text(report.model_dump_json(indent=2), "utf-8")
        uri = publish_bundle(
            ctx.storage,
            out,
            ctx.output_uri("index"),
            kind="index",
            meta={
                "backend": cfg.backend,
                "m": cfg.m,
                "ef_construction": cfg.ef_construction,
                "ef_search": report.ef,
                "recall_at_k": report.recall_at_k,
                "k": report.k,
                "dim": index.dim,
                "count": index.size,
                "model_sha": model_manifest["files"].get("model.safetensors", ""),
            },
        )
    ctx.log.info("index.built", count=index.size, ef=report.ef, recall_at_k=round(report.recall_at_k, 4))
    return BuildIndexResult(
        index_uri=uri,
        backend=cfg.backend,
        count=index.size,
        dim=index.dim,
        ef_search=report.ef,
        recall_at_k=report.recall_at_k,
        k=report.k,
        queries=report.queries,
        recall_ladder=[(int(e), float(r)) for e, r in report.ladder],
    )


def _write_track_snapshot(model_dir: Path, ts_dir: Path, out: Path) -> None:
    """``tracks.parquet``: the catalog's item-tower inputs as the model saw them (its genre vocabulary)."""
    import polars as pl

    from aitasks.model_training.dataset import align_genres
    from aitasks.model_training.recommender import read_vocabularies
    from aitasks.model_training.two_tower import load_model
    from aitasks.recommendation_update.refresh import TRACKS_FILE, track_snapshot

    model, _, _ = load_model(model_dir)
    items = pl.read_parquet(ts_dir / "items.parquet")
    model_vocab, set_vocab = read_vocabularies(model_dir), read_vocabularies(ts_dir)
    if model_vocab is not None and set_vocab is not None:
        items = align_genres(items, source=set_vocab.genres, target=model_vocab.genres)
    track_snapshot(items, model.config.spec).write_parquet(out / TRACKS_FILE)


class PublishIndexParams(TaskModel):
    index_uri: InputArtifact = Field(description="Index bundle from index.build (its MANIFEST.json).")
    name: str = Field(default="reco-tracks", pattern=INDEX_NAME_PATTERN, description="Published index name.")
    model_name: str = Field(default="reco-two-tower", pattern=MODEL_NAME_PATTERN, description="Registered model.")
    model_version: int = Field(ge=1, description="Model version whose item tower made the embeddings.")
    root: PublishLocation = Field(
        default="",
        description="Publish root (local dir or gs://) inside the storage root or AITASKS_PUBLISH_ROOTS; "
        "empty: the storage root.",
    )


class PublishIndexResult(TaskModel):
    name: str
    version: int
    uri: str
    created: bool
    recall_at_k: float
    model_version: int


@ai_task(name="index.publish", version="1.0.0", retry=SERVICE_RETRY, deadline_s=3600)
def publish_index_task(params: PublishIndexParams, ctx: TaskContext) -> PublishIndexResult:
    """Publish the index as a new immutable version and switch `CURRENT` to it atomically.

    EN: Writes `<root>/indexes/<name>/v<N>/` (index, id map, already-played pairs, manifest with the model
    version, recall and checksums) so that no reader ever sees a half-written version, then moves the
    `CURRENT` pointer with a compare-and-swap. Publishing identical content again creates no version;
    `aitasks index rollback` moves the pointer back. The root must lie inside the storage root or
    AITASKS_PUBLISH_ROOTS. Each publish first removes what killed publishers left (temp directories,
    abandoned claims) untouched for AITASKS_INDEX_SWEEP_AFTER_S; `aitasks index prune` drops old versions.
    FR: Écrit `<root>/indexes/<name>/v<N>/` (index, table des identifiants, paires déjà écoutées, manifeste
    avec la version du modèle, le rappel et les sommes de contrôle) sans qu'aucun lecteur ne voie jamais
    une version à moitié écrite, puis déplace le pointeur `CURRENT` par compare-and-swap. Republier un
    contenu identique ne crée pas de version ; `aitasks index rollback` ramène le pointeur en arrière. La
    racine doit se trouver dans la racine de stockage ou dans AITASKS_PUBLISH_ROOTS. Chaque publication
    supprime d'abord ce que des publications tuées ont laissé (répertoires temporaires, réservations
    abandonnées) intact depuis AITASKS_INDEX_SWEEP_AFTER_S ; `aitasks index prune` retire les anciennes
    versions.
    DE: Schreibt `<root>/indexes/<name>/v<N>/` (Index, Id-Zuordnung, bereits gehörte Paare, Manifest mit
    Modellversion, Recall und Prüfsummen), sodass kein Leser je eine halb geschriebene Version sieht, und
    setzt dann den Zeiger `CURRENT` per Compare-and-Swap um. Identische Inhalte erneut zu veröffentlichen
    erzeugt keine Version; `aitasks index rollback` setzt den Zeiger zurück. Die Wurzel muss in der
    Speicherwurzel oder in AITASKS_PUBLISH_ROOTS liegen. Jede Veröffentlichung entfernt zuerst, was
    abgebrochene Veröffentlichungen hinterlassen haben (temporäre Verzeichnisse, verwaiste Reservierungen)
    und seit AITASKS_INDEX_SWEEP_AFTER_S unverändert ist; `aitasks index prune` löscht alte Versionen.
    """
    from aitasks.recommendation_update.publish import publish_index
    from aitasks.runtime.bundle import open_bundle

    root = params.root or ctx.settings.storage_root
    with open_bundle(params.index_uri, ctx.storage, kind="index") as (index_dir, manifest):
        meta = manifest["meta"]
        recall = json.loads((index_dir / "recall.json").read_text("utf-8"))
        run = ctx.runtime.run
        result = publish_index(
            root,
            params.name,
            index_dir,
            backend=str(meta["backend"]),
            dim=int(meta["dim"]),
            m=int(meta["m"]),
            ef_construction=int(meta["ef_construction"]),
            ef_search=int(meta["ef_search"]),
            recall_at_k=float(recall["recall_at_k"]),
            k=int(meta["k"]),
            model_name=params.model_name,
            model_version=params.model_version,
            extra={"trace_id": ctx.trace_id, "run_id": run.run_id, "git_revision": run.git_revision},
            sweep_after_s=ctx.settings.index_sweep_after_s,
        )
    if result.swept:
        ctx.log.info("index.swept", name=params.name, removed=result.swept, note="killed publishers' leftovers")
    ctx.log.info("index.published", name=params.name, version=result.version, created=result.created)
    if result.created:
        # Index staleness alerts read this; re-publishing identical content is not a refresh.
        ctx.runtime.telemetry.outcome.index_published.labels(params.name).set_to_current_time()
    return PublishIndexResult(
        name=params.name,
        version=result.version,
        uri=result.uri,
        created=result.created,
        recall_at_k=float(recall["recall_at_k"]),
        model_version=params.model_version,
    )


# ------------------------------------------------------------------------------------------ refresh
class RefreshIndexParams(LogicalTimeParams):
    events_uri: InputArtifact = Field(description="Validated events (Parquet): recent listeners and played pairs.")
    catalog_uri: InputArtifact = Field(description="Validated track catalog (Parquet): what the index must hold.")
    user_features_uri: InputArtifact = Field(description="User feature snapshots (Feast offline source).")
    track_features_uri: InputArtifact = Field(description="Track feature snapshots (Feast offline source).")
    project: str = Field(default="aitasks", pattern=r"^[a-z][a-z0-9_]{0,62}$", description="Feast project name.")
    online_store: Literal["sqlite", "redis"] = Field(default="sqlite", description="Feast online store kind.")
    as_of: AsOfTime = Field(
        default_factory=current_hour,
        description="Features valid at this time; listeners active in the hours before it. Empty: the run's "
        "scheduled time, else its creation time, else the current hour (UTC).",
    )
    name: str = Field(default="reco-tracks", pattern=INDEX_NAME_PATTERN, description="Published index to refresh.")
    model_name: str = Field(default="reco-two-tower", pattern=MODEL_NAME_PATTERN, description="Registered model.")
    root: PublishLocation = Field(
        default="", description="Publish root the index lives under (as index.publish); empty: the storage root."
    )
    active_hours: int = Field(default=24, ge=1, le=24 * 28, description="Listeners active this long are queries.")
    backend: Literal["hnswlib", "voyager"] = Field(default="hnswlib", description="HNSW implementation of a rebuild.")
    m: int = Field(default=16, ge=2, le=128, description="HNSW graph degree.")
    ef_construction: int = Field(default=200, ge=8, le=4096, description="HNSW build beam width.")
    k: int = Field(default=10, ge=1, le=1000, description="k of the recall check.")
    recall_floor: float = Field(default=0.95, gt=0, le=1, description="Refuse to publish below this recall@k.")
    target_recall: float = Field(default=0.97, gt=0, le=1, description="ef_search is tuned to reach this.")
    sample_queries: int = Field(default=1000, ge=10, le=1_000_000, description="Listener queries in the check.")
    seed: int = Field(default=0, ge=0, le=2**31 - 1, description="Seed of the query sample and of a rebuild.")
    max_deleted_fraction: float = Field(
        default=0.2, ge=0, le=1, description="Rebuild when more than this share of stored rows would be deleted ones."
    )
    max_recall_drift: float = Field(
        default=0.02, ge=0, le=1, description="Rebuild when recall@k falls more than this below the last build's."
    )
    max_changed_fraction: float = Field(
        default=0.5, ge=0, le=1, description="Rebuild when more than this share of the catalog is new or changed."
    )
    force_rebuild: bool = Field(default=False, description="Rebuild from the whole catalog whatever the thresholds.")


class RefreshIndexResult(TaskModel):
    index_uri: OutputArtifact
    model_version: int = Field(description="The champion whose towers embedded tracks and listeners.")
    mode: Literal["incremental", "rebuild"]
    reasons: list[str]
    base_version: int | None
    added: Annotated[int, Metric()]
    updated: Annotated[int, Metric()]
    restored: Annotated[int, Metric()]
    deleted: Annotated[int, Metric()]
    unchanged: Annotated[int, Metric()]
    live: Annotated[int, Metric(name="items")]
    stored: int
    deleted_fraction: Annotated[float, Metric()]
    recall_at_k: Annotated[float, Metric()]
    build_recall_at_k: float
    recall_drift: Annotated[float, Metric()]
    ef_search: Annotated[int, Metric()]
    k: int
    queries: int
    active_users: int

    def artifact_metadata(self, field: str) -> dict[str, Any]:
        return {"mode": self.mode, "ef_search": self.ef_search, "base_version": self.base_version or 0}


def _refresh_state(params: Any, rt: Runtime) -> dict[str, Any]:
    """The champion and the published version a refresh starts from: either moving means new work."""
    from aitasks.platform.registry import get_version, registry_config
    from aitasks.recommendation_update.publish import read_pointer

    champion = get_version(registry_config(rt.settings, model_name=params.model_name), alias="champion")
    pointer = read_pointer(params.root or rt.settings.storage_root, params.name)
    return {
        "champion": None if champion is None else champion.version,
        "current": None if pointer is None else pointer.version,
    }


@ai_task(name="index.refresh", version="1.0.0", retry=RetryPolicy(max_attempts=2), state=_refresh_state)
def refresh_index_task(params: RefreshIndexParams, ctx: TaskContext) -> RefreshIndexResult:
    """Refresh the live ANN index from fresh features: add new tracks, update changed ones, delete gone ones.

    EN: With the current `champion` model, embeds the catalog tracks that are new or whose features
    changed since the published version (read from Feast at the run's logical time) and adds or updates
    them in place in the HNSW graph; tracks that left the catalog are marked deleted and never returned.
    Rebuilds from the whole catalog instead when nothing was published, the champion changed, more than
    `max_changed_fraction` of the catalog changed, more than `max_deleted_fraction` of the stored rows
    would be deleted ones, or recall@k drifted more than `max_recall_drift` below the last full build.
    Recall is checked against brute force on the embeddings of recently active listeners; below the
    floor nothing is published. A damaged current version is a clear error (roll back, or
    `force_rebuild`). The output is an index bundle for `index.publish`.
    FR: Avec le modèle `champion` actuel, plonge les titres du catalogue nouveaux ou dont les
    caractéristiques ont changé depuis la version publiée (lues dans Feast à l'heure logique du run) et
    les ajoute ou les met à jour sur place dans le graphe HNSW ; les titres sortis du catalogue sont
    marqués supprimés et ne sont plus jamais renvoyés. Reconstruit à partir de tout le catalogue quand
    rien n'est publié, que le champion a changé, que plus de `max_changed_fraction` du catalogue a changé,
    que plus de `max_deleted_fraction` des lignes stockées seraient supprimées, ou que le recall@k a dérivé
    de plus de `max_recall_drift` sous la dernière construction complète. Le rappel est vérifié contre la
    force brute sur les plongements des auditeurs récemment actifs ; sous le plancher rien n'est publié.
    Une version courante endommagée donne une erreur claire (rollback, ou `force_rebuild`). La sortie est
    un lot d'index pour `index.publish`.
    DE: Bettet mit dem aktuellen `champion`-Modell die Katalogtitel ein, die neu sind oder deren Merkmale
    sich seit der veröffentlichten Version geändert haben (aus Feast zur logischen Zeit des Laufs gelesen),
    und fügt sie im HNSW-Graphen hinzu oder aktualisiert sie an Ort und Stelle; Titel, die den Katalog
    verlassen haben, werden als gelöscht markiert und nie mehr geliefert. Baut stattdessen aus dem ganzen
    Katalog neu, wenn nichts veröffentlicht ist, der Champion wechselte, mehr als `max_changed_fraction`
    des Katalogs sich änderte, mehr als `max_deleted_fraction` der gespeicherten Zeilen gelöschte wären oder
    recall@k mehr als `max_recall_drift` unter den letzten vollständigen Bau fiel. Der Recall wird gegen
    Brute Force auf den Embeddings kürzlich aktiver Hörer geprüft; unter der Untergrenze wird nichts
    veröffentlicht. Eine beschädigte aktuelle Version ist ein klarer Fehler (Rollback oder
    `force_rebuild`). Die Ausgabe ist ein Index-Bündel für `index.publish`.
    """
    from aitasks.platform.registry import download_model, get_version, registry_config
    from aitasks.recommendation_update import refresh as rf
    from aitasks.runtime.bundle import publish_bundle
    from aitasks.runtime.storage import local_copy

    root = params.root or ctx.settings.storage_root
    reg = registry_config(ctx.settings, model_name=params.model_name)
    champion = get_version(reg, alias="champion")
    if champion is None:
        raise rf.NoChampionError(params.model_name)
    cfg = rf.RefreshConfig(
        index=_index_config(params),
        max_deleted_fraction=params.max_deleted_fraction,
        max_recall_drift=params.max_recall_drift,
        max_changed_fraction=params.max_changed_fraction,
        force_rebuild=params.force_rebuild,
    )
    with (
        local_copy(params.events_uri, ctx.storage) as events,
        local_copy(params.catalog_uri, ctx.storage) as catalog,
        local_copy(params.user_features_uri, ctx.storage) as user_features,
        local_copy(params.track_features_uri, ctx.storage) as track_features,
        tempfile.TemporaryDirectory(prefix="aitasks-refresh-") as tmp,
    ):
        # The previous version first: a damaged one fails the step before any expensive work.
        prev = rf.open_previous(root, params.name, force_rebuild=params.force_rebuild, log=ctx.log)
        _, model_dir = download_model(reg, version=champion.version, dest=Path(tmp) / "champion")
        inputs = rf.champion_inputs(
            ctx.settings,
            model_dir,
            project=params.project,
            online_store=params.online_store,
            events=events,
            catalog=catalog,
            user_features=user_features,
            track_features=track_features,
            as_of=params.as_of,
            active_hours=params.active_hours,
            max_users=max(params.sample_queries * 5, 1000),
        )
        index, report = rf.refresh_index(
            inputs.tracks,
            inputs.embed_items,
            inputs.queries,
            cfg,
            previous=prev.previous if prev else None,
            index=prev.index if prev else None,
            snapshot=prev.snapshot if prev else None,
            model_version=champion.version,
        )
        out = Path(tmp) / "index"
        seen = rf.merge_seen(prev.seen if prev else None, inputs.played)
        ef_search, k, recall = report.ef_search, report.k, report.recall_at_k
        if prev is not None and rf.unchanged(report):
            # Nothing moved: publish the same index (and so no new version unless new plays arrived).
            rf.reuse_version_files(prev, out, seen=seen)
            ef_search, k, recall = prev.ef_search, prev.k, prev.previous.recall_at_k
        else:
            rf.write_version_files(out, index, report, tracks=inputs.tracks, seen=seen)
        uri = publish_bundle(
            ctx.storage,
            out,
            ctx.output_uri("index"),
            kind="index",
            meta={
                "backend": index.backend,
                "m": prev.previous.m if prev and report.mode == "incremental" else cfg.index.m,
                "ef_construction": (
                    prev.previous.ef_construction
                    if prev and report.mode == "incremental"
                    else cfg.index.ef_construction
                ),
                "ef_search": ef_search,
                "recall_at_k": recall,
                "k": k,
                "dim": index.dim,
                "count": index.size,
                "model_sha": inputs.model_sha,
                "mode": report.mode,
            },
        )
    ctx.log.info(
        "index.refreshed",
        name=params.name,
        mode=report.mode,
        reasons=report.reasons,
        added=report.added,
        updated=report.updated,
        deleted=report.deleted,
        recall_at_k=round(report.recall_at_k, 4),
    )
    return RefreshIndexResult(
        index_uri=uri,
        model_version=champion.version,
        mode=report.mode,
        reasons=report.reasons,
        base_version=report.base_version,
        added=report.added,
        updated=report.updated,
        restored=report.restored,
        deleted=report.deleted,
        unchanged=report.unchanged,
        live=report.live,
        stored=report.stored,
        deleted_fraction=report.deleted_fraction,
        recall_at_k=report.recall_at_k,
        build_recall_at_k=report.build_recall_at_k,
        recall_drift=report.recall_drift,
        ef_search=report.ef_search,
        k=report.k,
        queries=report.queries,
        active_users=inputs.active_users,
    )
