from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from aitasks.runtime.errors import PreconditionFailedError, UnsafePathError
from aitasks.runtime.storage import (
    GCSStorage,
    LocalStorage,
    Version,
    join_uri,
    local_copy,
    publish_local_file,
)
from tests.fakes.gcs import FakeGCSClient


def test_local_write_is_atomic_and_replaces(tmp_path: Path) -> None:
    st = LocalStorage()
    target = str(tmp_path / "a" / "file.bin")
    st.write_bytes(target, b"old")
    st.write_bytes(target, b"new")
    assert st.read_bytes(target) == b"new"
    assert [p.name for p in (tmp_path / "a").iterdir()] == ["file.bin"], "no temp files left behind"


def test_create_only_has_one_winner(tmp_path: Path) -> None:
    st = LocalStorage()
    target = str(tmp_path / "marker")
    results: list[str] = []

    def attempt(i: int) -> None:
        try:
            st.write_bytes(target, f"writer-{i}".encode(), if_absent=True)
            results.append("won")
        except PreconditionFailedError:
            results.append("lost")

    threads = [threading.Thread(target=attempt, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results.count("won") == 1
    assert st.read_bytes(target).startswith(b"writer-")


def test_compare_and_swap_local(tmp_path: Path) -> None:
    st = LocalStorage()
    uri = str(tmp_path / "HEAD")
    st.compare_and_swap(uri, b"1", Version(None))
    v1 = st.version(uri)
    st.compare_and_swap(uri, b"2", v1)
    with pytest.raises(PreconditionFailedError):
        st.compare_and_swap(uri, b"3", v1)  # stale version
    assert st.read_bytes(uri) == b"2"


@pytest.mark.parametrize("key", ["../etc/passwd", "a/../../b", "/abs", "a//b", "a\\b", "a\x00b", ""])
def test_join_refuses_escaping_keys(key: str) -> None:
    with pytest.raises(UnsafePathError):
        join_uri("/data/root", key)


def test_publish_local_file_leaves_nothing_on_error(tmp_path: Path) -> None:
    target = tmp_path / "out.parquet"
    target.write_bytes(b"previous")
    with pytest.raises(RuntimeError), publish_local_file(str(target)) as p:
        p.write_bytes(b"half")
        raise RuntimeError("boom")
    assert target.read_bytes() == b"previous"
    assert sorted(x.name for x in tmp_path.iterdir()) == ["out.parquet"]


def test_killed_writer_leaves_old_version_intact(tmp_path: Path) -> None:
    """A real SIGKILL of a process in the middle of a large publish: readers see the old file, whole."""
    target = tmp_path / "model.bin"
    old = b"OLD" * 1000
    target.write_bytes(old)
    started = tmp_path / "started"
    script = textwrap.dedent(
        f"""
        import os, time
        from aitasks.runtime.storage import publish_local_file
        with publish_local_file({str(target)!r}) as p:
            with open(p, "wb") as fh:
                fh.write(b"N" * 1_000_000)
                fh.flush()
                open({str(started)!r}, "w").close()
                while True:
                    fh.write(b"N" * 65536)
                    time.sleep(0.01)
        """
    )
    proc = subprocess.Popen([sys.executable, "-c", script])
    deadline = time.monotonic() + 60
    while not started.exists():
        assert proc.poll() is None, "writer died early"
        assert time.monotonic() < deadline
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert target.read_bytes() == old
    leftovers = [p.name for p in tmp_path.iterdir() if p.name.startswith(".tmp-")]
    assert leftovers, "the killed writer's temp file is hidden, not published"
    listing = LocalStorage().list(str(tmp_path))
    assert str(target) in listing
    assert not any(".tmp-" in x for x in listing), "listings never show temp files"


# ---------------------------------------------------------------------------------------- GCS
def test_gcs_create_only_and_cas() -> None:
    client = FakeGCSClient()
    st = GCSStorage(client)
    uri = "gs://bucket/runs/r1/_idempotency/k.json"
    st.write_bytes(uri, b"first", if_absent=True)
    with pytest.raises(PreconditionFailedError):
        st.write_bytes(uri, b"second", if_absent=True)
    assert st.read_bytes(uri) == b"first"
    v = st.version(uri)
    st.compare_and_swap(uri, b"third", v)
    with pytest.raises(PreconditionFailedError):
        st.compare_and_swap(uri, b"fourth", v)
    assert st.read_bytes(uri) == b"third"
    assert st.version("gs://bucket/missing") == Version(None)
    assert st.content_hash(uri).startswith("md5:")


def test_gcs_transient_error_is_retryable_and_file_roundtrip(tmp_path: Path) -> None:
    from aitasks.runtime.errors import ServiceUnavailableError

    client = FakeGCSClient()
    st = GCSStorage(client)
    client.fail_next_uploads = 1
    with pytest.raises(ServiceUnavailableError) as ei:
        st.write_bytes("gs://b/x", b"1")
    assert ei.value.retryable
    with publish_local_file("gs://b/dir/data.parquet", st) as p:
        p.write_bytes(b"payload")
    with local_copy("gs://b/dir/data.parquet", st) as local:
        assert local.read_bytes() == b"payload"
    assert st.list("gs://b/dir/") == ["gs://b/dir/data.parquet"]
    with pytest.raises(FileNotFoundError):
        st.read_bytes("gs://b/nope")


def test_gcs_failed_publish_uploads_nothing() -> None:
    client = FakeGCSClient()
    st = GCSStorage(client)
    with pytest.raises(RuntimeError), publish_local_file("gs://b/x.bin", st) as p:
        p.write_bytes(b"partial")
        raise RuntimeError("crash before upload")
    assert not st.exists("gs://b/x.bin")
