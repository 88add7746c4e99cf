"""The ``track_audio`` Feast feature view: audio features of each track, for the recommender.

It lives in the recommender's Feast project (default ``aitasks_reco``) on the same ``track`` entity,
so a feature service can join audio features to the behavioural ones. Its offline source is one
Parquet file under the repository's data root, ``<storage_root>/feast/<project>/offline/track_audio.parquet``
(a local path or a ``gs://`` object, like every task output), holding one row per (track, analysis
time); a new analysis appends rows (a compare-and-swap write: two writers never lose each other's
rows), the same analysis twice changes nothing. Writing applies the view (only the view, its source
and the entity: the recommender's objects are left alone) and materializes the new window into the
online store (sqlite or Redis), reading a local copy of the file.

The view holds a compact, stable subset of the analysis vector (:data:`AUDIO_FEATURES`), the
predicted class with its confidence, and the number of anomaly flags.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, Final, Literal

from pydantic import BaseModel, ConfigDict

from aitasks.runtime.errors import DataFormatError

if TYPE_CHECKING:
    import pyarrow as pa

    from aitasks.platform.feature_store import FeastConfig
    from aitasks.runtime.settings import Settings
    from aitasks.runtime.storage import Storage

TRACK_AUDIO_VIEW: Final = "track_audio"
TRACK_AUDIO_FILE: Final = "track_audio.parquet"
#: Analysis-vector features published to the view (Float32), in order.
AUDIO_FEATURES: Final[tuple[str, ...]] = (
    "tempo_bpm",
    "loudness_lufs",
    "duration_s",
    "centroid_mean",
    "bandwidth_mean",
    "rolloff_mean",
    "flatness_mean",
    "zcr_mean",
    "rms_mean",
    "onset_strength_mean",
    *(f"mfcc_{i:02d}_mean" for i in range(13)),
    *(f"chroma_{i:02d}_mean" for i in range(12)),
)
#: Columns besides the analysis features.
EXTRA_FEATURES: Final[tuple[tuple[str, str], ...]] = (
    ("audio_class", "String"),
    ("audio_class_confidence", "Float32"),
    ("anomaly_flags", "Int64"),
)


class TrackAudioReport(BaseModel):
    """What a write did."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    project: str
    offline_path: str
    rows_written: int
    rows_total: int
    entities_materialized: int
    event_time: datetime
    online_store: str


def track_audio_config(
    settings: Settings, *, project: str, online_store: Literal["sqlite", "redis"] | None = None
) -> FeastConfig:
    """The recommender project's Feast configuration (registry, online store) used for the view."""
    from aitasks.platform.feature_store import serving_config

    return serving_config(settings, project=project, online_store=online_store)


def offline_uri(cfg: FeastConfig) -> str:
    """Where the view's offline rows live: ``<data root>/offline/track_audio.parquet`` (local or ``gs://``)."""
    from aitasks.platform.feature_store import OFFLINE_DIR

    return cfg.data_uri(OFFLINE_DIR, TRACK_AUDIO_FILE)


def _objects(cfg: FeastConfig) -> list[Any]:
    from feast import FeatureView, Field, FileSource
    from feast import types as ftypes

    from aitasks.platform.feature_store import (
        CREATED_FIELD,
        TIMESTAMP_FIELD,
        build_feature_repo,
        offline_source_path,
    )

    repo = build_feature_repo(cfg)
    dtypes = {"Float32": ftypes.Float32, "Int64": ftypes.Int64, "String": ftypes.String}
    tags = {"owner": "audio-analysis", "family": "audio_analysis"}
    source = FileSource(
        name="track_audio_source",
        path=offline_source_path(TRACK_AUDIO_FILE),
        timestamp_field=TIMESTAMP_FIELD,
        created_timestamp_column=CREATED_FIELD,
        description="Audio analysis of each track (aitasks.audio_analysis), one row per analysis.",
        tags=tags,
    )
    view = FeatureView(
        name=TRACK_AUDIO_VIEW,
        entities=[repo.track],
        ttl=timedelta(days=3650),  # audio does not go stale: a track keeps its last analysis
        schema=[
            Field(name="track_id", dtype=ftypes.String),
            *(Field(name=n, dtype=ftypes.Float32) for n in AUDIO_FEATURES),
            *(Field(name=n, dtype=dtypes[t]) for n, t in EXTRA_FEATURES),
        ],
        source=source,
        online=True,
        description="Tempo, loudness, timbre (MFCC), harmony (chroma), class and anomaly count of a track.",
        tags=tags,
        owner="audio-analysis",
    )
    return [repo.project, repo.track, source, view]


def write_track_audio(
    cfg: FeastConfig,
    *,
    track_ids: Sequence[str],
    features: Mapping[str, Sequence[float]],
    classes: Mapping[str, tuple[str, float]],
    flag_counts: Mapping[str, int],
    event_time: datetime,
) -> TrackAudioReport:
    """Append one analysis to the offline file, apply the view and materialize it online.

    Args:
        cfg: The project's configuration (:func:`track_audio_config`).
        track_ids: Analysed tracks.
        features: Feature name -> values aligned with ``track_ids``; must hold every :data:`AUDIO_FEATURES`.
        classes: Track id -> (predicted class, confidence); tracks without one get "" and 0.
        flag_counts: Track id -> number of anomaly flags.
        event_time: The analysis time (timezone-aware); rows of the same time are replaced, not duplicated.

    Returns:
        The report.

    Raises:
        DataFormatError: A missing or non-finite feature, or a malformed existing offline file.
        ServiceUnavailableError: The Redis online store is unreachable.
    """
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    from aitasks.platform.feature_store import (
        CREATED_FIELD,
        TIMESTAMP_FIELD,
        local_offline,
        open_store,
        quiet,
        service_errors,
    )
    from aitasks.runtime.errors import PreconditionFailedError
    from aitasks.runtime.storage import storage_for

    if event_time.tzinfo is None:
        raise ValueError("event_time must be timezone-aware")
    ids = list(track_ids)
    missing = [n for n in AUDIO_FEATURES if n not in features]
    if missing:
        raise DataFormatError("track_audio", "missing feature(s): " + ", ".join(missing))
    cols: dict[str, Any] = {"track_id": pa.array(ids, pa.string())}
    for name in AUDIO_FEATURES:
        values = np.asarray(features[name], dtype=np.float32)
        if len(values) != len(ids):
            raise DataFormatError("track_audio", f"{name}: {len(values)} values for {len(ids)} tracks")
        if not np.isfinite(values).all():
            bad = ids[int(np.flatnonzero(~np.isfinite(values))[0])]
            raise DataFormatError("track_audio", f"{name} is not finite for track {bad!r}")
        cols[name] = pa.array(values, pa.float32())
    cols["audio_class"] = pa.array([classes.get(t, ("", 0.0))[0] for t in ids], pa.string())
    cols["audio_class_confidence"] = pa.array([float(classes.get(t, ("", 0.0))[1]) for t in ids], pa.float32())
    cols["anomaly_flags"] = pa.array([int(flag_counts.get(t, 0)) for t in ids], pa.int64())
    ts = event_time.astimezone(UTC)
    cols[TIMESTAMP_FIELD] = pa.array([ts] * len(ids), pa.timestamp("us", tz="UTC"))
    cols[CREATED_FIELD] = pa.array([ts] * len(ids), pa.timestamp("us", tz="UTC"))
    new = pa.table(cols)

    uri = offline_uri(cfg)
    storage = storage_for(uri)
    for attempt in range(1, _WRITE_ATTEMPTS + 1):
        version = storage.version(uri)
        table = _appended(storage, uri, new, ts) if version.token is not None else new
        sink = pa.BufferOutputStream()
        pq.write_table(table, sink)
        try:
            # Compare-and-swap on the version read: a concurrent writer's rows are never overwritten.
            storage.compare_and_swap(uri, sink.getvalue().to_pybytes(), version)
            break
        except PreconditionFailedError:
            if attempt == _WRITE_ATTEMPTS:
                raise
    with local_offline(cfg, {TRACK_AUDIO_FILE: uri}) as local:
        store = open_store(cfg, offline=local)
        with quiet(), service_errors(cfg):
            store.apply(_objects(cfg))
            store.materialize(ts - timedelta(seconds=1), ts + timedelta(seconds=1), feature_views=[TRACK_AUDIO_VIEW])
    return TrackAudioReport(
        project=cfg.project,
        offline_path=uri,
        rows_written=new.num_rows,
        rows_total=table.num_rows,
        entities_materialized=len(set(ids)),
        event_time=ts,
        online_store=cfg.online_store.kind,
    )


#: Compare-and-swap attempts of one offline append before a concurrent writer's change is an error.
_WRITE_ATTEMPTS = 5


def _appended(storage: Storage, uri: str, new: pa.Table, ts: datetime) -> pa.Table:
    """The offline file at ``uri`` with ``new`` appended; rows of the same analysis time are replaced."""
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    from aitasks.platform.feature_store import TIMESTAMP_FIELD

    try:
        old = pq.read_table(pa.BufferReader(storage.read_bytes(uri)))
    except FileNotFoundError:
        return new
    except Exception as exc:  # pyarrow raises several types for a non-Parquet file
        raise DataFormatError(uri, f"not a readable Parquet file ({type(exc).__name__})") from None
    if old.schema.names != new.schema.names:
        raise DataFormatError(uri, "existing rows have another schema; migrate the file first")
    # The same analysis time is replaced: a retried write never duplicates rows.
    keep = pc.invert(pc.equal(old.column(TIMESTAMP_FIELD), pa.scalar(ts, pa.timestamp("us", tz="UTC"))))
    return pa.concat_tables([old.filter(keep), new.cast(old.schema)])


def read_track_audio(cfg: FeastConfig, track_ids: Sequence[str], features: Sequence[str]) -> dict[str, list[Any]]:
    """Online values of ``features`` of the view for ``track_ids`` (unknown tracks get None)."""
    from aitasks.platform.feature_store import open_store, service_errors

    store = open_store(cfg)
    with service_errors(cfg):
        resp = store.get_online_features(
            features=[f"{TRACK_AUDIO_VIEW}:{f}" for f in features],
            entity_rows=[{"track_id": t} for t in track_ids],
        )
    return dict(resp.to_dict())
