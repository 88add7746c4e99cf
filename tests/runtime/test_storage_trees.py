"""Directory trees to and from storage: ``put_tree`` and ``local_tree`` (local paths and gs:// on the fake)."""

from __future__ import annotations

from pathlib import Path

import pytest

from aitasks.runtime.errors import UnsafePathError
from aitasks.runtime.storage import GCSStorage, LocalStorage, local_tree, put_tree
from tests.fakes.gcs import FakeGCSClient

FILES = {"a.wav": b"a", "drums/b.flac": b"bb", "drums/deep/c.mp3": b"ccc"}


def make_tree(root: Path) -> Path:
    for rel, data in FILES.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
    return root


def read_tree(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def test_a_tree_round_trips_through_gcs(tmp_path: Path) -> None:
    st = GCSStorage(FakeGCSClient())
    written = put_tree(make_tree(tmp_path / "src"), "gs://b/run/catalog", st)
    assert written == sorted(f"gs://b/run/catalog/{rel}" for rel in FILES)
    with local_tree("gs://b/run/catalog/", st) as local:
        assert local.is_dir() and read_tree(local) == FILES
    assert not local.exists(), "the download is removed on exit"


def test_a_local_tree_is_the_directory_itself(tmp_path: Path) -> None:
    put_tree(make_tree(tmp_path / "src"), str(tmp_path / "dst"), LocalStorage())
    with local_tree(str(tmp_path / "dst")) as local:
        assert local == tmp_path / "dst" and read_tree(local) == FILES


def test_an_empty_prefix_is_not_a_tree() -> None:
    with pytest.raises(FileNotFoundError, match="no object"), local_tree("gs://b/nothing", GCSStorage(FakeGCSClient())):
        pass


def test_keys_cannot_escape_the_download(tmp_path: Path) -> None:
    client = FakeGCSClient()
    client.bucket("b").blob("t/../../evil").upload_from_string(b"x")
    with pytest.raises(UnsafePathError), local_tree("gs://b/t", GCSStorage(client)):
        pass
