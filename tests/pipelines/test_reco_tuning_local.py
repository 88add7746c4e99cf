"""reco-tuning end to end with kfp.local on small synthetic data: suggest -> ParallelFor trials -> select ->
train with the best settings -> evaluate -> register -> model card + explanations -> promote."""

from __future__ import annotations

import json
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console

# A full pipeline run (5-20 minutes on a shared 2-core machine): `make test-all` and CI run it, `make test` does not.
pytestmark = [pytest.mark.slow, pytest.mark.timeout(2400)]

START = date(2026, 10, 1)
DAYS = 14
SPACE = {
    "lr": {"kind": "float", "low": 0.001, "high": 0.03, "log": True},
    "embedding_dim": {"kind": "categorical", "choices": [16, 32]},
    "epochs": {"kind": "int", "low": 1, "high": 2},
}


@pytest.fixture(scope="module")
def tuned(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Any]:
    from pipelines.demo import run_and_collect

    work = tmp_path_factory.mktemp("tuning")
    store = work / "store"
    params = {
        "run_context": {"storage_root": str(store), "submitter": "pytest"},
        "synthetic": {
            "users": 300,
            "tracks": 600,
            "events": 12_000,
            "days": DAYS,
            "start_date": START.isoformat(),
            "dirty_rows": 0,
        },
        "as_of": (START + timedelta(days=DAYS)).isoformat() + "T00:00:00+00:00",
        # The drift check's warm-up is the lookback: shorter than the 14 generated days.
        "data": {"lookback_days": 7},
        "tuning": {"n_trials": 3, "search_space": SPACE},
        "training": {"batch_size": 256},
        "gate": {"bootstrap_resamples": 200},
    }
    outcome = run_and_collect("reco-tuning", params, work, Console(quiet=True))
    return store, outcome


def test_trials_fan_out_and_the_best_settings_train_the_registered_model(tuned: tuple[Path, Any]) -> None:
    import optuna

    store, outcome = tuned
    results = outcome.results
    assert outcome.run["failed"] == [], outcome.run["failed"]
    suggest, select, train = results["tune.suggest"], results["tune.select"], results["model.train"]
    assert suggest["trial_numbers"] == [0, 1, 2]
    trials = [r for r in outcome.records if r["task"] == "tune.trial" and r["status"] == "succeeded"]
    assert len(trials) == 3, "one step per asked trial"
    # The study in the embedded storage holds every trial told; select picked its best complete one.
    study = optuna.load_study(study_name=suggest["study_name"], storage=f"sqlite:///{store / 'optuna' / 'studies.db'}")
    done = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert [t.number for t in study.trials] == [0, 1, 2] and all(t.state.is_finished() for t in study.trials)
    assert done and study.trials[0].params == {"lr": 0.003, "embedding_dim": 16, "epochs": 2}, "trial 0: defaults"
    best = max(done, key=lambda t: (t.value, -t.number))
    assert select["best_number"] == best.number and select["best_value"] == pytest.approx(best.value)
    # The final training step ran the best trial's settings.
    params = json.loads(Path(train["model_uri"]).read_text())["meta"]["params"]
    for name, value in best.params.items():
        assert params[name] == pytest.approx(value), name
    assert params["batch_size"] == 256
    assert results["model.register"]["version"] == 1


def test_card_and_explanations_are_attached_to_the_version(tuned: tuple[Path, Any]) -> None:
    from mlflow import MlflowClient

    store, outcome = tuned
    results = outcome.results
    card, explained = results["model.card"], results["model.explain"]
    from pipelines.reco_tuning import EXPLAIN_USERS

    assert card["version"] == 1 and explained["users"] == EXPLAIN_USERS
    assert "# Model card: reco" in Path(card["card_markdown_uri"]).read_text()
    assert "<svg" in Path(explained["report_html_uri"]).read_text()
    c = MlflowClient(tracking_uri=f"sqlite:///{store / 'mlflow' / 'mlflow.db'}")
    mv = c.get_model_version("reco-two-tower", "1")
    names = {a.path for a in c.list_artifacts(mv.run_id, "model_card")} | {
        a.path for a in c.list_artifacts(mv.run_id, "explanations")
    }
    assert {"model_card/model_card.md", "model_card/model_card.json", "explanations/explanations.html"} <= names
    # The study's parent run and one nested run per trial.
    parent = c.get_run(results["tune.suggest"]["mlflow_run_id"])
    nested = c.search_runs([parent.info.experiment_id], f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'")
    assert len(nested) == 3 and parent.info.status == "FINISHED"
    assert any(k.startswith("best.") for k in parent.data.params)
