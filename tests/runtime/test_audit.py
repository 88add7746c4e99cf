from __future__ import annotations

import json
import multiprocessing as mp
from pathlib import Path

import pytest

from aitasks.runtime.audit import AuditLog
from aitasks.runtime.errors import AuditIntegrityError


def _log(tmp_path: Path, n: int = 5) -> AuditLog:
    log = AuditLog(tmp_path / "audit")
    for i in range(n):
        log.append({"task": "t", "status": "succeeded", "attempt": 1, "input_hash": f"h{i}"})
    return log


def _lines(log: AuditLog) -> list[str]:
    return log.log_path.read_text().splitlines()


def _write(log: AuditLog, lines: list[str]) -> None:
    log.log_path.write_text("".join(line + "\n" for line in lines))


def test_intact_chain_verifies(tmp_path: Path) -> None:
    log = _log(tmp_path)
    rep = log.verify()
    assert rep.ok and rep.records == 5 and rep.head_seq == 4


def test_edited_record_is_detected(tmp_path: Path) -> None:
    log = _log(tmp_path)
    lines = _lines(log)
    rec = json.loads(lines[2])
    rec["status"] = "failed"
    lines[2] = json.dumps(rec)
    _write(log, lines)
    rep = log.verify()
    assert not rep.ok and "record 2" in rep.problems[0] and "edited" in rep.problems[0]


def test_reordered_records_are_detected(tmp_path: Path) -> None:
    log = _log(tmp_path)
    lines = _lines(log)
    lines[1], lines[2] = lines[2], lines[1]
    _write(log, lines)
    assert not log.verify().ok


def test_deleted_record_is_detected(tmp_path: Path) -> None:
    log = _log(tmp_path)
    lines = _lines(log)
    del lines[3]
    _write(log, lines)
    rep = log.verify()
    assert not rep.ok and "record 3" in rep.problems[0]


def test_truncation_is_detected_by_the_separate_head(tmp_path: Path) -> None:
    log = _log(tmp_path)
    _write(log, _lines(log)[:3])  # a valid, shorter chain
    rep = log.verify()
    assert not rep.ok and "truncated" in rep.problems[0]


def test_missing_head_with_records_refuses_append(tmp_path: Path) -> None:
    log = _log(tmp_path)
    log.head_path.unlink()
    assert not log.verify().ok
    with pytest.raises(AuditIntegrityError):
        log.append({"task": "t"})


def test_head_can_live_elsewhere(tmp_path: Path) -> None:
    log = AuditLog(tmp_path / "audit", head_path=tmp_path / "other-volume" / "HEAD")
    (tmp_path / "other-volume").mkdir()
    log.append({"task": "t"})
    assert log.verify().ok and (tmp_path / "other-volume" / "HEAD").exists()


def _appender(root: str, n: int, worker: int) -> None:
    log = AuditLog(Path(root))
    for i in range(n):
        log.append({"task": "concurrent", "worker": worker, "i": i})


def test_concurrent_appenders_keep_one_valid_chain(tmp_path: Path) -> None:
    ctx = mp.get_context("fork")
    root = tmp_path / "audit"
    procs = [ctx.Process(target=_appender, args=(str(root), 40, w)) for w in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    log = AuditLog(root)
    rep = log.verify()
    assert rep.ok, rep.problems
    assert rep.records == 160
    seen = {(r["worker"], r["i"]) for r in log.records()}
    assert len(seen) == 160


def test_torn_head_slot_falls_back_to_the_other(tmp_path: Path) -> None:
    log = _log(tmp_path, 4)  # last seq 3 is in slot 1
    raw = bytearray(log.head_path.read_bytes())
    raw[256:300] = b"\x00" * 44  # a crash tore the newest slot
    log.head_path.write_bytes(bytes(raw))
    assert log.read_head()[0] == 2
    rep = log.verify()
    # The log is one authentic record ahead of the surviving slot: a torn head write, not tampering.
    assert rep.ok and any("head write did not happen" in n for n in rep.notes), rep
    assert log.append({"task": "t"})["seq"] == 4 and log.verify().ok


# ------------------------------------------------------------------ object storage (GCS) variant
def _gcs_log(client: object | None = None) -> tuple[object, object]:
    from aitasks.runtime.audit import StorageAuditLog
    from aitasks.runtime.storage import GCSStorage
    from tests.fakes.gcs import FakeGCSClient

    c = client or FakeGCSClient()
    return c, StorageAuditLog(GCSStorage(c), "gs://audit-bucket/aitasks/audit", head_uri="gs://audit-head/HEAD")


def test_gcs_audit_concurrent_writers_one_chain() -> None:
    import threading

    client, _ = _gcs_log()

    def writer(w: int) -> None:
        _, log = _gcs_log(client)
        for i in range(15):
            log.append({"task": "t", "worker": w, "i": i})

    threads = [threading.Thread(target=writer, args=(w,)) for w in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    _, log = _gcs_log(client)
    rep = log.verify()
    assert rep.ok, rep.problems
    assert rep.records == 60 and rep.head_seq == 59


def test_gcs_audit_detects_tampering_and_truncation() -> None:
    client, log = _gcs_log()
    for i in range(4):
        log.append({"task": "t", "i": i})
    bucket = client.buckets["audit-bucket"]
    last = "aitasks/audit/records/000000000003.json"
    saved = bucket.pop(last)
    assert "truncated" in log.verify().problems[0]
    bucket[last] = saved
    rec = json.loads(bucket["aitasks/audit/records/000000000001.json"].data)
    rec["status"] = "forged"
    bucket["aitasks/audit/records/000000000001.json"].data = json.dumps(rec).encode()
    assert "edited" in log.verify().problems[0]


def test_gcs_audit_catches_up_after_a_writer_died_before_moving_the_head() -> None:
    from aitasks.runtime.audit import StorageAuditLog

    _client, log = _gcs_log()
    log.append({"task": "a"})
    # Simulate a crash: a record written but the head not advanced.
    orig = StorageAuditLog._advance_head
    StorageAuditLog._advance_head = lambda self, seq, digest: None  # type: ignore[method-assign]
    try:
        log.append({"task": "b"})
    finally:
        StorageAuditLog._advance_head = orig  # type: ignore[method-assign]
    assert log.read_head()[0] == 0
    rec = log.append({"task": "c"})
    assert rec["seq"] == 2 and log.verify().ok
