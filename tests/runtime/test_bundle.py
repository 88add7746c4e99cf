"""Bundles: a directory artifact addressed by its manifest, verified on every read."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from aitasks.runtime.bundle import MANIFEST, export_bundle, open_bundle, publish_bundle, read_manifest
from aitasks.runtime.errors import DataFormatError, UnsafePathError
from aitasks.runtime.storage import GCSStorage, LocalStorage
from tests.fakes.gcs import FakeGCSClient


def _src(tmp_path: Path) -> Path:
    src = tmp_path / "src"
    (src / "sub").mkdir(parents=True)
    (src / "weights.bin").write_bytes(b"\x00\x01" * 1000)
    (src / "config.json").write_text('{"a": 1}')
    (src / "sub" / "vocab.json").write_text('["x", "y"]')
    return src


def test_local_round_trip_and_manifest(tmp_path: Path) -> None:
    uri = publish_bundle(LocalStorage(), _src(tmp_path), str(tmp_path / "out" / "model"), kind="model", meta={"v": 1})
    assert uri.endswith(MANIFEST)
    manifest = read_manifest(uri, kind="model")
    assert sorted(manifest["files"]) == ["config.json", "sub/vocab.json", "weights.bin"]
    assert manifest["meta"] == {"v": 1}
    with open_bundle(uri, kind="model") as (root, _):
        assert (root / "sub" / "vocab.json").read_text() == '["x", "y"]'
    export_bundle(uri, tmp_path / "kfp-artifact")
    assert (tmp_path / "kfp-artifact" / MANIFEST).is_file()
    assert (tmp_path / "kfp-artifact" / "weights.bin").read_bytes() == b"\x00\x01" * 1000
    with open_bundle(str(tmp_path / "kfp-artifact" / MANIFEST)) as (root, m):
        assert m["files"] == manifest["files"]


def test_tampered_missing_or_wrong_kind_is_refused(tmp_path: Path) -> None:
    uri = publish_bundle(LocalStorage(), _src(tmp_path), str(tmp_path / "out"), kind="model")
    with pytest.raises(DataFormatError, match="holds 'model', expected 'index'"):
        read_manifest(uri, kind="index")
    (tmp_path / "out" / "weights.bin").write_bytes(b"evil")
    with pytest.raises(DataFormatError, match=r"weights\.bin does not match its sha256"), open_bundle(uri):
        pass
    (tmp_path / "out" / "weights.bin").unlink()
    with pytest.raises(DataFormatError, match=r"weights\.bin is missing"), open_bundle(uri):
        pass
    with pytest.raises(DataFormatError, match="manifest not found"):
        read_manifest(str(tmp_path / "nowhere" / MANIFEST))
    (tmp_path / "junk.json").write_text("not json")
    with pytest.raises(DataFormatError, match="not JSON"):
        read_manifest(str(tmp_path / "junk.json"))


def test_hostile_manifest_paths_are_refused(tmp_path: Path) -> None:
    (tmp_path / MANIFEST).write_text(
        json.dumps({"format": "aitasks.bundle/1", "kind": "model", "files": {"../../etc/passwd": "0" * 64}})
    )
    with pytest.raises(UnsafePathError):
        read_manifest(str(tmp_path / MANIFEST))


def test_empty_directory_is_not_a_bundle(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataFormatError, match="no files"):
        publish_bundle(LocalStorage(), tmp_path / "empty", str(tmp_path / "out"), kind="model")


def test_gcs_round_trip_writes_manifest_last(tmp_path: Path) -> None:
    client = FakeGCSClient()
    st = GCSStorage(client)
    uri = publish_bundle(st, _src(tmp_path), "gs://bucket/runs/r1/model", kind="model")
    assert uri == "gs://bucket/runs/r1/model/MANIFEST.json"
    with open_bundle(uri, st, kind="model") as (root, manifest):
        assert (root / "weights.bin").read_bytes() == b"\x00\x01" * 1000
        assert set(manifest["files"]) == {"config.json", "sub/vocab.json", "weights.bin"}
    st.write_bytes("gs://bucket/runs/r1/model/config.json", b'{"a": 2}')
    with pytest.raises(DataFormatError, match=r"config\.json"), open_bundle(uri, st):
        pass
