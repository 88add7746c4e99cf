"""The model card: facts from the pipeline's own records, rendered inert, attached to the version in MLflow."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import polars as pl
import pytest

from aitasks.model_training.model_card import build_model_card, render_markdown

EVALUATION = {
    "model": {"recall_at_10": 0.30, "ndcg_at_10": 0.25, "coverage_at_10": 0.4, "users": 87},
    "popularity": {"recall_at_10": 0.12, "ndcg_at_10": 0.10, "coverage_at_10": 0.02, "users": 87},
    "serving": {"protocol": "discovery", "filter_played": True},
    "gate": {
        "rule": {"metric": "recall_at_10", "confidence": 0.95},
        "vs_popularity": {"ratio": 2.5, "ratio_low": 2.0, "ratio_high": 3.1},
    },
    "blessing": {"blessed": True, "reasons": ["pass: lift <script>alert(1)</script> | [x](http://evil)"]},
}


@pytest.fixture(scope="module")
def ts(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from aitasks.data_processing.generator import generate_dataset
    from aitasks.model_training.offline_set import training_set_from_events

    out = tmp_path_factory.mktemp("card")
    ds = generate_dataset(
        out / "raw", seed=4, users=80, tracks=120, events=1_500, start=datetime(2026, 4, 1, tzinfo=UTC), days=5
    )
    training_set_from_events(pl.read_parquet(ds.events_path), pl.read_parquet(ds.tracks_path), out / "ts")
    return out / "ts"


def card(ts: Path, evaluation: dict = EVALUATION):
    return build_model_card(
        model_name="reco-two-tower",
        version=3,
        version_tags={"aitasks.code_version": "model.train@1.2.0", "aitasks.git_revision": "abc123"},
        model_meta={"params": {"lr": 0.004, "epochs": 3, "lr_decay": "cosine"}, "task": "model.train@1.2.0"},
        model_sha="sha256:m",
        evaluation=evaluation,
        ts_dir=ts,
        ts_sha="sha256:t",
        ts_meta={"snapshot_hash": "snap", "split_at": "2026-04-05T00:00:00+00:00"},
    )


def test_card_states_the_data_metrics_and_config_it_was_given(ts: Path) -> None:
    c = card(ts)
    train = pl.read_parquet(ts / "train.parquet")
    assert (c.data.train_rows, c.data.train_users) == (train.height, train["user_id"].n_unique())
    assert c.data.first_play == str(train["event_timestamp"].min()) and c.data.split_at.startswith("2026-04-05")
    vocab = json.loads((ts / "vocabulary.json").read_text())
    assert c.data.genre_vocabulary == vocab["genres"]["version"] and c.data.genres > 0
    by = {m.name: m for m in c.metrics}
    assert by["recall_at_10"].ratio == pytest.approx(2.5)
    assert (by["recall_at_10"].ratio_low, by["recall_at_10"].ratio_high) == (2.0, 3.1)
    assert by["ndcg_at_10"].ratio_low is None, "intervals only where the evaluation computed them"
    assert c.protocol == "discovery" and c.confidence == 0.95 and c.blessed
    assert c.training_config == {"epochs": 3, "lr": 0.004, "lr_decay": "cosine"}
    assert c.code_version == "model.train@1.2.0" and c.git_revision == "abc123"
    assert any("87 held-out listeners" in limit for limit in c.limits)


def test_missing_facts_say_so_and_nothing_is_invented(ts: Path) -> None:
    c = card(ts, {"model": {"recall_at_10": 0.3}, "popularity": {}})
    assert c.metrics == [] and c.blessed is False and c.confidence is None
    assert any("unknown number of" in limit for limit in c.limits)


def test_markdown_is_inert_for_a_viewer(ts: Path) -> None:
    from markdown_it import MarkdownIt

    md = render_markdown(card(ts))
    assert md.startswith("# Model card: reco\\-two\\-tower v3")
    html = MarkdownIt("commonmark", {"html": False}).enable("table").render(md)
    assert "<script>" not in html and "<a " not in html and "&lt;script&gt;" in html
    assert "| recall\\_at\\_10 | 0.3000 | 0.1200 | 2.5000 | 2.0000 | 3.1000 |" in md
    assert html.count("<table>") == 4


def test_documents_are_attached_to_the_registered_version(ts: Path, tmp_path: Path) -> None:
    from mlflow import MlflowClient

    from aitasks.model_training.tracking import log_version_documents
    from aitasks.platform.registry import RegistryConfig, register_model

    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "model.json").write_text("{}")
    (tmp_path / "mlruns").mkdir()
    reg = RegistryConfig(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}", artifact_location=str(tmp_path / "mlruns"))
    version = register_model(reg, tmp_path / "model", idempotency_key="k", tags={}, params={}, metrics={})
    md = render_markdown(card(ts))
    for _ in range(2):  # a retry logs the same documents again, no second copy
        run_id = log_version_documents(
            reg, version.version, {"model_card.md": md}, artifact_path="model_card", tags={"aitasks.model_card": "x"}
        )
    c = MlflowClient(tracking_uri=reg.tracking_uri)
    assert run_id == version.run_id
    assert [a.path for a in c.list_artifacts(run_id, "model_card")] == ["model_card/model_card.md"]
    assert Path(c.download_artifacts(run_id, "model_card/model_card.md", str(tmp_path))).read_text() == md
    assert c.get_model_version("reco-two-tower", str(version.version)).tags["aitasks.model_card"] == "x"
