"""Fixtures of the data-processing tests: feature snapshot files and a throwaway redis-server."""

from __future__ import annotations

import contextlib
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from aitasks.data_processing.features import TRACK_FEATURES_SCHEMA, USER_FEATURES_SCHEMA
from tests.conftest import skip_or_fail

#: Snapshot times of the test feature files: three UTC midnights.
SNAPSHOTS: tuple[datetime, ...] = tuple(datetime(2025, 3, 1, tzinfo=UTC) + timedelta(days=k) for k in range(3))
USERS: tuple[str, ...] = ("u0", "u1", "u2")
TRACKS: tuple[str, ...] = ("t0", "t1", "t2", "t3")
#: Entities without a row in a snapshot: ``u2`` was inactive on day 1; ``t3`` is a new release
#: that first appears in snapshot 2.
ABSENT: dict[int, set[str]] = {0: {"t3"}, 1: {"u2", "t3"}}


def feature_value(kind: pa.DataType, snapshot: int, entity: int, column: int) -> int | float:
    """The value every test expects: distinct per snapshot, entity and column, exact in float32."""
    if pa.types.is_integer(kind):
        return 10_000 * (snapshot + 1) + 100 * entity + column
    return float(snapshot + 1) + entity / 4 + column / 64  # multiples of 1/64: exact in float32


def _snapshot_table(schema: pa.Schema, key: str, ids: Sequence[str], snapshots: Sequence[datetime]) -> pa.Table:
    columns: dict[str, list[object]] = {f.name: [] for f in schema}
    for k, ts in enumerate(snapshots):
        for e, entity_id in enumerate(ids):
            if entity_id in ABSENT.get(k, set()):
                continue
            for c, field in enumerate(schema):
                value: object
                if field.name == key:
                    value = entity_id
                elif field.name in ("event_timestamp", "created_timestamp"):
                    value = ts
                elif field.name.startswith("audio_"):
                    value = None  # placeholders: null until the audio family fills them
                else:
                    value = feature_value(field.type, k, e, c)
                columns[field.name].append(value)
    return pa.table(columns, schema=schema)


def write_feature_files(directory: Path, snapshots: Sequence[datetime] = SNAPSHOTS) -> Path:
    """Write ``user_features.parquet`` and ``track_features.parquet`` with the exact feature columns."""
    directory.mkdir(parents=True, exist_ok=True)
    pq.write_table(
        _snapshot_table(USER_FEATURES_SCHEMA, "user_id", USERS, snapshots), directory / "user_features.parquet"
    )
    pq.write_table(
        _snapshot_table(TRACK_FEATURES_SCHEMA, "track_id", TRACKS, snapshots), directory / "track_features.parquet"
    )
    return directory


@pytest.fixture
def feature_files(tmp_path: Path) -> Path:
    """A directory with user and track feature snapshots (see :data:`SNAPSHOTS`, :data:`ABSENT`)."""
    return write_feature_files(tmp_path / "offline")


def free_port() -> int:
    """A TCP port nothing listens on right now (bound then released)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@pytest.fixture
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real redis-server on a free localhost port, in its own temp dir; yields ``redis://127.0.0.1:N/0``.

    Skips when the binary is missing, and fails instead when ``AITASKS_REQUIRE_SERVICES=1`` (CI).
    """
    import redis

    binary = shutil.which("redis-server")
    if binary is None:
        skip_or_fail("redis-server binary not found on PATH")
        raise AssertionError("unreachable")  # skip_or_fail raises
    workdir = tmp_path_factory.mktemp("redis")
    port = free_port()
    argv = [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
    argv += ["--daemonize", "no", "--dir", str(workdir)]
    log = (workdir / "redis.log").open("wb")
    proc = subprocess.Popen(argv, cwd=workdir, stdout=log, stderr=subprocess.STDOUT)
    client = redis.Redis(host="127.0.0.1", port=port, socket_connect_timeout=0.2, socket_timeout=0.5)
    try:
        deadline = time.monotonic() + 10
        while True:
            if proc.poll() is not None:
                skip_or_fail(
                    f"redis-server exited with {proc.returncode}: {(workdir / 'redis.log').read_text()[-500:]}"
                )
            with contextlib.suppress(redis.exceptions.ConnectionError, redis.exceptions.TimeoutError):
                if client.ping():
                    break
            if time.monotonic() > deadline:
                skip_or_fail(f"redis-server on port {port} did not answer PING within 10 s")
            time.sleep(0.05)
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        client.close()
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=5)
        log.close()
