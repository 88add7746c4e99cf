"""Storage confinement (issue 14, finding 5), tried as an attacker who can write a directory and choose inputs.

Every URI input resolves inside the storage root or an allowed input root, after normalisation and symlink
resolution; publish roots likewise. A refusal is an invalid input (never retried) that names the field and
never echoes what a file holds; ingest errors name the file and position, never its content.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from aitasks.runtime import logging as rlog
from aitasks.runtime.errors import DataFormatError, InvalidInputError, UnsafePathError
from aitasks.runtime.retry import is_retryable
from aitasks.runtime.settings import Settings
from aitasks.runtime.storage import confine, normalize_uri
from aitasks.runtime.task import RunContext, Runtime, confine_inputs
from aitasks.runtime.telemetry import Telemetry

CANARY = "CANARY-7f3a-root:x:0:0:secret-line"


@pytest.fixture
def world(tmp_path: Path) -> dict[str, Path]:
    """A storage root, an outside directory holding a secret, and a link farm inside the root."""
    store, outside = tmp_path / "store", tmp_path / "outside"
    store.mkdir()
    outside.mkdir()
    secret = outside / "secret.csv"
    secret.write_text(f"{CANARY}\nline two\n")
    (store / "data").mkdir()
    (store / "data" / "ok.csv").write_text("a\n")
    (store / "escape.csv").symlink_to(secret)  # a file link pointing out
    (store / "escape-dir").symlink_to(outside, target_is_directory=True)  # a directory link pointing out
    (store / "inner.csv").symlink_to(store / "data" / "ok.csv")  # a link that stays inside
    return {"store": store, "outside": outside, "secret": secret, "tmp": tmp_path}


def strict_runtime(store: Path, **settings_kw: object) -> tuple[Runtime, io.StringIO]:
    logs = io.StringIO()
    rlog.configure_logging("debug", "json", stream=logs)
    s = Settings(storage_root=str(store), actor="pytest", **settings_kw)  # type: ignore[arg-type]
    rt = Runtime.create(s, run=RunContext(run_id="attack"), telemetry=Telemetry())
    rlog.configure_logging("debug", "json", stream=logs)
    return rt, logs


# ------------------------------------------------------------------------------------- the primitive
def test_confine_refuses_traversal_absolute_file_uri_and_symlink_escape(
    world: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    store, secret = world["store"], world["secret"]
    roots = [str(store)]
    monkeypatch.chdir(store / "data")
    depth = "../" * len(store.parts)
    attacks = [
        f"{depth}etc/passwd",  # relative traversal from the working directory
        "../../outside/secret.csv",  # relative, to a sibling of the root
        f"{store}/../outside/secret.csv",  # '..' inside an absolute path
        f"{store}/data/../../outside/secret.csv",
        "/etc/passwd",  # absolute
        str(secret),
        "file:///etc/shadow",  # file:// URIs
        f"file://{secret}",
        f"file://{store}/../outside/secret.csv",
        str(store / "escape.csv"),  # symlink escapes: a file link, a path through a directory link
        str(store / "escape-dir" / "secret.csv"),
        str(store / "escape-dir"),
        f"{store}2/x",  # a sibling whose name starts with the root's
    ]
    for uri in attacks:
        with pytest.raises(UnsafePathError) as err:
            confine(uri, roots)
        assert CANARY not in str(err.value) and "outside the allowed roots" in str(err.value), uri
    with pytest.raises(UnsafePathError, match="through a symbolic link"):
        confine(str(store / "escape.csv"), roots)
    # Inside, including '..' that stays inside, a link that stays inside, file:/// and relative paths.
    for uri in [
        str(store / "data" / "ok.csv"),
        f"{store}/data/../data/ok.csv",
        str(store / "inner.csv"),
        f"file://{store}/data/ok.csv",
        "ok.csv",
        "../inner.csv",
        str(store),
    ]:
        assert Path(confine(uri, roots)).is_relative_to(store.resolve()), uri
    # An explicit input root opens exactly that directory.
    assert confine(str(secret), [str(store), str(world["outside"])]) == str(secret.resolve())


@pytest.mark.parametrize(
    "uri",
    [
        "file://host/etc/passwd",
        "file://relative/x",
        "http://example.com/x.csv",
        "s3://bucket/x",
        "gs://bucket/root/../other/x",
        "gs://bucket/root/./x",
        "gs:///x",
        "a\x00b",
    ],
)
def test_malformed_or_foreign_uris_are_refused_clearly(uri: str) -> None:
    with pytest.raises(UnsafePathError):
        normalize_uri(uri)


def test_gcs_prefixes_confine_by_whole_segments() -> None:
    roots = ["gs://bucket/runs", "gs://raw/inputs/"]
    assert confine("gs://bucket/runs/a/b.parquet", roots) == "gs://bucket/runs/a/b.parquet"
    assert confine("gs://raw/inputs/x.csv", roots) == "gs://raw/inputs/x.csv"
    for uri in ["gs://bucket/runs2/x", "gs://bucket/other/x", "gs://other/runs/x", "/etc/passwd", "gs://raw/x"]:
        with pytest.raises(UnsafePathError):
            confine(uri, roots)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.sampled_from(["..", ".", "a", "b", "", "store"]), min_size=1, max_size=8))
def test_whatever_the_segments_an_accepted_path_lies_inside(
    tmp_path_factory: pytest.TempPathFactory, parts: list[str]
) -> None:
    base = tmp_path_factory.getbasetemp() / "prop"
    store = base / "store"
    (store / "a").mkdir(parents=True, exist_ok=True)
    uri = str(store) + "/" + "/".join(parts)
    try:
        got = confine(uri, [str(store)])
    except UnsafePathError:
        assert not os.path.realpath(uri).startswith(str(store.resolve()) + os.sep) and os.path.realpath(uri) != str(
            store.resolve()
        )
        return
    assert Path(got).is_relative_to(store.resolve())


# ------------------------------------------------------------------------------------------ the tasks
def _audit_text(rt: Runtime) -> str:
    return "\n".join(json.dumps(r) for r in rt.audit.records())


def test_ingest_cannot_read_outside_the_root_and_echoes_nothing(
    world: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    from aitasks.data_processing.tasks import ingest_events_task

    store, secret = world["store"], world["secret"]
    rt, logs = strict_runtime(store)
    monkeypatch.chdir(store / "data")
    depth = "../" * len(store.parts)
    for uri in [
        f"{depth}{str(secret).lstrip('/')}",
        str(secret),
        f"file://{secret}",
        "file:///etc/shadow",
        "/etc/passwd",
        str(store / "escape.csv"),
        str(store / "escape-dir" / "secret.csv"),
    ]:
        params = {"events_uri": uri, "catalog_uri": str(store / "data" / "ok.csv"), "as_of": "2026-10-31T00:00:00Z"}
        with pytest.raises(InvalidInputError) as err:
            ingest_events_task(params, runtime=rt)
        assert err.value.fields == ("events_uri",) and not is_retryable(err.value), uri
        assert "outside the allowed roots" in str(err.value) and "AITASKS_INPUT_ROOTS" in str(err.value)
        assert CANARY not in str(err.value)
    records = rt.audit.records()
    assert [r["status"] for r in records] == ["rejected"] * 7
    assert all(r["error"] == {"kind": "invalid_input", "fields": ["events_uri"]} for r in records)
    assert CANARY not in _audit_text(rt) and CANARY not in logs.getvalue()
    assert not (store / "tasks").exists(), "nothing ran, nothing was written"


def test_an_input_root_setting_opens_exactly_that_directory(world: dict[str, Path]) -> None:
    from aitasks.data_processing.tasks import IngestParams

    store, outside = world["store"], world["outside"]
    params = IngestParams.model_validate(
        {"events_uri": str(world["secret"]), "catalog_uri": str(world["secret"]), "as_of": "2026-10-31T00:00:00Z"}
    )
    with pytest.raises(InvalidInputError):
        confine_inputs("data.ingest", IngestParams, params, Settings(storage_root=str(store)))
    confine_inputs("data.ingest", IngestParams, params, Settings(storage_root=str(store), input_roots=str(outside)))
    # An allowed root does not leak to its parent through '..'.
    escaped = params.model_copy(update={"events_uri": f"{outside}/../store2/x.csv"})
    with pytest.raises(InvalidInputError):
        confine_inputs(
            "data.ingest", IngestParams, escaped, Settings(storage_root=str(store), input_roots=str(outside))
        )


def test_ingest_parse_errors_name_the_file_and_position_never_its_content(world: dict[str, Path]) -> None:
    """The reproduction: a password-like file read as events had its first line echoed into stderr and audit."""
    from aitasks.data_processing.tasks import ingest_events_task

    store = world["store"]
    rt, logs = strict_runtime(store)
    events = store / "data" / "passwd.csv"
    events.write_text(f"{CANARY}\ndaemon:x:1:1\n")
    catalog = store / "data" / "catalog.jsonl"
    catalog.write_text(json.dumps({"root": CANARY}) + "\n")
    for ev, cat in [(events, events), (catalog, catalog)]:
        params = {"events_uri": str(ev), "catalog_uri": str(cat), "as_of": "2026-10-31T00:00:00Z"}
        with pytest.raises(DataFormatError) as err:
            ingest_events_task(params, runtime=rt)
        assert CANARY not in str(err.value) and "unknown columns at positions 1 of" in str(err.value)
    assert CANARY not in _audit_text(rt) and CANARY not in logs.getvalue()


def test_reader_errors_keep_only_content_free_reasons() -> None:
    from aitasks.data_processing.etl.read import _first_line

    assert _first_line(ValueError(f"CSV parse error: Expected 6 columns, got 1: {CANARY}")) == (
        "expected 6 columns, got 1"
    )
    assert _first_line(OSError(f"weird: {CANARY}")) == "OSError"


def test_publish_root_is_confined_too(world: dict[str, Path]) -> None:
    """`index.publish` with a root of ``.../OUTSIDE/../OUTSIDE2`` published there."""
    from aitasks.recommendation_update.tasks import publish_index_task

    store, tmp = world["store"], world["tmp"]
    bundle = store / "data" / "MANIFEST.json"
    bundle.write_text("{}")
    rt, _ = strict_runtime(store, publish_roots=str(tmp / "OUTSIDE"))
    (tmp / "OUTSIDE").mkdir()
    for root in [
        str(tmp / "OUTSIDE" / ".." / "OUTSIDE2"),
        f"{store}/../OUTSIDE2",
        str(tmp / "OUTSIDE2"),
        "/tmp",
        str(store / "escape-dir"),
        "file:///var/tmp",
    ]:
        with pytest.raises(InvalidInputError) as err:
            publish_index_task({"index_uri": str(bundle), "model_version": 1, "root": root}, runtime=rt)
        assert err.value.fields == ("root",) and "AITASKS_PUBLISH_ROOTS" in str(err.value), root
    assert not (tmp / "OUTSIDE2").exists()
    # Inside the storage root or an allowed publish root: confinement lets it through.
    from aitasks.recommendation_update.tasks import PublishIndexParams

    for root in [str(store / "serving"), str(tmp / "OUTSIDE" / "indexes"), ""]:
        p = PublishIndexParams(index_uri=str(bundle), model_version=1, root=root)
        confine_inputs("index.publish", PublishIndexParams, p, rt.settings)
    # A publish root is not an input root, nor the other way round.
    p = PublishIndexParams(index_uri=str(tmp / "OUTSIDE" / "MANIFEST.json"), model_version=1)
    with pytest.raises(InvalidInputError):
        confine_inputs("index.publish", PublishIndexParams, p, rt.settings)


def test_audio_catalog_roots_are_confined(world: dict[str, Path]) -> None:
    """`audio.list_catalog` accepted ``/etc/ssl``."""
    from aitasks.audio_analysis.tasks import list_catalog_task, source_task

    store = world["store"]
    rt, _ = strict_runtime(store)
    for params in [
        {"catalog_root": "/etc/ssl"},
        {"catalog_root": str(store / "escape-dir")},
        {"catalog_root": str(store / "data"), "manifest_uri": "/etc/passwd"},
    ]:
        with pytest.raises(InvalidInputError) as err:
            list_catalog_task(params, runtime=rt)
        assert "outside the allowed roots" in str(err.value)
    with pytest.raises(InvalidInputError) as err:
        source_task({"catalog_root": "/etc/ssl", "labelled_root": "/etc"}, runtime=rt)
    assert set(err.value.fields) == {"catalog_root", "labelled_root"}
    from aitasks.audio_analysis.tasks.analysis import CollectParams

    shards = CollectParams(shard_uris=[str(store / "data" / "ok.csv"), "/etc/passwd"])  # sorted: /etc first
    with pytest.raises(InvalidInputError) as err:
        confine_inputs("audio.collect", CollectParams, shards, rt.settings)
    assert err.value.fields == ("shard_uris.0",) and "/etc/passwd" in str(err.value)


# ------------------------------------------------------------------------------------------------ CLI
def test_cli_refuses_outside_inputs_unless_a_root_is_passed(world: dict[str, Path]) -> None:
    store, outside = world["store"], world["outside"]
    features = outside / "features.parquet"
    features.write_text(CANARY)
    env = {**os.environ, "AITASKS_STORAGE_ROOT": str(store), "AITASKS_LOG_LEVEL": "error"}
    env.pop("AITASKS_INPUT_ROOTS", None)
    cmd = [sys.executable, "-m", "aitasks.cli", "tasks", "run", "data.drift", "--params"]
    params = json.dumps({"features_uri": str(features)})

    refused = subprocess.run([*cmd, params], capture_output=True, text=True, env=env, timeout=120, check=False)
    assert (
        refused.returncode != 0 and "features_uri" in refused.stderr and "outside the allowed roots" in refused.stderr
    )
    assert CANARY not in refused.stderr + refused.stdout

    # --input-root opens the directory for this run: the task now reads the file (and finds it is no Parquet).
    allowed = subprocess.run(
        [*cmd, params, "--input-root", str(outside)], capture_output=True, text=True, env=env, timeout=120, check=False
    )
    assert allowed.returncode != 0 and "outside the allowed roots" not in allowed.stderr, allowed.stderr
    assert "parquet" in allowed.stderr.lower()
    # '.' is the working directory, only when asked.
    here = subprocess.run(
        [*cmd, json.dumps({"features_uri": "features.parquet"}), "--input-root", "."],
        capture_output=True,
        text=True,
        env=env,
        cwd=outside,
        timeout=120,
        check=False,
    )
    assert "outside the allowed roots" not in here.stderr, here.stderr
