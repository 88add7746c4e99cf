"""Components stay thin: only kfp at module level, images from the one table, one run_step call each,
declared once as a step whose task exists; and they work when called as plain functions."""

from __future__ import annotations

import ast
import importlib
import inspect
import json
from pathlib import Path
from typing import Any

import pytest
from kfp.dsl import Artifact, Dataset, Markdown, Metrics

from aitasks.runtime.task import get_task

ROOT = Path(__file__).resolve().parents[2]
COMPONENT_FILES = sorted(p for p in (ROOT / "components").glob("*.py") if p.name not in {"__init__.py", "images.py"})
#: What a component module may import at module level.
ALLOWED_MODULE_IMPORTS = {"kfp", "typing", "components"}
#: The run context inputs every component takes (one dict parameter, a compile-time constant, two placeholders).
CONTEXT_INPUTS = ["run_context", "pipeline", "run_id", "step"]


def _components(path: Path) -> list[Any]:
    module = importlib.import_module(f"components.{path.stem}")
    return [v for v in vars(module).values() if hasattr(v, "component_spec") and hasattr(v, "python_func")]


def _run_step_calls(fn: Any) -> list[ast.Call]:
    tree = ast.parse(inspect.getsource(fn.python_func).lstrip())
    return [
        c
        for c in ast.walk(tree)
        if isinstance(c, ast.Call) and isinstance(c.func, ast.Name) and c.func.id == "run_step"
    ]


@pytest.mark.parametrize("path", COMPONENT_FILES, ids=lambda p: p.name)
def test_module_level_imports_are_only_kfp_typing_components(path: Path) -> None:
    tree = ast.parse(path.read_text())
    for node in tree.body:
        if isinstance(node, ast.Import | ast.ImportFrom):
            names = [node.module] if isinstance(node, ast.ImportFrom) else [a.name for a in node.names]
            for mod in names:
                assert (mod or "").split(".")[0] in ALLOWED_MODULE_IMPORTS, f"{path.name} imports {mod}"


@pytest.mark.parametrize("path", COMPONENT_FILES, ids=lambda p: p.name)
def test_each_component_makes_one_run_step_call_of_a_registered_task(path: Path) -> None:
    for comp in _components(path):
        calls = _run_step_calls(comp)
        assert len(calls) == 1, f"{comp.name}: {len(calls)} run_step calls"
        first = calls[0].args[0]
        assert isinstance(first, ast.Constant) and isinstance(first.value, str), f"{comp.name}: task name literal"
        get_task(first.value)  # raises for an unknown task
        # The body imports only the adapter: no task module, no logic of its own.
        imports = [
            n
            for n in ast.walk(ast.parse(inspect.getsource(comp.python_func).lstrip()))
            if isinstance(n, ast.ImportFrom)
        ]
        assert [i.module for i in imports] == ["aitasks.runtime.step"], f"{comp.name} imports {imports}"


@pytest.mark.parametrize("path", COMPONENT_FILES, ids=lambda p: p.name)
def test_every_component_takes_the_run_context_inputs(path: Path) -> None:
    for comp in _components(path):
        params = list(inspect.signature(comp.python_func).parameters)
        assert [p for p in params if p in CONTEXT_INPUTS] == CONTEXT_INPUTS, f"{comp.name}: {params}"
        context = _run_step_calls(comp)[0].args[2]
        assert isinstance(context, ast.Tuple), f"{comp.name} does not hand the run context to run_step"
        assert [e.id for e in context.elts if isinstance(e, ast.Name)] == CONTEXT_INPUTS, comp.name


@pytest.mark.parametrize("path", COMPONENT_FILES, ids=lambda p: p.name)
def test_every_component_uses_an_image_from_the_table(path: Path) -> None:
    from components.images import image_uri

    table = json.loads((ROOT / "images" / "images.json").read_text())
    # Each image's content-derived tag (see images/README.md).
    images = {image_uri(key) for key in table["images"]}
    comps = _components(path)
    assert comps
    for comp in comps:
        image = comp.component_spec.implementation.container.image
        assert image in images, f"{comp.name} uses {image}"
        assert ":" in image.rsplit("/", 1)[-1] and not image.endswith(":latest"), "immutable tag"


def test_every_component_is_declared_once_as_a_step_of_its_task() -> None:
    from pipelines.steps import ALL_STEPS

    declared: dict[str, list[str]] = {}
    for spec in ALL_STEPS:
        declared.setdefault(spec.component.name, []).append(spec.task)
        call = _run_step_calls(spec.component)[0]
        assert call.args[0].value == spec.task, f"{spec.name}: spec says {spec.task}, body runs {call.args[0].value}"
        assert spec.task_version == get_task(spec.task).version
    every = {c.name for p in COMPONENT_FILES for c in _components(p)}
    assert set(declared) == every, f"components without a step: {every - set(declared)}"
    assert all(len(v) == 1 for v in declared.values()), declared


# -- components called as plain functions (``.python_func``): the adapter and the tasks, no kfp runner -------


def _artifact(cls: type, tmp: Path, name: str) -> Any:
    return cls(name=name, uri=str(tmp / "kfp" / name), metadata={})


def test_data_components_chain_as_plain_functions(tmp_path: Path) -> None:
    from components.data_processing import check_drift, compute_features, ingest_events, source_data

    ctx = {"run_context": {"storage_root": str(tmp_path / "store"), "submitter": "test"}, "pipeline": "unit"}
    events, tracks = _artifact(Dataset, tmp_path, "events"), _artifact(Dataset, tmp_path, "tracks")
    source_data.python_func(
        events_uri="",
        catalog_uri="",
        synthetic={"seed": 3, "users": 60, "tracks": 120, "events": 4_000, "days": 10, "dirty_rows": 40},
        **ctx,
        run_id="r1",
        step="source-data",
        events_out=events,
        tracks_out=tracks,
    )
    assert Path(events.path).stat().st_size > 0 and events.metadata["synthetic"] is True
    assert events.metadata["stable_uri"].startswith(str(tmp_path / "store"))

    good, quarantine, metrics = (
        _artifact(Dataset, tmp_path, "good"),
        _artifact(Dataset, tmp_path, "quarantine"),
        _artifact(Metrics, tmp_path, "metrics"),
    )
    good_rows, quarantined = ingest_events.python_func(
        events=events,
        catalog=tracks,
        as_of="2026-10-11T00:00:00Z",
        data={"chunk_rows": 1_000},
        scheduled_time="",
        run_created_time="",
        **ctx,
        run_id="r1",
        step="ingest-events",
        good_events=good,
        quarantine=quarantine,
        catalog_out=_artifact(Dataset, tmp_path, "catalog"),
        metrics=metrics,
    )
    # The result's Metric fields reach the KFP Metrics artifact; reasons are spread per key.
    assert metrics.metadata["good_rows"] == good_rows and metrics.metadata["quarantined_rows"] == quarantined
    assert quarantined > 0 and any(k.startswith("quarantined.") for k in metrics.metadata)
    assert good_rows + quarantined == metrics.metadata["input_rows"]
    assert quarantine.metadata["rows"] == quarantined and Path(quarantine.path).exists()

    users, track_feats, fmetrics = (
        _artifact(Dataset, tmp_path, "users"),
        _artifact(Dataset, tmp_path, "track_feats"),
        _artifact(Metrics, tmp_path, "fmetrics"),
    )
    last = compute_features.python_func(
        events=good,
        catalog=tracks,
        data={"lookback_days": 7, "half_life_days": 7.0},
        **ctx,
        run_id="r1",
        step="compute-features",
        user_features=users,
        track_features=track_feats,
        vocabulary=(vocab := _artifact(Dataset, tmp_path, "vocabulary")),
        metrics=fmetrics,
    )
    assert last.startswith("2026-10-") and fmetrics.metadata["snapshots"] >= 1
    # The run's genre vocabulary is an output of its own, described by its metadata.
    assert vocab.metadata["genres"] == fmetrics.metadata["genres"] > 0 and Path(vocab.path).exists()
    report, dmetrics = _artifact(Markdown, tmp_path, "report"), _artifact(Metrics, tmp_path, "dmetrics")
    drifted = check_drift.python_func(
        features=users,
        split_at="",
        data={"lookback_days": 7, "psi_threshold": 0.2, "ks_pvalue_threshold": 0.01},
        **ctx,
        run_id="r1",
        step="check-drift",
        report=report,
        metrics=dmetrics,
    )
    assert isinstance(drifted, bool) and "max_psi" in dmetrics.metadata
    assert Path(report.path).read_text("utf-8").strip()

    from aitasks.runtime.audit import AuditLog

    records = AuditLog(tmp_path / "store" / "audit").records()
    assert {r["task"] for r in records} == {"data.source", "data.ingest", "data.features", "data.drift"}
    assert {r["pipeline"] for r in records} == {"unit"} and {r["submitter"] for r in records} == {"test"}
    assert {r["step"] for r in records} == {"source-data", "ingest-events", "compute-features", "check-drift"}


def test_component_refuses_a_run_context_with_an_unknown_key(tmp_path: Path) -> None:
    from aitasks.runtime.errors import InvalidInputError
    from components.model_training import promote_model

    with pytest.raises(InvalidInputError, match=r"run_context\.storage_rot"):
        promote_model.python_func(
            model_name="m",
            version=1,
            blessed=False,
            run_context={"storage_rot": str(tmp_path)},
            pipeline="unit",
            run_id="r1",
            step="promote",
        )


def test_component_output_of_an_unknown_artifact_kind_is_refused_by_the_task(tmp_path: Path) -> None:
    from aitasks.runtime.errors import InvalidInputError
    from components.recommendation_update import publish_index

    index = _artifact(Artifact, tmp_path, "index")
    with pytest.raises(InvalidInputError, match="index_uri"):
        publish_index.python_func(
            index=index,
            name="reco",
            model_name="m",
            model_version=1,
            run_context={"storage_root": str(tmp_path / "store")},
            pipeline="unit",
            run_id="r1",
            step="publish-index",
        )


def test_audio_components_chain_as_plain_functions(tmp_path: Path) -> None:
    """NamedTuple and list outputs, a ParallelFor's float shard index, and bundles across components."""
    from components.audio_analysis import analyze_shard, audio_source, collect_analysis, list_catalog

    ctx = {"run_context": {"storage_root": str(tmp_path / "store")}, "pipeline": "unit", "run_id": "r2"}
    catalog_root, labelled_root = audio_source.python_func(
        catalog_root="",
        labelled_root="",
        demo={"tracks": 6, "seed": 1, "min_seconds": 3.0, "max_seconds": 4.0, "labelled_per_class": 2},
        **ctx,
        step="audio-source",
    )
    assert Path(catalog_root).is_dir() and Path(labelled_root).is_dir()
    listing, lmetrics = _artifact(Dataset, tmp_path, "listing"), _artifact(Metrics, tmp_path, "lmetrics")
    shards = list_catalog.python_func(
        catalog_root=catalog_root,
        manifest_uri="",
        analysis={"shards": 2.0, "limit": 0, "track_ids": "key"},  # KFP hands dict numbers over as doubles
        **ctx,
        step="list-catalog",
        listing=listing,
        metrics=lmetrics,
    )
    assert shards == [0, 1] and lmetrics.metadata["tracks"] == listing.metadata["tracks"] > 0
    # kfp.local hands ParallelFor items over as floats: the task's input model takes 1.0 as 1.
    shard_uris = [
        analyze_shard.python_func(
            listing=listing, shard_index=float(i), analysis={"sample_rate": 22050}, **ctx, step="analyze-shard"
        )
        for i in shards
    ]
    analysis, cmetrics = _artifact(Dataset, tmp_path, "analysis"), _artifact(Metrics, tmp_path, "cmetrics")
    tracks = collect_analysis.python_func(
        shard_uris=shard_uris, **ctx, step="collect-analysis", analysis=analysis, metrics=cmetrics
    )
    assert tracks == cmetrics.metadata["tracks"] == analysis.metadata["tracks"]
    assert tracks + cmetrics.metadata["quarantined"] == lmetrics.metadata["tracks"]
    # A bundle output is a directory with its manifest; the storage URI rides along as metadata.
    assert (Path(analysis.path) / "MANIFEST.json").is_file()
    assert analysis.metadata["stable_uri"].endswith("MANIFEST.json")


@pytest.mark.parametrize("fmt", ["csv", "jsonl", "parquet"])
def test_every_documented_format_goes_through_source_ingest_and_features(
    tmp_path: Path, fmt: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Events and catalog in any documented format: ingest normalises the catalog to Parquet for later steps."""
    monkeypatch.setenv("AITASKS_INPUT_ROOTS", str(tmp_path / "external"))  # the raw data lies outside the store
    from datetime import UTC, datetime

    import pyarrow.parquet as pq

    from aitasks.data_processing.generator import generate_dataset
    from components.data_processing import compute_features, ingest_events, source_data

    ds = generate_dataset(
        tmp_path / "external",
        seed=5,
        users=40,
        tracks=90,
        events=3_000,
        start=datetime(2026, 10, 1, tzinfo=UTC),
        days=8,
        fmt=fmt,  # type: ignore[arg-type]
    )
    ctx = {"run_context": {"storage_root": str(tmp_path / "store")}, "pipeline": "unit", "run_id": f"r-{fmt}"}
    events, tracks = _artifact(Dataset, tmp_path, "events"), _artifact(Dataset, tmp_path, "tracks")
    source_data.python_func(
        events_uri=str(ds.events_path),
        catalog_uri=str(ds.tracks_path),
        synthetic={"seed": 1},  # unused with URIs; the pipeline always hands its whole default
        **ctx,
        step="source-data",
        events_out=events,
        tracks_out=tracks,
    )
    assert events.metadata["synthetic"] is False
    good, quarantine, catalog, metrics = (
        _artifact(Dataset, tmp_path, "good"),
        _artifact(Dataset, tmp_path, "quarantine"),
        _artifact(Dataset, tmp_path, "catalog"),
        _artifact(Metrics, tmp_path, "metrics"),
    )
    good_rows, quarantined = ingest_events.python_func(
        events=events,
        catalog=tracks,
        as_of="2026-10-09T00:00:00Z",
        data={"chunk_rows": 1_000},
        scheduled_time="",
        run_created_time="",
        **ctx,
        step="ingest-events",
        good_events=good,
        quarantine=quarantine,
        catalog_out=catalog,
        metrics=metrics,
    )
    assert good_rows == 3_000 and quarantined == 0
    assert pq.read_table(catalog.path).num_rows == 90, "the catalog came out as Parquet"
    users, track_feats = _artifact(Dataset, tmp_path, "users"), _artifact(Dataset, tmp_path, "track_feats")
    last = compute_features.python_func(
        events=good,
        catalog=catalog,
        data={"lookback_days": 7, "half_life_days": 7.0},
        **ctx,
        step="compute-features",
        user_features=users,
        track_features=track_feats,
        vocabulary=_artifact(Dataset, tmp_path, "vocabulary"),
        metrics=_artifact(Metrics, tmp_path, "fmetrics"),
    )
    assert last.startswith("2026-10-") and pq.read_table(track_feats.path).num_rows > 0
