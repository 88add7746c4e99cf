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
from typing import Annotated, Any, Literal

from pydantic import Field

from aitasks.platform.registry import MODEL_NAME_PATTERN
from aitasks.runtime.retry import SERVICE_RETRY, RetryPolicy
from aitasks.runtime.task import (
    InputArtifact,
    Metric,
    OutputArtifact,
    PublishLocation,
    TaskContext,
    TaskModel,
    ai_task,
)

#: Index names: the directory under ``<root>/indexes/``.
INDEX_NAME_PATTERN = r"^[a-z][a-z0-9_-]{0,62}$"
#: File of a published index version listing the (user, track) pairs already played.
SEEN_FILE = "seen.parquet"


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


@ai_task(name="index.build", version="1.0.0", retry=RetryPolicy(max_attempts=2))
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
    from aitasks.recommendation_update.index import IndexConfig, build_index, require_quality, tune_and_check
    from aitasks.runtime.bundle import open_bundle, publish_bundle

    cfg = IndexConfig(
        backend=params.backend,
        m=params.m,
        ef_construction=params.ef_construction,
        k=params.k,
        recall_floor=params.recall_floor,
        target_recall=max(params.target_recall, params.recall_floor),
        sample_queries=params.sample_queries,
        seed=params.seed,
    )
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
