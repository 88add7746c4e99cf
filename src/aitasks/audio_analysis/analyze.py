"""Analyse catalog files: decode, one-STFT features, signal rules and a fingerprint per track.

:func:`analyze_entry` is the unit of work of the process pool (bound to the config once per worker):
it never raises for a bad file; a refusal becomes a :class:`TrackAnalysis` with ``ok=False``, a reason
code and a sentence, so one bad file never stops a shard. :func:`analyze_entries` runs it over many
files with a hard per-file timeout (:mod:`aitasks.audio_analysis.parallel`) or, with ``workers=0``, in this process (no
timeout: for tests and benchmarks only). :func:`write_shard` / :func:`read_shard` store the results
as Parquet (features, flags, quarantine, fingerprints) plus an ``.npz`` of small spectrograms for the
report (loaded with ``allow_pickle=False``).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from aitasks.audio_analysis.anomaly import Flag, RuleConfig, SignalStats, apply_rules, quarantine_flag, signal_stats
from aitasks.audio_analysis.catalog import LISTING_REASONS, CatalogEntry, Refusal
from aitasks.audio_analysis.decode import REASONS, AudioDecodeError, DecodeConfig, decode_file
from aitasks.audio_analysis.features import FeatureConfig, extract_features, feature_names

FEATURES_FILE = "features.parquet"
FLAGS_FILE = "flags.parquet"
QUARANTINE_FILE = "quarantine.parquet"
FINGERPRINTS_FILE = "fingerprints.parquet"
SPECTROGRAMS_FILE = "spectrograms.npz"
#: Track metadata columns written before the feature columns.
META_COLUMNS = ("track_id", "key", "uri", "format", "source_rate", "channels", "duration_s", "seconds")


class AnalysisConfig(BaseModel):
    """Everything that changes an analysis result (so all of it is part of the task's key)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    decode: DecodeConfig = Field(default_factory=DecodeConfig)
    features: FeatureConfig = Field(default_factory=FeatureConfig)
    rules: RuleConfig = Field(default_factory=RuleConfig)
    #: Keep a small log-mel image (64 bands x at most ``spectrogram_frames``) for the report.
    spectrogram_frames: int = Field(default=256, ge=0, le=4096)


@dataclass
class TrackAnalysis:
    """The outcome for one file: features and flags, or a refusal."""

    track_id: str
    uri: str
    ok: bool
    key: str = ""
    reason: str = ""
    detail: str = ""
    features: np.ndarray | None = None
    stats: SignalStats | None = None
    flags: list[Flag] = field(default_factory=list)
    fingerprint: np.ndarray | None = None
    spectrogram: np.ndarray | None = None
    format: str = ""
    source_rate: int = 0
    channels: int = 0
    duration_s: float = 0.0
    seconds: float = 0.0


def refused(entry: CatalogEntry, reason: str, detail: str) -> TrackAnalysis:
    """A refusal record for ``entry`` (reason: a decode reason code, ``timeout`` or ``worker_crash``)."""
    return TrackAnalysis(
        track_id=entry.track_id,
        uri=entry.uri,
        key=entry.key,
        ok=False,
        reason=reason,
        detail=detail,
        flags=[quarantine_flag(reason, detail)],
    )


def _thumbnail(log_mel: np.ndarray, frames: int) -> np.ndarray:
    """Pool a log-mel to at most 64 bands x ``frames`` frames (float16: a report picture, not data)."""
    bands = log_mel.shape[0]
    group = max(1, bands // 64)
    step = max(1, int(np.ceil(log_mel.shape[1] / frames)))
    kept = log_mel[: (bands // group) * group, ::step]  # only the frames shown are pooled
    thumb: np.ndarray = kept.reshape(-1, group, kept.shape[1]).mean(axis=1).astype(np.float16)
    return thumb


def analyze_file(path: Path, entry: CatalogEntry, cfg: AnalysisConfig) -> TrackAnalysis:
    """Analyse one local file; bad files come back as ``ok=False`` with a reason, never raise."""
    from aitasks.audio_analysis.anomaly import fingerprint

    start = time.perf_counter()
    try:
        audio = decode_file(path, cfg.decode)
    except AudioDecodeError as exc:
        out = refused(entry, exc.reason, exc.detail)
        out.seconds = time.perf_counter() - start
        return out
    feats = extract_features(audio.samples, audio.sample_rate, cfg.features, log_mel=True)
    stats = signal_stats(audio.native, audio.source_rate, loudness_lufs=feats.loudness_lufs)
    assert feats.log_mel is not None
    return TrackAnalysis(
        track_id=entry.track_id,
        uri=entry.uri,
        key=entry.key,
        ok=True,
        features=feats.values,
        stats=stats,
        flags=apply_rules(stats, cfg.rules),
        fingerprint=fingerprint(feats.log_mel),
        spectrogram=_thumbnail(feats.log_mel, cfg.spectrogram_frames) if cfg.spectrogram_frames else None,
        format=audio.format,
        source_rate=audio.source_rate,
        channels=audio.channels,
        duration_s=audio.duration_s,
        seconds=time.perf_counter() - start,
    )


def analyze_one(job: tuple[CatalogEntry, AnalysisConfig]) -> TrackAnalysis:
    """Fetch the file when remote, then :func:`analyze_file`."""
    entry, cfg = job
    return analyze_entry(cfg, entry)


def analyze_entry(cfg: AnalysisConfig, entry: CatalogEntry) -> TrackAnalysis:
    """Pool entry point (bound to ``cfg`` once per worker): fetch the file when remote, then :func:`analyze_file`."""
    from aitasks.runtime.storage import local_copy

    try:
        with local_copy(entry.uri) as path:
            return analyze_file(path, entry, cfg)
    except OSError as exc:
        return refused(entry, "decode_error", f"cannot read: {exc.strerror or exc}")


def analyze_entries(
    entries: list[CatalogEntry],
    cfg: AnalysisConfig,
    *,
    workers: int,
    timeout_s: float,
    progress: Any = None,
) -> list[TrackAnalysis]:
    """Analyse ``entries`` in ``workers`` processes, each file bounded by ``timeout_s``.

    ``workers=0`` runs in this process without a timeout (tests, benchmarks).
    """
    if workers == 0:
        from threadpoolctl import threadpool_limits

        # One BLAS thread, as in the pool's workers: the summation order (and so every float) is
        # the same whatever the worker count.
        with threadpool_limits(limits=1):
            return [analyze_entry(cfg, e) for e in entries]
    import functools

    from aitasks.audio_analysis.parallel import run_pool

    return run_pool(
        functools.partial(analyze_entry, cfg),  # the config travels once per worker, not once per file
        entries,
        workers=workers,
        timeout_s=timeout_s,
        on_timeout=lambda e: refused(e, "timeout", f"no result within {timeout_s:g} s; the worker was killed"),
        on_crash=lambda e, why: refused(e, "decode_error", why),
        progress=progress,
    )


def decode_one(job: tuple[str, DecodeConfig]) -> np.ndarray | str:
    """Pool entry point of :func:`decode_many`: the samples, or the refusal as text."""
    from aitasks.runtime.storage import local_copy

    uri, cfg = job
    try:
        with local_copy(uri) as path:
            return decode_file(path, cfg).samples
    except AudioDecodeError as exc:
        return f"{exc.reason}: {exc.detail}"
    except OSError as exc:
        return f"decode_error: cannot read: {exc.strerror or exc}"


def decode_many(uris: list[str], cfg: DecodeConfig, *, workers: int, timeout_s: float) -> list[np.ndarray | str]:
    """Decode ``uris`` in worker processes with the per-file timeout (``workers=0``: in this process)."""
    jobs = [(u, cfg) for u in uris]
    if workers == 0:
        return [decode_one(j) for j in jobs]
    from aitasks.audio_analysis.parallel import run_pool

    return run_pool(
        decode_one,
        jobs,
        workers=workers,
        timeout_s=timeout_s,
        on_timeout=lambda j: f"timeout: no result within {timeout_s:g} s",
        on_crash=lambda j, why: f"decode_error: {why}",
    )


# ------------------------------------------------------------------------------ shard files


def write_shard(
    results: list[TrackAnalysis], out: Path, cfg: AnalysisConfig, *, refusals: list[Refusal] | None = None
) -> dict[str, int]:
    """Write the shard's files into ``out``; returns counts (tracks, quarantined, flags)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    names = feature_names(cfg.features)
    good = [r for r in results if r.ok]
    cols: dict[str, Any] = {
        "track_id": pa.array([r.track_id for r in good], pa.string()),
        "key": pa.array([r.key for r in good], pa.string()),
        "uri": pa.array([r.uri for r in good], pa.string()),
        "format": pa.array([r.format for r in good], pa.string()),
        "source_rate": pa.array([r.source_rate for r in good], pa.int32()),
        "channels": pa.array([r.channels for r in good], pa.int16()),
        "duration_s": pa.array([r.duration_s for r in good], pa.float64()),
        "seconds": pa.array([r.seconds for r in good], pa.float64()),
    }
    vectors = [r.features for r in good if r.features is not None]
    matrix = np.stack(vectors) if vectors else np.zeros((0, len(names)), np.float32)
    for j, name in enumerate(names):
        cols[name] = pa.array(matrix[:, j], pa.float32())
    stats_fields = list(SignalStats.model_fields)
    for f in stats_fields:
        cols[f"stat_{f}"] = pa.array([float(getattr(r.stats, f)) for r in good], pa.float64())
    pq.write_table(pa.table(cols), out / FEATURES_FILE)

    flag_rows = [(r.track_id, r.uri, fl) for r in results for fl in r.flags]
    pq.write_table(
        pa.table(
            {
                "track_id": pa.array([t for t, _, _ in flag_rows], pa.string()),
                "uri": pa.array([u for _, u, _ in flag_rows], pa.string()),
                "code": pa.array([f.code for _, _, f in flag_rows], pa.string()),
                "severity": pa.array([f.severity for _, _, f in flag_rows], pa.string()),
                "score": pa.array([float(f.score) for _, _, f in flag_rows], pa.float64()),
                "reason": pa.array([f.reason for _, _, f in flag_rows], pa.string()),
            }
        ),
        out / FLAGS_FILE,
    )
    bad = [(r.track_id, r.key, r.uri, r.reason, r.detail) for r in results if not r.ok]
    bad += [("", x.key, x.uri, x.reason, x.detail) for x in refusals or []]
    pq.write_table(
        pa.table(
            {
                "track_id": pa.array([b[0] for b in bad], pa.string()),
                "key": pa.array([b[1] for b in bad], pa.string()),
                "uri": pa.array([b[2] for b in bad], pa.string()),
                "reason": pa.array([b[3] for b in bad], pa.string()),
                "detail": pa.array([b[4] for b in bad], pa.string()),
            }
        ),
        out / QUARANTINE_FILE,
    )
    pq.write_table(
        pa.table(
            {
                "track_id": pa.array([r.track_id for r in good], pa.string()),
                "fingerprint": pa.array(
                    [np.asarray(r.fingerprint, dtype=np.uint32).tobytes() for r in good], pa.binary()
                ),
            }
        ),
        out / FINGERPRINTS_FILE,
    )
    specs = {r.track_id: r.spectrogram for r in good if r.spectrogram is not None}
    np.savez_compressed(out / SPECTROGRAMS_FILE, **specs)  # type: ignore[arg-type]
    (out / "feature_names.json").write_text(json.dumps(list(names)), "utf-8")
    return {"tracks": len(good), "quarantined": len(bad), "flags": len(flag_rows)}


@dataclass(frozen=True)
class Shard:
    """A shard's (or a whole catalog's) analysis, read back."""

    features: Any  # pyarrow.Table
    flags: Any
    quarantine: Any
    fingerprints: dict[str, np.ndarray]
    spectrograms: dict[str, np.ndarray]
    names: tuple[str, ...]

    def matrix(self) -> np.ndarray:
        """The (tracks x features) float32 matrix in ``names`` order."""
        if self.features.num_rows == 0:
            return np.zeros((0, len(self.names)), np.float32)
        return np.column_stack([self.features.column(n).to_numpy() for n in self.names]).astype(np.float32)


def read_shard(folder: Path) -> Shard:
    """Read the files :func:`write_shard` wrote."""
    import pyarrow.parquet as pq

    fps = pq.read_table(folder / FINGERPRINTS_FILE).to_pydict()
    with np.load(folder / SPECTROGRAMS_FILE, allow_pickle=False) as npz:
        specs = {k: npz[k] for k in npz.files}
    return Shard(
        features=pq.read_table(folder / FEATURES_FILE),
        flags=pq.read_table(folder / FLAGS_FILE),
        quarantine=pq.read_table(folder / QUARANTINE_FILE),
        fingerprints={
            t: np.frombuffer(b, dtype=np.uint32) for t, b in zip(fps["track_id"], fps["fingerprint"], strict=True)
        },
        spectrograms=specs,
        names=tuple(json.loads((folder / "feature_names.json").read_text("utf-8"))),
    )


def merge_shards(folders: list[Path], out: Path) -> dict[str, int]:
    """Concatenate shard folders into ``out`` (same files); duplicate track ids are a contract breach."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    shards = [read_shard(f) for f in folders]
    if not shards:
        raise ValueError("no shards to merge")
    names = shards[0].names
    for s in shards[1:]:
        if s.names != names:
            raise ValueError("shards were analysed with different feature sets")
    tables: dict[str, Any] = {}
    for attr, fname in (
        ("features", FEATURES_FILE),
        ("flags", FLAGS_FILE),
        ("quarantine", QUARANTINE_FILE),
    ):
        # Sorted by track (then file): the merged analysis does not depend on the order shards arrive in.
        t = pa.concat_tables([getattr(s, attr) for s in shards]).sort_by(
            [("track_id", "ascending"), ("uri", "ascending")]
        )
        tables[attr] = t
        pq.write_table(t, out / fname)
    ids = tables["features"].column("track_id").to_pylist()
    if len(ids) != len(set(ids)):
        raise ValueError("a track id appears in more than one shard")
    fps: dict[str, np.ndarray] = {}
    specs: dict[str, np.ndarray] = {}
    for s in shards:
        fps.update(s.fingerprints)
        specs.update(s.spectrograms)
    pq.write_table(
        pa.table(
            {
                "track_id": pa.array(list(fps), pa.string()),
                "fingerprint": pa.array([v.tobytes() for v in fps.values()], pa.binary()),
            }
        ),
        out / FINGERPRINTS_FILE,
    )
    np.savez_compressed(out / SPECTROGRAMS_FILE, **specs)  # type: ignore[arg-type]
    (out / "feature_names.json").write_text(json.dumps(list(names)), "utf-8")
    return {
        "tracks": tables["features"].num_rows,
        "quarantined": tables["quarantine"].num_rows,
        "flags": tables["flags"].num_rows,
    }


def quarantine_reasons() -> dict[str, str]:
    """Every reason a file can be quarantined for, with its meaning."""
    return {**REASONS, **LISTING_REASONS}
