"""Platform tasks of the data-processing family (registered on import).

Each task is a thin, typed shell around a pure function of this package: it resolves URIs to local
files, calls the function, publishes the outputs atomically under the call's keyed work directory
and returns typed results. Heavy imports happen inside the task bodies.
"""

from __future__ import annotations

import re
import shutil
from datetime import UTC, date, datetime, time, timedelta
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import AwareDatetime, Field, ValidationInfo, field_validator

from aitasks.runtime.retry import SERVICE_RETRY, RetryPolicy
from aitasks.runtime.storage import local_copy
from aitasks.runtime.task import (
    AsOfTime,
    EmptyIsNone,
    InputArtifact,
    LogicalTimeParams,
    Metric,
    OutputArtifact,
    Runtime,
    TaskContext,
    TaskModel,
    ai_task,
    current_hour,
)

_IDENT = re.compile(r"^[a-z][a-z0-9_]{0,62}$")

# ------------------------------------------------------------------------------------ generate


class GenerateDataParams(TaskModel):
    seed: int = Field(ge=0, le=2**32 - 1, description="Random seed; the same seed gives the same bytes.")
    users: int = Field(default=2_000, ge=1, le=10_000_000, description="Number of listeners.")
    tracks: int = Field(default=5_000, ge=1, le=10_000_000, description="Catalog size.")
    events: int = Field(default=200_000, ge=1, le=200_000_000, description="Number of listening events.")
    days: int = Field(default=30, ge=2, le=366, description="Length of the event window in days.")
    start_date: date = Field(default=date(2026, 10, 1), description="First day of the window (UTC).")
    fmt: Literal["parquet", "csv", "jsonl"] = Field(default="parquet", description="Output file format.")
    dirty_rows: int = Field(
        default=0, ge=0, le=10_000_000, description="Extra contract-breaking rows (the ETL must quarantine them)."
    )


class GenerateDataResult(TaskModel):
    events_uri: OutputArtifact
    tracks_uri: OutputArtifact
    events: int
    tracks: int
    events_sha256: str
    tracks_sha256: str
    contract_version: str


@ai_task(name="data.generate", version="1.1.0")
def generate_data_task(params: GenerateDataParams, ctx: TaskContext) -> GenerateDataResult:
    """Generate a synthetic catalog and listening events that follow the data contract.

    EN: Writes a deterministic synthetic track catalog and listening events (users with latent tastes,
    genre-clustered tracks, Zipf popularity, sessions and skips) so that a personalised model can beat
    popularity. The same seed gives byte-identical files.
    FR: Écrit un catalogue de titres et des événements d'écoute synthétiques et déterministes (auditeurs
    aux goûts latents, titres regroupés par genre, popularité de Zipf, sessions et titres passés), de sorte
    qu'un modèle personnalisé puisse battre la popularité. La même graine donne des fichiers identiques
    à l'octet près.
    DE: Schreibt einen deterministischen synthetischen Titelkatalog und Hörereignisse (Hörer mit latentem
    Geschmack, nach Genre gruppierte Titel, Zipf-Popularität, Sitzungen und übersprungene Titel), sodass ein
    personalisiertes Modell die Popularität schlagen kann. Derselbe Seed ergibt byte-identische Dateien.
    """
    import tempfile

    from aitasks.data_processing.contract import CONTRACT_VERSION
    from aitasks.data_processing.generator import generate_dataset

    ext = params.fmt
    events_uri = ctx.output_uri(f"events.{ext}")
    tracks_uri = ctx.output_uri(f"tracks.{ext}")
    with tempfile.TemporaryDirectory(prefix="aitasks-gen-") as tmp:
        ds = generate_dataset(
            Path(tmp),
            seed=params.seed,
            users=params.users,
            tracks=params.tracks,
            events=params.events,
            start=datetime.combine(params.start_date, time(), tzinfo=UTC),
            days=params.days,
            fmt=params.fmt,
            dirty_rows=min(params.dirty_rows, params.events),
        )
        for src, uri in ((ds.events_path, events_uri), (ds.tracks_path, tracks_uri)):
            ctx.storage.put_file(Path(src), uri)
    ctx.log.info("data.generated", events=ds.events, tracks=ds.tracks)
    return GenerateDataResult(
        events_uri=events_uri,
        tracks_uri=tracks_uri,
        events=ds.events,
        tracks=ds.tracks,
        events_sha256=ds.events_sha256,
        tracks_sha256=ds.tracks_sha256,
        contract_version=CONTRACT_VERSION,
    )


class SourceDataParams(TaskModel):
    events_uri: Annotated[InputArtifact | None, EmptyIsNone] = Field(
        default=None, description="Events to process (local path or gs://). None or empty: generate synthetic data."
    )
    catalog_uri: Annotated[InputArtifact | None, EmptyIsNone] = Field(
        default=None, description="Track catalog; required with events_uri."
    )
    synthetic: GenerateDataParams = Field(
        default_factory=lambda: GenerateDataParams(seed=7), description="Generator settings when no URIs are given."
    )

    @field_validator("catalog_uri")
    @classmethod
    def _both_or_neither(cls, v: str | None, info: ValidationInfo) -> str | None:
        if (v is None) != (info.data.get("events_uri") is None):
            raise ValueError("give both events_uri and catalog_uri, or neither (synthetic data)")
        return v


class SourceDataResult(TaskModel):
    events_uri: OutputArtifact
    tracks_uri: OutputArtifact
    synthetic: bool
    events_sha256: str
    tracks_sha256: str

    def artifact_metadata(self, field: str) -> dict[str, Any]:
        sha = self.events_sha256 if field == "events_uri" else self.tracks_sha256
        return {"sha256": sha, "synthetic": self.synthetic}


@ai_task(name="data.source", version="1.1.0", retry=RetryPolicy(max_attempts=3))
def source_data_task(params: SourceDataParams, ctx: TaskContext) -> SourceDataResult:
    """Bring the run's input data into its storage: external files as they are, or synthetic data.

    EN: With events and catalog URIs, copies both files into the run's storage (verified by content
    hash) so later steps read a fixed snapshot; without them, generates synthetic data with the
    generator settings (refused in production). Either way the outputs carry their sha256.
    FR: Avec les URI des événements et du catalogue, copie les deux fichiers dans le stockage de
    l'exécution (vérifiés par empreinte de contenu) pour que les étapes suivantes lisent un instantané
    fixe ; sans elles, génère des données synthétiques selon les réglages du générateur (refusé en
    production). Dans les deux
    cas, les sorties portent leur sha256.
    DE: Mit URIs für Ereignisse und Katalog kopiert die Aufgabe beide Dateien in den Speicher des Laufs
    (per Inhalts-Hash geprüft), damit spätere Schritte einen festen Stand lesen; ohne sie erzeugt sie
    synthetische Daten nach den Generator-Einstellungen (in Produktion verweigert). In beiden Fällen tragen
    die Ausgaben ihren sha256.
    """
    from aitasks.runtime.hashing import sha256_file

    if params.events_uri is None or params.catalog_uri is None:
        ctx.settings.refuse_synthetic("events_uri/catalog_uri")
        gen = generate_data_task.fn(params.synthetic, ctx)
        return SourceDataResult(
            events_uri=gen.events_uri,
            tracks_uri=gen.tracks_uri,
            synthetic=True,
            events_sha256=gen.events_sha256,
            tracks_sha256=gen.tracks_sha256,
        )
    out: dict[str, str] = {}
    for name, uri in (("events", params.events_uri), ("tracks", params.catalog_uri)):
        target = ctx.output_uri(f"{name}{Path(uri).suffix or '.bin'}")
        with local_copy(uri, ctx.storage) as src, ctx.publish(target) as dst:
            shutil.copyfile(src, dst)
            out[f"{name}_sha256"] = sha256_file(dst)
        out[f"{name}_uri"] = target
    return SourceDataResult(synthetic=False, **out)  # type: ignore[arg-type]


# -------------------------------------------------------------------------------------- ingest


class IngestParams(LogicalTimeParams):
    events_uri: InputArtifact = Field(description="Listening events: Parquet, CSV or JSONL (local path or gs://).")
    catalog_uri: InputArtifact = Field(description="Track catalog (same formats).")
    as_of: AsOfTime = Field(
        default_factory=current_hour,
        description="Reference time: events later than this (+5 min skew) are quarantined. Empty: the run's "
        "scheduled time, else its creation time, else the current hour (UTC).",
    )
    chunk_rows: int = Field(default=65_536, ge=1_000, le=4_000_000, description="Rows per chunk (memory bound).")
    fmt: Literal["auto", "parquet", "csv", "jsonl"] = Field(default="auto", description="Input format.")


class IngestResult(TaskModel):
    good_uri: OutputArtifact
    quarantine_uri: OutputArtifact
    #: The validated catalog as Parquet, whatever format it came in (CSV, JSON Lines, Parquet).
    catalog_uri: OutputArtifact
    input_rows: Annotated[int, Metric()]
    good_rows: Annotated[int, Metric()]
    quarantined_rows: Annotated[int, Metric()]
    reasons: Annotated[dict[str, int], Metric(prefix="quarantined.")]
    duplicate_event_ids: int

    def artifact_metadata(self, field: str) -> dict[str, Any]:
        if field == "quarantine_uri":
            return {"rows": self.quarantined_rows, "reasons": self.reasons}
        if field == "catalog_uri":
            return {"format": "parquet"}
        return {"rows": self.good_rows}


@ai_task(name="data.ingest", version="1.1.0", retry=RetryPolicy(max_attempts=3))
def ingest_events_task(params: IngestParams, ctx: TaskContext) -> IngestResult:
    """Validate listening events in chunks; write good rows and a quarantine file with a reason per row.

    EN: Reads events in chunks (memory stays flat), validates every row against the data contract
    (types, ranges, nulls, unknown tracks, duplicate event ids across the whole input, future
    timestamps), writes the good rows and a quarantine file with one reason per bad row. Counts
    reconcile: input = good + quarantined. The validated catalog is written as Parquet, whatever format
    it came in, for every later step. A file that is not what it claims fails with a clear error.
    FR: Lit les événements par blocs (mémoire constante), valide chaque ligne selon le contrat de données
    (types, bornes, valeurs nulles, titres inconnus, identifiants d'événement en double sur toute
    l'entrée, horodatages futurs), écrit les lignes valides et un fichier de quarantaine avec un motif
    par ligne rejetée. Les comptes concordent : entrée = valides + quarantaine. Un fichier qui n'est pas
    ce qu'il prétend être échoue avec une erreur claire. Le catalogue validé est écrit en Parquet, quel
    que soit son format d'entrée, pour toutes les étapes suivantes.
    DE: Liest Ereignisse blockweise (konstanter Speicher), prüft jede Zeile gegen den Datenvertrag
    (Typen, Wertebereiche, Nullwerte, unbekannte Titel, doppelte Ereignis-IDs über die gesamte Eingabe,
    Zeitstempel in der Zukunft) und schreibt die gültigen Zeilen sowie eine Quarantänedatei mit einem
    Grund je abgewiesener Zeile. Die Zählungen gehen auf: Eingabe = gültig + Quarantäne. Eine Datei, die
    nicht ist, was sie vorgibt, scheitert mit einer klaren Fehlermeldung. Der geprüfte Katalog wird, in
    welchem Format er auch kam, als Parquet für alle folgenden Schritte geschrieben.
    """
    from aitasks.data_processing.etl import ingest_events

    good_uri = ctx.output_uri("events.good.parquet")
    quarantine_uri = ctx.output_uri("events.quarantine.parquet")
    catalog_uri = ctx.output_uri("catalog.parquet")
    with (
        local_copy(params.events_uri, ctx.storage) as src,
        local_copy(params.catalog_uri, ctx.storage) as catalog,
        ctx.publish(good_uri) as good,
        ctx.publish(quarantine_uri) as quarantine,
        ctx.publish(catalog_uri) as catalog_out,
    ):
        report = ingest_events(
            src,
            catalog,
            good,
            quarantine,
            now=params.as_of,
            chunk_rows=params.chunk_rows,
            fmt=params.fmt,
            source_uri=params.events_uri,
            catalog_out=catalog_out,
        )
    ctx.log.info(
        "data.ingested",
        input_rows=report.input_rows,
        good_rows=report.good_rows,
        quarantined_rows=report.quarantined_rows,
        reasons=report.reasons,
    )
    return IngestResult(
        good_uri=good_uri,
        quarantine_uri=quarantine_uri,
        catalog_uri=catalog_uri,
        input_rows=report.input_rows,
        good_rows=report.good_rows,
        quarantined_rows=report.quarantined_rows,
        reasons=dict(report.reasons),
        duplicate_event_ids=report.duplicate_event_ids,
    )


# ------------------------------------------------------------------------------------ features


class FeaturesParams(TaskModel):
    events_uri: InputArtifact = Field(description="Validated events (Parquet, contract schema).")
    catalog_uri: InputArtifact = Field(description="Track catalog.")
    lookback_days: int = Field(default=28, ge=1, le=365, description="Window of the windowed features.")
    half_life_days: float = Field(default=14.0, gt=0, le=365, description="Recency half-life of genre affinity.")


class FeaturesResult(TaskModel):
    user_features_uri: OutputArtifact
    track_features_uri: OutputArtifact
    #: The run's genre and context vocabularies (``vocabulary.json``); also in both files' metadata.
    vocabulary_uri: OutputArtifact
    user_rows: Annotated[int, Metric(name="user_feature_rows")]
    track_rows: Annotated[int, Metric(name="track_feature_rows")]
    snapshots: Annotated[list[str], Metric()]
    genres: Annotated[int, Metric()] = Field(description="Genres with their own id (the rest share `other`).")
    contexts: Annotated[int, Metric()] = Field(description="Contexts seen in the events.")
    genre_vocabulary: str = Field(description="Version (sha256) of the genre vocabulary.")

    @property
    def last_snapshot(self) -> str:
        """The newest snapshot time (ISO): where materialization ends."""
        return self.snapshots[-1]

    def artifact_metadata(self, field: str) -> dict[str, Any]:
        if field == "vocabulary_uri":
            return {"genres": self.genres, "contexts": self.contexts, "genre_vocabulary": self.genre_vocabulary}
        rows = self.user_rows if field == "user_features_uri" else self.track_rows
        return {"rows": rows, "genre_vocabulary": self.genre_vocabulary}


@ai_task(name="data.features", version="2.0.0")
def compute_features_task(params: FeaturesParams, ctx: TaskContext) -> FeaturesResult:
    """Compute point-in-time daily user and track feature snapshots.

    EN: Computes daily snapshots of user features (play counts, skip rate, recency-weighted genre
    affinity, active days, recency) and track features (popularity, skip rate, listeners, catalog
    attributes, audio placeholders) with polars. A snapshot at time T uses only events strictly before T.
    Genres and contexts come from the data: a versioned vocabulary (genres ranked by catalog tracks,
    spellings folded to one key) is written beside the features; the affinity is the share of the 16
    largest genres plus one `other` share, so the feature columns stay fixed as genres come and go.
    FR: Calcule des instantanés quotidiens des caractéristiques des auditeurs (nombre d'écoutes, taux de
    titres passés, affinité de genre pondérée par la récence, jours actifs, récence) et des titres
    (popularité, taux de titres passés, auditeurs, attributs du catalogue, emplacements audio) avec
    polars. Un instantané à l'instant T n'utilise que les événements strictement antérieurs à T. Genres
    et contextes viennent des données : un vocabulaire versionné (genres classés par nombre de titres,
    graphies ramenées à une clé) est écrit à côté des caractéristiques ; l'affinité est la part des 16
    plus grands genres plus une part `other`, si bien que les colonnes restent fixes quand les genres changent.
    DE: Berechnet tägliche Momentaufnahmen der Hörermerkmale (Wiedergaben, Überspringrate, nach Aktualität
    gewichtete Genre-Affinität, aktive Tage, Aktualität) und der Titelmerkmale (Popularität,
    Überspringrate, Hörer, Katalogattribute, Audio-Platzhalter) mit polars. Eine Momentaufnahme zum
    Zeitpunkt T nutzt nur Ereignisse strikt vor T. Genres und Kontexte kommen aus den Daten: ein
    versioniertes Vokabular (Genres nach Zahl der Titel geordnet, Schreibweisen auf einen Schlüssel
    zurückgeführt) wird neben die Merkmale geschrieben; die Affinität ist der Anteil der 16 größten
    Genres plus ein Anteil `other`, sodass die Merkmalsspalten fest bleiben, wenn Genres kommen und gehen.
    """
    from aitasks.data_processing.features import build_vocabularies, compute_track_features, compute_user_features

    user_uri = ctx.output_uri("user_features.parquet")
    track_uri = ctx.output_uri("track_features.parquet")
    vocab_uri = ctx.output_uri("vocabulary.json")
    with (
        local_copy(params.events_uri, ctx.storage) as events,
        local_copy(params.catalog_uri, ctx.storage) as catalog,
        ctx.publish(user_uri) as user_out,
        ctx.publish(track_uri) as track_out,
        ctx.publish(vocab_uri) as vocab_out,
    ):
        vocab = build_vocabularies(events, catalog)
        vocab_out.write_text(vocab.to_json(), "utf-8")
        users = compute_user_features(
            events,
            catalog,
            user_out,
            lookback_days=params.lookback_days,
            half_life_days=params.half_life_days,
            vocabularies=vocab,
        )
        tracks = compute_track_features(
            events, catalog, track_out, lookback_days=params.lookback_days, vocabularies=vocab
        )
    ctx.log.info(
        "data.features",
        user_rows=users.rows,
        track_rows=tracks.rows,
        snapshots=len(users.snapshots),
        genres=len(vocab.genres.terms),
        genre_vocabulary=vocab.genres.version[:16],
    )
    return FeaturesResult(
        user_features_uri=user_uri,
        track_features_uri=track_uri,
        vocabulary_uri=vocab_uri,
        user_rows=users.rows,
        track_rows=tracks.rows,
        snapshots=list(users.snapshots),
        genres=len(vocab.genres.terms),
        contexts=len(vocab.contexts.terms),
        genre_vocabulary=vocab.genres.version,
    )


# --------------------------------------------------------------------------------- materialize


class MaterializeParams(TaskModel):
    user_features_uri: InputArtifact = Field(description="User feature snapshots (Parquet).")
    track_features_uri: InputArtifact = Field(description="Track feature snapshots (Parquet).")
    end: AwareDatetime = Field(description="Materialize feature rows up to this time.")
    project: str = Field(default="aitasks", description="Feast project name.")
    online_store: Literal["sqlite", "redis"] = Field(
        default="sqlite", description="Online store; the Redis address comes from settings (AITASKS_REDIS_URL)."
    )

    @field_validator("project")
    @classmethod
    def _ident(cls, v: str) -> str:
        if not _IDENT.match(v):
            raise ValueError("must be lowercase letters, digits and underscores, starting with a letter")
        return v


class MaterializeResult(TaskModel):
    repo_uri: str
    feature_views: Annotated[list[str], Metric()]
    feature_services: list[str]
    materialized_until_epoch_s: Annotated[float, Metric()]
    #: Entities this call wrote to the online store (0 when everything was already there).
    entities_written: Annotated[int, Metric()] = 0
    #: The online store did not hold what the registry said (lost, restarted empty, half-written): rewritten.
    online_rewritten: bool = False


def _online_store_intact(params: MaterializeParams, result: MaterializeResult, rt: Runtime) -> str | None:
    """A committed materialization is reused only while the online store still holds it (its sentinel)."""
    from aitasks.platform import feature_store as fs

    cfg = fs.config_for(
        settings=rt.settings,
        project=params.project,
        user_features=params.user_features_uri,
        track_features=params.track_features_uri,
        online_store=params.online_store,
    )
    sentinel = fs.read_sentinel(cfg)
    if sentinel is None:
        return "online store holds no completeness sentinel (data lost, or a materialize died part way)"
    if float(sentinel.get("end_epoch", 0.0)) < result.materialized_until_epoch_s - 1e-3:
        return "online store holds an older materialization than the committed result"
    return None


@ai_task(
    name="feast.materialize",
    version="1.1.0",
    retry=SERVICE_RETRY,
    deadline_s=3600,
    verify=_online_store_intact,
)
def materialize_features_task(params: MaterializeParams, ctx: TaskContext) -> MaterializeResult:
    """Apply the Feast feature repository and materialize features incrementally to the online store.

    EN: Builds the Feast repository (entities user and track, feature views, the reco_training and
    reco_serving feature services) over the feature snapshots, applies it and materializes
    incrementally up to `end` into the online store (sqlite by default, Redis by configuration).
    Unreachable Redis is a retryable error. A sentinel written last marks the store complete; an online
    store that lost it (restarted empty, half-written) is rewritten, also on an idempotent hit.
    FR: Construit le dépôt Feast (entités user et track, vues de caractéristiques, services
    reco_training et reco_serving) sur les instantanés de caractéristiques, l'applique et matérialise de
    façon incrémentale jusqu'à `end` dans le magasin en ligne (sqlite par défaut, Redis sur
    configuration). Un Redis injoignable est une erreur transitoire, donc reprise. Une sentinelle écrite
    en dernier marque le magasin complet ; un magasin en ligne qui l'a perdue (redémarré vide, écrit à
    moitié) est réécrit, y compris lors d'un résultat idempotent.
    DE: Baut das Feast-Repository (Entitäten user und track, Feature-Views, die Feature-Services
    reco_training und reco_serving) über den Merkmals-Momentaufnahmen, wendet es an und materialisiert
    inkrementell bis `end` in den Online-Store (standardmäßig sqlite, per Konfiguration Redis). Ein
    unerreichbares Redis ist ein vorübergehender Fehler und wird wiederholt. Ein zuletzt geschriebener
    Sentinel markiert den Store als vollständig; ein Online-Store, der ihn verloren hat (leer neu
    gestartet, halb geschrieben), wird neu geschrieben, auch bei einem idempotenten Treffer.
    """
    from aitasks.platform import feature_store as fs

    cfg = fs.config_for(
        settings=ctx.settings,
        project=params.project,
        user_features=params.user_features_uri,
        track_features=params.track_features_uri,
        online_store=params.online_store,
    )
    # One local copy of the offline files (downloads from gs://) serves the apply checks and the reads.
    with fs.local_offline(cfg) as offline:
        applied = fs.apply_repo(cfg, offline=offline)
        mat = fs.materialize(cfg, params.end, offline=offline)
    ctx.log.info(
        "feast.materialized",
        project=params.project,
        online_store=params.online_store,
        entities_written=mat.entities_written,
        rewritten=mat.rewritten,
        rewrite_reason=mat.rewrite_reason,
    )
    return MaterializeResult(
        repo_uri=cfg.resolved_data_root(),
        feature_views=list(applied.feature_views),
        feature_services=list(applied.feature_services),
        materialized_until_epoch_s=mat.end.timestamp(),
        entities_written=mat.entities_written,
        online_rewritten=mat.rewritten,
    )


# -------------------------------------------------------------------------------------- drift


class DriftParams(TaskModel):
    features_uri: InputArtifact = Field(description="Feature snapshots (Parquet with event_timestamp).")
    split_at: Annotated[AwareDatetime | None, EmptyIsNone] = Field(
        default=None,
        description="Rows before this time are the training reference, rows at or after it the new batch. "
        "None: the newest snapshot is the new batch.",
    )
    warmup_days: int = Field(
        default=28,
        ge=0,
        le=365,
        description="Reference rows from the first snapshot's first N days are left out: windowed features "
        "there have less history than the lookback and would read as drift. Use the features' lookback.",
    )
    psi_threshold: float = Field(default=0.2, gt=0, le=10, description="PSI above this flags drift.")
    ks_pvalue_threshold: float = Field(default=0.01, gt=0, lt=1, description="KS p-value below this flags drift.")


class DriftResult(TaskModel):
    report_json_uri: OutputArtifact
    report_markdown_uri: OutputArtifact
    drifted_features: Annotated[list[str], Metric()]
    any_drift: bool
    max_psi: Annotated[float, Metric()]
    reference_rows: int
    current_rows: int


@ai_task(name="data.drift", version="1.0.0")
def drift_check_task(params: DriftParams, ctx: TaskContext) -> DriftResult:
    """Compare a new batch's feature distributions with the training snapshot (PSI and KS per feature).

    EN: Splits feature snapshots into the training reference and the new batch, computes the population
    stability index and the Kolmogorov-Smirnov test per numeric feature, flags drift by configurable
    thresholds and writes a JSON and a Markdown report.
    FR: Sépare les instantanés de caractéristiques en référence d'entraînement et nouveau lot, calcule
    l'indice de stabilité de population et le test de Kolmogorov-Smirnov pour chaque caractéristique
    numérique, signale la dérive selon des seuils configurables et écrit un rapport JSON et Markdown.
    DE: Teilt Merkmals-Momentaufnahmen in die Trainingsreferenz und den neuen Stapel, berechnet je
    numerischem Merkmal den Population Stability Index und den Kolmogorow-Smirnow-Test, meldet Drift
    nach konfigurierbaren Schwellen und schreibt einen JSON- und einen Markdown-Bericht.
    """
    import polars as pl

    from aitasks.data_processing.drift import compute_drift
    from aitasks.runtime.errors import DataFormatError

    with local_copy(params.features_uri, ctx.storage) as path:
        frame = pl.read_parquet(path)
    if "event_timestamp" not in frame.columns:
        raise DataFormatError(params.features_uri, "missing column: event_timestamp")
    split = params.split_at or frame["event_timestamp"].max()
    warm = frame["event_timestamp"].min() + timedelta(days=params.warmup_days)  # type: ignore[operator]
    reference = frame.filter((pl.col("event_timestamp") < split) & (pl.col("event_timestamp") >= warm))
    current = frame.filter(pl.col("event_timestamp") >= split)
    if reference.height == 0 or current.height == 0:
        raise DataFormatError(
            params.features_uri,
            f"split at {split!s} leaves {reference.height} reference and {current.height} current rows; need both",
        )
    report = compute_drift(
        reference, current, psi_threshold=params.psi_threshold, ks_pvalue_threshold=params.ks_pvalue_threshold
    )
    json_uri = ctx.output_uri("drift.json")
    md_uri = ctx.output_uri("drift.md")
    with ctx.publish(json_uri) as p:
        p.write_text(report.model_dump_json(indent=2), "utf-8")
    with ctx.publish(md_uri) as p:
        p.write_text(report.to_markdown(), "utf-8")
    psis = [f.psi for f in report.features if f.psi is not None]
    pipeline = ctx.runtime.run.pipeline or "unknown"
    ctx.runtime.telemetry.outcome.drift_max_psi.labels(pipeline).set(max(psis) if psis else 0.0)
    ctx.runtime.telemetry.outcome.drift_features.labels(pipeline).set(len(report.drifted_features))
    return DriftResult(
        report_json_uri=json_uri,
        report_markdown_uri=md_uri,
        drifted_features=list(report.drifted_features),
        any_drift=report.any_drift,
        max_psi=max(psis) if psis else 0.0,
        reference_rows=reference.height,
        current_rows=current.height,
    )
