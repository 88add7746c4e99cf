"""Output checks: every rejection rule on a crafted output, and the check task records rejections, never passes them."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import soundfile as sf
from PIL import Image

from aitasks.content_generation.checks import OUTPUT_RULES, check_audio, check_image, check_text
from aitasks.content_generation.config import CheckConfig
from aitasks.content_generation.policy import BlockedTerms
from tests.conftest import CapturedRuntime

CFG = CheckConfig()
BLOCKED = BlockedTerms.build(default=True)


def _rule(reasons: tuple[str, ...]) -> list[str]:
    return [r.split(":", 1)[0] for r in reasons]


@pytest.mark.parametrize(
    ("text", "rule"),
    [
        ("", "empty"),
        ("  a ", "empty"),
        ("la la la la la la la la", "degenerate"),
        ("love you baby love you baby love you baby love you baby", "degenerate"),
        ("the best mix mix mix mix of the year", "degenerate"),
        ("wow" + "!" * 30, "degenerate"),
        ("A fine heroin anthem for the night", "blocked_term"),
        ("Write to dj@example.com for requests", "personal_data"),
        ("A calm\u202e mix", "characters"),
    ],
)
def test_text_rules(text: str, rule: str) -> None:
    v = check_text(text, CFG, BLOCKED)
    assert rule in _rule(v.reasons) and not v.passed and rule in OUTPUT_RULES


def test_good_text_passes() -> None:
    v = check_text("Golden Jazz Sessions: warm tracks for late nights, with Mira Lane.", CFG, BLOCKED)
    assert v.passed and v.measures["words"] == 11


def _png(path: Path, rgb: np.ndarray) -> Path:
    Image.fromarray(rgb.astype(np.uint8)).save(path)
    return path


def test_image_rules(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    noisy = _png(tmp_path / "ok.png", rng.integers(0, 256, (32, 32, 3)))
    assert check_image(noisy, CFG, 32).passed
    for name, value in (("black", 0), ("white", 255), ("grey", 128)):
        v = check_image(_png(tmp_path / f"{name}.png", np.full((32, 32, 3), value)), CFG)
        assert _rule(v.reasons) == ["blank"], name
    assert _rule(check_image(noisy, CFG, 64).reasons) == ["size"]
    (tmp_path / "junk.png").write_bytes(b"not a png at all")
    assert _rule(check_image(tmp_path / "junk.png", CFG).reasons) == ["unreadable"]


def _flac(path: Path, samples: np.ndarray, rate: int = 8000) -> Path:
    sf.write(str(path), samples.astype(np.float32), rate, format="FLAC", subtype="PCM_16")
    return path


def test_audio_rules(tmp_path: Path) -> None:
    t = np.arange(16000) / 8000
    tone = 0.5 * np.sin(2 * np.pi * 220 * t)
    assert check_audio(_flac(tmp_path / "ok.flac", tone), CFG).passed
    cases = {
        "too_quiet": 0.001 * np.sin(2 * np.pi * 220 * t),
        "clipping": np.clip(3 * tone, -1, 1),
        "silence": np.concatenate([tone[:4000], np.zeros(12000)]),
        "too_short": tone[:2000],
    }
    for rule, samples in cases.items():
        v = check_audio(_flac(tmp_path / f"{rule}.flac", samples), CFG)
        assert rule in _rule(v.reasons), (rule, v.reasons)
    (tmp_path / "broken.flac").write_bytes(b"fLaC" + b"\x00" * 64)
    v = check_audio(tmp_path / "broken.flac", CFG)
    assert _rule(v.reasons) == ["undecodable"], v.reasons


def _fake_batch(root: Path, items: list[dict[str, Any]]) -> str:
    """A content_batch bundle of crafted files (and sidecars) published under ``root``."""
    from aitasks.runtime.bundle import publish_bundle
    from aitasks.runtime.hashing import sha256_file
    from aitasks.runtime.storage import LocalStorage

    src = root / "src"
    src.mkdir()
    rows = []
    for it in items:
        path = src / it["file"]
        it["write"](path)
        sidecar = src / (it["file"] + ".provenance.json")
        if it.get("sidecar", True):
            sha = sha256_file(path) if it.get("sidecar") != "wrong" else "0" * 64
            sidecar.write_text(json.dumps({"file": it["file"], "sha256": sha}))
        rows.append(
            {
                "id": it["id"],
                "kind": it["kind"],
                "file": it["file"],
                "provenance": it["file"] + ".provenance.json",
                "sha256": sha256_file(path),
                "template": "free",
                "expected_size": 0,
            }
        )
    (src / "items.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return publish_bundle(LocalStorage(), src, str(root / "batch"), kind="content_batch")


def test_check_task_rejects_and_records_every_bad_output(captured: CapturedRuntime, tmp_path: Path) -> None:
    from aitasks.content_generation import check_content_task, publish_content_task
    from aitasks.runtime.bundle import open_bundle

    rng = np.random.default_rng(1)
    tone = 0.4 * np.sin(2 * np.pi * 330 * np.arange(8000) / 8000)
    uri = _fake_batch(
        tmp_path,
        [
            {
                "id": "good-text",
                "kind": "text",
                "file": "good-text.txt",
                "write": lambda p: p.write_text("Blue Hour Mix"),
            },
            {"id": "rep", "kind": "text", "file": "rep.txt", "write": lambda p: p.write_text("go go go go go go go")},
            {"id": "blank", "kind": "image", "file": "blank.png", "write": lambda p: _png(p, np.zeros((8, 8, 3)))},
            {
                "id": "good-img",
                "kind": "image",
                "file": "good-img.png",
                "write": lambda p: _png(p, rng.integers(0, 256, (8, 8, 3))),
            },
            {"id": "quiet", "kind": "music", "file": "quiet.flac", "write": lambda p: _flac(p, tone * 0.001)},
            {
                "id": "nosidecar",
                "kind": "music",
                "file": "nosidecar.flac",
                "write": lambda p: _flac(p, tone),
                "sidecar": False,
            },
            {
                "id": "badsidecar",
                "kind": "text",
                "file": "badsidecar.txt",
                "write": lambda p: p.write_text("Fine words here"),
                "sidecar": "wrong",
            },
        ],
    )
    res = check_content_task({"batch_uris": [uri]}, runtime=captured.rt)
    assert (res.checked, res.accepted, res.rejected) == (7, 2, 5)
    # The near-silent clip breaks two rules: both are recorded.
    assert res.rules == {"blank": 1, "degenerate": 1, "provenance": 2, "silence": 1, "too_quiet": 1}
    with open_bundle(res.checks_uri, kind="content_checks") as (folder, _):
        quarantine = {
            json.loads(x)["id"]: json.loads(x) for x in (folder / "quarantine.jsonl").read_text().splitlines()
        }
    assert set(quarantine) == {"rep", "blank", "quiet", "nosidecar", "badsidecar"}
    assert all(q["reasons"] for q in quarantine.values())
    assert "output_rejected" in captured.log_text()

    # Publishing keeps rejected outputs out of the release and puts them in the quarantine, with reasons.
    pub = publish_content_task({"checks_uri": res.checks_uri, "collection": "unit"}, runtime=captured.rt)
    assert (pub.published, pub.quarantined) == (2, 5)
    with open_bundle(pub.release_uri, kind="content_release") as (rel, _):
        assert sorted(p.name for p in (rel / "items").iterdir() if not p.name.endswith(".json")) == [
            "good-img.png",
            "good-text.txt",
        ]
    with open_bundle(pub.quarantine_uri, kind="content_quarantine") as (q, _):
        reasons = [json.loads(x) for x in (q / "reasons.jsonl").read_text().splitlines()]
        assert {r["id"] for r in reasons} == set(quarantine) and (q / "files" / "blank.png").is_file()
