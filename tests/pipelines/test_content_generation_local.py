"""content-generation end to end with kfp.local on tiny models built here (a pipeline parameter names them)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from aitasks.runtime.audit import AuditLog

# A full pipeline run (tens of seconds on 2 cores): `make test-all` and CI run it, `make test` does not.
pytestmark = pytest.mark.slow

PROMPTS: list[dict[str, Any]] = [
    {"id": "title-1", "kind": "text", "template": "playlist_title", "metadata": {"genre": "jazz", "mood": "focus"}},
    {
        "id": "blurb-1",
        "kind": "text",
        "template": "track_blurb",
        "metadata": {"title": "Golden River", "artist": "Nova Trio", "genre": "soul", "year": 1999},
    },
    {"id": "cover-1", "kind": "image", "prompt": "album cover, neon city at night"},
    {"id": "cover-2", "kind": "image", "prompt": "album cover, quiet forest"},
    {"id": "clip-1", "kind": "music", "prompt": "calm lo-fi beat with soft piano"},
    {"id": "bad-pii", "kind": "image", "prompt": "cover for joe.doe@example.com"},
]


@pytest.fixture(scope="module")
def content_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    from rich.console import Console

    from aitasks.content_generation.tiny_models import build_all
    from pipelines.demo import run_and_collect

    work = tmp_path_factory.mktemp("content-run")
    models = build_all(work / "models", text_steps=120, text_batch=8)
    prompts = work / "prompts.jsonl"
    prompts.write_text("".join(json.dumps(p) + "\n" for p in PROMPTS), "utf-8")
    params = {
        "prompts_uri": str(prompts),
        "run_context": {"storage_root": str(work / "store"), "submitter": "pytest", "pipeline_version": "v-test"},
        "models": models,
        "generation": {"seed": 11, "max_new_tokens": 16, "image_steps": 4, "audio_seconds": 1.0, "num_threads": 1},
        "batch_size": 2,
        "collection": "e2e",
    }
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("AITASKS_INPUT_ROOTS", str(work))  # prompts and models lie beside the storage root
        outcome = run_and_collect("content-generation", params, work, Console(width=120))
    return work, {"results": outcome.results, "run": outcome.run, "records": outcome.records, "models": models}


def test_pipeline_runs_every_step_and_fans_out_per_batch(content_run: tuple[Path, dict[str, Any]]) -> None:
    _, s = content_run
    assert s["run"]["failed"] == []
    results = s["results"]
    assert set(results) == {
        "content.validate_prompts",
        "content.generate",
        "content.check",
        "content.publish",
        "content.report",
        "run.summary",
    }
    v = results["content.validate_prompts"]
    assert (v["accepted"], v["rejected"], v["batches"]) == (5, 1, [0, 1, 2])
    generated = [r for r in s["records"] if r["task"] == "content.generate" and r["status"] == "succeeded"]
    assert len(generated) == 3, "one generation step per batch (ParallelFor)"
    assert len({r["trace_id"] for r in s["records"]}) == 1 and {r["pipeline"] for r in s["records"]} == {
        "content-generation"
    }
    assert {r["pipeline_version"] for r in s["records"] if r["task"] != "run.summary"} == {"v-test"}


def test_release_is_published_with_provenance_and_the_report_has_samples(
    content_run: tuple[Path, dict[str, Any]],
) -> None:
    from aitasks.content_generation.provenance import read_embedded
    from aitasks.runtime.bundle import open_bundle

    work, s = content_run
    pub = s["results"]["content.publish"]
    chk = s["results"]["content.check"]
    assert pub["published"] == chk["accepted"] and pub["quarantined"] == chk["rejected"]
    assert chk["accepted_by_kind"]["image"] == 2 and chk["accepted_by_kind"]["music"] == 1
    assert pub["release_uri"].startswith(str(work / "store" / "content" / "e2e" / "releases"))
    with open_bundle(pub["release_uri"], kind="content_release") as (rel, _):
        items = json.loads((rel / "release.json").read_text())["items"]
        for item in items:
            prov = json.loads((rel / "items" / item["provenance"]).read_text())
            assert prov["model"]["uri"] == s["models"][item["kind"]] and prov["pipeline"] == "content-generation"
            if item["kind"] != "text":
                assert read_embedded(rel / "items" / item["file"])["item_id"] == item["id"]
    html = Path(s["results"]["content.report"]["report_uri"]).read_text("utf-8")
    assert html.count("data:image/png;base64,") == 2 and "<audio controls" in html
    assert AuditLog(work / "store" / "audit").verify().ok
