"""The capacity model renderer (docs/*/scale.md): stale detection, traceability, missing records."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from bench import capacity
from bench.capacity import UNITS, compute, fmt_number, load_snapshot, load_volumes

#: Plausible unit costs for every record the model reads (params included), so every line can be computed.
_VALUES: dict[str, tuple[float, float, dict[str, Any]]] = {
    "audio": (150.0, 30.0, {}),
    "audio_pool": (140.0, 150.0, {}),
    "ann_qps": (12000.0, 900.0, {"items": 100_000, "hnswlib_build_s": 20.0, "build_threads": 2}),
    "ann_batch": (20000.0, 9000.0, {}),
    "ann_memory": (530.0, 256.0, {}),
    "ann_file": (400.0, 256.0, {}),
    "feast_p99": (0.6, 0.2, {"redis_bytes_per_user": 420.0}),
    "feast_p50": (0.35, 0.1, {}),
    "redis_ops": (20000.0, 50000.0, {}),
    "redis_ops_p16": (70000.0, 130000.0, {}),
    "train": (60000.0, 9000.0, {"threads": 2}),
    "ddp": (50000.0, 55000.0, {}),
    "train_gpu": (900000.0, 60000.0, {}),
    "updater": (6000.0, 1.0, {}),
    "serving_p99": (12.0, 1.0, {}),
    "serving_rps": (800.0, 1.0, {}),
    "startup_audio": (1.6, 0.15, {}),
    "startup_data": (1.2, 0.15, {}),
    "startup_training": (3.0, 0.15, {}),
    "startup_reco": (1.3, 0.15, {}),
    "startup_content": (1.1, 0.15, {}),
    "startup_numpy": (0.15, 0.03, {}),
}


def _record(key: str) -> dict[str, Any]:
    bench, metric, _ = UNITS[key]
    value, base, params = _VALUES[key]
    return {
        "benchmark": bench,
        "metric": metric,
        "value": value,
        "unit": "u",
        "baseline": "base",
        "baseline_value": base,
        "ratio": round(value / base, 3),
        "params": params,
    }


def _snapshot(tmp_path: Path, *, drop: tuple[str, ...] = ()) -> Path:
    records = [_record(k) for k in UNITS if k not in drop]
    path = tmp_path / "reference.json"
    meta = {"date": "2026-12-05T00:00:00+00:00", "git_revision": "abc1234", "usable_cpus": 2}
    path.write_text(json.dumps({"meta": meta, "records": records}), "utf-8")
    return path


def test_every_unit_cost_of_the_fixture_is_named() -> None:
    assert set(_VALUES) == set(UNITS)


def test_a_full_snapshot_computes_every_figure_and_reports_nothing_missing(tmp_path: Path) -> None:
    records, _meta = load_snapshot(_snapshot(tmp_path))
    model = compute(records, load_volumes())
    assert model.missing == []
    assert [k for k, f in model.figures.items() if f.value is None] == []
    # A figure with a known answer: 100M tracks x 3.5 min = 5.83M audio hours; at 150x realtime per core, 38.9k core-h.
    assert model.figures["audio_hours"].value == pytest.approx(100e6 * 3.5 / 60)
    assert model.figures["audio_core_h"].value == pytest.approx(100e6 * 3.5 / 60 / 150)
    assert model.figures["ann_raw_gb"].value == pytest.approx(25.6)
    for lang, (text, missing) in capacity.pages(_snapshot(tmp_path)).items():
        assert missing == []
        nm = capacity.NOT_MEASURED[lang]
        assert f"*{nm}* (`" not in text and f"| {nm} " not in text, lang


def test_every_figure_traces_to_a_record_of_the_snapshot_or_a_volume(tmp_path: Path) -> None:
    snap = _snapshot(tmp_path)
    records, _meta = load_snapshot(snap)
    model = compute(records, load_volumes())
    for key, fig in model.figures.items():
        assert fig.sources or fig.volumes, f"{key} comes from nowhere"
        for src in fig.sources:
            bench, metric, _label = UNITS[src]
            assert (bench, metric) in records, (key, src)
    for lang, (text, _missing) in capacity.pages(snap).items():
        body, _, sources = text.partition(_section(lang, "SOURCES"))
        tag_lists = re.findall(r"\[((?:R\d+|V)(?:, (?:R\d+|V))*)\]", body)
        tags = {int(n) for tag in tag_lists for n in re.findall(r"R(\d+)", tag)}
        listed = {int(n) for n in re.findall(r"^- \*\*R(\d+)\*\* ", sources, re.M)}
        assert tags, lang
        assert tags == listed, (lang, tags ^ listed)  # every tag resolves, every listed source is used
        # Each listed source names its record and the command that produced it.
        for line in re.findall(r"^- \*\*R\d+\*\* .*$", sources, re.M):
            assert re.search(r"`python -m bench --only \w+`$", line), line


def _section(lang: str, name: str) -> str:
    labels = {
        "en": {"SOURCES": "## Sources"},
        "fr": {"SOURCES": "## Sources"},
        "de": {"SOURCES": "## Quellen"},
    }
    return labels[lang][name]


def test_the_three_languages_show_the_same_figures(tmp_path: Path) -> None:
    pages = capacity.pages(_snapshot(tmp_path))
    tag_counts = {lang: len(re.findall(r"\[(?:R\d+|V)(?:, (?:R\d+|V))*\]", text)) for lang, (text, _) in pages.items()}
    assert len(set(tag_counts.values())) == 1, tag_counts
    sources = {lang: re.findall(r"^- \*\*R\d+\*\* (`[^`]+`)", text, re.M) for lang, (text, _) in pages.items()}
    assert sources["en"] == sources["fr"] == sources["de"]


def test_missing_records_read_not_measured_and_are_listed(tmp_path: Path) -> None:
    snap = _snapshot(tmp_path, drop=("ddp", "audio"))
    records, _meta = load_snapshot(snap)
    model = compute(records, load_volumes())
    assert model.missing == ["audio", "ddp"]
    # Nothing is invented in their place: every figure that needs them has no value...
    for key in ("audio_x", "audio_core_h", "audio_wall_days", "audio_daily_pods", "train_epoch_h_ddp", "ddp_eff"):
        assert model.figures[key].value is None, key
    # ... while the others still compute.
    assert model.figures["ann_shards"].value is not None
    assert model.figures["train_epoch_core_h"].value is not None
    for lang, (text, missing) in capacity.pages(snap).items():
        assert missing == ["audio", "ddp"]
        assert f"*{capacity.NOT_MEASURED[lang]}* (`audio.analysis / x_realtime_per_core`)" in text
        tail = text[text.rindex("\n## ") :]  # the missing-records section comes last
        assert "`audio.analysis / x_realtime_per_core` (`python -m bench --only audio`)" in tail
        assert "`two_tower_ddp / examples_per_s[2_procs]`" in tail


def test_a_changed_snapshot_or_a_hand_edit_makes_the_pages_stale(tmp_path: Path) -> None:
    snap = _snapshot(tmp_path)
    docs = tmp_path / "docs"
    capacity.render_all(docs, snap)
    assert capacity.check_all(docs, snap) == []
    # A new unit cost in the snapshot: every language is stale.
    doc = json.loads(snap.read_text("utf-8"))
    doc["records"][0]["value"] *= 2
    changed = tmp_path / "changed.json"
    changed.write_text(json.dumps(doc), "utf-8")
    assert len(capacity.check_all(docs, changed)) == 3
    # A hand edit of one page: that page is stale.
    fr = docs / "fr" / "scale.md"
    fr.write_text(fr.read_text("utf-8").replace("Modèle", "Modele"), "utf-8")
    assert capacity.check_all(docs, snap) == [f"{fr}: stale"]
    (docs / "de" / "scale.md").unlink()
    assert f"{docs / 'de' / 'scale.md'}: missing" in capacity.check_all(docs, snap)


def test_the_committed_pages_match_the_committed_snapshot_and_volumes() -> None:
    """What `make check` runs: docs/*/scale.md are what bench/results/reference.json gives."""
    assert capacity.check_all() == []


@pytest.mark.parametrize(
    ("x", "en", "fr", "de"),
    [
        (1234567.0, "1,230,000", "1\u202f230\u202f000", "1.230.000"),
        (0.12345, "0.123", "0,123", "0,123"),
        (3.5, "3.5", "3,5", "3,5"),
        (64.0, "64", "64", "64"),
        (25.6, "25.6", "25,6", "25,6"),
    ],
)
def test_numbers_are_written_the_way_each_language_reads_them(x: float, en: str, fr: str, de: str) -> None:
    assert (fmt_number(x, "en"), fmt_number(x, "fr"), fmt_number(x, "de")) == (en, fr, de)
