"""Serving-side recommendations: online features -> user tower -> current index -> (filter played).

The index version named by ``CURRENT`` decides the model: its manifest records the model version
whose item tower produced the indexed vectors, and only that model's user tower embeds into the
same space. (The pipeline publishes an index only for a blessed model, so it is the champion; when
someone moves the alias without republishing, the index's model still answers and the result says
which version that was.)

Whether tracks the user already played are dropped is a per-request choice (``filter_played``).
Its default is the serving mode the evaluation recorded for that model version (registry tag
``aitasks.filter_played``, written by ``model.register`` from ``model.evaluate``): the evaluation
keeps played tracks when that recovers more of what listeners actually play next, and drops them
when discovery serves them better. A version registered before the tag existed filters (the old
behaviour), and the answer says where its setting came from.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Final, Literal

import numpy as np
import polars as pl
from pydantic import BaseModel, ConfigDict, Field

from aitasks.runtime.errors import FieldIssue, InvalidInputError
from aitasks.runtime.settings import Settings

_TASK: Final = "reco.recommend"
#: Registry tag of a model version: the serving default its evaluation recorded ("true"/"false").
FILTER_PLAYED_TAG: Final = "aitasks.filter_played"
_ID = r"^[A-Za-z0-9_-]{1,64}$"


class Recommended(BaseModel):
    model_config = ConfigDict(frozen=True)

    track_id: str
    score: float


class Recommendations(BaseModel):
    """The answer for one user, with where it came from."""

    model_config = ConfigDict(frozen=True)

    user_id: str
    items: list[Recommended]
    source: Literal["model", "popularity"]
    reason: str = Field(description="Why this source: a known user, or why the fallback was used.")
    index_name: str
    index_version: int
    model_name: str
    model_version: int
    champion_version: int | None
    filter_played: bool = Field(description="Whether tracks the user already played were left out.")
    filter_played_source: Literal["request", "evaluation", "default"] = Field(
        description="request: the caller chose; evaluation: the model version's recorded serving mode; "
        "default: no recorded mode (filtered)."
    )
    filtered_played: int = Field(description="Played tracks left out (0 when not filtering).")


def _model_dir(settings: Settings, model_name: str, version: int) -> Path:
    """The model version's files, downloaded once into a local cache (checksums verified).

    A local storage root keeps its cache beside the runs; a ``gs://`` root caches on this machine's temp
    directory, one folder per root (``Path("gs://b")`` would be the relative path ``gs:/b``).
    """
    from aitasks.platform.files import root_cache_dir
    from aitasks.platform.registry import download_model, registry_config
    from aitasks.runtime.storage import is_gcs

    root = settings.storage_root
    base = root_cache_dir("model-cache", root) if is_gcs(root) else Path(root) / "cache"
    cache = base / "models" / model_name / f"v{version}"
    reg = registry_config(settings, model_name=model_name)
    _, path = download_model(reg, version=version, dest=cache)
    return path


def recommend(
    settings: Settings,
    user_id: str,
    *,
    k: int = 10,
    index_name: str = "reco-tracks",
    project: str = "aitasks",
    online_store: Literal["sqlite", "redis"] | None = None,
    filter_played: bool | None = None,
) -> Recommendations:
    """Top-``k`` tracks for ``user_id``, with or without the tracks the user already played.

    ``filter_played`` None takes the serving mode recorded with the index's model version (see the
    module docstring). A user known to the model (in its vocabulary, or with online features) is embedded by the user
    tower from the Feast online features and matched in the current index. A user with neither gets
    the model's popularity list, flagged ``source="popularity"`` with the reason.

    Raises:
        InvalidInputError: A malformed user id or ``k``.
        DataFormatError: No published index, or a file that fails its checksum.
        ServiceUnavailableError: The online store or the registry is unreachable.
    """
    import re

    from aitasks.model_training.dataset import tower_inputs
    from aitasks.model_training.two_tower import load_model
    from aitasks.platform import feature_store as fs
    from aitasks.platform.registry import get_version, registry_config
    from aitasks.recommendation_update.publish import load_current
    from aitasks.recommendation_update.tasks import SEEN_FILE
    from aitasks.serving.model import mlflow_without_feast_plugin
    from aitasks.serving.online import read_user_row

    issues = []
    if not re.match(_ID, user_id):
        issues.append(FieldIssue("user", "must be 1-64 characters of letters, digits, '_' or '-'"))
    if not 1 <= k <= 1000:
        issues.append(FieldIssue("k", "must be between 1 and 1000"))
    if issues:
        raise InvalidInputError(_TASK, issues)

    root = settings.storage_root
    index, manifest, index_dir = load_current(root, index_name)
    model_name, model_version = manifest.model_name, manifest.model_version
    mlflow_without_feast_plugin()  # no Feast import behind the MLflow client (see there)
    reg = registry_config(settings, model_name=model_name)
    champion = get_version(reg, alias="champion")
    source: Literal["request", "evaluation", "default"] = "request"
    if filter_played is None:
        served = champion if champion is not None and champion.version == model_version else None
        served = served or get_version(reg, version=model_version)
        recorded = None if served is None else served.tags.get(FILTER_PLAYED_TAG)
        filter_played = recorded != "false"
        source = "default" if recorded not in {"true", "false"} else "evaluation"
    model_dir = _model_dir(settings, model_name, model_version)
    model, user_vocab, _ = load_model(model_dir)

    seen: set[str] = set()
    if filter_played:
        seen_frame = pl.read_parquet(index_dir / SEEN_FILE).filter(pl.col("user_id") == user_id)
        seen = set(seen_frame["track_id"].to_list())

    cfg = fs.serving_config(settings, project=project, online_store=online_store)
    spec = model.config.spec
    # Read as Feast stores it, without importing the Feast SDK (5-22 s): see aitasks.serving.online.
    row = read_user_row(cfg, user_id) or {}
    online = {c: [row.get(c)] for c in spec.user_dense}
    has_features = any(online.get(c, [None])[0] is not None for c in spec.user_dense)
    known = int(user_vocab.index([user_id])[0]) != 0
    common: dict[str, Any] = {
        "user_id": user_id,
        "index_name": index_name,
        "index_version": manifest.version,
        "model_name": model_name,
        "model_version": model_version,
        "champion_version": None if champion is None else champion.version,
        "filter_played": filter_played,
        "filter_played_source": source,
        "filtered_played": len(seen),
    }
    if not known and not has_features:
        import json

        popular = json.loads((model_dir / "popularity.json").read_text("utf-8"))["tracks"]
        items = [Recommended(track_id=t, score=0.0) for t in popular if t not in seen][:k]
        return Recommendations(
            **common,
            items=items,
            source="popularity",
            reason="unknown user: not in the model's vocabulary and no online features; most played tracks",
        )
    frame = pl.DataFrame({"user_id": [user_id], **{c: [online.get(c, [None])[0]] for c in spec.user_dense}})
    frame = frame.with_columns(pl.col(c).cast(pl.Float64) for c in spec.user_dense)
    vec = model.embed_users(
        tower_inputs(
            frame, id_column="user_id", vocab=user_vocab, dense=spec.user_dense, categorical=spec.user_categorical
        )
    )
    hits = index.query(np.asarray(vec, dtype=np.float32), k, exclude=[seen] if seen else None)[0]
    reason = (
        "known user"
        if known and has_features
        else ("user without online features: id embedding only" if known else "new user: online features only")
    )
    return Recommendations(
        **common,
        items=[Recommended(track_id=t, score=float(s)) for t, s in hits],
        source="model",
        reason=reason,
    )
