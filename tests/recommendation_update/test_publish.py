"""Versioned index publishing: CURRENT switches, idempotent re-runs, rollback, checksums, real kills, races, GCS."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from aitasks.recommendation_update import publish as pub
from aitasks.recommendation_update.index import AnnIndex, IndexConfig, build_index
from aitasks.recommendation_update.publish import (
    IndexManifest,
    NoPublishedIndexError,
    PublishResult,
    list_versions,
    load_current,
    load_version,
    publish_index,
    read_current,
    read_pointer,
    rollback,
)
from aitasks.runtime.errors import DataFormatError, InvalidInputError
from aitasks.runtime.hashing import sha256_file
from aitasks.runtime.storage import GCSStorage
from tests.fakes.gcs import FakeBlob, FakeGCSClient

NAME = "reco"
DIM = 8
FIELDS: dict[str, Any] = {
    "backend": "hnswlib",
    "dim": DIM,
    "m": 16,
    "ef_construction": 64,
    "ef_search": 32,
    "recall_at_k": 0.97,
    "k": 10,
    "model_name": "reco-two-tower",
    "model_version": 1,
}


@pytest.fixture(scope="module")
def index_files(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One small saved index; sources differ by a tag file (and optionally a large padding file)."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((300, DIM)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    d = tmp_path_factory.mktemp("index")
    build_index(x, [f"t{i}" for i in range(300)], IndexConfig(ef_construction=64)).save(d)
    return d


def make_source(base: Path, index_files: Path, tag: str, *, pad: Path | None = None) -> Path:
    src = base / f"src-{tag}"
    src.mkdir(parents=True)
    for f in index_files.iterdir():
        shutil.copyfile(f, src / f.name)
    (src / "tag.txt").write_text(tag)
    if pad is not None:
        os.link(pad, src / "pad.bin")  # a real large file, without writing it again per source
    return src


def publish(root: str, src: Path, **kw: Any) -> PublishResult:
    return publish_index(root, NAME, src, **{**FIELDS, "extra": {"run_id": "r1"}, **kw})


def tag_of(root: str, version: int, **kw: Any) -> str:
    _, manifest, local = load_version(root, NAME, version, **kw)
    assert manifest.version == version
    return (local / "tag.txt").read_text()


# ---------------------------------------------------------------------------------------- local
def test_versions_current_switch_and_idempotent_republish(tmp_path: Path, index_files: Path) -> None:
    root = str(tmp_path / "store")
    srcs = [make_source(tmp_path, index_files, t) for t in ("a", "b", "c")]
    results = [publish(root, s) for s in srcs]
    assert [(r.version, r.created, r.current) for r in results] == [(1, True, True), (2, True, True), (3, True, True)]
    assert read_current(root, NAME).version == 3
    assert [m.version for m in list_versions(root, NAME)] == [1, 2, 3]
    pointer = read_pointer(root, NAME)
    assert pointer is not None and pointer.version == 3 and pointer.history == [1, 2]

    index, manifest, local = load_current(root, NAME)
    assert isinstance(index, AnnIndex) and index.size == manifest.count == 300 and index.ef == 32
    assert manifest.space == "ip" and manifest.extra == {"run_id": "r1"} and manifest.model_version == 1
    assert set(manifest.files) == {"ids.json", "index.bin", "tag.txt"} and (local / "tag.txt").read_text() == "c"
    assert len(index.query(np.ones((1, DIM), np.float32), 5)[0]) == 5

    again = publish(root, srcs[2], extra={"run_id": "r2"})  # lineage differs, content does not
    assert (again.version, again.created, again.current) == (3, False, True)
    assert [m.version for m in list_versions(root, NAME)] == [1, 2, 3]
    assert read_pointer(root, NAME) == pointer  # nothing was written

    # The same content as an older version: no new version, CURRENT goes back to it.
    old = publish(root, srcs[0])
    assert (old.version, old.created, old.current) == (1, False, True) and read_current(root, NAME).version == 1


def test_rollback_previous_and_explicit(tmp_path: Path, index_files: Path) -> None:
    root = str(tmp_path / "store")
    srcs = [make_source(tmp_path, index_files, t) for t in ("a", "b", "c")]
    for s in srcs:
        publish(root, s)
    assert rollback(root, NAME) == 2 and read_current(root, NAME).version == 2
    assert rollback(root, NAME, to=1) == 1 and tag_of(root, read_current(root, NAME).version) == "a"
    assert rollback(root, NAME) == 2  # undoes the explicit jump
    pointer = read_pointer(root, NAME)
    assert pointer is not None and pointer.history == [1] and set(pointer.rolled_back) == {1, 3}

    # A re-run of the pipeline that produced v3 does not undo the operator's rollback...
    rerun = publish(root, srcs[2])
    assert (rerun.version, rerun.created, rerun.current) == (3, False, False) and read_current(root, NAME).version == 2
    # ...an explicit rollback to it does.
    assert rollback(root, NAME, to=3) == 3 and publish(root, srcs[2]).current is True
    assert rollback(root, NAME, to=3) == 3  # already there: no-op

    with pytest.raises(DataFormatError, match="no version 9"):
        rollback(root, NAME, to=9)
    with pytest.raises(InvalidInputError, match="to"):
        rollback(root, NAME, to=0)


def test_rollback_without_history_or_index(tmp_path: Path, index_files: Path) -> None:
    root = str(tmp_path / "store")
    with pytest.raises(NoPublishedIndexError, match=f"no published index {NAME} under {root}"):
        rollback(root, NAME)
    with pytest.raises(NoPublishedIndexError, match="no published index"):
        load_current(root, NAME)
    publish(root, make_source(tmp_path, index_files, "a"))
    with pytest.raises(InvalidInputError, match="no earlier version"):
        rollback(root, NAME)


def test_corrupted_file_fails_the_load_and_blocks_rollback_to_it(tmp_path: Path, index_files: Path) -> None:
    root = str(tmp_path / "store")
    publish(root, make_source(tmp_path, index_files, "a"))
    publish(root, make_source(tmp_path, index_files, "b"))
    v2 = tmp_path / "store" / "indexes" / NAME / "v2" / "index.bin"
    raw = bytearray(v2.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    v2.write_bytes(bytes(raw))
    with pytest.raises(DataFormatError, match=r"index\.bin.*sha256"):
        load_current(root, NAME)
    assert rollback(root, NAME) == 1 and tag_of(root, 1) == "a"
    with pytest.raises(DataFormatError, match=r"index\.bin"):
        rollback(root, NAME, to=2)  # the target is verified before the switch
    assert read_current(root, NAME).version == 1
    (tmp_path / "store" / "indexes" / NAME / "v1" / "tag.txt").unlink()
    with pytest.raises(DataFormatError, match=r"tag\.txt.*missing"):
        load_current(root, NAME)


@pytest.mark.parametrize("name", ["../x", "x/../../y", "A", "X", "", "a b", "a" * 64, "1abc", "a\x00"])
def test_hostile_or_bad_names_are_refused(tmp_path: Path, index_files: Path, name: str) -> None:
    root = str(tmp_path / "store")
    src = make_source(tmp_path, index_files, "a")
    for call in (
        lambda: publish_index(root, name, src, **FIELDS),
        lambda: read_current(root, name),
        lambda: list_versions(root, name),
        lambda: rollback(root, name),
    ):
        with pytest.raises(InvalidInputError, match="name"):
            call()
    assert not (tmp_path / "store").exists() and not (tmp_path / "x").exists()


def test_bad_sources_and_fields_are_refused(tmp_path: Path, index_files: Path) -> None:
    root = str(tmp_path / "store")
    src = make_source(tmp_path, index_files, "a")
    with pytest.raises(InvalidInputError, match="backend"):
        publish(root, src, backend="voyager")
    with pytest.raises(InvalidInputError, match="recall_at_k"):
        publish(root, src, recall_at_k=1.5)
    (src / "index.bin").unlink()
    with pytest.raises(InvalidInputError, match=r"index\.bin"):
        publish(root, src)
    with pytest.raises(InvalidInputError, match="not a directory"):
        publish(root, tmp_path / "missing")
    (src / "passwd").symlink_to("/etc/passwd")
    with pytest.raises(InvalidInputError, match="symbolic link"):
        publish(root, src)
    assert list_versions(root, NAME) == []


def test_bundle_manifest_and_hidden_files_are_not_published(tmp_path: Path, index_files: Path) -> None:
    root = str(tmp_path / "store")
    src = make_source(tmp_path, index_files, "a")
    (src / "MANIFEST.json").write_text("{}")
    (src / ".DS_Store").write_text("x")
    (src / "extra").mkdir()
    (src / "extra" / "seen.parquet").write_bytes(b"PAR1")
    first = publish(root, src)
    assert set(first.manifest.files) == {"ids.json", "index.bin", "tag.txt", "extra/seen.parquet"}
    (src / "MANIFEST.json").write_text('{"other": "bundle"}')  # a different bundle of the same files
    assert publish(root, src).created is False
    vdir = tmp_path / "store" / "indexes" / NAME / "v1"
    assert sorted(p.name for p in vdir.iterdir()) == ["extra", "ids.json", "index.bin", "manifest.json", "tag.txt"]
    mask = os.umask(0)
    os.umask(mask)
    assert vdir.stat().st_mode & 0o777 == 0o777 & ~mask, "the umask decides, not mkdtemp's 0700"


def test_kill_between_version_write_and_switch_recovers_on_rerun(
    tmp_path: Path, index_files: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = str(tmp_path / "store")
    publish(root, make_source(tmp_path, index_files, "a"))
    src = make_source(tmp_path, index_files, "b")

    def die(*_: Any, **__: Any) -> None:
        raise KeyboardInterrupt  # the process dies right after the rename, before CURRENT moves

    monkeypatch.setattr(pub, "_update_pointer", die)
    with pytest.raises(KeyboardInterrupt):
        publish(root, src)
    monkeypatch.undo()
    assert read_current(root, NAME).version == 1 and [m.version for m in list_versions(root, NAME)] == [1, 2]
    rerun = publish(root, src)
    assert (rerun.version, rerun.created, rerun.current) == (2, False, True) and tag_of(root, 2) == "b"


# ---------------------------------------------------------------------------------------- real processes
CHILD = textwrap.dedent(
    """
    import json, pathlib, sys, time
    from aitasks.recommendation_update.publish import publish_index
    root, src, ready, go, fields = sys.argv[1:6]
    pathlib.Path(ready).touch()
    while go != "-" and not pathlib.Path(go).exists():
        time.sleep(0.001)
    result = publish_index(root, "reco", pathlib.Path(src), **json.loads(fields))
    print(result.model_dump_json())
    """
)


def spawn(root: str, src: Path, ready: Path, go: str = "-") -> subprocess.Popen[str]:
    args = [sys.executable, "-c", CHILD, root, str(src), str(ready), go, json.dumps(FIELDS)]
    return subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_for(path: Path, proc: subprocess.Popen[str]) -> None:
    deadline = time.monotonic() + 60
    while not path.exists():
        assert proc.poll() is None, f"child died early: {proc.communicate()[1]}"
        assert time.monotonic() < deadline
        time.sleep(0.002)


def assert_consistent(root: str, checked: set[int]) -> None:
    """Every ``v<N>`` holds a manifest whose files verify; CURRENT loads; temp dirs stay hidden."""
    base = Path(root) / "indexes" / NAME
    for child in base.iterdir():
        if child.name.startswith("v"):
            assert (child / "manifest.json").is_file(), f"{child.name} has no manifest"
            n = int(child.name[1:])
            if n not in checked:
                load_version(root, NAME, n)  # verifies every file's sha256
                checked.add(n)
        else:
            assert child.name.startswith(".") or child.name == "CURRENT", child.name
    load_current(root, NAME)


PAD_BYTES = 256 << 20
#: Where the publisher is killed: its temp dir just appeared, the big file's copy has started, is half
#: done, the version was just renamed into place (CURRENT may or may not have moved), or a fixed delay.
KILL_POINTS: tuple[str | float, ...] = ("temp-dir", "copying", "half-copied", "renamed", 0.5)


def random_file(path: Path, size: int, seed: int) -> Path:
    path.write_bytes(np.random.default_rng(seed).integers(0, 2**63, size // 8, dtype=np.uint64).tobytes())
    return path


def entries(base: Path, prefix: str) -> set[str]:
    try:
        return {p.name for p in base.iterdir() if p.name.startswith(prefix)}
    except FileNotFoundError:
        return set()


def reached(point: str, base: Path, tmps_before: set[str], versions_before: set[str]) -> bool:
    """Whether the publisher got to ``point`` (polled from outside, as a reader would see it)."""
    new_tmps = entries(base, ".v-tmp-") - tmps_before
    if point == "temp-dir":
        return bool(new_tmps)
    if point == "renamed":
        return bool(entries(base, "v") - versions_before)
    need = 1 if point == "copying" else PAD_BYTES // 2
    for t in new_tmps:
        try:
            if (base / t / "pad.bin").stat().st_size >= need:
                return True
        except FileNotFoundError:  # not there yet, or the temp dir was just renamed
            pass
    return False


def test_sigkill_mid_publish_leaves_readers_on_a_complete_version(tmp_path: Path, index_files: Path) -> None:
    """Real SIGKILLs at several points of a 256 MiB publish: never a torn version, and the re-run succeeds."""
    root = str(tmp_path / "store")
    base = tmp_path / "store" / "indexes" / NAME
    pad = random_file(tmp_path / "pad.bin", PAD_BYTES, seed=0)
    publish(root, make_source(tmp_path, index_files, "base", pad=pad))
    checked: set[int] = set()
    interrupted = left_over = 0
    outcomes: list[tuple[str | float, str, int]] = []
    try:
        for i, point in enumerate(KILL_POINTS):
            before = read_current(root, NAME).version
            versions_before = [m.version for m in list_versions(root, NAME)]
            tmps_before, vdirs_before = entries(base, ".v-tmp-"), entries(base, "v")
            tag = f"kill-{i}"
            src = make_source(tmp_path, index_files, tag, pad=pad)
            ready = tmp_path / f"ready-{i}"
            proc = spawn(root, src, ready)
            wait_for(ready, proc)
            if isinstance(point, float):
                time.sleep(point)
            else:
                deadline = time.monotonic() + 60
                while not reached(point, base, tmps_before, vdirs_before) and proc.poll() is None:
                    assert time.monotonic() < deadline, f"the publisher never reached {point}"
                    time.sleep(0.0005)
            os.kill(proc.pid, signal.SIGKILL)
            proc.communicate()

            # Readers: CURRENT is the previous version or the complete new one, and verifies.
            assert_consistent(root, checked)  # also loads CURRENT, checking every file's sha256
            new = [m.version for m in list_versions(root, NAME) if m.version not in versions_before]
            assert len(new) <= 1 and all((base / f"v{v}" / "tag.txt").read_text() == tag for v in new)
            done = new  # the killed publisher completed its version (the kill came after the rename)
            current = read_current(root, NAME).version
            assert current in {before, *done}
            if not done:
                interrupted += 1
                # What the killed publisher left is a hidden temp dir, never a version.
                assert [m.version for m in list_versions(root, NAME)] == versions_before
                assert entries(base, "v") == vdirs_before
            left = entries(base, ".v-tmp-") - tmps_before
            assert len(left) <= 1 and (not left or not done)
            left_over += len(left)
            outcomes.append((point, "complete" if done else "interrupted", len(left)))

            rerun = publish(root, src)  # the retry after the kill
            assert rerun.current and read_current(root, NAME).version == rerun.version
            if done:
                assert (rerun.version, rerun.created) == (done[0], False), "the retry reuses the complete version"
            else:
                assert (rerun.version, rerun.created) == (max(versions_before) + 1, True), "the next number"
            assert tag_of(root, rerun.version) == tag
            hashes = [m.content_hash for m in list_versions(root, NAME)]
            assert len(hashes) == len(set(hashes)), "the retry never duplicates a completed version"
        assert interrupted >= 1, f"kills landed before the versions were complete: {outcomes}"
        assert_consistent(root, checked)
        # The killed publishers' temp dirs are still there (nobody cleans them), and none counts as a version.
        assert len(entries(base, ".v-tmp-")) == left_over >= 1
        assert [m.version for m in list_versions(root, NAME)] == sorted(int(v[1:]) for v in entries(base, "v"))
    finally:
        shutil.rmtree(tmp_path / "store", ignore_errors=True)
        for link in [pad, *tmp_path.glob("src-*/pad.bin")]:  # pytest keeps its last temp dirs: free the 256 MiB
            link.unlink()


def test_concurrent_publishers_get_distinct_complete_versions(tmp_path: Path, index_files: Path) -> None:
    root = str(tmp_path / "store")
    pad = tmp_path / "pad.bin"
    pad.write_bytes(np.random.default_rng(1).bytes(4 << 20))
    go = tmp_path / "go"
    procs = []
    for i in range(3):
        ready = tmp_path / f"ready-{i}"
        procs.append(spawn(root, make_source(tmp_path, index_files, f"p{i}", pad=pad), ready, str(go)))
        wait_for(ready, procs[-1])
    go.touch()
    outs = [p.communicate(timeout=120) for p in procs]
    assert all(p.returncode == 0 for p in procs), [e for _, e in outs]
    results = [PublishResult.model_validate_json(o) for o, _ in outs]
    assert sorted(r.version for r in results) == [1, 2, 3] and all(r.created for r in results)
    for i, r in enumerate(results):
        assert tag_of(root, r.version) == f"p{i}"
    pointer = read_pointer(root, NAME)
    assert pointer is not None and pointer.version in {1, 2, 3}
    assert sorted([*pointer.history, pointer.version]) == [1, 2, 3], "every switch was recorded, none lost"
    assert_consistent(root, set())


# ---------------------------------------------------------------------------------------- GCS
ROOT_GS = "gs://bucket/prod"


@pytest.fixture
def gcs() -> tuple[FakeGCSClient, GCSStorage]:
    client = FakeGCSClient()
    return client, GCSStorage(client)


def test_gcs_publish_load_rollback(
    tmp_path: Path, index_files: Path, gcs: tuple[FakeGCSClient, GCSStorage], monkeypatch: pytest.MonkeyPatch
) -> None:
    client, st = gcs
    writes: list[tuple[str, int | None]] = []
    original = FakeBlob.upload_from_string

    def spy(self: FakeBlob, data: bytes | str, if_generation_match: int | None = None) -> None:
        writes.append((self.name, if_generation_match))
        original(self, data, if_generation_match=if_generation_match)

    monkeypatch.setattr(FakeBlob, "upload_from_string", spy)
    srcs = [make_source(tmp_path, index_files, t) for t in ("a", "b", "c")]
    assert [publish(ROOT_GS, s, storage=st).version for s in srcs] == [1, 2, 3]
    v1 = [w for w in writes if "/v1/" in w[0]]
    assert all(gen == 0 for _, gen in v1), "every version object is create-only"
    assert v1[0][0].endswith("/v1/CLAIM") and v1[-1][0].endswith("/v1/manifest.json")
    assert all(gen is not None for name, gen in writes if name.endswith("CURRENT")), "CURRENT only by CAS"

    cache = tmp_path / "cache"
    index, manifest, local = load_current(ROOT_GS, NAME, storage=st, cache_dir=cache)
    assert manifest.version == 3 and index.size == 300 and (local / "tag.txt").read_text() == "c"
    assert local.is_relative_to(cache)
    assert publish(ROOT_GS, srcs[1], storage=st).created is False
    assert read_current(ROOT_GS, NAME, storage=st).version == 2
    assert rollback(ROOT_GS, NAME, storage=st) == 3 and rollback(ROOT_GS, NAME, to=1, storage=st) == 1
    assert [m.version for m in list_versions(ROOT_GS, NAME, storage=st)] == [1, 2, 3]

    # A damaged cached copy is fetched again (and verified); a tampered object fails the load.
    _, m1, local1 = load_current(ROOT_GS, NAME, storage=st, cache_dir=cache)
    (local1 / "index.bin").write_bytes(b"damaged")
    assert load_current(ROOT_GS, NAME, storage=st, cache_dir=cache)[1] == m1
    assert sha256_file(local1 / "index.bin") == m1.files["index.bin"]
    obj = client.buckets["bucket"][f"prod/indexes/{NAME}/v1/index.bin"]
    obj.data = obj.data[:-10] + b"0123456789"
    with pytest.raises(DataFormatError, match=r"v1/index\.bin.*sha256"):
        load_current(ROOT_GS, NAME, storage=st, cache_dir=tmp_path / "cold")
    with pytest.raises(NoPublishedIndexError):
        read_current(ROOT_GS, "other", storage=st)


def test_gcs_killed_publisher_leaves_an_invisible_prefix(
    tmp_path: Path, index_files: Path, gcs: tuple[FakeGCSClient, GCSStorage], monkeypatch: pytest.MonkeyPatch
) -> None:
    _, st = gcs
    publish(ROOT_GS, make_source(tmp_path, index_files, "a"), storage=st)
    original = FakeBlob.upload_from_string
    uploads = {"n": 0}

    def dies_on_third_upload(self: FakeBlob, data: bytes | str, if_generation_match: int | None = None) -> None:
        uploads["n"] += 1
        if uploads["n"] == 3:  # CLAIM and ids.json landed, index.bin never does
            raise KeyboardInterrupt
        original(self, data, if_generation_match=if_generation_match)

    monkeypatch.setattr(FakeBlob, "upload_from_string", dies_on_third_upload)
    src = make_source(tmp_path, index_files, "b")
    with pytest.raises(KeyboardInterrupt):
        publish(ROOT_GS, src, storage=st)
    monkeypatch.undo()
    assert [m.version for m in list_versions(ROOT_GS, NAME, storage=st)] == [1]
    assert tag_of(ROOT_GS, read_current(ROOT_GS, NAME, storage=st).version, storage=st, cache_dir=tmp_path / "c") == "a"
    rerun = publish(ROOT_GS, src, storage=st)
    assert rerun.version == 3 and rerun.created, "the abandoned v2 prefix is never reused"
    assert tag_of(ROOT_GS, 3, storage=st, cache_dir=tmp_path / "c") == "b"


def test_gcs_concurrent_publishers(tmp_path: Path, index_files: Path, gcs: tuple[FakeGCSClient, GCSStorage]) -> None:
    _, st = gcs
    srcs = [make_source(tmp_path, index_files, f"p{i}") for i in range(4)]
    barrier = threading.Barrier(len(srcs))
    results: dict[int, PublishResult] = {}
    errors: list[BaseException] = []

    def run(i: int) -> None:
        try:
            barrier.wait()
            results[i] = publish(ROOT_GS, srcs[i], storage=st)
        except BaseException as exc:  # surfaced below
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(srcs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert sorted(r.version for r in results.values()) == [1, 2, 3, 4]
    for i, r in results.items():
        assert tag_of(ROOT_GS, r.version, storage=st, cache_dir=tmp_path / "c") == f"p{i}"
    pointer = read_pointer(ROOT_GS, NAME, storage=st)
    assert pointer is not None and sorted([*pointer.history, pointer.version]) == [1, 2, 3, 4]


def test_manifest_model_is_strict() -> None:
    with pytest.raises(ValueError, match="extra"):
        IndexManifest.model_validate({"nope": 1})
