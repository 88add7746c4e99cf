"""What the audio pipeline publishes: ``audio.feast_write`` (track audio features) and ``audio.report`` (HTML)."""

from __future__ import annotations

import json

from pydantic import Field

from aitasks.runtime.retry import SERVICE_RETRY, RetryPolicy
from aitasks.runtime.task import (
    AsOfTime,
    InputArtifact,
    LogicalTimeParams,
    OutputArtifact,
    TaskContext,
    TaskModel,
    ai_task,
    current_hour,
)

# -------------------------------------------------------------------------------- Feast write


class FeastWriteParams(LogicalTimeParams):
    analysis_uri: InputArtifact = Field(description="Catalog analysis bundle.")
    anomalies_uri: InputArtifact = Field(description="Anomalies bundle (flag counts per track).")
    predictions_uri: InputArtifact = Field(description="Classifier predictions (Parquet).")
    project: str = Field(default="aitasks", pattern=r"^[A-Za-z][A-Za-z0-9_]{0,62}$", description="Feast project.")
    online_store: str = Field(default="", pattern=r"^(|sqlite|redis)$", description="Empty: from settings.")
    as_of: AsOfTime = Field(
        default_factory=current_hour,
        description="Analysis time (ISO 8601 with timezone): the rows' event time. Empty: the run's scheduled "
        "time, else its creation time, else the current hour (UTC).",
    )


class FeastWriteResult(TaskModel):
    project: str
    rows_written: int
    rows_total: int
    entities_materialized: int
    online_store: str


@ai_task(name="audio.feast_write", version="1.1.0", retry=SERVICE_RETRY, deadline_s=1800)
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
    from aitasks.audio_analysis.report import measure_spectrogram_scale, render_report
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
    track_ids = features.column("track_id").to_pylist()
    duration = dict(zip(track_ids, features.column("duration_s").to_pylist(), strict=True))
    # The analysis's resampling rate labels the frequency axis (older bundles carry no config: the default).
    config = manifest.get("meta", {}).get("config", {})
    sample_rate = int(config.get("decode", {}).get("sample_rate", 22050))
    html = render_report(
        title=params.title,
        track_ids=track_ids,
        feature_table={n: features.column(n).to_pylist() for n in shard.names},
        flags=flag_pairs,
        quarantine=[(r["uri"], r["reason"], r["detail"]) for r in shard.quarantine.to_pylist()],
        outliers=outliers,
        duplicates=dups,
        spectrograms=[(t, shard.spectrograms[t].astype("float32"), float(duration[t])) for t in shown],
        classes=dict(Counter(labels)),
        spectrogram_scale=measure_spectrogram_scale(sample_rate),
        meta={
            "run": ctx.runtime.run.run_id,
            "pipeline": ctx.runtime.run.pipeline,
            "trace": ctx.trace_id,
            "sample rate (Hz)": sample_rate,
            "rules": config.get("rules", {}),
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
