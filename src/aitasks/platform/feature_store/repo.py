"""The repository's Feast objects, defined in code (never discovered by scanning Python files).

Entities ``user`` and ``track``, one ``FileSource`` per Parquet file written by
:mod:`aitasks.data_processing.features` (recorded as ``offline/<file name>``, relative to the
store's ``repo_path``: see :func:`~aitasks.platform.feature_store.config.offline_source_path`), the
feature views ``user_features`` and ``track_features`` with an explicit typed schema, and the
feature services ``reco_training`` and ``reco_serving``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from aitasks.data_processing.contract import CONTRACT_VERSION
from aitasks.platform.feature_store.config import FeastConfig, SqliteOnline, offline_source_path, render
from aitasks.platform.feature_store.schema import (
    CREATED_FIELD,
    SERVING_SERVICE,
    SERVING_USER_FEATURES,
    TIMESTAMP_FIELD,
    TRACK_FEATURE_VIEW,
    TRACK_FEATURES,
    TRACK_FILE,
    TRAINING_SERVICE,
    USER_FEATURE_VIEW,
    USER_FEATURES,
    USER_FILE,
)

if TYPE_CHECKING:
    from feast import Entity, FeatureService, FeatureView, FileSource, Project

__all__ = ["FeatureRepo", "build_feature_repo"]


@dataclass(frozen=True)
class FeatureRepo:
    """The Feast objects of the repository, built in code.

    Attributes:
        config: The configuration they were built from.
        yaml_path: The rendered ``feature_store.yaml``.
        project: The Feast project object.
        user: Entity ``user`` (join key ``user_id``).
        track: Entity ``track`` (join key ``track_id``).
        user_source: FileSource over ``user_features.parquet``.
        track_source: FileSource over ``track_features.parquet``.
        user_features: Feature view ``user_features``.
        track_features: Feature view ``track_features``.
        training: Feature service ``reco_training``.
        serving: Feature service ``reco_serving``.
    """

    config: FeastConfig
    yaml_path: Path
    project: Project
    user: Entity
    track: Entity
    user_source: FileSource
    track_source: FileSource
    user_features: FeatureView
    track_features: FeatureView
    training: FeatureService
    serving: FeatureService

    @property
    def objects(self) -> list[Any]:
        """Every object to apply, in a stable order."""
        return [
            self.project,
            self.user,
            self.track,
            self.user_source,
            self.track_source,
            self.user_features,
            self.track_features,
            self.training,
            self.serving,
        ]

    @property
    def feature_views(self) -> tuple[FeatureView, FeatureView]:
        """The two feature views."""
        return (self.user_features, self.track_features)


def build_feature_repo(cfg: FeastConfig) -> FeatureRepo:
    """Write ``feature_store.yaml`` and define the repository's objects.

    The YAML is rewritten only when its content changes (atomic replace). It never holds a
    password: a Redis password appears as ``${AITASKS_FEAST_REDIS_PASSWORD}``, a SQL registry's is
    left out (libpq reads ``PGPASSWORD``).

    Args:
        cfg: The configuration.

    Returns:
        The objects, ready for :func:`apply_repo`.
    """
    import yaml
    from feast import Entity, FeatureService, FeatureView, Field, FileSource, Project, ValueType
    from feast import types as ftypes

    from aitasks.platform.files import atomic_write

    repo_dir = cfg.repo_dir.expanduser().absolute()
    repo_dir.mkdir(parents=True, exist_ok=True)
    if cfg.registry_kind == "file" and not cfg.resolved_registry_path().startswith("gs://"):
        Path(cfg.resolved_registry_path()).parent.mkdir(parents=True, exist_ok=True)
    if isinstance(cfg.online_store, SqliteOnline):
        cfg.online_store.path.expanduser().absolute().parent.mkdir(parents=True, exist_ok=True)
    text = "# Rendered by aitasks.platform.feature_store from FeastConfig; do not edit.\n"
    text += yaml.safe_dump(render(cfg, with_secrets=False), sort_keys=False)
    yaml_path = repo_dir / "feature_store.yaml"
    if not yaml_path.exists() or yaml_path.read_text() != text:
        atomic_write(yaml_path, text)

    tags = {"owner": cfg.owner, "contract_version": CONTRACT_VERSION, "family": "data_processing"}
    dtypes = {"Int64": ftypes.Int64, "Float32": ftypes.Float32}
    user = Entity(name="user", join_keys=["user_id"], value_type=ValueType.STRING, description="A listener.", tags=tags)
    track = Entity(
        name="track", join_keys=["track_id"], value_type=ValueType.STRING, description="A catalog track.", tags=tags
    )
    user_source = FileSource(
        name="user_features_source",
        path=offline_source_path(USER_FILE),
        timestamp_field=TIMESTAMP_FIELD,
        created_timestamp_column=CREATED_FIELD,
        description="Daily user feature snapshots (aitasks.data_processing.features).",
        tags=tags,
    )
    track_source = FileSource(
        name="track_features_source",
        path=offline_source_path(TRACK_FILE),
        timestamp_field=TIMESTAMP_FIELD,
        created_timestamp_column=CREATED_FIELD,
        description="Daily track feature snapshots (aitasks.data_processing.features).",
        tags=tags,
    )
    user_view = FeatureView(
        name=USER_FEATURE_VIEW,
        entities=[user],
        ttl=cfg.ttl,
        schema=[
            Field(name="user_id", dtype=ftypes.String),
            *(Field(name=n, dtype=dtypes[t]) for n, t in USER_FEATURES),
        ],
        source=user_source,
        online=True,
        description="Listening behaviour of a user over the last 7/28 days, daily snapshots.",
        tags=tags,
        owner=cfg.owner,
    )
    track_view = FeatureView(
        name=TRACK_FEATURE_VIEW,
        entities=[track],
        ttl=cfg.ttl,
        schema=[
            Field(name="track_id", dtype=ftypes.String),
            *(Field(name=n, dtype=dtypes[t]) for n, t in TRACK_FEATURES),
        ],
        source=track_source,
        online=True,
        description="Popularity and catalog attributes of a track, daily snapshots.",
        tags=tags,
        owner=cfg.owner,
    )
    training = FeatureService(
        name=TRAINING_SERVICE,
        features=[user_view, track_view],
        description="Every user and track feature, for point-in-time training sets.",
        tags={**tags, "purpose": "training"},
        owner=cfg.owner,
    )
    serving = FeatureService(
        name=SERVING_SERVICE,
        features=[user_view[list(SERVING_USER_FEATURES)], track_view],
        description="The features the online recommender reads per (user, candidate track).",
        tags={**tags, "purpose": "serving"},
        owner=cfg.owner,
    )
    return FeatureRepo(
        config=cfg,
        yaml_path=yaml_path,
        project=Project(name=cfg.project, description="Music recommendation features.", tags=tags),
        user=user,
        track=track,
        user_source=user_source,
        track_source=track_source,
        user_features=user_view,
        track_features=track_view,
        training=training,
        serving=serving,
    )
