"""Cleanup of published indexes (issue 14, finding 9): the sweep of killed publishers' leftovers and pruning.

Killed publishes left ``.v-tmp-*`` directories (one per kill, the size of the index) and abandoned GCS
claims that nothing removed, and old versions were never pruned.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from aitasks.recommendation_update import publish as pub
from aitasks.recommendation_update.publish import (
    CurrentPointer,
    NoPublishedIndexError,
    list_versions,
    load_current,
    prune,
    read_current,
    read_pointer,
    rollback,
    sweep,
)
from aitasks.runtime.errors import InvalidInputError, PreconditionFailedError
from aitasks.runtime.storage import GCSStorage, Version
from tests.fakes.gcs import FakeBlob, FakeGCSClient
from tests.recommendation_update.test_publish import (
    NAME,
    ROOT_GS,
    entries,
    index_files,  # noqa: F401 - fixture
    make_source,
    publish,
    reached,
    spawn,
    tag_of,
    wait_for,
)

HOUR = 3600.0


def age(path: Path, seconds: float) -> None:
    """Make a tree look untouched for ``seconds`` (as a killed publisher's leftovers become)."""
    old = time.time() - seconds
    for p in [path, *path.rglob("*")]:
        os.utime(p, (old, old), follow_symlinks=False)


def kill_mid_publish(root: str, src: Path, tmp_path: Path, i: int) -> None:
    """A real publisher process, SIGKILLed as soon as its temp directory exists."""
    base = Path(root) / "indexes" / NAME
    before = entries(base, ".v-tmp-")
    ready = tmp_path / f"ready-{i}"
    proc = spawn(root, src, ready)
    wait_for(ready, proc)
    deadline = time.monotonic() + 60
    while not reached("temp-dir", base, before, entries(base, "v")) and proc.poll() is None:
        assert time.monotonic() < deadline
        time.sleep(0.0005)
    os.kill(proc.pid, signal.SIGKILL)
    proc.communicate()


def test_killed_publishers_leave_temp_dirs_that_the_next_publish_sweeps(
    tmp_path: Path,
    index_files: Path,  # noqa: F811
) -> None:
    root = str(tmp_path / "store")
    base = tmp_path / "store" / "indexes" / NAME
    pad = tmp_path / "pad.bin"
    pad.write_bytes(np.random.default_rng(3).bytes(64 << 20))  # slow enough to be killed mid-copy
    publish(root, make_source(tmp_path, index_files, "base"))
    for i in range(3):
        kill_mid_publish(root, make_source(tmp_path, index_files, f"k{i}", pad=pad), tmp_path, i)
    left = sorted(entries(base, ".v-tmp-"))
    assert len(left) == 3, "one temp dir per kill (the reproduction)"
    assert [m.version for m in list_versions(root, NAME)] == [1]

    # Young leftovers may belong to a live publisher: the default age keeps them.
    assert sweep(root, NAME) == [] and sorted(entries(base, ".v-tmp-")) == left
    for name in left[:2]:
        age(base / name, 2 * HOUR)
    fresh = publish(root, make_source(tmp_path, index_files, "next"))  # the publish step sweeps first
    assert sorted(Path(p).name for p in fresh.swept) == left[:2]
    assert sorted(entries(base, ".v-tmp-")) == left[2:], "the young one is left alone"
    assert (fresh.version, fresh.created) == (2, True) and read_current(root, NAME).version == 2
    # A shorter age (the setting) sweeps the rest; complete versions are never touched.
    assert [Path(p).name for p in sweep(root, NAME, older_than_s=0.0)] == left[2:]
    assert entries(base, ".v-tmp-") == set() and [m.version for m in list_versions(root, NAME)] == [1, 2]
    load_current(root, NAME)


def test_a_publisher_stalled_past_the_sweep_fails_retryably_instead_of_publishing(
    tmp_path: Path,
    index_files: Path,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    root = str(tmp_path / "store")
    publish(root, make_source(tmp_path, index_files, "a"))
    original = pub._stage

    def stall_then_swept(source_dir: Path, staging: Path, files: dict[str, str]) -> None:
        original(source_dir, staging, files)
        sweep(root, NAME, older_than_s=0.0)  # another publish's sweep, while this one hung for an hour

    monkeypatch.setattr(pub, "_stage", stall_then_swept)
    with pytest.raises(PreconditionFailedError, match="swept"):
        publish(root, make_source(tmp_path, index_files, "b"))
    monkeypatch.undo()
    assert [m.version for m in list_versions(root, NAME)] == [1]


def test_prune_keeps_the_newest_the_current_and_its_rollback_target(
    tmp_path: Path,
    index_files: Path,  # noqa: F811
) -> None:
    root = str(tmp_path / "store")
    with pytest.raises(NoPublishedIndexError):
        prune(root, NAME, keep=1)
    for tag in "abcdef":
        publish(root, make_source(tmp_path, index_files, tag))
    assert rollback(root, NAME, to=2) == 2  # the operator went back to v2: it is live, v6 its rollback target
    with pytest.raises(InvalidInputError, match="keep"):
        prune(root, NAME, keep=0)

    dry = prune(root, NAME, keep=2, dry_run=True)
    assert (dry.kept, dry.removed, dry.dry_run) == ([2, 5, 6], [1, 3, 4], True)
    assert [m.version for m in list_versions(root, NAME)] == [1, 2, 3, 4, 5, 6], "a dry run deletes nothing"

    res = prune(root, NAME, keep=2)
    assert (res.kept, res.removed, res.restored) == ([2, 5, 6], [1, 3, 4], [])
    assert [m.version for m in list_versions(root, NAME)] == [2, 5, 6]
    base = tmp_path / "store" / "indexes" / NAME
    assert entries(base, ".v-") == set() and not (base / "v1").exists()
    assert read_current(root, NAME).version == 2 and tag_of(root, 2) == "b", "never the live one"
    assert prune(root, NAME, keep=1).removed == [5], "keep 1: the newest, the live one, its rollback target"
    assert rollback(root, NAME) == 6, "a plain rollback still works after pruning"
    assert publish(root, make_source(tmp_path, index_files, "g")).version == 7, "numbers are never reused"


def test_a_version_that_becomes_current_while_pruned_is_put_back(
    tmp_path: Path,
    index_files: Path,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    root = str(tmp_path / "store")
    for tag in "abcd":  # keep 1: v4 (live), v3 (its rollback target); v1 and v2 go
        publish(root, make_source(tmp_path, index_files, tag))
    original = pub._read_pointer
    calls = {"n": 0}

    def racing_switch(r: str, n: str, st: Any) -> tuple[CurrentPointer | None, Version]:
        calls["n"] += 1
        if calls["n"] == 2:  # after v1 was hidden: a publisher that had verified v1 switches CURRENT to it
            pointer, token = original(r, n, st)
            assert pointer is not None
            st.compare_and_swap(
                str(Path(r) / "indexes" / n / "CURRENT"),
                pointer.model_copy(update={"version": 1, "history": [*pointer.history, 4]}).model_dump_json().encode(),
                token,
            )
        return original(r, n, st)

    monkeypatch.setattr(pub, "_read_pointer", racing_switch)
    res = prune(root, NAME, keep=1, sweep_after_s=None)
    monkeypatch.undo()
    assert (res.kept, res.removed, res.restored) == ([1, 3, 4], [2], [1])
    assert read_current(root, NAME).version == 1 and tag_of(root, 1) == "a"
    load_current(root, NAME)


# ---------------------------------------------------------------------------------------- GCS
def test_gcs_abandoned_claims_are_swept_and_their_numbers_never_reused(
    tmp_path: Path,
    index_files: Path,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    client = FakeGCSClient()
    st = GCSStorage(client)
    objects = client.buckets.setdefault("bucket", {})
    prefix = f"prod/indexes/{NAME}/"
    publish(ROOT_GS, make_source(tmp_path, index_files, "a"), storage=st)
    original = FakeBlob.upload_from_string

    for tag in ("b", "c"):  # two publishers killed after their claim and one file
        uploads = {"n": 0}

        def dies_on_third_upload(self: FakeBlob, data: bytes | str, if_generation_match: int | None = None) -> None:
            uploads["n"] += 1  # noqa: B023 - one counter per killed publisher
            if uploads["n"] == 3:  # noqa: B023
                raise KeyboardInterrupt
            original(self, data, if_generation_match=if_generation_match)

        monkeypatch.setattr(FakeBlob, "upload_from_string", dies_on_third_upload)
        with pytest.raises(KeyboardInterrupt):
            publish(ROOT_GS, make_source(tmp_path, index_files, tag), storage=st)
        monkeypatch.undo()
    src_b = tmp_path / "src-b"
    leftovers = sorted(n for n in objects if n.startswith((prefix + "v2/", prefix + "v3/")))
    assert {n.rsplit("/", 1)[1] for n in leftovers} >= {"CLAIM"} and len(leftovers) == 4

    assert sweep(ROOT_GS, NAME, storage=st) == [], "young claims may be live publishers'"
    later = time.time() + 2 * HOUR
    swept = sweep(ROOT_GS, NAME, storage=st, now=later)
    assert swept == [f"{ROOT_GS}/indexes/{NAME}/v2/", f"{ROOT_GS}/indexes/{NAME}/v3/"]
    assert not any(n.startswith(prefix + "v2/") for n in objects), "below the top: everything goes"
    assert [n for n in objects if n.startswith(prefix + "v3/")] == [prefix + "v3/CLAIM"], "the top keeps a tombstone"
    assert "swept_at" in json.loads(objects[prefix + "v3/CLAIM"].data)

    again = publish(ROOT_GS, src_b, storage=st)
    assert (again.version, again.created) == (4, True), "v3 is never claimed again"
    assert sweep(ROOT_GS, NAME, storage=st, now=later) == [f"{ROOT_GS}/indexes/{NAME}/v3/"]
    assert sorted({n[len(prefix) :].split("/")[0] for n in objects if n.startswith(prefix)}) == ["CURRENT", "v1", "v4"]
    assert tag_of(ROOT_GS, 4, storage=st, cache_dir=tmp_path / "c") == "b"


def test_gcs_a_publisher_whose_claim_was_swept_never_writes_its_manifest(
    tmp_path: Path,
    index_files: Path,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    client = FakeGCSClient()
    st = GCSStorage(client)
    publish(ROOT_GS, make_source(tmp_path, index_files, "a"), storage=st)
    original = FakeBlob.upload_from_filename
    swept: list[list[str]] = []

    def hangs_an_hour(self: FakeBlob, filename: str, if_generation_match: int | None = None) -> None:
        original(self, filename, if_generation_match=if_generation_match)
        if not swept:  # meanwhile another publish's sweep finds the claim an hour old
            swept.append(sweep(ROOT_GS, NAME, storage=st, now=time.time() + 2 * HOUR))

    monkeypatch.setattr(FakeBlob, "upload_from_filename", hangs_an_hour)
    src_b = make_source(tmp_path, index_files, "b")
    with pytest.raises(PreconditionFailedError, match="swept"):
        publish(ROOT_GS, src_b, storage=st)
    monkeypatch.undo()
    assert swept == [[f"{ROOT_GS}/indexes/{NAME}/v2/"]]
    assert [m.version for m in list_versions(ROOT_GS, NAME, storage=st)] == [1]
    # What the stalled publisher uploaded after the sweep goes at the next sweep; the tombstone stays.
    v2 = f"prod/indexes/{NAME}/v2/"
    assert len([n for n in client.buckets["bucket"] if n.startswith(v2)]) > 1
    assert sweep(ROOT_GS, NAME, storage=st) == [f"{ROOT_GS}/indexes/{NAME}/v2/"]
    assert [n for n in client.buckets["bucket"] if n.startswith(v2)] == [v2 + "CLAIM"]
    assert sweep(ROOT_GS, NAME, storage=st) == []
    retry = publish(ROOT_GS, src_b, storage=st)
    assert retry.version == 3 and tag_of(ROOT_GS, 3, storage=st, cache_dir=tmp_path / "c") == "b"


def test_gcs_prune(tmp_path: Path, index_files: Path) -> None:  # noqa: F811
    client = FakeGCSClient()
    st = GCSStorage(client)
    for tag in "abcd":
        publish(ROOT_GS, make_source(tmp_path, index_files, tag), storage=st)
    res = prune(ROOT_GS, NAME, keep=1, storage=st)
    assert (res.kept, res.removed) == ([3, 4], [1, 2])
    left = {n.split("/")[3] for n in client.buckets["bucket"] if n.startswith(f"prod/indexes/{NAME}/")}
    assert left == {"CURRENT", "v3", "v4"}
    assert read_current(ROOT_GS, NAME, storage=st).version == 4
    assert rollback(ROOT_GS, NAME, storage=st) == 3
    pointer = read_pointer(ROOT_GS, NAME, storage=st)
    assert pointer is not None and pointer.version == 3


# ------------------------------------------------------------------------------------------------ CLI
def test_cli_index_prune(tmp_path: Path, index_files: Path) -> None:  # noqa: F811
    root = str(tmp_path / "store")
    for tag in "abc":
        publish(root, make_source(tmp_path, index_files, tag))
    cmd = [sys.executable, "-m", "aitasks.cli", "index", "prune", "--name", NAME, "--storage-root", root]
    env = {**os.environ, "AITASKS_LOG_LEVEL": "error"}
    dry = subprocess.run([*cmd, "--keep", "1", "--dry-run"], capture_output=True, text=True, env=env, check=False)
    assert dry.returncode == 0, dry.stderr
    assert "would remove v1" in dry.stdout and [m.version for m in list_versions(root, NAME)] == [1, 2, 3]
    out = subprocess.run([*cmd, "--keep", "1"], capture_output=True, text=True, env=env, check=False)
    assert out.returncode == 0, out.stderr
    assert "removed v1" in out.stdout and [m.version for m in list_versions(root, NAME)] == [2, 3]
    bad = subprocess.run([*cmd, "--keep", "0"], capture_output=True, text=True, env=env, check=False)
    assert bad.returncode != 0
