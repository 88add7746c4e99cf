"""One execution per key (issue 14, finding 6): leases, racing processes, takeover of a killed holder."""

from __future__ import annotations

import hashlib
import json
import multiprocessing as mp
import os
import secrets
import signal
import threading
import time
from pathlib import Path

import pytest

from aitasks.runtime.idempotency import IdempotencyStore, Lease
from aitasks.runtime.settings import Settings
from aitasks.runtime.storage import GCSStorage, LocalStorage
from aitasks.runtime.task import InputArtifact, OutputArtifact, RunContext, Runtime, TaskContext, TaskModel, ai_task
from tests.fakes.gcs import FakeGCSClient


class NondetParams(TaskModel):
    source: InputArtifact
    counter: str
    sleep_s: float = 0.3


class NondetResult(TaskModel):
    output: OutputArtifact
    sha256: str


@ai_task(name="test.nondet", version="1.0.0")
def nondet_task(params: NondetParams, ctx: TaskContext) -> NondetResult:
    """Write random bytes (a non-deterministic task), counting its runs in a file.

    EN: Writes random bytes.
    FR: Écrit des octets aléatoires.
    DE: Schreibt zufällige Bytes.
    """
    with open(params.counter, "a") as fh:  # O_APPEND: one line per run, from any process
        fh.write(f"{os.getpid()}\n")
    time.sleep(params.sleep_s)
    hold = Path(params.counter + ".hold")  # lets a test keep a holder busy without changing the key
    deadline = time.monotonic() + 60
    while hold.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    data = secrets.token_bytes(64)
    out = ctx.output_uri("random.bin")
    with ctx.publish(out) as p:
        p.write_bytes(data)
    return NondetResult(output=out, sha256=hashlib.sha256(data).hexdigest())


def _runtime(root: str, run_id: str, *, ttl: float = 60.0, wait: float = 120.0) -> Runtime:
    from aitasks.runtime import logging as rlog

    rlog.configure_logging(stream=open(os.devnull, "w"))  # noqa: SIM115
    # The inputs lie beside the store: its parent is an allowed input root.
    rt = Runtime.create(Settings(storage_root=root, input_roots=str(Path(root).parent)), run=RunContext(run_id=run_id))
    rt.lease_ttl_s, rt.lease_wait_s = ttl, wait
    return rt


def _racer(root: str, params: dict, barrier: mp.synchronize.Barrier, q: mp.Queue, i: int) -> None:  # type: ignore[name-defined]
    rt = _runtime(root, f"race-{i}")
    barrier.wait()
    q.put(nondet_task(params, runtime=rt).model_dump_json())


def _params(tmp_path: Path, sleep_s: float = 0.3) -> dict:
    src = tmp_path / "in.txt"
    src.write_text("x")
    return {"source": str(src), "counter": str(tmp_path / "runs.txt"), "sleep_s": sleep_s}


def test_eight_racing_processes_execute_once(tmp_path: Path) -> None:
    ctx = mp.get_context("fork")
    root = str(tmp_path / "store")
    params = _params(tmp_path)
    barrier, q = ctx.Barrier(8), ctx.Queue()
    procs = [ctx.Process(target=_racer, args=(root, params, barrier, q, i)) for i in range(8)]
    for p in procs:
        p.start()
    results = {q.get(timeout=120) for _ in procs}
    for p in procs:
        p.join(30)
    assert len(results) == 1, "every racer returns the one committed result"
    assert len((tmp_path / "runs.txt").read_text().splitlines()) == 1, "the body ran once"
    [committed] = list((tmp_path / "store" / "_idempotency" / "test.nondet").glob("*.json"))
    result = json.loads(committed.read_text())["result"]
    assert result == json.loads(results.pop())
    assert hashlib.sha256(Path(result["output"]).read_bytes()).hexdigest() == result["sha256"]
    rt = _runtime(root, "check")
    recs = [r for r in rt.audit.records() if r["task"] == "test.nondet" and "outcome" in r]
    outcomes = sorted(r["outcome"] for r in recs)
    assert outcomes.count("executed") == 1 and len(outcomes) == 8, outcomes
    assert set(outcomes) - {"executed"} <= {"reused", "lost_race"}
    [executed] = [r for r in recs if r["outcome"] == "executed"]
    assert executed["status"] == "succeeded"
    assert {r["status"] for r in recs if r["outcome"] != "executed"} == {"idempotent_hit"}
    # Only the winner's private working directory exists: no loser wrote beside the committed output.
    assert len(list((tmp_path / "store" / "tasks" / "test.nondet").rglob("random.bin"))) == 1
    assert rt.audit.verify().ok


def _holder(root: str, params: dict) -> None:
    nondet_task(params, runtime=_runtime(root, "killed-run", ttl=1.0))


def test_an_expired_lease_of_a_killed_holder_is_taken_over(tmp_path: Path) -> None:
    ctx = mp.get_context("fork")
    root = str(tmp_path / "store")
    params = _params(tmp_path, sleep_s=0.0)
    Path(params["counter"] + ".hold").touch()
    holder = ctx.Process(target=_holder, args=(root, params))
    holder.start()
    deadline = time.monotonic() + 60
    while not (tmp_path / "runs.txt").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert (tmp_path / "runs.txt").exists(), "the holder started its body"
    assert holder.pid is not None
    os.kill(holder.pid, signal.SIGKILL)
    holder.join(10)
    [lease_file] = list((tmp_path / "store" / "_idempotency" / "test.nondet").glob("*.lease"))
    assert json.loads(lease_file.read_text())["run_id"] == "killed-run"

    Path(params["counter"] + ".hold").unlink()
    rt = _runtime(root, "next-run", ttl=1.0, wait=30.0)
    r = nondet_task(params, runtime=rt)
    assert hashlib.sha256(Path(r.output).read_bytes()).hexdigest() == r.sha256
    assert len((tmp_path / "runs.txt").read_text().splitlines()) == 2
    [rec] = [x for x in rt.audit.records() if x.get("outcome") == "executed"]
    assert rec["run_id"] == "next-run" and rec["lease_taken_over"]["run_id"] == "killed-run"
    lease = json.loads(lease_file.read_text())
    assert lease["released"] is True and lease["run_id"] == "next-run"


def test_a_live_holder_is_waited_for_within_a_bound(tmp_path: Path) -> None:
    from aitasks.runtime.errors import PreconditionFailedError

    store = IdempotencyStore(LocalStorage(), str(tmp_path / "store"))
    held = store.try_lease("test.nondet", "k" * 64, run_id="other", ttl_s=60.0)
    assert isinstance(held, Lease)
    params = _params(tmp_path, sleep_s=0.0)
    rt = _runtime(str(tmp_path / "store"), "waiter", wait=0.3)
    key = nondet_task.idempotency_key(nondet_task.validate(params), rt)[0]
    lease = store.try_lease("test.nondet", key, run_id="other", ttl_s=60.0)
    assert isinstance(lease, Lease)
    with pytest.raises(PreconditionFailedError, match="holds the lease"):
        nondet_task(params, runtime=rt)
    assert not (tmp_path / "runs.txt").exists(), "the body did not run beside a live holder"
    lease.release()
    nondet_task(params, runtime=rt)
    assert len((tmp_path / "runs.txt").read_text().splitlines()) == 1


@pytest.mark.parametrize("kind", ["local", "gcs"])
def test_lease_create_renew_release_and_one_takeover(tmp_path: Path, kind: str) -> None:
    st = LocalStorage() if kind == "local" else GCSStorage(FakeGCSClient())
    root = str(tmp_path / "store") if kind == "local" else "gs://bucket/root"
    store = IdempotencyStore(st, root)
    a = store.try_lease("t", "k", run_id="a", ttl_s=60.0)
    assert isinstance(a, Lease) and a.taken_over is None
    assert store.try_lease("t", "k", run_id="b", ttl_s=60.0) == a.body, "a live lease is held"
    assert a.renew()
    # The holder stops renewing: the lease expires, and of 8 racing takers exactly one gets it.
    a._swap({**a.body, "expires_at": time.time() - 1})
    got: list[object] = []
    barrier = threading.Barrier(8)

    def take(i: int) -> None:
        barrier.wait()
        got.append(store.try_lease("t", "k", run_id=f"taker-{i}", ttl_s=60.0))

    threads = [threading.Thread(target=take, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    winners = [g for g in got if isinstance(g, Lease)]
    assert len(winners) == 1 and winners[0].taken_over is not None
    assert winners[0].taken_over["run_id"] == "a"
    assert not a.renew() and a.lost, "the old holder learns it lost the lease"
    a.release()  # a no-op: never releases the new holder's lease
    body, _ = store.read_lease("t", "k") or ({}, None)
    assert body["token"] == winners[0].token and not body.get("released")
    winners[0].release()
    body, _ = store.read_lease("t", "k") or ({}, None)
    assert body["released"] is True
    c = store.try_lease("t", "k", run_id="c", ttl_s=60.0)
    assert isinstance(c, Lease) and c.taken_over is not None and c.taken_over["released"] is True
