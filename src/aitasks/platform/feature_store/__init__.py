"""Feast repository access for every family: definitions, apply, materialize, retrieval.

The recommender's feature repository (``user_features``, ``track_features``) and the plumbing
other families' views use (``aitasks.audio_analysis.feature_store`` adds ``track_audio`` to the
same project through :func:`open_store`, :func:`service_errors` and :func:`quiet`).

Everything Feast needs is derived from one :class:`FeastConfig`:

* ``feature_store.yaml`` is rendered from it (for the ``feast`` CLI and for humans); this package
  itself builds the same configuration in memory (:mod:`.config`), so a Redis password never has to
  be written to disk: the file holds ``${AITASKS_FEAST_REDIS_PASSWORD}`` instead, which Feast's loader expands
  from the environment (``os.path.expandvars``; an unset variable stays literally ``${...}``);
* the registry is a file (local or ``gs://``; no locking) or, in production, a SQL registry on
  PostgreSQL (``AITASKS_FEAST_REGISTRY=postgresql://...``), safe under concurrent applies;
* offline files are storage URIs, local or ``gs://``, like every task output; sources record
  ``offline/<file name>`` relative to the store's ``repo_path``, and each read puts local copies of
  its files there (:func:`local_offline`: links for local files, downloads for ``gs://``, which
  Feast's file offline store cannot read), so the registry never names one pod's disk;
* the objects (entities ``user`` and ``track``, one ``FileSource`` per Parquet file written by
  :mod:`aitasks.data_processing.features`, the feature views ``user_features`` and
  ``track_features`` with an explicit typed schema (:mod:`.schema`), and the feature services
  ``reco_training`` and ``reco_serving``) are defined in code by :func:`build_feature_repo`
  (:mod:`.repo`), never discovered by scanning Python files as ``feast apply`` does.

Semantics worth knowing:

* Rows are daily snapshots computed from events strictly before ``event_timestamp``, so Feast's
  point-in-time join (the latest row with ``event_timestamp <= t`` and not older than the TTL)
  never leaks the future into a training example labelled at ``t``.
* :func:`materialize` is incremental: each view continues from the end of its previous
  materialization. A view that was never materialized starts at ``end - ttl`` (Feast's own
  ``materialize_incremental`` would start at *wall-clock now* - ttl, which makes backfills depend on
  when they run). Feast's file offline store reads the window ``[start, end]`` inclusive on both
  sides and writes the latest row per entity.
* :func:`historical_features` returns every entity row, in order, with nulls where a view has no
  valid snapshot (Feast's file offline store alone would drop such rows; see there).
* A Redis online store is checked with a short-timeout, no-retry ``PING`` before Feast touches it:
  an unreachable server is a retryable :class:`~aitasks.runtime.errors.ServiceUnavailableError`
  that names ``host:port``, never a raw redis traceback. Feast's own Redis client is replaced by one
  with explicit socket timeouts and no redis-py retries (the task runtime is the one retry layer), so
  a server that dies mid-call fails the call at once, a silent one after ``socket_timeout_s``.
* Completeness (:mod:`.completeness`): materialize writes a sentinel last into the online store;
  a store without it (lost, restarted empty, half-written) is rewritten by the next materialize and
  makes :func:`online_features` raise :class:`StoreNotReadyError` instead of returning ``None``.
* Feast's file registry has no locking: run apply from one step at a time (the pipeline does), or
  use the SQL registry.

Modules: :mod:`.schema` (names), :mod:`.config`, :mod:`.repo`, :mod:`.store` (open, check,
errors), :mod:`.apply`, :mod:`.materialization`, :mod:`.completeness` (sentinel), :mod:`.retrieval`.

Importing this package is cheap: ``feast`` (≈ 5 s, it imports torch and dask) is imported only inside
the functions that need it. What Feast prints (materialization banners, progress bars) is captured
instead of reaching the task's output.
"""

from aitasks.platform.feature_store.apply import ApplyReport, ObjectChange, apply_repo
from aitasks.platform.feature_store.completeness import (
    StoreNotReadyError,
    clear_sentinel,
    read_sentinel,
    require_ready,
    sentinel_key,
)
from aitasks.platform.feature_store.config import (
    OFFLINE_DIR,
    REDIS_PASSWORD_ENV,
    FeastConfig,
    RedisOnline,
    SqliteOnline,
    config_for,
    is_sql_registry,
    offline_source_path,
    serving_config,
)
from aitasks.platform.feature_store.materialization import MaterializeReport, ViewMaterialization, materialize
from aitasks.platform.feature_store.repo import FeatureRepo, build_feature_repo
from aitasks.platform.feature_store.retrieval import historical_features, online_features
from aitasks.platform.feature_store.schema import (
    CREATED_FIELD,
    SERVING_SERVICE,
    SERVING_USER_FEATURES,
    TIMESTAMP_FIELD,
    TRACK_FEATURE_VIEW,
    TRACK_FEATURES,
    TRAINING_SERVICE,
    USER_FEATURE_VIEW,
    USER_FEATURES,
)
from aitasks.platform.feature_store.store import (
    check_online_store,
    check_registry,
    local_offline,
    open_store,
    quiet,
    redis_client,
    require_offline_files,
    service_errors,
)

__all__ = [
    "CREATED_FIELD",
    "OFFLINE_DIR",
    "REDIS_PASSWORD_ENV",
    "SERVING_SERVICE",
    "SERVING_USER_FEATURES",
    "TIMESTAMP_FIELD",
    "TRACK_FEATURES",
    "TRACK_FEATURE_VIEW",
    "TRAINING_SERVICE",
    "USER_FEATURES",
    "USER_FEATURE_VIEW",
    "ApplyReport",
    "FeastConfig",
    "FeatureRepo",
    "MaterializeReport",
    "ObjectChange",
    "RedisOnline",
    "SqliteOnline",
    "StoreNotReadyError",
    "ViewMaterialization",
    "apply_repo",
    "build_feature_repo",
    "check_online_store",
    "check_registry",
    "clear_sentinel",
    "config_for",
    "historical_features",
    "is_sql_registry",
    "local_offline",
    "materialize",
    "offline_source_path",
    "online_features",
    "open_store",
    "quiet",
    "read_sentinel",
    "redis_client",
    "require_offline_files",
    "require_ready",
    "sentinel_key",
    "service_errors",
    "serving_config",
]
