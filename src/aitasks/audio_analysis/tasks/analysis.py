"""``audio.analyze`` (one shard), ``audio.collect`` (the shards merged) and ``audio.anomalies`` (catalog-level)."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Annotated, Any

from pydantic import Field, field_validator

from aitasks.audio_analysis.anomaly import RuleConfig
from aitasks.audio_analysis.tasks.inputs import _no_nul
from aitasks.runtime.retry import RetryPolicy
from aitasks.runtime.task import (
    InputArtifact,
    InputLocation,
    Metric,
    OutputArtifact,
    Runtime,
    TaskContext,
    TaskModel,
    ai_task,
    storage_of,
)

# ----------------------------------------------------------------------------------- analyze


class AnalyzeAudioParams(TaskModel):
    listing_uri: InputArtifact = Field(description="Catalog listing from audio.list_catalog.")
    shard_index: int = Field(default=0, ge=0, description="Which shard of the listing to analyse.")
    sample_rate: int = Field(default=22050, ge=8000, le=96000, description="Analysis sample rate.")
    min_source_rate: int = Field(default=8000, ge=1, description="Lowest accepted file sample rate.")
    max_source_rate: int = Field(default=192000, ge=1, description="Highest accepted file sample rate.")
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
    """Decode workers: the setting when given, else one per usable CPU."""
    from aitasks.platform.compute import usable_cpus

    return rt_workers or usable_cpus()


@ai_task(name="audio.analyze", version="1.1.0", retry=RetryPolicy(max_attempts=2), state=_limits_state)
def analyze_audio_task(params: AnalyzeAudioParams, ctx: TaskContext) -> AnalyzeAudioResult:
    """Decode and analyse one shard of the catalog: features, signal checks, fingerprints, quarantine.

    EN: Decodes every file of the shard (WAV, FLAC, OGG, MP3 via libsndfile), checks it first (real
    format vs extension, ID3 tags with no audio, size, channels, sample rate (8-192 kHz by default),
    duration, truncated streams: MP3 frames and Ogg pages walked to their end, headers that lie about
    their length with an MP3's encoder delay and padding allowed, NaN samples), mixes down to mono and
    resamples once with soxr. One STFT per file feeds every spectral feature (log-mel, MFCC, chroma,
    centroid, bandwidth, rolloff, flatness, contrast, ZCR, RMS, onset strength, tempo) plus BS.1770
    loudness, summarised into a fixed-length named vector; rule checks (silence, clipping, DC offset,
    length, loudness, sample rate) and a compact fingerprint come from the same pass. Files run in
    worker processes with a hard per-file timeout; a bad file is quarantined with its reason and never
    stops the shard.
    FR: Décode chaque fichier du lot (WAV, FLAC, OGG, MP3 via libsndfile) après l'avoir vérifié (format
    réel contre extension, balises ID3 sans audio, taille, canaux, fréquence d'échantillonnage (8 à 192
    kHz par défaut), durée, flux tronqués : trames MP3 et pages Ogg parcourues jusqu'au bout, en-têtes
    qui mentent sur la longueur, en admettant le délai et le bourrage d'un encodeur MP3, échantillons
    NaN), le réduit en mono et le rééchantillonne une seule fois avec soxr. Une seule STFT par fichier
    alimente toutes les caractéristiques spectrales (log-mel, MFCC, chroma, centroïde, largeur de bande,
    rolloff, planéité, contraste, ZCR, RMS, force des attaques, tempo) plus l'intensité BS.1770,
    résumées en un vecteur nommé de longueur fixe ; les règles (silence, écrêtage, composante continue,
    durée, intensité, fréquence) et une empreinte compacte viennent du même passage. Les fichiers
    tournent dans des processus avec un délai maximal par fichier ; un fichier défectueux est mis en
    quarantaine avec son motif sans arrêter le lot.
    DE: Dekodiert jede Datei des Shards (WAV, FLAC, OGG, MP3 über libsndfile) nach einer Prüfung
    (tatsächliches Format gegen Endung, ID3-Tags ohne Audio, Größe, Kanäle, Abtastrate (standardmäßig
    8-192 kHz), Dauer, abgeschnittene Streams: MP3-Frames und Ogg-Seiten bis zum Ende gelesen, Header
    mit falscher Länge, wobei Encoder-Verzögerung und -Auffüllung eines MP3 erlaubt sind, NaN-Samples),
    mischt auf Mono und resampelt einmal mit soxr. Eine einzige STFT pro Datei speist alle spektralen
    Merkmale (Log-Mel, MFCC, Chroma, Schwerpunkt, Bandbreite, Rolloff, Flachheit, Kontrast, ZCR, RMS,
    Onset-Stärke, Tempo) plus BS.1770-Lautheit, zusammengefasst zu einem benannten Vektor fester Länge;
    Regelprüfungen (Stille, Clipping, Gleichanteil, Länge, Lautheit, Abtastrate) und ein kompakter
    Fingerabdruck entstehen im selben Durchgang. Dateien laufen in Worker-Prozessen mit hartem Zeitlimit
    pro Datei; eine fehlerhafte Datei kommt mit Grund in Quarantäne und hält den Shard nie an.
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
    shard_uris: list[InputLocation] = Field(
        min_length=1, max_length=4096, description="Shard bundles of audio.analyze."
    )

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
        opened = [stack.enter_context(open_bundle(u, ctx.storage, kind="audio_shard")) for u in params.shard_uris]
        counts = merge_shards([folder for folder, _ in opened], Path(tmp))
        # The shards' analysis config travels on (the report labels its axes with the resampling rate).
        config = opened[0][1].get("meta", {}).get("config", {})
        uri = publish_bundle(
            ctx.storage, Path(tmp), ctx.output_uri("analysis"), kind="audio_analysis", meta={**counts, "config": config}
        )
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
