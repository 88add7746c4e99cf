"""Platform tasks of the audio-analysis family.

``audio.list_catalog`` -> ``audio.analyze`` (one per shard, in parallel) -> ``audio.collect`` ->
``audio.anomalies`` -> ``audio.train_classifier`` / ``audio.classify`` -> ``audio.feast_write`` ->
``audio.report``. Every step's output is a bundle (files + ``MANIFEST.json`` with checksums) under
the run's storage root, so a step in another pod reads exactly what the previous one wrote.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Annotated, Any

from pydantic import Field, field_validator

from aitasks.audio_analysis.anomaly import RuleConfig
from aitasks.runtime.retry import RetryPolicy
from aitasks.runtime.task import (
    AsOfTime,
    InputArtifact,
    Metric,
    OutputArtifact,
    Runtime,
    TaskContext,
    TaskModel,
    ai_task,
    storage_of,
)

#: Registered name of the audio classifier in MLflow.
CLASSIFIER_NAME_PATTERN = r"^[a-z][a-z0-9_-]{0,62}$"
LISTING_FILE = "listing.json"


def _no_nul(value: str) -> str:
    if "\x00" in value:
        raise ValueError("must not contain NUL bytes")
    return value


# ------------------------------------------------------------------------------ list catalog


class ListCatalogParams(TaskModel):
    catalog_root: str = Field(min_length=1, description="Catalog root: a local directory or a gs:// prefix.")
    shards: int = Field(default=4, ge=1, le=256, description="Split the catalog into at most this many shards.")
    limit: int = Field(default=0, ge=0, description="Analyse only the first N files by key (0: all).")
    manifest_uri: str = Field(
        default="", description="Optional file listing the keys (paths under the root) to analyse, one per line."
    )

    _nul = field_validator("catalog_root", "manifest_uri")(_no_nul)


class ListCatalogResult(TaskModel):
    listing_uri: OutputArtifact
    tracks: Annotated[int, Metric()]
    refused: Annotated[int, Metric()]
    skipped_non_audio: Annotated[int, Metric()]
    shard_indices: list[int]

    def artifact_metadata(self, field: str) -> dict[str, Any]:
        return {"tracks": self.tracks}


def _catalog_state(params: Any, rt: Runtime) -> dict[str, Any]:
    """The catalog's current content (keys, sizes, modification times): new files mean a new listing."""
    from aitasks.runtime.hashing import sha256_json
    from aitasks.runtime.storage import is_gcs

    root = params.catalog_root
    manifest = (
        {"manifest": storage_of(params.manifest_uri, rt).content_hash(params.manifest_uri)}
        if getattr(params, "manifest_uri", "")
        else {}
    )
    if is_gcs(root):
        keys = sorted(storage_of(root, rt).list(root.rstrip("/") + "/"))
        return {"catalog": sha256_json(keys), **manifest}
    rows = []
    base = Path(root)
    for dirpath, _dirs, files in os.walk(base, followlinks=False):
        for name in files:
            p = Path(dirpath) / name
            try:
                st = p.lstat()
            except OSError:
                continue
            rows.append((p.relative_to(base).as_posix(), st.st_size, st.st_mtime_ns))
    return {"catalog": sha256_json(sorted(rows)), **manifest}


@ai_task(name="audio.list_catalog", version="1.0.0", retry=RetryPolicy(max_attempts=3), state=_catalog_state)
def list_catalog_task(params: ListCatalogParams, ctx: TaskContext) -> ListCatalogResult:
    """List the audio catalog, refuse unsafe paths and split it into shards.

    EN: Walks the catalog root (a directory or a gs:// prefix) without following links out of it,
    maps each audio file to its track id (the file stem), refuses links that escape the root, invalid
    or duplicate track ids (with a reason each), skips non-audio files and splits the rest into
    balanced shards for parallel analysis. With a manifest (one key under the root per line) only
    its files are listed; keys with ``..``, absolute paths and links out of the root are refused.
    FR: Parcourt la racine du catalogue (un répertoire ou un préfixe gs://) sans suivre les liens qui en
    sortent, associe chaque fichier audio à son identifiant de titre (le nom sans extension), refuse les
    liens qui s'échappent de la racine et les identifiants invalides ou en double (avec un motif
    chacun), ignore les fichiers non audio et répartit le reste en lots équilibrés pour l'analyse en
    parallèle. Avec un manifeste (une clé sous la racine par ligne), seuls ses fichiers sont listés ;
    les clés avec ``..``, les chemins absolus et les liens hors de la racine sont refusés.
    DE: Durchläuft die Katalogwurzel (ein Verzeichnis oder ein gs://-Präfix), ohne Links nach außen zu
    folgen, ordnet jeder Audiodatei ihre Titel-Id (den Dateinamen ohne Endung) zu, weist Links, die die
    Wurzel verlassen, sowie ungültige oder doppelte Titel-Ids ab (jeweils mit Grund), überspringt
    Nicht-Audio-Dateien und teilt den Rest in ausgewogene Shards für die parallele Analyse.
    Mit einem Manifest (ein Schlüssel unter der Wurzel pro Zeile) werden nur dessen Dateien gelistet;
    Schlüssel mit ``..``, absolute Pfade und Links nach außen werden abgewiesen.
    """
    from aitasks.audio_analysis.catalog import list_catalog, list_manifest, shard

    if params.manifest_uri:
        text = storage_of(params.manifest_uri, ctx.runtime).read_bytes(params.manifest_uri).decode("utf-8")
        listing = list_manifest(params.catalog_root, text, ctx.storage, limit=params.limit)
    else:
        listing = list_catalog(params.catalog_root, ctx.storage, limit=params.limit)
    shards = shard(listing.entries, params.shards)
    uri = ctx.output_uri(LISTING_FILE)
    payload = {"listing": listing.model_dump(mode="json"), "shards": [[e.key for e in s] for s in shards]}
    ctx.storage.write_bytes(uri, json.dumps(payload, indent=1).encode())
    ctx.log.info("audio.listed", tracks=len(listing.entries), refused=len(listing.refused), shards=len(shards))
    return ListCatalogResult(
        listing_uri=uri,
        tracks=len(listing.entries),
        refused=len(listing.refused),
        skipped_non_audio=listing.skipped_non_audio,
        shard_indices=list(range(len(shards))),
    )


# ----------------------------------------------------------------------------------- analyze


class AnalyzeAudioParams(TaskModel):
    listing_uri: InputArtifact = Field(description="Catalog listing from audio.list_catalog.")
    shard_index: int = Field(default=0, ge=0, description="Which shard of the listing to analyse.")
    sample_rate: int = Field(default=22050, ge=8000, le=96000, description="Analysis sample rate.")
    min_source_rate: int = Field(default=16000, ge=1, description="Lowest accepted file sample rate.")
    max_source_rate: int = Field(default=96000, ge=1, description="Highest accepted file sample rate.")
    max_channels: int = Field(default=2, ge=1, le=64, description="Files with more channels are quarantined.")
    max_bytes: int | None = Field(default=None, ge=1, description="Size limit; None: settings.audio_max_bytes.")
    max_duration_s: float | None = Field(default=None, gt=0, description="None: settings.audio_max_duration_s.")
    file_timeout_s: float | None = Field(default=None, gt=0, description="None: settings.audio_file_timeout_s.")
    rules: RuleConfig = Field(default_factory=RuleConfig, description="Thresholds of the signal rules.")


class AnalyzeAudioResult(TaskModel):
    shard_uri: OutputArtifact
    shard_index: int
    tracks: int
    quarantined: int
    flags: int
    audio_seconds: float
    wall_seconds: float
    realtime_per_core: float
    quarantine_reasons: dict[str, int]


def _limits_state(params: Any, rt: Runtime) -> dict[str, Any]:
    """The effective limits when the input leaves them to settings (they change which files pass)."""
    s = rt.settings
    return {
        "max_bytes": params.max_bytes or s.audio_max_bytes,
        "max_duration_s": params.max_duration_s or s.audio_max_duration_s,
        "file_timeout_s": params.file_timeout_s or s.audio_file_timeout_s,
    }


def _workers(rt_workers: int) -> int:
    if rt_workers:
        return rt_workers
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # macOS
        return max(1, os.cpu_count() or 1)


@ai_task(name="audio.analyze", version="1.0.0", retry=RetryPolicy(max_attempts=2), state=_limits_state)
def analyze_audio_task(params: AnalyzeAudioParams, ctx: TaskContext) -> AnalyzeAudioResult:
    """Decode and analyse one shard of the catalog: features, signal checks, fingerprints, quarantine.

    EN: Decodes every file of the shard (WAV, FLAC, OGG, MP3 via libsndfile), checks it first (real
    format vs extension, size, channels, sample rate, duration, truncated streams, headers that lie
    about their length, NaN samples), mixes down to mono and resamples once with soxr. One STFT per
    file feeds every spectral feature (log-mel, MFCC, chroma, centroid, bandwidth, rolloff, flatness,
    contrast, ZCR, RMS, onset strength, tempo) plus BS.1770 loudness, summarised into a fixed-length
    named vector; rule checks (silence, clipping, DC offset, length, loudness, sample rate) and a
    compact fingerprint come from the same pass. Files run in worker processes with a hard per-file
    timeout; a bad file is quarantined with its reason and never stops the shard.
    FR: Décode chaque fichier du lot (WAV, FLAC, OGG, MP3 via libsndfile) après l'avoir vérifié
    (format réel contre extension, taille, canaux, fréquence d'échantillonnage, durée, flux tronqués,
    en-têtes qui mentent sur la longueur, échantillons NaN), le réduit en mono et le rééchantillonne une
    seule fois avec soxr. Une seule STFT par fichier alimente toutes les caractéristiques spectrales
    (log-mel, MFCC, chroma, centroïde, largeur de bande, rolloff, planéité, contraste, ZCR, RMS, force
    des attaques, tempo) plus l'intensité BS.1770, résumées en un vecteur nommé de longueur fixe ; les
    règles (silence, écrêtage, composante continue, durée, intensité, fréquence) et une empreinte
    compacte viennent du même passage. Les fichiers tournent dans des processus avec un délai maximal
    par fichier ; un fichier défectueux est mis en quarantaine avec son motif sans arrêter le lot.
    DE: Dekodiert jede Datei des Shards (WAV, FLAC, OGG, MP3 über libsndfile) nach einer Prüfung
    (tatsächliches Format gegen Endung, Größe, Kanäle, Abtastrate, Dauer, abgeschnittene Streams,
    Header mit falscher Länge, NaN-Samples), mischt auf Mono und resampelt einmal mit soxr. Eine
    einzige STFT pro Datei speist alle spektralen Merkmale (Log-Mel, MFCC, Chroma, Schwerpunkt,
    Bandbreite, Rolloff, Flachheit, Kontrast, ZCR, RMS, Onset-Stärke, Tempo) plus BS.1770-Lautheit,
    zusammengefasst zu einem benannten Vektor fester Länge; Regelprüfungen (Stille, Clipping,
    Gleichanteil, Länge, Lautheit, Abtastrate) und ein kompakter Fingerabdruck entstehen im selben
    Durchgang. Dateien laufen in Worker-Prozessen mit hartem Zeitlimit pro Datei; eine fehlerhafte
    Datei kommt mit Grund in Quarantäne und hält den Shard nie an.
    """
    import time
    from collections import Counter

    from aitasks.audio_analysis.analyze import AnalysisConfig, analyze_entries, write_shard
    from aitasks.audio_analysis.catalog import CatalogListing
    from aitasks.audio_analysis.decode import DecodeConfig
    from aitasks.runtime.bundle import publish_bundle
    from aitasks.runtime.errors import FieldIssue, InvalidInputError

    limits = _limits_state(params, ctx.runtime)
    payload = json.loads(ctx.storage.read_bytes(params.listing_uri))
    listing = CatalogListing.model_validate(payload["listing"])
    shards: list[list[str]] = payload["shards"]
    if params.shard_index >= max(1, len(shards)):
        raise InvalidInputError(
            ctx.task, [FieldIssue("shard_index", f"{params.shard_index} >= {len(shards)} shards in the listing")]
        )
    keys = set(shards[params.shard_index]) if shards else set()
    entries = [e for e in listing.entries if e.key in keys]
    cfg = AnalysisConfig(
        rules=params.rules,
        decode=DecodeConfig(
            sample_rate=params.sample_rate,
            min_source_rate=params.min_source_rate,
            max_source_rate=params.max_source_rate,
            max_channels=params.max_channels,
            max_bytes=limits["max_bytes"],
            max_duration_s=limits["max_duration_s"],
        ),
    )
    workers = _workers(ctx.settings.audio_workers)
    start = time.perf_counter()
    results = analyze_entries(entries, cfg, workers=workers, timeout_s=limits["file_timeout_s"])
    wall = time.perf_counter() - start
    audio_s = sum(r.duration_s for r in results if r.ok)
    # Listing refusals (unsafe links, bad ids) travel with shard 0, so they are reported exactly once.
    refusals = listing.refused if params.shard_index == 0 else []
    with tempfile.TemporaryDirectory(prefix="aitasks-audio-") as tmp:
        counts = write_shard(results, Path(tmp), cfg, refusals=refusals)
        uri = publish_bundle(
            ctx.storage,
            Path(tmp),
            ctx.output_uri("shard"),
            kind="audio_shard",
            meta={"shard_index": params.shard_index, "config": cfg.model_dump(mode="json"), **counts},
        )
    reasons = Counter(r.reason for r in results if not r.ok) + Counter(x.reason for x in refusals)
    per_core = audio_s / (wall * min(workers, max(1, len(entries)))) if wall > 0 else 0.0
    ctx.log.info(
        "audio.analyzed",
        shard=params.shard_index,
        tracks=counts["tracks"],
        quarantined=counts["quarantined"],
        realtime_per_core=round(per_core, 1),
    )
    return AnalyzeAudioResult(
        shard_uri=uri,
        shard_index=params.shard_index,
        tracks=counts["tracks"],
        quarantined=counts["quarantined"],
        flags=counts["flags"],
        audio_seconds=audio_s,
        wall_seconds=wall,
        realtime_per_core=per_core,
        quarantine_reasons=dict(sorted(reasons.items())),
    )


# ----------------------------------------------------------------------------------- collect


class CollectParams(TaskModel):
    shard_uris: list[str] = Field(min_length=1, max_length=4096, description="Shard bundles of audio.analyze.")

    @field_validator("shard_uris")
    @classmethod
    def _unique(cls, value: list[str]) -> list[str]:
        if len(set(value)) != len(value):
            raise ValueError("shard URIs must be unique")
        for v in value:
            _no_nul(v)
        return sorted(value)


class CollectResult(TaskModel):
    analysis_uri: OutputArtifact
    tracks: Annotated[int, Metric()]
    quarantined: Annotated[int, Metric()]
    flags: Annotated[int, Metric()]

    def artifact_metadata(self, field: str) -> dict[str, Any]:
        return {"tracks": self.tracks}


def _shards_state(params: Any, rt: Runtime) -> dict[str, Any]:
    """Content hashes of the shard manifests (a list of artifacts: each joins the key)."""
    return {"shards": [storage_of(u, rt).content_hash(u) for u in params.shard_uris]}


@ai_task(name="audio.collect", version="1.0.0", retry=RetryPolicy(max_attempts=3), state=_shards_state)
def collect_task(params: CollectParams, ctx: TaskContext) -> CollectResult:
    """Merge the shard analyses into one catalog analysis.

    EN: Verifies each shard bundle against its checksums and concatenates features, flags, quarantine
    records, fingerprints and report spectrograms into one bundle; a track present in two shards or
    shards analysed with different feature sets are refused.
    FR: Vérifie chaque lot de résultats contre ses sommes de contrôle et concatène caractéristiques,
    signalements, quarantaine, empreintes et spectrogrammes en un seul lot ; un titre présent dans deux
    lots ou des lots analysés avec des jeux de caractéristiques différents sont refusés.
    DE: Prüft jedes Shard-Bündel gegen seine Prüfsummen und fügt Merkmale, Markierungen,
    Quarantäne-Einträge, Fingerabdrücke und Spektrogramme zu einem Bündel zusammen; ein Titel in zwei
    Shards oder Shards mit unterschiedlichen Merkmalssätzen werden abgewiesen.
    """
    from contextlib import ExitStack

    from aitasks.audio_analysis.analyze import merge_shards
    from aitasks.runtime.bundle import open_bundle, publish_bundle

    with ExitStack() as stack, tempfile.TemporaryDirectory(prefix="aitasks-audio-") as tmp:
        folders = [stack.enter_context(open_bundle(u, ctx.storage, kind="audio_shard"))[0] for u in params.shard_uris]
        counts = merge_shards(folders, Path(tmp))
        uri = publish_bundle(ctx.storage, Path(tmp), ctx.output_uri("analysis"), kind="audio_analysis", meta=counts)
    return CollectResult(analysis_uri=uri, **counts)


# --------------------------------------------------------------------------------- anomalies


class AnomaliesParams(TaskModel):
    analysis_uri: InputArtifact = Field(description="Catalog analysis bundle from audio.collect.")
    contamination: float = Field(default=0.02, gt=0, lt=0.5, description="Expected share of feature outliers.")
    duplicate_threshold: float = Field(default=0.8, gt=0, le=1, description="Fingerprint similarity of a duplicate.")
    seed: int = Field(default=0, ge=0, le=2**31 - 1, description="Seed of the isolation forest.")


class AnomaliesResult(TaskModel):
    anomalies_uri: OutputArtifact
    tracks: int
    flagged_tracks: Annotated[int, Metric()]
    flags_by_code: Annotated[dict[str, int], Metric(prefix="flags_")]
    outliers: Annotated[int, Metric()]
    duplicate_pairs: Annotated[int, Metric()]


@ai_task(name="audio.anomalies", version="1.0.0", retry=RetryPolicy(max_attempts=2))
def anomalies_task(params: AnomaliesParams, ctx: TaskContext) -> AnomaliesResult:
    """Catalog-level anomalies: feature outliers with explanations and near-duplicate tracks.

    EN: Adds to the per-file rule flags (undecodable, NaN, silence, clipping, DC offset, too short or
    long, abnormal loudness, wrong sample rate) the statistical outliers of the feature vectors (an
    isolation forest on robust z-scores; each outlier names its most extreme features) and the
    near-duplicates found by comparing compact audio fingerprints (candidates from an inverted index,
    verified by bit error rate). Writes every flag with its reason and score.
    FR: Ajoute aux signalements par fichier (illisible, NaN, silence, écrêtage, composante continue,
    trop court ou trop long, intensité anormale, mauvaise fréquence) les valeurs aberrantes
    statistiques des vecteurs de caractéristiques (forêt d'isolement sur des scores z robustes ; chaque
    valeur aberrante nomme ses caractéristiques les plus extrêmes) et les quasi-doublons trouvés en
    comparant des empreintes audio compactes (candidats par index inversé, vérifiés par taux d'erreur
    binaire). Écrit chaque signalement avec son motif et son score.
    DE: Ergänzt die Regelmarkierungen je Datei (nicht dekodierbar, NaN, Stille, Clipping, Gleichanteil,
    zu kurz oder zu lang, auffällige Lautheit, falsche Abtastrate) um statistische Ausreißer der
    Merkmalsvektoren (Isolation Forest auf robusten z-Werten; jeder Ausreißer nennt seine extremsten
    Merkmale) und um Beinahe-Duplikate aus dem Vergleich kompakter Audio-Fingerabdrücke (Kandidaten
    aus einem invertierten Index, geprüft über die Bitfehlerrate). Schreibt jede Markierung mit Grund
    und Wert.
    """
    from collections import Counter

    import pyarrow as pa
    import pyarrow.parquet as pq

    from aitasks.audio_analysis.analyze import FLAGS_FILE, read_shard
    from aitasks.audio_analysis.anomaly import duplicate_flags, feature_outliers, near_duplicates, outlier_flags
    from aitasks.runtime.bundle import open_bundle, publish_bundle

    with (
        open_bundle(params.analysis_uri, ctx.storage, kind="audio_analysis") as (folder, _),
        tempfile.TemporaryDirectory(prefix="aitasks-audio-") as tmp,
    ):
        shard = read_shard(folder)
        ids = shard.features.column("track_id").to_pylist()
        scores = feature_outliers(
            ids, shard.matrix(), shard.names, contamination=params.contamination, seed=params.seed
        )
        fp_ids = [t for t in ids if t in shard.fingerprints]
        pairs = near_duplicates(fp_ids, [shard.fingerprints[t] for t in fp_ids], threshold=params.duplicate_threshold)
        extra = outlier_flags(scores) + duplicate_flags(pairs, threshold=params.duplicate_threshold)
        uri_of = dict(zip(ids, shard.features.column("uri").to_pylist(), strict=True))
        new = pa.table(
            {
                "track_id": pa.array([t for t, _ in extra], pa.string()),
                "uri": pa.array([uri_of.get(t, "") for t, _ in extra], pa.string()),
                "code": pa.array([f.code for _, f in extra], pa.string()),
                "severity": pa.array([f.severity for _, f in extra], pa.string()),
                "score": pa.array([float(f.score) for _, f in extra], pa.float64()),
                "reason": pa.array([f.reason for _, f in extra], pa.string()),
            }
        )
        flags = pa.concat_tables([shard.flags, new.cast(shard.flags.schema)])
        out = Path(tmp)
        pq.write_table(flags, out / FLAGS_FILE)
        pq.write_table(
            pa.table(
                {
                    "track_id": pa.array([s.id for s in scores], pa.string()),
                    "score": pa.array([s.score for s in scores], pa.float64()),
                    "is_outlier": pa.array([s.is_outlier for s in scores], pa.bool_()),
                    "threshold": pa.array([s.threshold for s in scores], pa.float64()),
                    "top_features": pa.array([json.dumps(s.top_features) for s in scores], pa.string()),
                    "note": pa.array([s.note for s in scores], pa.string()),
                }
            ),
            out / "outliers.parquet",
        )
        pq.write_table(
            pa.table(
                {
                    "a": pa.array([p.a for p in pairs], pa.string()),
                    "b": pa.array([p.b for p in pairs], pa.string()),
                    "similarity": pa.array([p.similarity for p in pairs], pa.float64()),
                }
            ),
            out / "duplicates.parquet",
        )
        by_code = Counter(flags.column("code").to_pylist())
        flagged = len(
            {t or u for t, u in zip(flags.column("track_id").to_pylist(), flags.column("uri").to_pylist(), strict=True)}
        )
        uri = publish_bundle(
            ctx.storage, out, ctx.output_uri("anomalies"), kind="audio_anomalies", meta={"flags": dict(by_code)}
        )
    ctx.log.info(
        "audio.anomalies", flags=flags.num_rows, outliers=sum(s.is_outlier for s in scores), duplicates=len(pairs)
    )
    return AnomaliesResult(
        anomalies_uri=uri,
        tracks=len(ids),
        flagged_tracks=flagged,
        flags_by_code=dict(sorted(by_code.items())),
        outliers=sum(s.is_outlier for s in scores),
        duplicate_pairs=len(pairs),
    )


# -------------------------------------------------------------------------------- classifier


class TrainClassifierParams(TaskModel):
    labelled_root: str = Field(
        min_length=1, description="Labelled folder: labels.csv (path,label) or <label>/<files>; local directory."
    )
    labels: list[str] = Field(
        default=["drums", "tonal", "noise", "speech"], min_length=2, max_length=1000, description="Class names."
    )
    test_fraction: float = Field(default=0.25, gt=0, lt=0.9, description="Held-out share, per class, for the test.")
    epochs: int = Field(default=30, ge=1, le=10_000, description="Maximum epochs (early stopping on validation).")
    clip_seconds: float = Field(default=4.0, gt=0, le=120, description="Model input crop length.")
    seed: int = Field(default=0, ge=0, le=2**31 - 1, description="Seed of splits, init and augmentation.")
    device: str = Field(default="auto", pattern=r"^(auto|cpu|cuda)$", description="auto: CUDA when available.")

    _nul = field_validator("labelled_root")(_no_nul)


class TrainClassifierResult(TaskModel):
    model_uri: OutputArtifact
    labels: list[str]
    accuracy: Annotated[float, Metric()]
    macro_f1: Annotated[float, Metric()]
    chance: Annotated[float, Metric()]
    per_class_f1: Annotated[dict[str, float], Metric(prefix="f1_")]
    confusion: list[list[int]]
    n_train: int
    n_test: int
    skipped_files: int
    seconds: float

    def artifact_metadata(self, field: str) -> dict[str, Any]:
        return {"accuracy": self.accuracy}

    def confusion_matrix(self) -> tuple[list[str], list[list[int]]]:
        """(labels, rows) for the KFP UI's confusion matrix."""
        return self.labels, self.confusion


def _labelled_state(params: Any, rt: Runtime) -> dict[str, Any]:
    """The labelled folder's content: new or changed clips mean a new model."""
    return _catalog_state(ListCatalogParams(catalog_root=params.labelled_root), rt)


@ai_task(name="audio.train_classifier", version="1.0.0", retry=RetryPolicy(max_attempts=2), state=_labelled_state)
def train_classifier_task(params: TrainClassifierParams, ctx: TaskContext) -> TrainClassifierResult:
    """Train and test the mel-spectrogram CNN audio classifier on a labelled folder.

    EN: Reads any labelled folder (labels.csv or one sub-folder per label; undecodable files are
    skipped and counted), holds out a stratified test split, trains a small CNN on log-mel
    spectrograms computed in PyTorch (GPU when available) with augmentation and early stopping, and
    reports accuracy, macro F1, per-class F1 and the confusion matrix on the test split against chance.
    The model is saved as safetensors plus a JSON config (never pickle).
    FR: Lit n'importe quel dossier étiqueté (labels.csv ou un sous-dossier par étiquette ; les fichiers
    illisibles sont ignorés et comptés), réserve un jeu de test stratifié, entraîne un petit CNN sur des
    spectrogrammes log-mel calculés dans PyTorch (GPU si disponible) avec augmentation et arrêt
    anticipé, et rapporte exactitude, F1 macro, F1 par classe et matrice de confusion sur le jeu de
    test face au hasard. Le modèle est enregistré en safetensors plus une configuration JSON (jamais
    pickle).
    DE: Liest einen beliebigen gelabelten Ordner (labels.csv oder ein Unterordner je Label; nicht
    dekodierbare Dateien werden übersprungen und gezählt), hält einen stratifizierten Testanteil
    zurück, trainiert ein kleines CNN auf in PyTorch berechneten Log-Mel-Spektrogrammen (GPU, wenn
    vorhanden) mit Augmentierung und Early Stopping und meldet Genauigkeit, Makro-F1, F1 je Klasse und
    die Konfusionsmatrix auf dem Testanteil im Vergleich zum Zufall. Das Modell wird als safetensors
    plus JSON-Konfiguration gespeichert (nie pickle).
    """
    import time

    import numpy as np

    from aitasks.audio_analysis.classifier import (
        ClassifierConfig,
        evaluate,
        load_labelled_folder,
        save_classifier,
        train_classifier,
    )
    from aitasks.runtime.bundle import publish_bundle
    from aitasks.runtime.errors import FieldIssue, InvalidInputError

    root = Path(params.labelled_root)
    if not root.is_dir():
        raise InvalidInputError(ctx.task, [FieldIssue("labelled_root", f"{root} is not a local directory")])
    cfg = ClassifierConfig(
        labels=tuple(params.labels),
        epochs=params.epochs,
        clip_seconds=params.clip_seconds,
        seed=params.seed,
        device=params.device,  # type: ignore[arg-type]
    )
    start = time.perf_counter()
    folder = load_labelled_folder(root, cfg)
    rng = np.random.default_rng(params.seed)
    labels = np.asarray(folder.labels)
    test_mask = np.zeros(len(labels), bool)
    for k in range(len(cfg.labels)):
        idx = np.flatnonzero(labels == k)
        if len(idx) < 2:
            raise InvalidInputError(
                ctx.task, [FieldIssue("labelled_root", f"class {cfg.labels[k]!r} has {len(idx)} clips; need >= 2")]
            )
        take = max(1, round(len(idx) * params.test_fraction))
        test_mask[rng.choice(idx, size=take, replace=False)] = True
    train_idx, test_idx = np.flatnonzero(~test_mask), np.flatnonzero(test_mask)
    model, train_report = train_classifier(
        [folder.clips[i] for i in train_idx], [folder.labels[i] for i in train_idx], cfg
    )
    report = evaluate(model, [folder.clips[i] for i in test_idx], [folder.labels[i] for i in test_idx], cfg)
    seconds = time.perf_counter() - start
    with tempfile.TemporaryDirectory(prefix="aitasks-clf-") as tmp:
        out = Path(tmp)
        save_classifier(model, cfg, out)
        (out / "report.json").write_text(
            json.dumps(
                {
                    "test": report.model_dump(mode="json"),
                    "validation": train_report.model_dump(mode="json"),
                    "skipped": folder.skipped,
                },
                indent=1,
            ),
            "utf-8",
        )
        uri = publish_bundle(
            ctx.storage,
            out,
            ctx.output_uri("classifier"),
            kind="model",
            meta={
                "task": f"{ctx.task}@{ctx.version}",
                "params": params.model_dump(mode="json"),
                "accuracy": report.accuracy,
                "macro_f1": report.macro_f1,
            },
        )
    ctx.log.info("audio.classifier_trained", accuracy=round(report.accuracy, 4), macro_f1=round(report.macro_f1, 4))
    return TrainClassifierResult(
        model_uri=uri,
        labels=list(cfg.labels),
        accuracy=report.accuracy,
        macro_f1=report.macro_f1,
        chance=report.chance,
        per_class_f1={k: v.f1 for k, v in report.per_class.items()},
        confusion=report.confusion,
        n_train=len(train_idx),
        n_test=len(test_idx),
        skipped_files=len(folder.skipped),
        seconds=seconds,
    )


class RegisterClassifierParams(TaskModel):
    model_uri: InputArtifact = Field(description="Classifier bundle from audio.train_classifier.")
    model_name: str = Field(default="audio-classifier", pattern=CLASSIFIER_NAME_PATTERN, description="MLflow name.")
    min_accuracy: float = Field(default=0.6, ge=0, le=1, description="Test accuracy needed to become champion.")


class RegisterClassifierResult(TaskModel):
    model_name: str
    version: int
    created: bool
    promoted: bool
    accuracy: float


@ai_task(name="audio.register_classifier", version="1.0.0", retry=RetryPolicy(max_attempts=4, initial_backoff_s=1.0))
def register_classifier_task(params: RegisterClassifierParams, ctx: TaskContext) -> RegisterClassifierResult:
    """Register the audio classifier in MLflow and make it champion when it is good enough.

    EN: Logs the classifier's files (safetensors + JSON, with checksums; never pickle), its test metrics
    and lineage tags (code version, git revision, trace id, KFP run id) as a model version, keyed by the
    model's content so a re-run never makes a second version, and moves the ``champion`` alias to it
    when its test accuracy reaches the threshold and beats chance.
    FR: Journalise les fichiers du classifieur (safetensors + JSON, avec sommes de contrôle ; jamais
    pickle), ses métriques de test et sa lignée (version du code, révision git, identifiant de trace,
    exécution KFP) comme version de modèle, indexée par le contenu du modèle pour qu'une relance ne crée
    jamais de seconde version, et y déplace l'alias ``champion`` quand son exactitude de test atteint le
    seuil et bat le hasard.
    DE: Protokolliert die Dateien des Klassifikators (safetensors + JSON, mit Prüfsummen; nie pickle),
    seine Testmetriken und Herkunft (Code-Version, Git-Revision, Trace-Id, KFP-Run) als Modellversion,
    nach Modellinhalt verschlüsselt, sodass ein erneuter Lauf keine zweite Version erzeugt, und setzt
    den Alias ``champion`` darauf, wenn die Testgenauigkeit die Schwelle erreicht und den Zufall schlägt.
    """
    from aitasks.model_training.registry import register_model, registry_config, set_alias
    from aitasks.runtime.bundle import open_bundle
    from aitasks.runtime.hashing import sha256_json

    reg = registry_config(ctx.settings, model_name=params.model_name)
    model_hash = ctx.storage.content_hash(params.model_uri)
    with open_bundle(params.model_uri, ctx.storage, kind="model") as (model_dir, manifest):
        meta = manifest["meta"]
        report = json.loads((model_dir / "report.json").read_text("utf-8"))["test"]
        run = ctx.runtime.run
        accuracy = float(report["accuracy"])
        version = register_model(
            reg,
            model_dir,
            idempotency_key=sha256_json({"model": model_hash, "name": params.model_name}),
            tags={
                "aitasks.code_version": str(meta.get("task", "")),
                "aitasks.git_revision": run.git_revision,
                "aitasks.trace_id": ctx.trace_id,
                "aitasks.kfp_run_id": run.run_id,
                "aitasks.pipeline": run.pipeline,
                "aitasks.submitter": run.submitter,
                "aitasks.model_sha": model_hash,
                "aitasks.labels": ",".join(report["labels"]),
            },
            params={k: v for k, v in meta.get("params", {}).items() if isinstance(v, str | int | float)},
            metrics={
                "accuracy": accuracy,
                "macro_f1": float(report["macro_f1"]),
                "chance": float(report["chance"]),
                **{f"f1_{k}": float(v["f1"]) for k, v in report["per_class"].items() if k.isidentifier()},
            },
            run_name=f"audio-classifier-{run.run_id}"[:250],
        )
    promoted = accuracy >= params.min_accuracy and accuracy > float(report["chance"])
    if promoted:
        set_alias(reg, "champion", version.version)
    ctx.log.info("audio.classifier_registered", version=version.version, promoted=promoted)
    return RegisterClassifierResult(
        model_name=params.model_name,
        version=version.version,
        created=version.created,
        promoted=promoted,
        accuracy=accuracy,
    )


class ClassifyParams(TaskModel):
    model_uri: InputArtifact = Field(description="Classifier bundle.")
    analysis_uri: InputArtifact = Field(description="Catalog analysis bundle (the tracks that decoded).")
    batch_size: int = Field(default=32, ge=1, le=4096, description="Crops per forward pass.")


class ClassifyResult(TaskModel):
    predictions_uri: OutputArtifact
    tracks: Annotated[int, Metric()]
    failed: Annotated[int, Metric()]
    class_counts: Annotated[dict[str, int], Metric(prefix="class_")]

    def artifact_metadata(self, field: str) -> dict[str, Any]:
        return {"tracks": self.tracks}


@ai_task(name="audio.classify", version="1.0.0", retry=RetryPolicy(max_attempts=2))
def classify_task(params: ClassifyParams, ctx: TaskContext) -> ClassifyResult:
    """Batch inference: classify every analysed track with the audio classifier.

    EN: Loads the classifier (safetensors only, shapes checked), decodes each track that passed
    analysis at the model's sample rate, and predicts its class from up to eight evenly spaced crops
    (averaged logits). Writes label, confidence and every class probability per track.
    FR: Charge le classifieur (safetensors uniquement, formes vérifiées), décode chaque titre qui a
    passé l'analyse à la fréquence du modèle et prédit sa classe à partir d'au plus huit extraits
    régulièrement espacés (logits moyennés). Écrit étiquette, confiance et probabilité de chaque classe
    par titre.
    DE: Lädt den Klassifikator (nur safetensors, Formen geprüft), dekodiert jeden Titel, der die Analyse
    bestanden hat, mit der Abtastrate des Modells und sagt seine Klasse aus bis zu acht gleichmäßig
    verteilten Ausschnitten vorher (gemittelte Logits). Schreibt Label, Konfidenz und die
    Wahrscheinlichkeit jeder Klasse je Titel.
    """
    from collections import Counter

    import pyarrow as pa
    import pyarrow.parquet as pq

    from aitasks.audio_analysis.analyze import FEATURES_FILE, decode_many
    from aitasks.audio_analysis.classifier import load_classifier, predict
    from aitasks.audio_analysis.decode import DecodeConfig
    from aitasks.runtime.bundle import open_bundle

    with (
        open_bundle(params.model_uri, ctx.storage, kind="model") as (model_dir, _),
        open_bundle(params.analysis_uri, ctx.storage, kind="audio_analysis") as (folder, _),
    ):
        model, cfg = load_classifier(model_dir)
        table = pq.read_table(folder / FEATURES_FILE, columns=["track_id", "uri"])
    s = ctx.settings
    dcfg = DecodeConfig(
        sample_rate=cfg.sample_rate,
        max_bytes=s.audio_max_bytes,
        max_duration_s=s.audio_max_duration_s,
        max_channels=64,  # analysis already applied the channel limit
        min_source_rate=1,
        max_source_rate=1_000_000,
    )
    track_ids = table.column("track_id").to_pylist()
    decoded = decode_many(
        table.column("uri").to_pylist(), dcfg, workers=_workers(s.audio_workers), timeout_s=s.audio_file_timeout_s
    )
    ids, clips, failed = [], [], 0
    for tid, out in zip(track_ids, decoded, strict=True):
        if isinstance(out, str):
            # Analysed a moment ago, unreadable now: the file changed; report it, classify the rest.
            failed += 1
            ctx.log.warning("audio.classify_skipped", track=tid, error=out[:200])
        else:
            ids.append(tid)
            clips.append(out)
    preds = predict(model, clips, cfg, batch_size=params.batch_size) if clips else []
    uri = ctx.output_uri("predictions.parquet")
    with ctx.publish(uri) as tmp:
        pq.write_table(
            pa.table(
                {
                    "track_id": pa.array(ids, pa.string()),
                    "label": pa.array([p.label for p in preds], pa.string()),
                    "confidence": pa.array([p.confidence for p in preds], pa.float32()),
                    "probabilities": pa.array([json.dumps(p.probabilities, sort_keys=True) for p in preds]),
                }
            ),
            tmp,
        )
    counts = Counter(p.label for p in preds)
    return ClassifyResult(
        predictions_uri=uri, tracks=len(ids), failed=failed, class_counts=dict(sorted(counts.items()))
    )


# -------------------------------------------------------------------------------- Feast write


class FeastWriteParams(TaskModel):
    analysis_uri: InputArtifact = Field(description="Catalog analysis bundle.")
    anomalies_uri: InputArtifact = Field(description="Anomalies bundle (flag counts per track).")
    predictions_uri: InputArtifact = Field(description="Classifier predictions (Parquet).")
    project: str = Field(default="aitasks", pattern=r"^[A-Za-z][A-Za-z0-9_]{0,62}$", description="Feast project.")
    online_store: str = Field(default="", pattern=r"^(|sqlite|redis)$", description="Empty: from settings.")
    as_of: AsOfTime = Field(
        default=None,
        description="Analysis time (ISO 8601 with timezone): the rows' event time. Empty: the current hour (UTC).",
    )


class FeastWriteResult(TaskModel):
    project: str
    rows_written: int
    rows_total: int
    entities_materialized: int
    online_store: str


@ai_task(name="audio.feast_write", version="1.0.0", retry=RetryPolicy(max_attempts=4, initial_backoff_s=1.0))
def feast_write_task(params: FeastWriteParams, ctx: TaskContext) -> FeastWriteResult:
    """Publish track audio features to Feast (the ``track_audio`` view), offline and online.

    EN: Appends one row per analysed track (tempo, loudness, duration, spectral summaries, 13 MFCC and
    12 chroma means, predicted class and confidence, number of anomaly flags) to the view's offline
    file, applies the ``track_audio`` view on the recommender's ``track`` entity and materializes it
    into the online store (sqlite or Redis), so the recommender can read audio features per track.
    FR: Ajoute une ligne par titre analysé (tempo, intensité, durée, résumés spectraux, moyennes de 13
    MFCC et 12 chroma, classe prédite et confiance, nombre de signalements) au fichier hors ligne de la
    vue, applique la vue ``track_audio`` sur l'entité ``track`` du recommandeur et la matérialise dans
    le magasin en ligne (sqlite ou Redis), pour que le recommandeur lise les caractéristiques audio.
    DE: Hängt je analysiertem Titel eine Zeile (Tempo, Lautheit, Dauer, spektrale Zusammenfassungen,
    Mittel von 13 MFCC und 12 Chroma, vorhergesagte Klasse und Konfidenz, Zahl der Markierungen) an die
    Offline-Datei der View an, registriert die View ``track_audio`` auf der Entität ``track`` des
    Empfehlers und materialisiert sie in den Online-Store (sqlite oder Redis), damit der Empfehler
    Audiomerkmale je Titel lesen kann.
    """
    from collections import Counter

    import pyarrow.parquet as pq

    from aitasks.audio_analysis.analyze import FEATURES_FILE, FLAGS_FILE
    from aitasks.audio_analysis.feature_store import AUDIO_FEATURES, track_audio_config, write_track_audio
    from aitasks.runtime.bundle import open_bundle
    from aitasks.runtime.storage import local_copy

    event_time = params.as_of
    with (
        open_bundle(params.analysis_uri, ctx.storage, kind="audio_analysis") as (folder, _),
        open_bundle(params.anomalies_uri, ctx.storage, kind="audio_anomalies") as (anomalies, _),
        local_copy(params.predictions_uri, ctx.storage) as preds_path,
    ):
        table = pq.read_table(folder / FEATURES_FILE, columns=["track_id", *AUDIO_FEATURES])
        flags = pq.read_table(anomalies / FLAGS_FILE, columns=["track_id"]).column("track_id").to_pylist()
        preds = pq.read_table(preds_path).to_pydict()
    cfg = track_audio_config(
        ctx.settings,
        project=params.project,
        online_store=params.online_store or None,  # type: ignore[arg-type]
    )
    report = write_track_audio(
        cfg,
        track_ids=table.column("track_id").to_pylist(),
        features={n: table.column(n).to_numpy() for n in AUDIO_FEATURES},
        classes={
            t: (lab, float(c)) for t, lab, c in zip(preds["track_id"], preds["label"], preds["confidence"], strict=True)
        },
        flag_counts=Counter(t for t in flags if t),
        event_time=event_time,
    )
    return FeastWriteResult(
        project=report.project,
        rows_written=report.rows_written,
        rows_total=report.rows_total,
        entities_materialized=report.entities_materialized,
        online_store=report.online_store,
    )


# ------------------------------------------------------------------------------------ report


class ReportParams(TaskModel):
    analysis_uri: InputArtifact = Field(description="Catalog analysis bundle.")
    anomalies_uri: InputArtifact = Field(description="Anomalies bundle.")
    predictions_uri: InputArtifact = Field(description="Classifier predictions (Parquet).")
    title: str = Field(default="Audio analysis", min_length=1, max_length=200, description="Report title.")
    spectrograms: int = Field(default=6, ge=0, le=64, description="Example spectrograms shown.")


class ReportResult(TaskModel):
    report_uri: OutputArtifact
    tracks: int
    quarantined: int
    flags: int


@ai_task(name="audio.report", version="1.0.0", retry=RetryPolicy(max_attempts=2))
def report_task(params: ReportParams, ctx: TaskContext) -> ReportResult:
    """A self-contained HTML report of the catalog analysis.

    EN: Summary counts, anomaly counts by kind, the quarantine with reasons, the top outliers with the
    features that explain them, near-duplicate pairs, feature distributions (inline SVG), example
    spectrograms (flagged tracks first) and class counts. No external resource; all text escaped.
    FR: Comptes de synthèse, anomalies par type, quarantaine avec motifs, principales valeurs
    aberrantes et les caractéristiques qui les expliquent, paires de quasi-doublons, distributions des
    caractéristiques (SVG en ligne), exemples de spectrogrammes (titres signalés d'abord) et effectifs
    par classe. Aucune ressource externe ; tout le texte est échappé.
    DE: Übersichtszahlen, Anomalien nach Art, die Quarantäne mit Gründen, die stärksten Ausreißer mit
    den erklärenden Merkmalen, Beinahe-Duplikat-Paare, Merkmalsverteilungen (Inline-SVG),
    Beispiel-Spektrogramme (markierte Titel zuerst) und Klassenzahlen. Keine externen Ressourcen; aller
    Text maskiert.
    """
    from collections import Counter

    import pyarrow.parquet as pq

    from aitasks.audio_analysis.analyze import FLAGS_FILE, read_shard
    from aitasks.audio_analysis.anomaly import DuplicatePair, Flag, OutlierScore
    from aitasks.audio_analysis.report import render_report
    from aitasks.runtime.bundle import open_bundle
    from aitasks.runtime.storage import local_copy

    with (
        open_bundle(params.analysis_uri, ctx.storage, kind="audio_analysis") as (folder, manifest),
        open_bundle(params.anomalies_uri, ctx.storage, kind="audio_anomalies") as (anomalies, _),
        local_copy(params.predictions_uri, ctx.storage) as preds_path,
    ):
        shard = read_shard(folder)
        flags = pq.read_table(anomalies / FLAGS_FILE).to_pylist()
        outliers = [
            OutlierScore(
                id=r["track_id"],
                score=r["score"],
                is_outlier=r["is_outlier"],
                threshold=r["threshold"],
                top_features=[tuple(x) for x in json.loads(r["top_features"])],
                note=r["note"],
            )
            for r in pq.read_table(anomalies / "outliers.parquet").to_pylist()
        ]
        dups = [DuplicatePair(**r) for r in pq.read_table(anomalies / "duplicates.parquet").to_pylist()]
        labels = pq.read_table(preds_path, columns=["label"]).column("label").to_pylist()
    flag_pairs = [
        (r["track_id"] or r["uri"], Flag(code=r["code"], reason=r["reason"], score=r["score"], severity=r["severity"]))
        for r in flags
    ]
    flagged = [t for t, f in flag_pairs if f.code != "undecodable" and t in shard.spectrograms]
    shown = list(dict.fromkeys([*flagged, *sorted(shard.spectrograms)]))[: params.spectrograms]
    features = shard.features
    html = render_report(
        title=params.title,
        feature_table={n: features.column(n).to_pylist() for n in shard.names},
        flags=flag_pairs,
        quarantine=[(r["uri"], r["reason"], r["detail"]) for r in shard.quarantine.to_pylist()],
        outliers=outliers,
        duplicates=dups,
        spectrograms=[(t, shard.spectrograms[t].astype("float32")) for t in shown],
        classes=dict(Counter(labels)),
        meta={
            "run": ctx.runtime.run.run_id,
            "pipeline": ctx.runtime.run.pipeline,
            "trace": ctx.trace_id,
            "analysis": str(manifest.get("meta", {})),
        },
    )
    uri = ctx.output_uri("report.html")
    ctx.storage.write_bytes(uri, html.encode("utf-8"))
    return ReportResult(
        report_uri=uri,
        tracks=features.num_rows,
        quarantined=shard.quarantine.num_rows,
        flags=len(flag_pairs),
    )


# ------------------------------------------------------------------------------------ source


class SourceParams(TaskModel):
    catalog_root: str = Field(default="", description="Existing catalog root; empty: generate the demo catalog.")
    labelled_root: str = Field(default="", description="Existing labelled folder; empty: the generated one.")
    tracks: int = Field(default=48, ge=1, le=100_000, description="Generated tracks (demo catalog only).")
    seed: int = Field(default=0, ge=0, le=2**31 - 1, description="Seed of the generated catalog.")
    min_seconds: float = Field(default=20.0, gt=0, le=600, description="Shortest generated track.")
    max_seconds: float = Field(default=40.0, gt=0, le=600, description="Longest generated track.")
    labelled_per_class: int = Field(default=24, ge=2, le=10_000, description="Generated labelled clips per class.")

    _nul = field_validator("catalog_root", "labelled_root")(_no_nul)


class SourceResult(TaskModel):
    catalog_root: str
    labelled_root: str
    generated: bool
    planted: dict[str, str]


@ai_task(name="audio.source", version="1.0.0", retry=RetryPolicy(max_attempts=2))
def source_task(params: SourceParams, ctx: TaskContext) -> SourceResult:
    """The catalog to analyse: the given one, or a generated synthetic catalog with planted problems.

    EN: Passes an existing catalog (and labelled folder) through; without one, writes the documented
    synthetic catalog under the storage root: procedural tracks of four classes in OGG, FLAC, MP3 and
    WAV at 44.1/48 kHz, mono and stereo, mastered to release loudness, plus planted problems (a
    near-duplicate, silence, clipping, an empty file, a truncated file, a playlist named .wav, NaN
    samples) and a labelled training folder.
    FR: Transmet un catalogue existant (et un dossier étiqueté) ; sans catalogue, écrit sous la racine
    de stockage le catalogue synthétique documenté : des titres procéduraux de quatre classes en OGG,
    FLAC, MP3 et WAV à 44,1/48 kHz, mono et stéréo, au niveau sonore d'une sortie commerciale, plus des
    problèmes plantés (un quasi-doublon, du silence, de l'écrêtage, un fichier vide, un fichier
    tronqué, une liste de lecture nommée .wav, des échantillons NaN) et un dossier d'entraînement
    étiqueté.
    DE: Reicht einen vorhandenen Katalog (und gelabelten Ordner) durch; ohne Katalog schreibt er unter
    der Speicherwurzel den dokumentierten synthetischen Katalog: prozedurale Titel aus vier Klassen in
    OGG, FLAC, MP3 und WAV mit 44,1/48 kHz, mono und stereo, auf Veröffentlichungslautheit gemastert,
    dazu eingebaute Probleme (ein Beinahe-Duplikat, Stille, Clipping, eine leere Datei, eine
    abgeschnittene Datei, eine als .wav benannte Playlist, NaN-Samples) und einen gelabelten
    Trainingsordner.
    """
    from aitasks.audio_analysis.demo_catalog import write_demo_catalog
    from aitasks.runtime.errors import FieldIssue, InvalidInputError
    from aitasks.runtime.storage import is_gcs

    if params.catalog_root:
        return SourceResult(
            catalog_root=params.catalog_root, labelled_root=params.labelled_root, generated=False, planted={}
        )
    if is_gcs(ctx.settings.storage_root):
        raise InvalidInputError(ctx.task, [FieldIssue("catalog_root", "required when the storage root is gs://")])
    if params.min_seconds > params.max_seconds:
        raise InvalidInputError(ctx.task, [FieldIssue("min_seconds", "must not exceed max_seconds")])
    root = Path(ctx.output_uri("catalog"))
    truth = write_demo_catalog(
        root,
        tracks=params.tracks,
        seed=params.seed,
        labelled_per_class=params.labelled_per_class,
        seconds=(params.min_seconds, params.max_seconds),
    )
    planted = truth["planted"]
    assert isinstance(planted, dict)
    return SourceResult(
        catalog_root=str(root),
        labelled_root=params.labelled_root or str(root.parent / f"{root.name}-labelled"),
        generated=True,
        planted={str(k): str(v) for k, v in planted.items()},
    )
