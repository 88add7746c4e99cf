"""Hyperparameter tuning of the two-tower recommender with Optuna.

The search space is configuration (:class:`SearchSpace`: a validated pydantic model of float,
integer and categorical ranges over the training settings of :class:`TrialParams`), the sampler is a
seeded TPE, the pruner a median or successive-halving pruner, the budget a number of trials and/or a
timeout. Trials are scored on a **validation split carved out of the training rows**
(:func:`write_validation_set`): the last ``validation_days`` of the training window become the
targets, so the held-out day that the evaluation and the blessing gate use is never seen by tuning.

Pruning is driven by the validation metric per epoch budget. :func:`~aitasks.model_training.two_tower.
train_two_tower` calls ``on_epoch`` with the loss only (not the model), and its learning-rate decay and
checkpoint averaging make "the model after epoch e of an E-epoch run" a different model from "an
e-epoch run", so a trial trains at geometric epoch budgets (1, 2, 4, ..., E; :func:`rungs`), each a
complete run, scores each on the validation split and reports it to the pruner at step ``e``
(Hyperband's notion of a resource). A trial that is never pruned costs at most ``2E - 1`` epochs;
``pruner="none"`` trains only ``E``.

Storage: :func:`storage_url` turns the settings into an Optuna RDB storage URL: PostgreSQL
(``AITASKS_TUNING_STORAGE=postgresql://...``) where steps run in separate pods, else an sqlite file
under the local storage root (refused for a ``gs://`` root: pods share no disk). The pipeline drives
the study with the ask-and-tell interface (:func:`ask_trials`, :func:`run_asked_trial`,
:func:`best_trial`); :func:`tune` runs a whole study in one process (tests, benchmark).

Determinism: the TPE sampler is seeded and every trial trains with the same training seed, so two
studies with the same seed and data propose the same parameters in the same order.
"""

from __future__ import annotations

import contextlib
import json
import math
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping
from datetime import datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Final, Literal

import polars as pl
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from aitasks.runtime.errors import (
    DataFormatError,
    FatalError,
    FieldIssue,
    InvalidInputError,
    ServiceUnavailableError,
)

if TYPE_CHECKING:
    import optuna

    from aitasks.model_training.recommender import HeldOutDay
    from aitasks.model_training.two_tower import TrainConfig
    from aitasks.runtime.settings import Settings

__all__ = [
    "DEFAULT_SPACE",
    "CategoricalParam",
    "FloatParam",
    "IntParam",
    "SearchSpace",
    "StudyResult",
    "TrialOutcome",
    "TrialParams",
    "TuningConfig",
    "ask_trials",
    "best_trial",
    "create_study",
    "evaluate_trial",
    "rungs",
    "storage_url",
    "study_summary",
    "tune",
    "write_validation_set",
]

_TASK: Final = "tune.study"
#: Item feature columns computed over a trailing window (the rest are catalog attributes).
_WINDOW_ITEM_COLUMNS: Final = ("track_plays_28d", "track_listeners_28d", "track_skip_rate_28d", "track_popularity")
_USER_META: Final = ("user_id", "track_id", "event_timestamp", "created_timestamp")
#: User attribute that marks the trials one ``ask`` call created (a retried call reuses them).
ASK_KEY_ATTR: Final = "aitasks_ask_key"


# ------------------------------------------------------------------------------------ the space


class TrialParams(BaseModel):
    """The training settings a trial may vary; defaults are the ``model.train`` defaults.

    Attributes mirror :class:`~aitasks.model_training.tasks.TrainParams` (same bounds); a test holds
    the defaults equal.
    """

    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)

    epochs: int = Field(default=4, ge=1, le=1000)
    batch_size: int = Field(default=1024, ge=8, le=65_536)
    lr: float = Field(default=3e-3, gt=0, le=1)
    sparse_lr: float = Field(default=3e-2, gt=0, le=10)
    embedding_dim: int = Field(default=64, ge=2, le=1024)
    id_dim: int = Field(default=32, ge=1, le=1024)
    hidden_dim: int = Field(default=128, ge=2, le=8192)
    temperature: float = Field(default=0.05, ge=1e-3, le=10)
    logq_correction: bool = True
    average_epochs: int = Field(default=3, ge=1, le=1000)
    checkpoints_per_epoch: int = Field(default=4, ge=1, le=1000)
    lr_decay: Literal["none", "linear", "cosine"] = "cosine"

    def train_config(self, *, seed: int, epochs: int | None = None, device: str | None = None) -> TrainConfig:
        """The trainer's configuration (``epochs`` overrides for a pruning rung)."""
        from aitasks.model_training.two_tower import TrainConfig

        return TrainConfig(
            epochs=epochs or self.epochs,
            batch_size=self.batch_size,
            lr=self.lr,
            sparse_lr=self.sparse_lr,
            seed=seed,
            logq_correction=self.logq_correction,
            average_epochs=self.average_epochs,
            checkpoints_per_epoch=self.checkpoints_per_epoch,
            lr_decay=self.lr_decay,
            device=device,
        )

    def arch(self) -> dict[str, Any]:
        """The architecture fields of :func:`~aitasks.model_training.two_tower.fit_config`."""
        return {
            "embedding_dim": self.embedding_dim,
            "id_dim": self.id_dim,
            "hidden_dim": self.hidden_dim,
            "temperature": self.temperature,
        }


Scalar = int | float | str | bool


class FloatParam(BaseModel):
    """A float drawn from ``[low, high]``, uniformly or (``log``) log-uniformly."""

    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)

    kind: Literal["float"] = "float"
    low: float
    high: float
    log: bool = False

    @model_validator(mode="after")
    def _range(self) -> FloatParam:
        if not self.low < self.high:
            raise ValueError(f"low ({self.low}) must be below high ({self.high})")
        if self.log and self.low <= 0:
            raise ValueError("a log-uniform range needs low > 0")
        return self

    def values(self) -> tuple[Scalar, ...]:
        return (self.low, self.high)


class IntParam(BaseModel):
    """An integer from ``low`` to ``high`` (inclusive) in steps of ``step``, or log-uniformly."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    kind: Literal["int"] = "int"
    low: int
    high: int
    step: int = Field(default=1, ge=1)
    log: bool = False

    @model_validator(mode="after")
    def _range(self) -> IntParam:
        if not self.low < self.high:
            raise ValueError(f"low ({self.low}) must be below high ({self.high})")
        if self.log and (self.low <= 0 or self.step != 1):
            raise ValueError("a log-uniform integer range needs low > 0 and step 1")
        return self

    def values(self) -> tuple[Scalar, ...]:
        return (self.low, self.high)


class CategoricalParam(BaseModel):
    """One of ``choices``."""

    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)

    kind: Literal["categorical"] = "categorical"
    choices: tuple[Scalar, ...] = Field(min_length=1, max_length=64)

    @field_validator("choices")
    @classmethod
    def _unique(cls, v: tuple[Scalar, ...]) -> tuple[Scalar, ...]:
        if len({json.dumps(c) for c in v}) != len(v):
            raise ValueError("choices must be distinct")
        return v

    def values(self) -> tuple[Scalar, ...]:
        return self.choices


Param = Annotated[FloatParam | IntParam | CategoricalParam, Field(discriminator="kind")]


class SearchSpace(BaseModel):
    """Which training settings a study varies, and over what (the others stay at ``base``).

    Attributes:
        params: ``{setting: range}``; each setting is a :class:`TrialParams` field and every value the
            range can yield (both ends, every choice) must be a valid value of that field.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    params: dict[str, Param] = Field(min_length=1)

    @model_validator(mode="after")
    def _settings(self) -> SearchSpace:
        problems = []
        for name, rng in self.params.items():
            if name not in TrialParams.model_fields:
                problems.append(f"{name}: not a tunable setting ({', '.join(TrialParams.model_fields)})")
                continue
            for value in rng.values():
                try:
                    TrialParams.model_validate({name: value})
                except ValidationError as exc:
                    problems.append(f"{name}: value {value!r} out of bounds ({exc.errors()[0]['msg']})")
        if problems:
            raise ValueError("; ".join(problems))
        return self

    def distributions(self) -> dict[str, Any]:
        """Optuna distributions of the space (sorted by name: a stable order for the sampler)."""
        from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

        out: dict[str, Any] = {}
        for name in sorted(self.params):
            p = self.params[name]
            if isinstance(p, FloatParam):
                out[name] = FloatDistribution(p.low, p.high, log=p.log)
            elif isinstance(p, IntParam):
                out[name] = IntDistribution(p.low, p.high, step=p.step, log=p.log)
            else:
                out[name] = CategoricalDistribution(list(p.choices))
        return out


#: The default search space: learning rates log-uniform, embedding and hidden sizes categorical,
#: temperature log-uniform, epochs an integer range.
DEFAULT_SPACE: Final = SearchSpace(
    params={
        "lr": FloatParam(low=1e-3, high=3e-2, log=True),
        "sparse_lr": FloatParam(low=1e-2, high=1e-1, log=True),
        "embedding_dim": CategoricalParam(choices=(32, 64, 128)),
        "hidden_dim": CategoricalParam(choices=(64, 128, 256)),
        "temperature": FloatParam(low=0.02, high=0.2, log=True),
        "epochs": IntParam(low=2, high=6),
    }
)


class TuningConfig(BaseModel):
    """A study: space, sampler, pruner, budget and what it optimises.

    Attributes:
        space: The search space.
        base: Settings of every trial that the space does not vary.
        n_trials: Trials of the study (the pipeline asks this many at once and trains them in parallel).
        timeout_s: Stop starting trials after this many seconds (in-process studies); None: no limit.
        seed: Seed of the TPE sampler.
        train_seed: Training seed of every trial (the same for all: trials differ by their settings only).
        n_startup_trials: Random trials before TPE models the results.
        pruner: ``median`` (stop a trial whose value at an epoch budget is below the median of earlier
            trials at that budget), ``successive_halving`` (asynchronous successive halving over the
            epoch budgets) or ``none``.
        pruner_startup_trials: Median pruner: trials that are never pruned.
        pruner_warmup_epochs: Median pruner: no pruning at budgets up to this many epochs.
        reduction_factor: Successive halving: keep 1 / this of the trials at each rung.
        metric: Validation metric maximised.
        protocol: ``all`` (every next play is a target) or ``discovery`` (unplayed tracks only).
        validation_days: Last days of the training window held out as validation targets.
        include_defaults: Trial 0 trains ``base`` with the space's settings at their defaults: the
            study's best is then never worse than the default configuration on validation.
    """

    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)

    space: SearchSpace = DEFAULT_SPACE
    base: TrialParams = TrialParams()
    n_trials: int = Field(default=8, ge=1, le=1000)
    timeout_s: float | None = Field(default=None, gt=0)
    seed: int = Field(default=0, ge=0, le=2**31 - 1)
    train_seed: int = Field(default=0, ge=0, le=2**31 - 1)
    n_startup_trials: int = Field(default=4, ge=0, le=1000)
    pruner: Literal["median", "successive_halving", "none"] = "median"
    pruner_startup_trials: int = Field(default=2, ge=0, le=1000)
    pruner_warmup_epochs: int = Field(default=0, ge=0, le=1000)
    reduction_factor: int = Field(default=2, ge=2, le=10)
    metric: Literal["recall_at_10", "ndcg_at_10"] = "recall_at_10"
    protocol: Literal["all", "discovery"] = "all"
    validation_days: int = Field(default=1, ge=1, le=30)
    include_defaults: bool = True

    def sampler(self) -> optuna.samplers.BaseSampler:
        import optuna

        # constant_liar: asked-but-unfinished trials count as bad, so a batch asked at once spreads out.
        return optuna.samplers.TPESampler(seed=self.seed, n_startup_trials=self.n_startup_trials, constant_liar=True)

    def make_pruner(self) -> optuna.pruners.BasePruner:
        import optuna

        if self.pruner == "median":
            return optuna.pruners.MedianPruner(
                n_startup_trials=self.pruner_startup_trials, n_warmup_steps=self.pruner_warmup_epochs
            )
        if self.pruner == "successive_halving":
            return optuna.pruners.SuccessiveHalvingPruner(min_resource=1, reduction_factor=self.reduction_factor)
        return optuna.pruners.NopPruner()

    def trial_params(self, sampled: Mapping[str, Any]) -> TrialParams:
        """``base`` with the sampled settings."""
        return TrialParams.model_validate({**self.base.model_dump(), **dict(sampled)})

    def default_point(self) -> dict[str, Any]:
        """The space's settings at ``base`` (the default trial), each moved into its range if outside."""
        point: dict[str, Any] = {}
        for name, p in self.space.params.items():
            value = getattr(self.base, name)
            if isinstance(p, CategoricalParam):
                point[name] = value if value in p.choices else p.choices[0]
            else:
                value = min(max(value, p.low), p.high)
                if isinstance(p, IntParam):
                    value = p.low + (int(value) - p.low) // p.step * p.step
                point[name] = value
        return point


def parse_config(raw: Mapping[str, Any] | TuningConfig | None, *, task: str = _TASK) -> TuningConfig:
    """A validated :class:`TuningConfig` from a dict (a pipeline parameter); errors name each field."""
    if isinstance(raw, TuningConfig):
        return raw
    try:
        return TuningConfig.model_validate(dict(raw or {}))
    except ValidationError as exc:
        issues = [
            FieldIssue("config." + ".".join(str(p) for p in e["loc"]) if e["loc"] else "config", e["msg"])
            for e in exc.errors()
        ]
        raise InvalidInputError(task, issues) from None


def rungs(epochs: int, *, pruning: bool = True) -> list[int]:
    """Epoch budgets a trial is scored at: 1, 2, 4, ... below ``epochs``, then ``epochs`` (only it without pruning)."""
    if epochs < 1:
        raise InvalidInputError(_TASK, [FieldIssue("epochs", "must be >= 1")])
    out: list[int] = []
    e = 1
    while pruning and e < epochs:
        out.append(e)
        e *= 2
    return [*out, epochs]


# ------------------------------------------------------------------------------- validation set


def write_validation_set(ts_dir: Path, out_dir: Path, *, days: int = 1) -> dict[str, Any]:
    """A training-set directory whose held-out day is the last ``days`` of ``ts_dir``'s training window.

    The layout is :mod:`aitasks.model_training.training_set`'s, so training and evaluation code run on it
    unchanged. Only training rows before the validation split train; validation targets are the distinct
    (user, track) positives at or after it. Features at the split come from training rows before it:
    a user's features are those of the user's latest earlier row (the snapshot that row saw), a track's
    window statistics those of its latest earlier row (null when it had none) and its catalog
    attributes those of ``items.parquet``. ``history.parquet`` holds the earlier positive pairs (the
    training rows carry no skips). Nothing from the original held-out day is read except the catalog
    attributes, which do not change over time.

    Returns:
        Facts: split time, rows, users, targets.

    Raises:
        DataFormatError: A file is missing or unreadable.
        InvalidInputError: The window is too short to hold out ``days`` and still train.
    """
    from aitasks.data_processing.vocabulary import VOCABULARY_FILE

    def read(name: str) -> pl.DataFrame:
        try:
            return pl.read_parquet(ts_dir / name)
        except Exception as exc:  # polars raises several types for a missing or non-Parquet file
            raise DataFormatError(str(ts_dir / name), f"not a readable training-set file: {exc}") from None

    train, items = read("train.parquet"), read("items.parquet")
    if train.height == 0:
        raise InvalidInputError(_TASK, [FieldIssue("training_set", "no training rows")])
    last = train["event_timestamp"].max()
    if not isinstance(last, datetime):
        raise DataFormatError(str(ts_dir / "train.parquet"), "event_timestamp is not a timestamp column")
    day = last.replace(hour=0, minute=0, second=0, microsecond=0)
    split = day - timedelta(days=days - 1)
    before = train.filter(pl.col("event_timestamp") < split)
    after = train.filter(pl.col("event_timestamp") >= split)
    if before.height == 0 or after.height == 0:
        raise InvalidInputError(
            _TASK,
            [FieldIssue("validation_days", f"{days} day(s) leave no training or no validation rows (split {split})")],
        )
    user_cols = [c for c in train.columns if c.startswith("user_") and c not in _USER_META]
    item_window = [c for c in _WINDOW_ITEM_COLUMNS if c in train.columns and c in items.columns]
    targets = after.select("user_id", "track_id").unique().sort("user_id", "track_id")
    latest = before.sort("event_timestamp", "user_id", "track_id")
    users = (
        targets.select("user_id")
        .unique()
        .sort("user_id")
        .join(latest.group_by("user_id").agg(pl.col(user_cols).last()), on="user_id", how="left")
    )
    plays = before.group_by("track_id").agg(train_plays=pl.len())
    window = latest.group_by("track_id").agg(pl.col(item_window).last())
    val_items = (
        items.drop([*item_window, "train_plays"], strict=False)
        .join(window, on="track_id", how="left")
        .join(plays, on="track_id", how="left")
        .with_columns(pl.col("train_plays").fill_null(0))
        .select(items.columns)
        .sort("track_id")
    )
    history = before.group_by("user_id", "track_id").agg(plays=pl.len()).sort("user_id", "track_id")
    out_dir.mkdir(parents=True, exist_ok=True)
    before.write_parquet(out_dir / "train.parquet")
    users.write_parquet(out_dir / "users.parquet")
    val_items.write_parquet(out_dir / "items.parquet")
    targets.write_parquet(out_dir / "targets.parquet")
    history.write_parquet(out_dir / "history.parquet")
    if (ts_dir / VOCABULARY_FILE).is_file():
        shutil.copyfile(ts_dir / VOCABULARY_FILE, out_dir / VOCABULARY_FILE)
    return {
        "split_at": split.isoformat(),
        "train_rows": before.height,
        "validation_users": users.height,
        "validation_targets": targets.height,
    }


# ------------------------------------------------------------------------------------- a trial


class TrialOutcome(BaseModel):
    """What one trial did: its value, whether it was pruned, and the value at each epoch budget."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    value: float
    pruned: bool
    history: list[tuple[int, float]]
    epochs_trained: int
    seconds: float


def evaluate_trial(
    val_dir: Path,
    params: TrialParams,
    *,
    cfg: TuningConfig,
    day: HeldOutDay | None = None,
    report: Callable[[int, float], bool] | None = None,
    device: str | None = None,
) -> TrialOutcome:
    """Train ``params`` on the validation set's training rows at each epoch budget and score it.

    Args:
        val_dir: A directory from :func:`write_validation_set`.
        params: The trial's settings.
        cfg: The study (metric, protocol, pruner, training seed).
        day: The validation targets (loaded from ``val_dir`` when None).
        report: ``report(epochs, value) -> prune?``; None never prunes.
        device: Training device (None: auto).

    Returns:
        The value at the last budget trained; ``pruned`` when ``report`` said stop before ``params.epochs``.

    Raises:
        FatalError: Training diverged (the caller records the trial as failed).
    """
    from aitasks.model_training import recommender as rec

    day = day or rec.load_held_out_day(val_dir)
    t0 = time.perf_counter()
    history: list[tuple[int, float]] = []
    trained = 0
    value = math.nan
    for budget in rungs(params.epochs, pruning=cfg.pruner != "none" and report is not None):
        with tempfile.TemporaryDirectory(prefix="aitasks-trial-") as tmp:
            rec.train_recommender(
                val_dir,
                Path(tmp),
                params.train_config(seed=cfg.train_seed, epochs=budget, device=device),
                arch=params.arch(),
            )
            ev = rec.evaluate_lists(day, rec.model_lists(Path(tmp), val_dir, day), cfg.metric)
        trained += budget
        value = float(getattr(ev.metrics[cfg.protocol], cfg.metric))
        history.append((budget, value))
        if report is not None and report(budget, value) and budget < params.epochs:
            return TrialOutcome(
                value=value, pruned=True, history=history, epochs_trained=trained, seconds=time.perf_counter() - t0
            )
    return TrialOutcome(
        value=value, pruned=False, history=history, epochs_trained=trained, seconds=time.perf_counter() - t0
    )


# -------------------------------------------------------------------------------------- storage


def storage_url(settings: Settings) -> str:
    """The Optuna storage of these settings (an SQLAlchemy URL).

    ``AITASKS_TUNING_STORAGE`` when set (``postgresql://...`` in a cluster: every trial pod tells the same
    study; ``postgresql://`` is read with the psycopg 3 driver). Empty: ``sqlite:///<storage_root>/optuna/
    studies.db``, refused for a remote storage root (pods share no local file).

    Raises:
        InvalidInputError: No tuning storage with a ``gs://`` storage root, or an unsupported scheme.
    """
    from aitasks.platform.registry import redact_uri

    url = settings.tuning_storage
    if url:
        if url.startswith("postgresql://"):
            return "postgresql+psycopg://" + url.removeprefix("postgresql://")
        if url.startswith(("postgresql+psycopg://", "sqlite:///")):
            return url
        raise InvalidInputError(
            _TASK, [FieldIssue("tuning_storage", f"{redact_uri(url)}: use postgresql://... or sqlite:///...")]
        )
    if "://" in settings.storage_root:
        raise InvalidInputError(
            _TASK,
            [
                FieldIssue(
                    "tuning_storage",
                    f"storage root {redact_uri(settings.storage_root)} is remote: set AITASKS_TUNING_STORAGE to a "
                    "PostgreSQL URL (an sqlite study file is seen by one pod only)",
                )
            ],
        )
    root = Path(settings.storage_root).expanduser().absolute() / "optuna"
    root.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{root / 'studies.db'}"


@contextlib.contextmanager
def _service(url: str) -> Iterator[None]:
    """An unreachable study database as a retryable error naming the redacted URL (never its password)."""
    try:
        yield
    except ServiceUnavailableError:
        raise
    except Exception as exc:
        from sqlalchemy.exc import DisconnectionError, InterfaceError, OperationalError

        if not isinstance(exc, OperationalError | InterfaceError | DisconnectionError | ConnectionError):
            raise
        from aitasks.platform.registry import redact_uri

        raise ServiceUnavailableError(
            f"Optuna storage {redact_uri(url)} is unreachable ({type(exc).__name__})"
        ) from None


def open_storage(url: str) -> optuna.storages.RDBStorage:
    """An RDB storage on ``url`` (tables created on first use); sqlite waits for a busy file instead of failing."""
    import optuna

    kwargs: dict[str, Any] = {"pool_pre_ping": True}
    if url.startswith("sqlite:"):
        kwargs["connect_args"] = {"timeout": 60}
    with _service(url):
        return optuna.storages.RDBStorage(url, engine_kwargs=kwargs)


def create_study(cfg: TuningConfig, name: str, storage: optuna.storages.BaseStorage | str | None) -> optuna.Study:
    """Create or load study ``name`` (maximising ``cfg.metric``) with the configured sampler and pruner.

    ``storage`` None: in memory. Sampler and pruner are not stored: every process rebuilds them from ``cfg``.
    """
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    url = storage if isinstance(storage, str) else ""
    with _service(url):
        return optuna.create_study(
            study_name=name,
            storage=storage,
            sampler=cfg.sampler(),
            pruner=cfg.make_pruner(),
            direction="maximize",
            load_if_exists=True,
        )


def _check_space(study: optuna.Study, cfg: TuningConfig) -> None:
    """A study keeps one space: trials of another space would mislead the sampler."""
    dists = cfg.space.distributions()
    for t in study.get_trials(deepcopy=False):
        if t.distributions and t.distributions != dists:
            raise InvalidInputError(
                _TASK,
                [
                    FieldIssue(
                        "study_name", f"study {study.study_name!r} was run with another search space; name a new study"
                    )
                ],
            )


def ask_trials(study: optuna.Study, cfg: TuningConfig, n: int, *, key: str = "") -> list[int]:
    """Ask the study for ``n`` new trials (ask interface); returns their numbers.

    With ``cfg.include_defaults`` and an empty study, the first is the default point. Trials are tagged
    with ``key``: a second call with the same key returns the same trials instead of asking again (a
    retried pipeline step).
    """
    _check_space(study, cfg)
    if key:
        mine = [t.number for t in study.get_trials(deepcopy=False) if t.user_attrs.get(ASK_KEY_ATTR) == key]
        if mine:
            return sorted(mine)
    dists = cfg.space.distributions()
    numbers = []
    if cfg.include_defaults and not study.get_trials(deepcopy=False):
        study.enqueue_trial(cfg.default_point())
    for _ in range(n):
        trial = study.ask(dists)
        if key:
            trial.set_user_attr(ASK_KEY_ATTR, key)
        numbers.append(trial.number)
    return numbers


def trial_handle(study: optuna.Study, number: int) -> tuple[optuna.trial.Trial, optuna.trial.FrozenTrial]:
    """A live handle of trial ``number`` of ``study`` (asked elsewhere, maybe in another pod), to report and
    tell, and the trial as stored now."""
    import optuna

    storage = study._storage
    study_id = storage.get_study_id_from_name(study.study_name)
    try:
        trial_id = storage.get_trial_id_from_study_id_trial_number(study_id, number)
    except KeyError:
        raise InvalidInputError(
            _TASK, [FieldIssue("trial_number", f"study {study.study_name!r} has no trial {number}")]
        ) from None
    return optuna.trial.Trial(study, trial_id), storage.get_trial(trial_id)


def run_asked_trial(
    study: optuna.Study,
    number: int,
    cfg: TuningConfig,
    val_dir: Path,
    *,
    device: str | None = None,
) -> tuple[optuna.trial.FrozenTrial, TrialOutcome | None]:
    """Train and score an asked trial, reporting each epoch budget to the pruner, then tell the study.

    A trial that is already finished (a retried step) is returned as it is, with no outcome.

    Raises:
        FatalError: The trial diverged (it is told FAIL first).
    """
    from optuna.trial import TrialState

    trial, frozen = trial_handle(study, number)
    if frozen.state.is_finished():
        return frozen, None
    params = cfg.trial_params(frozen.params)

    def report(epochs: int, value: float) -> bool:
        trial.report(value, epochs)
        return bool(trial.should_prune())

    try:
        outcome = evaluate_trial(val_dir, params, cfg=cfg, report=report, device=device)
    except FatalError:
        study.tell(number, state=TrialState.FAIL, skip_if_finished=True)
        raise
    trial.set_user_attr("epochs_trained", outcome.epochs_trained)
    trial.set_user_attr("seconds", round(outcome.seconds, 3))
    if outcome.pruned:
        done = study.tell(number, state=TrialState.PRUNED, skip_if_finished=True)
    else:
        done = study.tell(number, outcome.value, skip_if_finished=True)
    return done, outcome


def best_trial(study: optuna.Study) -> optuna.trial.FrozenTrial:
    """The best complete trial (ties: the lowest number).

    Raises:
        FatalError: No trial completed (every one was pruned or failed).
    """
    from optuna.trial import TrialState

    done = [t for t in study.get_trials(deepcopy=False) if t.state == TrialState.COMPLETE and t.value is not None]
    if not done:
        raise FatalError(f"study {study.study_name!r} has no complete trial (all pruned, failed or running)")
    return max(done, key=lambda t: (float(t.value or 0.0), -t.number))


def study_summary(study: optuna.Study) -> dict[str, Any]:
    """Counts by state and every trial's number, state, value, params and intermediate values."""
    trials = study.get_trials(deepcopy=False)
    states: dict[str, int] = {}
    rows = []
    for t in trials:
        states[t.state.name.lower()] = states.get(t.state.name.lower(), 0) + 1
        rows.append(
            {
                "number": t.number,
                "state": t.state.name.lower(),
                "value": t.value,
                "params": dict(t.params),
                "intermediate": {str(k): v for k, v in sorted(t.intermediate_values.items())},
                "epochs_trained": t.user_attrs.get("epochs_trained"),
                "seconds": t.user_attrs.get("seconds"),
            }
        )
    return {"study": study.study_name, "trials": len(trials), "states": states, "rows": rows}


# ----------------------------------------------------------------------------- in one process


class StudyResult(BaseModel):
    """What :func:`tune` found."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    study_name: str
    best_number: int
    best_value: float
    best_params: TrialParams
    sampled: list[dict[str, Any]] = Field(description="Each trial's sampled settings, by trial number.")
    values: list[float | None]
    states: list[str]
    seconds_per_trial: list[float]
    seconds: float


def tune(
    ts_dir: Path,
    cfg: TuningConfig,
    *,
    study_name: str,
    storage: optuna.storages.BaseStorage | str | None = None,
    device: str | None = None,
    on_trial: Callable[[optuna.trial.FrozenTrial, TrialOutcome], None] | None = None,
) -> StudyResult:
    """Run a whole study in this process (``n_trials`` and ``timeout_s`` as the budget).

    Args:
        ts_dir: A training-set directory (its validation split is carved out here).
        cfg: The study.
        study_name: Name in the storage (an existing study with the same space continues).
        storage: Optuna storage (URL or object); None: in memory.
        device: Training device.
        on_trial: Called after each finished trial (e.g. to log an MLflow run).
    """
    import optuna

    t0 = time.perf_counter()
    study = create_study(cfg, study_name, storage)
    _check_space(study, cfg)
    outcomes: dict[int, TrialOutcome] = {}
    with tempfile.TemporaryDirectory(prefix="aitasks-val-") as tmp:
        val_dir = Path(tmp)
        write_validation_set(ts_dir, val_dir, days=cfg.validation_days)
        from aitasks.model_training import recommender as rec

        day = rec.load_held_out_day(val_dir)
        if cfg.include_defaults and not study.get_trials(deepcopy=False):
            study.enqueue_trial(cfg.default_point())
        dists = cfg.space.distributions()

        def objective(trial: optuna.Trial) -> float:
            sampled = {name: _suggest(trial, name, d) for name, d in dists.items()}
            params = cfg.trial_params(sampled)

            def report(epochs: int, value: float) -> bool:
                trial.report(value, epochs)
                return bool(trial.should_prune())

            outcome = evaluate_trial(val_dir, params, cfg=cfg, day=day, report=report, device=device)
            outcomes[trial.number] = outcome
            trial.set_user_attr("epochs_trained", outcome.epochs_trained)
            trial.set_user_attr("seconds", round(outcome.seconds, 3))
            if outcome.pruned:
                raise optuna.TrialPruned()
            return outcome.value

        def callback(study: optuna.Study, frozen: optuna.trial.FrozenTrial) -> None:
            if on_trial is not None and frozen.number in outcomes:
                on_trial(frozen, outcomes[frozen.number])

        with _service(storage if isinstance(storage, str) else ""):
            study.optimize(
                objective,
                n_trials=cfg.n_trials,
                timeout=cfg.timeout_s,
                callbacks=[callback],
                catch=(FatalError,),
                gc_after_trial=False,
            )
    best = best_trial(study)
    trials = study.get_trials(deepcopy=False)
    return StudyResult(
        study_name=study_name,
        best_number=best.number,
        best_value=float(best.value or 0.0),
        best_params=cfg.trial_params(best.params),
        sampled=[dict(t.params) for t in trials],
        values=[t.value for t in trials],
        states=[t.state.name.lower() for t in trials],
        seconds_per_trial=[float(t.user_attrs.get("seconds", math.nan)) for t in trials],
        seconds=time.perf_counter() - t0,
    )


def _suggest(trial: optuna.Trial, name: str, dist: Any) -> Any:
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    if isinstance(dist, FloatDistribution):
        return trial.suggest_float(name, dist.low, dist.high, log=dist.log)
    if isinstance(dist, IntDistribution):
        return trial.suggest_int(name, dist.low, dist.high, step=dist.step, log=dist.log)
    assert isinstance(dist, CategoricalDistribution)
    return trial.suggest_categorical(name, list(dist.choices))
