"""A model card per registered recommender version: what it was trained on, how good it is, what not to use it for.

:func:`build_model_card` gathers the facts from what the pipeline already produced (the training-set
bundle, the model bundle's manifest, the evaluation's metrics JSON, the registered version's lineage
tags); :func:`render_markdown` renders them. The JSON (:meth:`ModelCard.model_dump_json`) and the
Markdown are logged as MLflow artifacts of the version's run (``model_card/``) and become the step's
KFP ``Markdown`` artifact. Nothing here is invented: a fact that is not available says so.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Final

import polars as pl
from pydantic import BaseModel, ConfigDict, Field

from aitasks.runtime.errors import DataFormatError

__all__ = ["CardMetric", "DataSnapshot", "ModelCard", "build_model_card", "render_markdown"]

CARD_DIR: Final = "model_card"

INTENDED_USE: Final = (
    "Candidate retrieval for track recommendations of listeners of this service: the user vector against "
    "the HNSW index of track vectors, then the serving filters and any downstream ranking.",
    "Offline comparison against the popularity baseline and the current champion (the blessing gate).",
)
OUT_OF_SCOPE: Final = (
    "Decisions about a person beyond which tracks to show (credit, employment, pricing, moderation).",
    "Inferring sensitive attributes from listening (the features hold none and the model is not trained for it).",
    "Listeners or catalogs of another service: the vocabularies and feature statistics are this data's.",
)


class DataSnapshot(BaseModel):
    """The data a version was trained on."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    training_set_sha256: str = Field(description="Content hash of the training-set bundle (its manifest).")
    snapshot_hash: str = Field(description="Hash of the events and catalog files the set was built from.")
    train_rows: int
    train_users: int
    items: int
    first_play: str
    last_play: str
    split_at: str = Field(description="Start of the held-out day(s) of the evaluation.")
    genre_vocabulary: str = Field(description="Version of the genre vocabulary ('none' for sets without one).")
    genres: int


class CardMetric(BaseModel):
    """One evaluation metric of the model against the popularity baseline."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str
    model: float
    popularity: float
    ratio: float | None = None
    ratio_low: float | None = None
    ratio_high: float | None = None


class ModelCard(BaseModel):
    """The card of one registered version."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    model_name: str
    version: int
    model_sha256: str
    code_version: str
    git_revision: str
    pipeline: str
    kfp_run_id: str
    data: DataSnapshot
    protocol: str = Field(description="Evaluation protocol of the gate (and serving default).")
    confidence: float | None
    metrics: list[CardMetric]
    blessed: bool
    reasons: list[str]
    training_config: dict[str, Any]
    intended_use: list[str]
    out_of_scope: list[str]
    limits: list[str]


def _snapshot(ts_dir: Path, ts_sha: str, ts_meta: Mapping[str, Any]) -> DataSnapshot:
    from aitasks.model_training.recommender import read_vocabularies

    try:
        train = pl.read_parquet(ts_dir / "train.parquet", columns=["user_id", "event_timestamp"])
        items = pl.read_parquet(ts_dir / "items.parquet", columns=["track_id"])
    except Exception as exc:  # polars raises several types for a missing or non-Parquet file
        raise DataFormatError(str(ts_dir), f"not a readable training set: {exc}") from None
    vocab = read_vocabularies(ts_dir)
    return DataSnapshot(
        training_set_sha256=ts_sha,
        snapshot_hash=str(ts_meta.get("snapshot_hash", "")),
        train_rows=train.height,
        train_users=train["user_id"].n_unique(),
        items=items.height,
        first_play=str(train["event_timestamp"].min()),
        last_play=str(train["event_timestamp"].max()),
        split_at=str(ts_meta.get("split_at", "")),
        genre_vocabulary="none" if vocab is None else vocab.genres.version,
        genres=0 if vocab is None else len(vocab.genres.keys),
    )


def build_model_card(
    *,
    model_name: str,
    version: int,
    version_tags: Mapping[str, str],
    model_meta: Mapping[str, Any],
    model_sha: str,
    evaluation: Mapping[str, Any],
    ts_dir: Path,
    ts_sha: str,
    ts_meta: Mapping[str, Any],
) -> ModelCard:
    """The card from the pipeline's own records.

    Args:
        model_name: Registered model name.
        version: Registered version.
        version_tags: The version's tags (lineage: ``aitasks.code_version``, ``aitasks.git_revision``, ...).
        model_meta: The model bundle manifest's ``meta`` (training parameters, data snapshot, loss curve).
        model_sha: Content hash of the model bundle.
        evaluation: The evaluation's metrics JSON (``model.evaluate``).
        ts_dir: The training-set directory.
        ts_sha: Content hash of the training-set bundle.
        ts_meta: The training-set manifest's ``meta``.
    """
    data = _snapshot(ts_dir, ts_sha, ts_meta)
    gate = evaluation.get("gate") or {}
    vs_pop = gate.get("vs_popularity") or {}
    rule = gate.get("rule") or {}
    gate_metric = str(rule.get("metric", "recall_at_10"))
    model_m, pop_m = evaluation.get("model") or {}, evaluation.get("popularity") or {}
    metrics = []
    for name in ("recall_at_10", "ndcg_at_10", "coverage_at_10", "recall_at_50", "recall_at_100"):
        if isinstance(model_m.get(name), int | float) and isinstance(pop_m.get(name), int | float):
            m, p = float(model_m[name]), float(pop_m[name])
            interval = name == gate_metric and vs_pop
            metrics.append(
                CardMetric(
                    name=name,
                    model=m,
                    popularity=p,
                    ratio=m / p if p > 0 else None,
                    ratio_low=float(vs_pop["ratio_low"]) if interval and "ratio_low" in vs_pop else None,
                    ratio_high=float(vs_pop["ratio_high"]) if interval and "ratio_high" in vs_pop else None,
                )
            )
    serving = evaluation.get("serving") or {}
    protocol = str(serving.get("protocol", "all"))
    blessing = evaluation.get("blessing") or {}
    users = model_m.get("users")
    limits = [
        f"Evaluated offline on {users if users is not None else 'an unknown number of'} held-out listeners of the "
        f"day(s) from {data.split_at or 'the split'}: next plays, not satisfaction, revenue or long-term effects.",
        f"Trained on {data.train_rows} plays of {data.train_users} listeners between {data.first_play} and "
        f"{data.last_play}; tastes, catalog and features drift: retrain and re-evaluate daily.",
        "Listeners the model does not know are served the popularity list; tracks without plays are embedded "
        "from their catalog features only and rank low.",
        "Popular tracks are over-represented in the training plays; the logQ correction reduces, not removes, "
        "the popularity bias (see coverage@10 against popularity).",
    ]
    if data.genre_vocabulary == "none":
        limits.append("The training set carries no genre vocabulary: genre ids cannot be checked at serving time.")
    params = model_meta.get("params") or {}
    return ModelCard(
        model_name=model_name,
        version=version,
        model_sha256=model_sha,
        code_version=str(version_tags.get("aitasks.code_version") or model_meta.get("task", "")),
        git_revision=str(version_tags.get("aitasks.git_revision", "")),
        pipeline=str(version_tags.get("aitasks.pipeline", "")),
        kfp_run_id=str(version_tags.get("aitasks.kfp_run_id", "")),
        data=data,
        protocol=protocol,
        confidence=float(rule["confidence"]) if "confidence" in rule else None,
        metrics=metrics,
        blessed=bool(blessing.get("blessed", False)),
        reasons=[str(r) for r in blessing.get("reasons", [])],
        training_config={str(k): v for k, v in sorted(params.items())},
        intended_use=list(INTENDED_USE),
        out_of_scope=list(OUT_OF_SCOPE),
        limits=limits,
    )


def _md(text: str) -> str:
    """Markdown-inert text: every character a viewer could read as markup is escaped."""
    out = []
    for ch in str(text):
        out.append("\\" + ch if ch in "\\`*_{}[]<>()#+-!|~" else ch)
    return "".join(out).replace("\n", " ")


def _num(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.4f}"


def render_markdown(card: ModelCard) -> str:
    """The card as Markdown (tables and lists only: KFP's viewer shows it as is; every value escaped)."""
    d = card.data
    md = [f"# Model card: {_md(card.model_name)} v{card.version}", ""]
    verdict = "blessed" if card.blessed else "not blessed"
    md += [f"**Evaluation: {verdict}** (protocol {_md(card.protocol)})", ""]
    md += [f"- {_md(r)}" for r in card.reasons]
    md += ["", "## Intended use", ""] + [f"- {_md(u)}" for u in card.intended_use]
    md += ["", "## Out of scope", ""] + [f"- {_md(u)}" for u in card.out_of_scope]
    md += ["", "## Limits", ""] + [f"- {_md(u)}" for u in card.limits]
    conf = "" if card.confidence is None else f" ({card.confidence * 100:g}% paired bootstrap interval)"
    md += ["", "## Metrics against popularity", "", f"Held-out day, protocol {_md(card.protocol)}{conf}.", ""]
    md += ["| metric | model | popularity | ratio | ratio low | ratio high |", "|---|---|---|---|---|---|"]
    md += [
        f"| {_md(m.name)} | {m.model:.4f} | {m.popularity:.4f} | {_num(m.ratio)} | {_num(m.ratio_low)} | "
        f"{_num(m.ratio_high)} |"
        for m in card.metrics
    ]
    md += ["", "## Data snapshot", "", "| fact | value |", "|---|---|"]
    for key, value in d.model_dump().items():
        md.append(f"| {_md(key)} | {_md(str(value))} |")
    md += ["", "## Training configuration", "", "| setting | value |", "|---|---|"]
    md += [f"| {_md(k)} | {_md(json.dumps(v))} |" for k, v in card.training_config.items()]
    md += ["", "## Code and lineage", "", "| fact | value |", "|---|---|"]
    for key in ("model_sha256", "code_version", "git_revision", "pipeline", "kfp_run_id"):
        md.append(f"| {_md(key)} | {_md(getattr(card, key) or 'n/a')} |")
    return "\n".join(md) + "\n"
