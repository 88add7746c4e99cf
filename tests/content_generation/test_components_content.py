"""The content-generation components called as plain functions (``.python_func``): adapter and tasks, no runner."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from kfp.dsl import HTML, Dataset, Metrics

from tests.content_generation.conftest import GENERATION, PROMPTS, write_prompts


def _artifact(cls: type, tmp: Path, name: str) -> Any:
    return cls(name=name, uri=str(tmp / "kfp" / name), metadata={})


def test_content_components_chain_as_plain_functions(tiny_models: dict[str, str], tmp_path: Path) -> None:
    from components.content_generation import (
        check_content,
        content_report,
        generate_content,
        publish_content,
        validate_prompts,
    )
    from pipelines.content_generation import CHECKS_DEFAULT, GENERATION_DEFAULT, POLICY_DEFAULT

    ctx = {"run_context": {"storage_root": str(tmp_path / "store"), "submitter": "test"}, "pipeline": "unit"}
    # Text only: the components' wiring is under test here; every kind runs in test_tasks.py.
    prompts_file = write_prompts(tmp_path / "p.jsonl", [p for p in PROMPTS if p["kind"] == "text" or "bad" in p["id"]])
    prompts, vmetrics = _artifact(Dataset, tmp_path, "prompts"), _artifact(Metrics, tmp_path, "vmetrics")
    batches = validate_prompts.python_func(
        prompts_uri=prompts_file,
        blocked_terms_uri="",
        default_blocked_terms=True,
        batch_size=2,
        policy=POLICY_DEFAULT,
        on_invalid="quarantine",
        **ctx,
        run_id="r1",
        step="validate-prompts",
        prompts=prompts,
        metrics=vmetrics,
    )
    assert batches == [0, 1] and vmetrics.metadata["prompts_rejected"] == 2
    assert vmetrics.metadata["rejected.personal_data"] == 1 and prompts.metadata["accepted"] == 3
    assert (Path(prompts.path) / "MANIFEST.json").is_file()
    # kfp.local hands ParallelFor items over as floats: the task's input model takes 1.0 as 1.
    uris = [
        generate_content.python_func(
            prompts=prompts,
            batch_index=float(b),
            models={**tiny_models, "image": "", "music": ""},
            generation={**GENERATION_DEFAULT, **GENERATION},
            **ctx,
            run_id="r1",
            step="generate",
        )
        for b in batches
    ]
    verdicts, cmetrics = _artifact(Dataset, tmp_path, "verdicts"), _artifact(Metrics, tmp_path, "cmetrics")
    accepted = check_content.python_func(
        batch_uris=uris,
        checks=CHECKS_DEFAULT,
        blocked_terms_uri="",
        default_blocked_terms=True,
        **ctx,
        run_id="r1",
        step="check",
        verdicts=verdicts,
        metrics=cmetrics,
    )
    assert accepted == cmetrics.metadata["outputs_accepted"]
    assert accepted + cmetrics.metadata["outputs_rejected"] == 3
    pmetrics = _artifact(Metrics, tmp_path, "pmetrics")
    release = publish_content.python_func(
        verdicts=verdicts, collection="unit", destination="", **ctx, run_id="r1", step="publish", metrics=pmetrics
    )
    assert release.startswith(str(tmp_path / "store" / "content" / "unit" / "releases"))
    assert pmetrics.metadata["outputs_published"] == accepted
    report = _artifact(HTML, tmp_path, "report")
    shown = content_report.python_func(
        release_uri=release,
        verdicts=verdicts,
        report_settings={"title": "Unit", "samples": 2.0},  # KFP hands dict numbers over as doubles
        **ctx,
        run_id="r1",
        step="report",
        report=report,
    )
    assert shown == min(2, accepted) and "<h1>Unit</h1>" in Path(report.path).read_text("utf-8")

    from aitasks.runtime.audit import AuditLog

    records = [r for r in AuditLog(tmp_path / "store" / "audit").records() if r["status"] == "succeeded"]
    assert {r["task"] for r in records} == {
        "content.validate_prompts",
        "content.generate",
        "content.check",
        "content.publish",
        "content.report",
    }
    assert {r["pipeline"] for r in records} == {"unit"} and {r["submitter"] for r in records} == {"test"}
    assert json.loads((Path(release).parent / "release.json").read_text())["collection"] == "unit"
