"""The task chain on the tiny models: validate -> generate (per batch) -> check -> publish -> report.

Provenance (sidecar and embedded in PNG/FLAC/Ogg), audit records, reproducibility under a seed,
idempotency (and a changed model is new work), settings bounds, the published release and the report.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import soundfile as sf
from PIL import Image

from aitasks.runtime.audit import AuditLog
from aitasks.runtime.errors import InvalidInputError
from tests.conftest import CapturedRuntime
from tests.content_generation.conftest import GENERATION, PROMPTS, write_prompts


@dataclass
class Chain:
    captured: CapturedRuntime
    models: dict[str, str]
    validated: Any
    generated: list[Any]
    checked: Any
    published: Any
    report: Any


def run_chain(root: Path, models: dict[str, str], *, generation: dict[str, Any] | None = None) -> Chain:
    from aitasks.content_generation import (
        check_content_task,
        content_report_task,
        generate_content_task,
        publish_content_task,
        validate_prompts_task,
    )

    captured = CapturedRuntime(root)
    rt = captured.rt
    prompts = write_prompts(root / "prompts.jsonl", PROMPTS)
    v = validate_prompts_task({"prompts_uri": prompts, "batch_size": 2}, runtime=rt)
    gen = [
        generate_content_task(
            {"prompts_uri": v.prompts_uri, "batch_index": b, "models": models, "generation": generation or GENERATION},
            runtime=rt,
        )
        for b in v.batches
    ]
    c = check_content_task({"batch_uris": [g.batch_uri for g in gen]}, runtime=rt)
    p = publish_content_task({"checks_uri": c.checks_uri, "collection": "covers-and-clips"}, runtime=rt)
    r = content_report_task({"release_uri": p.release_uri, "checks_uri": c.checks_uri}, runtime=rt)
    return Chain(captured, models, v, gen, c, p, r)


@pytest.fixture(scope="module")
def chain(tiny_models: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Chain:
    return run_chain(tmp_path_factory.mktemp("chain"), tiny_models)


def _release_dir(chain: Chain) -> Path:
    return Path(chain.published.release_uri).parent


def test_chain_validates_batches_generates_checks_and_publishes(chain: Chain) -> None:
    v = chain.validated
    assert (v.accepted, v.rejected) == (7, 2) and v.rules == {"blocked_term": 1, "personal_data": 1}
    assert v.kinds == {"image": 2, "music": 2, "text": 3}
    assert v.batches == [0, 1, 2, 3], "text 2+1, image 2, music 2"
    assert [g.kinds for g in chain.generated] == [{"text": 2}, {"text": 1}, {"image": 2}, {"music": 2}]
    assert all(g.device == "cpu" and g.precision == "float32" for g in chain.generated)
    c = chain.checked
    assert c.checked == 7 and c.accepted + c.rejected == 7
    # Images and music from the tiny models pass (noise pictures, normalised clips); text may not (60 steps).
    assert c.accepted_by_kind.get("image") == 2 and c.accepted_by_kind.get("music") == 2
    assert chain.published.published == c.accepted and chain.published.quarantined == c.rejected
    latest = json.loads(Path(chain.published.latest_uri).read_text())
    assert latest["release_uri"] == chain.published.release_uri


def test_every_output_has_a_sidecar_and_images_and_audio_embed_it(chain: Chain) -> None:
    from aitasks.content_generation.provenance import Provenance, read_embedded
    from aitasks.runtime.hashing import sha256_file, sha256_text

    items = _release_dir(chain) / "items"
    outputs = sorted(p for p in items.iterdir() if not p.name.endswith(".provenance.json"))
    assert {p.suffix for p in outputs} == {".png", ".flac"} | (
        {".txt"} if chain.checked.accepted_by_kind.get("text") else set()
    )
    prompts_by_id = {p["id"]: p for p in PROMPTS}
    for out in outputs:
        prov = Provenance.model_validate_json((items / (out.name + ".provenance.json")).read_text())
        assert prov.file == out.name and prov.sha256 == sha256_file(out)
        assert prov.model.sha256 and prov.model.uri == chain.models[prov.kind]
        assert prov.seed == GENERATION["seed"] and prov.trace_id and prov.idempotency_key
        assert prov.task == "content.generate" and prov.task_version == "1.0.0" and prov.run_id == "run-test"
        assert prov.item_id in prompts_by_id and len(prov.prompt_sha256) == 64
        if prov.kind != "text":
            assert prov.prompt_sha256 == sha256_text(prompts_by_id[prov.item_id]["prompt"])
            embedded = read_embedded(out)
            assert embedded == prov.model_dump(mode="json", exclude={"sha256"}), out.name
    png = next(p for p in outputs if p.suffix == ".png")
    with Image.open(png) as img:
        assert img.text["Software"] == "aitasks content.generate 1.0.0" and img.text["Source"].startswith("tiny-image")


def test_generated_audio_passes_the_audio_analysis_decoder(chain: Chain) -> None:
    from aitasks.audio_analysis.decode import decode_file

    clips = sorted((_release_dir(chain) / "items").glob("*.flac"))
    assert len(clips) == 2
    for clip in clips:
        audio = decode_file(clip)
        assert audio.format == "FLAC" and audio.source_rate == 8000 and audio.duration_s == pytest.approx(1.0)
        assert sf.SoundFile(str(clip)).title == clip.stem


def test_every_task_call_is_audited_with_the_key_the_provenance_names(chain: Chain) -> None:
    records = [r for r in AuditLog(chain.captured.root / "store" / "audit").records() if r["status"] == "succeeded"]
    tasks = [r["task"] for r in records]
    assert tasks.count("content.generate") == 4
    assert set(tasks) == {
        "content.validate_prompts",
        "content.generate",
        "content.check",
        "content.publish",
        "content.report",
    }
    keys = {r["idempotency_key"] for r in records if r["task"] == "content.generate"}
    sidecars = (_release_dir(chain) / "items").glob("*.provenance.json")
    assert {json.loads(p.read_text())["idempotency_key"] for p in sidecars} <= keys
    assert AuditLog(chain.captured.root / "store" / "audit").verify().ok is True


def test_the_report_shows_text_images_audio_and_rejections(chain: Chain) -> None:
    html = Path(chain.report.report_uri).read_text("utf-8")
    assert html.count('src="data:image/png;base64,') == 2 and html.count("<audio controls") == 2
    if chain.checked.accepted_by_kind.get("text"):
        assert "<blockquote>" in html
    assert "tiny-image" in html and "seed 7" in html
    assert chain.report.published == chain.published.published


def test_a_second_run_is_an_idempotent_hit(chain: Chain) -> None:
    from aitasks.content_generation import generate_content_task

    g = chain.generated[2]
    again = generate_content_task(
        {
            "prompts_uri": chain.validated.prompts_uri,
            "batch_index": 2,
            "models": chain.models,
            "generation": GENERATION,
        },
        runtime=chain.captured.rt,
    )
    assert again == g
    last = AuditLog(chain.captured.root / "store" / "audit").records()[-1]
    assert last["task"] == "content.generate" and last["status"] == "idempotent_hit"


def test_same_seed_same_content_in_a_fresh_store_and_ogg_output(
    chain: Chain, tiny_models: dict[str, str], tmp_path: Path
) -> None:
    """Reproducible under a seed: another store (no idempotent hit) generates the same text and pixels.

    (Music samples under a seed: tests/content_generation/test_generators.py.)
    """
    from aitasks.content_generation import generate_content_task
    from aitasks.content_generation.provenance import read_embedded
    from aitasks.runtime.bundle import open_bundle

    other = CapturedRuntime(tmp_path, inputs=(Path(chain.validated.prompts_uri).parents[5],))
    for first in (chain.generated[0], chain.generated[2]):
        redo = generate_content_task(
            {
                "prompts_uri": chain.validated.prompts_uri,
                "batch_index": first.batches[0],
                "models": tiny_models,
                "generation": GENERATION,
            },
            runtime=other.rt,
        )
        with open_bundle(first.batch_uri) as (a, _), open_bundle(redo.batch_uri) as (b, _):
            for row in (json.loads(x) for x in (a / "items.jsonl").read_text().splitlines()):
                fa, fb = a / row["file"], b / row["file"]
                if fa.suffix == ".txt":
                    assert fa.read_text() == fb.read_text()
                else:
                    assert np.array_equal(np.asarray(Image.open(fa)), np.asarray(Image.open(fb)))
    ogg = generate_content_task(
        {
            "prompts_uri": chain.validated.prompts_uri,
            "batch_index": 3,
            "models": tiny_models,
            "generation": {**GENERATION, "audio_format": "ogg"},
        },
        runtime=other.rt,
    )
    with open_bundle(ogg.batch_uri) as (folder, _):
        clip = folder / "clip-1.ogg"
        assert read_embedded(clip)["parameters"]["format"] == "ogg"
        from aitasks.audio_analysis.decode import decode_file

        assert decode_file(clip).format == "OGG"


def test_a_changed_model_is_new_work_not_a_stale_hit(chain: Chain, tmp_path: Path) -> None:
    from aitasks.content_generation import generate_content_task

    models = dict(chain.models)
    copy = tmp_path / "tiny-image"
    shutil.copytree(models["image"], copy)
    models["image"] = str(copy)
    params = {"prompts_uri": chain.validated.prompts_uri, "batch_index": 2, "models": models, "generation": GENERATION}
    generate_content_task(params, runtime=chain.captured.rt)
    sched = json.loads((copy / "scheduler" / "scheduler_config.json").read_text())
    sched["beta_end"] = 0.03
    (copy / "scheduler" / "scheduler_config.json").write_text(json.dumps(sched))
    generate_content_task(params, runtime=chain.captured.rt)
    records = AuditLog(chain.captured.root / "store" / "audit").records()
    statuses = [r["status"] for r in records if r["status"] != "started"][-2:]
    assert statuses == ["succeeded", "succeeded"], "the changed scheduler config joined the key"


def test_generation_bounds_come_from_settings_and_name_the_setting(chain: Chain, tmp_path: Path) -> None:
    from aitasks.content_generation import generate_content_task

    params = {
        "prompts_uri": chain.validated.prompts_uri,
        "batch_index": 2,
        "models": chain.models,
        "generation": {**GENERATION, "image_steps": 101, "audio_seconds": 31.0},
    }
    with pytest.raises(InvalidInputError) as err:
        generate_content_task(params, runtime=chain.captured.rt)
    assert err.value.fields == ("generation.image_steps", "generation.audio_seconds")
    assert "AITASKS_CONTENT_MAX_IMAGE_STEPS" in str(err.value)
    with pytest.raises(InvalidInputError, match=r"batch_index: 9 is not one of the 4 batches"):
        generate_content_task({**params, "generation": GENERATION, "batch_index": 9}, runtime=chain.captured.rt)
    with pytest.raises(InvalidInputError, match=r"models\.music: no model directory given"):
        generate_content_task(
            {**params, "generation": GENERATION, "batch_index": 3, "models": {"text": chain.models["text"]}},
            runtime=chain.captured.rt,
        )
