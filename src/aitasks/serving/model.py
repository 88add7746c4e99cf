"""The model a serving process holds: the two towers of the index's model version, loaded once.

Where the files come from (:class:`ModelSource`): the MLflow registry (``registry``, the default:
``download_model`` into the local cache, checksums verified, as ``aitasks recommend`` does), or a
directory of versions ``<dir>/<name>/v<N>/`` (``dir``: a volume the registry's cache was synced to,
and the tests' way in without an MLflow server). Both load through
:func:`aitasks.model_training.two_tower.load_model` (safetensors + JSON; nothing is unpickled).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

from aitasks.runtime.errors import DataFormatError
from aitasks.runtime.settings import Settings

F32 = npt.NDArray[np.float32]


@dataclass(frozen=True)
class ModelSource:
    """Where model versions are read from.

    Attributes:
        kind: ``registry`` (MLflow, via settings) or ``dir``.
        directory: The versions' directory for ``dir``: ``<directory>/<name>/v<N>/``.
    """

    kind: Literal["registry", "dir"] = "registry"
    directory: str = ""

    def model_dir(self, settings: Settings, name: str, version: int) -> Path:
        if self.kind == "dir":
            path = Path(self.directory) / name / f"v{version}"
            if not path.is_dir():
                raise DataFormatError(str(path), f"model {name} v{version} is not in the model directory")
            return path
        from aitasks.recommendation_update.recommend import _model_dir

        mlflow_without_feast_plugin()
        return _model_dir(settings, name, version)


_FEAST_MLFLOW_PLUGIN = "feast.infra.data_sources.mlflow.auth"


def mlflow_without_feast_plugin() -> None:
    """Import MLflow's request-header registry without Feast's plugin (which imports all of Feast).

    Feast registers an ``mlflow.request_header_provider`` entry point; MLflow loads every such plugin when
    its registry module is first imported (by the first client), which imports the whole Feast SDK: 5-22 s
    measured here. The platform never uses Feast's MLflow integration, so a process that talks to the
    registry without needing Feast skips it: the module is marked absent while MLflow registers plugins
    (MLflow skips a plugin that fails to import), then unmarked, so a later real import still works.
    No-op when MLflow's registry or that module is already imported.
    """
    import sys
    import warnings

    if "mlflow.tracking.request_header.registry" in sys.modules or _FEAST_MLFLOW_PLUGIN in sys.modules:
        return
    sys.modules[_FEAST_MLFLOW_PLUGIN] = None  # type: ignore[assignment]
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            import mlflow.tracking.request_header.registry  # noqa: F401 - registers the plugins now
    finally:
        del sys.modules[_FEAST_MLFLOW_PLUGIN]


class ServingModel:
    """Both towers of one model version, its vocabularies and its popularity list."""

    def __init__(self, name: str, version: int, directory: Path) -> None:
        import torch

        from aitasks.model_training.recommender import read_vocabularies
        from aitasks.model_training.two_tower import load_model

        torch.set_num_threads(1)  # one request at a time per process; threads only add latency here
        self.name, self.version, self.directory = name, version, directory
        self.model, self.user_vocab, self.item_vocab = load_model(directory)
        self._user_index = {u: i + 1 for i, u in enumerate(self.user_vocab.ids)}  # 0: unknown
        self.spec = self.model.config.spec
        vocab = read_vocabularies(directory)
        self.genres = None if vocab is None else vocab.genres
        pop = directory / "popularity.json"
        self.popular: tuple[str, ...] = ()
        if pop.is_file():
            self.popular = tuple(json.loads(pop.read_text("utf-8"))["tracks"])

    @property
    def key(self) -> str:
        return f"{self.name}:v{self.version}"

    @property
    def other_genre_id(self) -> int | None:
        return None if self.genres is None else self.genres.other_id

    def knows_user(self, user_id: str) -> bool:
        return user_id in self._user_index

    def embed_users(self, user_ids: Sequence[str], rows: Sequence[Mapping[str, Any] | None]) -> F32:
        """Unit vectors of users from their online feature rows (None: no features, id only).

        The inputs are built directly (a dict lookup and one float array), not through the training
        path's data frames: the same values as :func:`~aitasks.model_training.dataset.tower_inputs`
        (missing = NaN, unknown id = 0), at a fraction of the cost per request.
        """
        from aitasks.model_training.dataset import TowerInputs

        dense = self.spec.user_dense
        idx = np.fromiter((self._user_index.get(u, 0) for u in user_ids), dtype=np.int64, count=len(user_ids))
        values = np.full((len(user_ids), len(dense)), np.nan, dtype=np.float64)
        for i, r in enumerate(rows):
            if r is not None:
                values[i] = [np.nan if (v := r.get(c)) is None else float(v) for c in dense]
        if np.isinf(values).any():
            from aitasks.runtime.errors import FieldIssue, InvalidInputError

            raise InvalidInputError("serving.embed", [FieldIssue("features", "infinite value in a user feature row")])
        cat = np.zeros((len(user_ids), len(self.spec.user_categorical)), dtype=np.int64) - 1
        inputs = TowerInputs(idx=idx, dense=values.astype(np.float32), cat=cat)
        return np.asarray(self.model.embed_users(inputs), dtype=np.float32)

    def genre_id(self, genre: str) -> int | None:
        """The model vocabulary's id of a raw genre (its ``other`` id when unseen); None without a vocabulary."""
        if self.genres is None:
            return None
        import polars as pl

        value = self.genres.ids(pl.Series("genre", [genre]))[0]
        return None if value is None else int(value)

    def embed_tracks(self, rows: Sequence[Mapping[str, Any]]) -> F32:
        """Unit vectors of catalog rows (``track_id``, ``track_genre_id`` and the item dense columns)."""
        import polars as pl

        from aitasks.model_training.dataset import tower_inputs

        spec = self.spec
        cols: dict[str, Any] = {"track_id": [r["track_id"] for r in rows]}
        schema: dict[str, Any] = {"track_id": pl.String}
        for c in spec.item_dense:
            cols[c] = [r.get(c) for r in rows]
            schema[c] = pl.Float64
        for c, _ in spec.item_categorical:
            cols[c] = [r.get(c) for r in rows]
            schema[c] = pl.Int64
        frame = pl.DataFrame(cols, schema=schema)
        inputs = tower_inputs(
            frame, id_column="track_id", vocab=self.item_vocab, dense=spec.item_dense, categorical=spec.item_categorical
        )
        return np.asarray(self.model.embed_items(inputs), dtype=np.float32)


def load_serving_model(settings: Settings, source: ModelSource, name: str, version: int) -> ServingModel:
    """Download (or find) and load model ``name`` version ``version``."""
    return ServingModel(name, version, source.model_dir(settings, name, version))
