"""Fixtures of the browser tests: headless Chromium, a local web server, and one report of each kind.

The reports are made the way the pipelines make them: the audio report by the audio tasks on a
synthetic catalog (:func:`~aitasks.audio_analysis.demo_catalog.write_demo_catalog`: digital silence,
a clipped master, a near-duplicate, broken files) plus a 0.4 s clip; the classifier's explanations by
the train and explain tasks on a labelled folder with a silent clip; the evaluation report by the
evaluation functions on a small synthetic listening world.
"""

from __future__ import annotations

import functools
import os
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import CapturedRuntime
from tests.reports.browser import Browser, chromium, find_chromium


def _browser_required() -> bool:
    """In CI (``AITASKS_REQUIRE_SERVICES=1`` or ``CI``) a missing Chromium fails; on a laptop it skips."""
    flags = (os.environ.get("AITASKS_REQUIRE_SERVICES", ""), os.environ.get("CI", ""))
    return any(f.lower() in {"1", "true", "yes"} for f in flags)


@pytest.fixture(scope="session")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Browser]:
    binary = find_chromium()
    if binary is None:
        reason = "headless Chromium is not installed (Debian: apt-get install chromium)"
        if _browser_required():
            pytest.fail(f"required browser unavailable: {reason}")
        pytest.skip(reason)
    with chromium(tmp_path_factory.mktemp("chromium"), binary) as b:
        yield b


class _Quiet(SimpleHTTPRequestHandler):
    """Serves a folder; no log lines, and no favicon (a 404 would be a console error of every page)."""

    def log_message(self, format: str, *args: object) -> None:
        pass

    def do_GET(self) -> None:
        if self.path == "/favicon.ico":
            self.send_response(204)
            self.end_headers()
            return
        super().do_GET()


@dataclass
class Site:
    """A folder served over HTTP on localhost: KFP serves its UI over HTTP too, and a ``srcdoc``
    frame's links resolve against that page's URL (over ``file://`` Chromium would refuse them)."""

    root: Path
    base: str

    def put(self, name: str, text: str) -> str:
        (self.root / name).write_text(text, "utf-8")
        return f"{self.base}/{name}"


@pytest.fixture(scope="session")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    root = tmp_path_factory.mktemp("site")
    server = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_Quiet, directory=str(root)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield Site(root, f"http://127.0.0.1:{server.server_address[1]}")
    finally:
        server.shutdown()
        server.server_close()


# ------------------------------------------------------------------------------ audio report


@dataclass
class AudioReport:
    html: str
    silent: str
    short: str
    tracks: int
    quarantined: int
    flags: int


#: The very short clip added to the demo catalog (a sliver in the old report).
SHORT_ID = "t_900001"


@pytest.fixture(scope="session")
def audio_report(tmp_path_factory: pytest.TempPathFactory) -> AudioReport:
    import json

    import pyarrow as pa
    import pyarrow.parquet as pq
    import soundfile as sf

    from aitasks.audio_analysis import tasks as T
    from aitasks.audio_analysis.demo_catalog import track_path, write_demo_catalog
    from aitasks.audio_analysis.synthetic import synth_clip
    from aitasks.runtime.storage import join_uri

    root = tmp_path_factory.mktemp("audio-report")
    cat = root / "catalog"
    # 10 good tracks (the outlier model's minimum) of 10.5-12 s (over the 10 s minimum), plus the planted problems.
    truth = write_demo_catalog(cat, tracks=10, seed=3, labelled_per_class=0, seconds=(10.5, 12.0))
    short = track_path(cat, SHORT_ID, "wav")
    sf.write(str(short), synth_clip("tonal", seed=5, sr=22050, duration_s=0.4) * 0.5, 22050)
    planted = truth["planted"]
    assert isinstance(planted, dict)
    silent = next(t for t, why in planted.items() if why == "silence")

    cap = CapturedRuntime(root)
    rt = cap.rt
    listing = T.list_catalog_task({"catalog_root": str(cat), "shards": 1}, runtime=rt)
    shard = T.analyze_audio_task({"listing_uri": listing.listing_uri, "shard_index": 0}, runtime=rt)
    collected = T.collect_task({"shard_uris": [shard.shard_uri]}, runtime=rt)
    anomalies = T.anomalies_task({"analysis_uri": collected.analysis_uri}, runtime=rt)
    labels = truth["labels"]
    assert isinstance(labels, dict)
    preds = join_uri(str(root), "predictions.parquet")
    pq.write_table(
        pa.table(
            {
                "track_id": list(labels),
                "label": list(labels.values()),
                "confidence": pa.array([0.9] * len(labels), pa.float32()),
                "probabilities": [json.dumps({}) for _ in labels],
            }
        ),
        preds,
    )
    res = T.report_task(
        {
            "analysis_uri": collected.analysis_uri,
            "anomalies_uri": anomalies.anomalies_uri,
            "predictions_uri": preds,
            "title": "Audio analysis of the demo catalog",
            "spectrograms": 6,
        },
        runtime=rt,
    )
    return AudioReport(
        html=Path(res.report_uri).read_text("utf-8"),
        silent=silent,
        short=SHORT_ID,
        tracks=res.tracks,
        quarantined=res.quarantined,
        flags=res.flags,
    )


# --------------------------------------------------------------------- explanations report


@dataclass
class ExplainReport:
    html: str
    silent: str
    examples: int


@pytest.fixture(scope="session")
def explain_report(tmp_path_factory: pytest.TempPathFactory) -> ExplainReport:
    """The classifier's explanations as the pipeline makes them: train (torch) then explain, on a labelled
    folder with a digitally silent clip first in its class."""
    import soundfile as sf

    from aitasks.audio_analysis import tasks as T
    from aitasks.audio_analysis.synthetic import write_labelled_folder

    root = tmp_path_factory.mktemp("explain-report")
    labelled = root / "labelled"
    write_labelled_folder(labelled, per_class=4, seed=4, sr=22050, duration_s=1.2, formats=("wav",))
    silent = "noise/0-silence.wav"
    sf.write(str(labelled / silent), np.zeros(26460, np.float32), 22050)
    head, *rows = (labelled / "labels.csv").read_text("utf-8").splitlines()
    (labelled / "labels.csv").write_text("\n".join([head, f"{silent},noise", *rows]) + "\n", "utf-8")
    rt = CapturedRuntime(root).rt
    common = {"labelled_root": str(labelled)}
    trained = T.train_classifier_task({**common, "epochs": 2, "clip_seconds": 1.0, "device": "cpu"}, runtime=rt)
    res = T.explain_classifier_task(
        {**common, "model_uri": trained.model_uri, "split": "all", "per_class": 2, "n_steps": 16}, runtime=rt
    )
    return ExplainReport(html=Path(res.report_uri).read_text("utf-8"), silent=silent, examples=8)


# ------------------------------------------------------------------------- evaluation report


@dataclass
class EvaluationReport:
    markdown: str
    html: str


@pytest.fixture(scope="session")
def evaluation_report() -> EvaluationReport:
    """The evaluation report on a small synthetic listening world (latent tastes, Zipf popularity)."""
    from aitasks.model_training import evaluation as ev

    rng = np.random.default_rng(11)
    users, items, dim = 300, 400, 8
    taste, style = rng.normal(size=(users, dim)), rng.normal(size=(items, dim))
    popularity = 1.0 / np.arange(1, items + 1) ** 0.8
    affinity = taste @ style.T + 2.0 * np.log(popularity)

    def sample(n: int) -> list[np.ndarray]:
        noisy = affinity + rng.gumbel(size=affinity.shape) * 2.0
        return [np.argsort(-row)[:n] for row in noisy]

    history, next_day = sample(12), sample(6)
    counts = np.bincount(np.concatenate(history), minlength=items).astype(np.float64)
    discovery = [np.setdiff1d(t, h) for t, h in zip(next_day, history, strict=True)]
    user_vecs = np.hstack([taste, np.ones((users, 1))])
    item_vecs = np.hstack([style, 2.0 * np.log(popularity)[:, None]])
    champion_vecs = user_vecs + rng.normal(scale=1.0, size=user_vecs.shape)
    k = 100

    def rankers(exclude: list[np.ndarray] | None) -> dict[str, np.ndarray]:
        return {
            "model": ev.topk_from_embeddings(user_vecs, item_vecs, k, exclude=exclude),
            "popularity": ev.topk_popularity(counts, users, k, exclude=exclude),
            "own history": ev.topk_own_history(history, counts, k, exclude=exclude),
            "champion": ev.topk_from_embeddings(champion_vecs, item_vecs, k, exclude=exclude),
        }

    lists = {"all": rankers(None), "discovery": rankers(history)}
    targets = {"all": next_day, "discovery": discovery}
    protocols = [
        ev.ProtocolMetrics(
            protocol=p,  # type: ignore[arg-type]
            model=ev.retrieval_metrics(lists[p]["model"], targets[p], items),
            popularity=ev.retrieval_metrics(lists[p]["popularity"], targets[p], items),
            own_history=ev.retrieval_metrics(lists[p]["own history"], targets[p], items),
            champion=ev.retrieval_metrics(lists[p]["champion"], targets[p], items),
        )
        for p in ("all", "discovery")
    ]
    filtered = ev.retrieval_metrics(lists["discovery"]["model"], next_day, items)
    serving = ev.choose_serving(protocols[0].model.recall_at_10, filtered.recall_at_10, metric="recall_at_10")
    gate = serving.protocol
    per_user = {name: ev.per_user_scores(top, targets[gate], items) for name, top in lists[gate].items()}

    def versus(name: str) -> ev.PairedComparison:
        return ev.paired_bootstrap(per_user["model"], per_user[name], reference_name=name, resamples=400, seed=1)

    rule = ev.BlessingRule(resamples=400, seed=1)
    blessing = ev.decide_blessing(versus("popularity"), versus("champion"), rule)
    markdown, html = ev.render_report(
        protocols=protocols,
        serving=serving,
        blessing=blessing,
        title="Recommender evaluation",
        facts={"model name": "reco-two-tower", "held-out users": str(users), "run id": "run-browser-test"},
        rule=rule,
        vs_own_history=versus("own history"),
    )
    return EvaluationReport(markdown=markdown, html=html)


# ------------------------------------------------------------------------ explanation report


@dataclass
class ExplanationReport:
    html: str
    users: list[str]
    tracks: int


@pytest.fixture(scope="session")
def explanation_report(tmp_path_factory: pytest.TempPathFactory) -> ExplanationReport:
    """The recommender explanations of a small trained model, as model.explain renders them."""
    from datetime import UTC, datetime

    import polars as pl

    from aitasks.data_processing.generator import generate_dataset
    from aitasks.model_training.explain import explain_users, render_html
    from aitasks.model_training.offline_set import training_set_from_events
    from aitasks.model_training.recommender import train_recommender
    from aitasks.model_training.two_tower import TrainConfig

    out = tmp_path_factory.mktemp("explain-report")
    ds = generate_dataset(
        out / "raw", seed=8, users=120, tracks=200, events=3_000, start=datetime(2026, 4, 1, tzinfo=UTC), days=6
    )
    training_set_from_events(pl.read_parquet(ds.events_path), pl.read_parquet(ds.tracks_path), out / "ts")
    train_recommender(out / "ts", out / "model", TrainConfig(epochs=1, batch_size=256), arch={"hidden_dim": 32})
    explained = explain_users(out / "model", out / "ts", users=3, k=4, steps=16)
    page = render_html(explained, title="Why these recommendations", facts={"run id": "run-browser-test"})
    return ExplanationReport(
        html=page, users=[e.user_id for e in explained], tracks=sum(len(e.items) for e in explained)
    )
