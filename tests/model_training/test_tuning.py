"""Hyperparameter tuning: a validated search space, a seeded study, pruning, the validation split, storage."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import optuna
import polars as pl
import pytest

from aitasks.model_training import tuning as T
from aitasks.runtime.errors import InvalidInputError
from aitasks.runtime.settings import Settings

SPACE = T.SearchSpace(
    params={
        "lr": T.FloatParam(low=1e-3, high=3e-2, log=True),
        "embedding_dim": T.CategoricalParam(choices=(16, 32)),
        "epochs": T.IntParam(low=1, high=2),
    }
)


def tiny_config(**kw: object) -> T.TuningConfig:
    return T.TuningConfig(space=SPACE, base=T.TrialParams(batch_size=256, hidden_dim=32), **kw)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def ts(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from aitasks.data_processing.generator import generate_dataset
    from aitasks.model_training.offline_set import training_set_from_events

    out = tmp_path_factory.mktemp("tuning")
    ds = generate_dataset(
        out / "raw", seed=3, users=150, tracks=250, events=5_000, start=datetime(2026, 4, 1, tzinfo=UTC), days=9
    )
    training_set_from_events(pl.read_parquet(ds.events_path), pl.read_parquet(ds.tracks_path), out / "ts")
    return out / "ts"


# ------------------------------------------------------------------------------------ the space


def test_trial_defaults_are_the_train_task_defaults() -> None:
    from aitasks.model_training.tasks import TrainParams

    for name, field in T.TrialParams.model_fields.items():
        assert TrainParams.model_fields[name].default == field.default, name


@pytest.mark.parametrize(
    ("space", "says"),
    [
        ({"lr": {"kind": "float", "low": 0.0, "high": 0.1, "log": True}}, "log-uniform range needs low > 0"),
        ({"lr": {"kind": "float", "low": 0.1, "high": 0.01}}, "must be below high"),
        ({"lr": {"kind": "float", "low": 0.001, "high": 5.0}}, "lr: value 5.0 out of bounds"),
        ({"weight_decay": {"kind": "float", "low": 0.0, "high": 0.1}}, "weight_decay: not a tunable setting"),
        ({"embedding_dim": {"kind": "categorical", "choices": []}}, "at least 1 item"),
        ({"embedding_dim": {"kind": "categorical", "choices": [32, 32]}}, "choices must be distinct"),
        ({"epochs": {"kind": "int", "low": 0, "high": 3}}, "epochs: value 0 out of bounds"),
        ({"lr": {"kind": "uniform", "low": 0.001, "high": 0.01}}, "does not match any of the expected tags"),
    ],
)
def test_a_bad_search_space_is_refused_naming_the_setting(space: dict, says: str) -> None:
    with pytest.raises(InvalidInputError) as err:
        T.parse_config({"space": {"params": space}})
    assert says in str(err.value) and "config.space" in str(err.value)


def test_default_point_is_the_base_settings_moved_into_the_space() -> None:
    cfg = tiny_config()
    assert cfg.default_point() == {"lr": 3e-3, "embedding_dim": 16, "epochs": 2}
    assert T.TuningConfig().default_point()["embedding_dim"] == 64


def test_rungs_are_geometric_epoch_budgets() -> None:
    assert T.rungs(1) == [1]
    assert T.rungs(6) == [1, 2, 4, 6]
    assert T.rungs(8) == [1, 2, 4, 8]
    assert T.rungs(6, pruning=False) == [6]


def test_same_seed_same_proposals_other_seed_other_proposals() -> None:
    def proposals(seed: int) -> list[dict]:
        cfg = tiny_config(seed=seed, n_startup_trials=2, include_defaults=False)
        study = T.create_study(cfg, "s", None)
        numbers = T.ask_trials(study, cfg, 3)
        for n, v in zip(numbers[:2], (0.2, 0.3), strict=True):  # tell two: TPE then models them
            study.tell(n, v)
        numbers += T.ask_trials(study, cfg, 2)
        return [study.trials[n].params for n in numbers]

    assert proposals(7) == proposals(7)
    assert proposals(7) != proposals(8)


def test_a_retried_ask_returns_the_same_trials_and_a_new_space_is_refused() -> None:
    cfg = tiny_config()
    study = T.create_study(cfg, "s", None)
    first = T.ask_trials(study, cfg, 3, key="k1")
    assert first == [0, 1, 2] and study.trials[0].params == cfg.default_point()
    assert T.ask_trials(study, cfg, 3, key="k1") == first
    assert T.ask_trials(study, cfg, 2, key="k2") == [3, 4]
    other = tiny_config().model_copy(update={"space": T.DEFAULT_SPACE})
    with pytest.raises(InvalidInputError, match="another search space"):
        T.ask_trials(study, other, 1)


# ------------------------------------------------------------------------------- validation set


def test_validation_split_holds_out_the_last_training_day_and_leaks_nothing(ts: Path, tmp_path: Path) -> None:
    from aitasks.model_training import recommender as rec

    facts = T.write_validation_set(ts, tmp_path / "val", days=1)
    train = pl.read_parquet(ts / "train.parquet")
    split = datetime.fromisoformat(facts["split_at"])
    val_train = pl.read_parquet(tmp_path / "val" / "train.parquet")
    targets = pl.read_parquet(tmp_path / "val" / "targets.parquet")
    assert val_train["event_timestamp"].max() < split <= train["event_timestamp"].max()
    assert val_train.height + train.filter(pl.col("event_timestamp") >= split).height == train.height
    later = train.filter(pl.col("event_timestamp") >= split).select("user_id", "track_id").unique()
    assert targets.sort("user_id", "track_id").equals(later.sort("user_id", "track_id"))
    # A user's features at the split are those of the user's latest earlier row (never a later one).
    users = pl.read_parquet(tmp_path / "val" / "users.parquet")
    some = users.drop_nulls("user_plays_28d").row(0, named=True)
    last = val_train.filter(pl.col("user_id") == some["user_id"]).sort("event_timestamp").row(-1, named=True)
    assert some["user_plays_28d"] == last["user_plays_28d"]
    # Window statistics and play counts come from before the split; catalog attributes stay.
    items = pl.read_parquet(tmp_path / "val" / "items.parquet")
    orig = pl.read_parquet(ts / "items.parquet")
    assert items.columns == orig.columns and items.height == orig.height
    assert items["train_plays"].sum() == val_train.height
    assert items["track_duration_ms"].equals(orig["track_duration_ms"])
    day = rec.load_held_out_day(tmp_path / "val")
    assert len(day.user_ids) == targets["user_id"].n_unique() > 10
    with pytest.raises(InvalidInputError, match="validation_days"):
        T.write_validation_set(ts, tmp_path / "none", days=30)


def test_a_pruned_trial_stops_at_the_first_budget(ts: Path, tmp_path: Path) -> None:
    T.write_validation_set(ts, tmp_path / "val")
    seen: list[tuple[int, float]] = []

    def stop(epochs: int, value: float) -> bool:
        seen.append((epochs, value))
        return True

    out = T.evaluate_trial(tmp_path / "val", tiny_config().trial_params({"epochs": 2}), cfg=tiny_config(), report=stop)
    assert out.pruned and out.epochs_trained == 1 and out.history == seen and len(seen) == 1
    assert 0 < out.value <= 1


@pytest.mark.slow  # two studies of 4 trials on tiny data: about a minute on a loaded 2-core machine
def test_a_seeded_study_is_deterministic_and_its_best_is_no_worse_than_the_defaults(ts: Path, tmp_path: Path) -> None:
    cfg = tiny_config(n_trials=4, n_startup_trials=2, pruner="none")
    a = T.tune(ts, cfg, study_name="a")
    b = T.tune(ts, cfg, study_name="b", storage=f"sqlite:///{tmp_path / 'b.db'}")
    assert a.sampled == b.sampled and a.values == b.values and a.best_number == b.best_number
    assert a.sampled[0] == cfg.default_point()
    # Trial 0 is the default configuration: the same value as scoring the defaults directly.
    T.write_validation_set(ts, tmp_path / "val")
    default = T.evaluate_trial(tmp_path / "val", cfg.trial_params(cfg.default_point()), cfg=cfg)
    assert a.values[0] == pytest.approx(default.value)
    assert a.best_value >= default.value
    assert a.best_params == cfg.trial_params(a.sampled[a.best_number])


@pytest.mark.slow  # four trials with pruning: about a minute on a loaded 2-core machine
def test_a_study_prunes_with_the_median_rule(ts: Path) -> None:
    cfg = tiny_config(n_trials=4, n_startup_trials=1, pruner_startup_trials=1)
    res = T.tune(ts, cfg, study_name="m")
    assert res.states[0] == "complete"
    assert set(res.states) <= {"complete", "pruned"}
    assert res.best_value == max(v for v, s in zip(res.values, res.states, strict=True) if s == "complete")


# -------------------------------------------------------------------------------------- storage


def test_storage_url_from_settings(tmp_path: Path) -> None:
    local = T.storage_url(Settings(storage_root=str(tmp_path)))
    assert local == f"sqlite:///{tmp_path / 'optuna' / 'studies.db'}"
    pg = Settings(storage_root="gs://b/p", tuning_storage="postgresql://u:pw@db:5432/optuna")
    assert T.storage_url(pg) == "postgresql+psycopg://u:pw@db:5432/optuna"
    with pytest.raises(InvalidInputError, match="AITASKS_TUNING_STORAGE") as err:
        T.storage_url(Settings(storage_root="gs://b/p"))
    assert "tuning_storage" in str(err.value)
    with pytest.raises(InvalidInputError) as err:
        T.storage_url(Settings(tuning_storage="mysql://u:secret@db/x"))
    assert "secret" not in str(err.value)


def test_an_unreachable_study_database_is_retryable_and_hides_the_password() -> None:
    from aitasks.runtime.errors import ServiceUnavailableError

    with pytest.raises(ServiceUnavailableError) as err:
        T.open_storage("postgresql+psycopg://u:pw-secret@127.0.0.1:1/optuna?connect_timeout=2")
    assert "pw-secret" not in str(err.value) and "127.0.0.1:1" in str(err.value)


@pytest.mark.integration
def test_trials_told_from_other_processes_meet_in_one_postgres_study() -> None:
    """Each pipeline step opens the study anew (as a pod would): asks, reports, tells, selects."""
    from tests.fixtures.services import fresh_database

    with fresh_database("aitasks_optuna") as url:
        settings = Settings(tuning_storage=url)
        storage = T.storage_url(settings)
        assert storage.startswith("postgresql+psycopg://")
        cfg = tiny_config(include_defaults=True)
        asked = T.ask_trials(T.create_study(cfg, "pg", T.open_storage(storage)), cfg, 3, key="run-1")
        assert asked == [0, 1, 2]
        # A retried suggest step (new connection) gets the same trials back.
        assert T.ask_trials(T.create_study(cfg, "pg", T.open_storage(storage)), cfg, 3, key="run-1") == asked
        for number, value in zip(asked, (0.30, 0.35, 0.25), strict=True):
            study = T.create_study(cfg, "pg", T.open_storage(storage))  # one "pod" per trial
            trial, frozen = T.trial_handle(study, number)
            assert frozen.state == optuna.trial.TrialState.RUNNING
            trial.report(value - 0.05, 1)
            study.tell(number, value)
        loaded = T.create_study(cfg, "pg", T.open_storage(storage))
        best = T.best_trial(loaded)
        assert best.number == 1 and best.value == pytest.approx(0.35)
        summary = T.study_summary(loaded)
        assert summary["states"] == {"complete": 3} and summary["rows"][0]["intermediate"] == {"1": pytest.approx(0.25)}
        with pytest.raises(InvalidInputError, match="has no trial 9"):
            T.trial_handle(loaded, 9)
