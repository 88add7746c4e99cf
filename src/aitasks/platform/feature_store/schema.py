"""Names and typed schemas of the recommender's feature repository (no Feast import).

The feature columns follow the Parquet files written by :mod:`aitasks.data_processing.features`
(the genre affinity columns come from :data:`~aitasks.data_processing.contract.GENRE_AFFINITY_COLUMNS`:
a fixed width of vocabulary ranks, so the views never change when genres come and go); every other
module of this package takes its names from here.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Final

from aitasks.data_processing.contract import GENRE_AFFINITY_COLUMNS

__all__ = [
    "CREATED_FIELD",
    "ENTITY_KEYS",
    "SERVING_SERVICE",
    "SERVING_USER_FEATURES",
    "TASK",
    "TIMESTAMP_FIELD",
    "TRACK_FEATURES",
    "TRACK_FEATURE_VIEW",
    "TRACK_FILE",
    "TRAINING_SERVICE",
    "USER_FEATURES",
    "USER_FEATURE_VIEW",
    "USER_FILE",
]

USER_FEATURE_VIEW: Final = "user_features"
TRACK_FEATURE_VIEW: Final = "track_features"
USER_FILE: Final = "user_features.parquet"
TRACK_FILE: Final = "track_features.parquet"
TIMESTAMP_FIELD: Final = "event_timestamp"
CREATED_FIELD: Final = "created_timestamp"
TRAINING_SERVICE: Final = "reco_training"
SERVING_SERVICE: Final = "reco_serving"

#: Feature columns of ``user_features`` and their Feast dtype names (order = Parquet column order).
USER_FEATURES: Final[tuple[tuple[str, str], ...]] = (
    ("user_plays_7d", "Int64"),
    ("user_plays_28d", "Int64"),
    ("user_skip_rate_28d", "Float32"),
    ("user_active_days_28d", "Int64"),
    ("user_days_since_last_play", "Float32"),
    ("user_avg_ms_played_28d", "Float32"),
    # Shares of the 16 most played genres of the run's vocabulary (by rank), then of all the others.
    *((c, "Float32") for c in GENRE_AFFINITY_COLUMNS),
)

#: Feature columns of ``track_features`` and their Feast dtype names. The ``audio_*`` columns are
#: null placeholders until the audio family fills them.
TRACK_FEATURES: Final[tuple[tuple[str, str], ...]] = (
    ("track_plays_28d", "Int64"),
    ("track_listeners_28d", "Int64"),
    ("track_skip_rate_28d", "Float32"),
    ("track_popularity", "Float32"),
    ("track_genre_id", "Int64"),  # rank in the run's genre vocabulary; its size = `other`
    ("track_duration_ms", "Int64"),
    ("track_release_year", "Int64"),
    ("track_explicit", "Int64"),
    ("audio_tempo_bpm", "Float32"),
    ("audio_loudness_db", "Float32"),
    ("audio_spectral_centroid_hz", "Float32"),
)

#: User features the online model reads. Today that is every user feature: the serving service
#: must hold exactly what the model was trained on, or training and serving skew. Narrow it here
#: (and only here) when the model stops using some of them.
SERVING_USER_FEATURES: Final[tuple[str, ...]] = tuple(name for name, _ in USER_FEATURES)

#: Join key of each feature view's entity.
ENTITY_KEYS: Final[Mapping[str, str]] = {USER_FEATURE_VIEW: "user_id", TRACK_FEATURE_VIEW: "track_id"}
#: Task name in the typed errors of this package.
TASK: Final = "data.feature_store"
