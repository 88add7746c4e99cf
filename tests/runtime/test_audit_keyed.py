"""Issue 14, findings 1 and 2: a keyed audit that someone with write access but no key cannot rewrite,
and crash recovery between log and head without false alarms or seq reuse.

Each attack below passed `aitasks audit verify` with the unkeyed sha256 chain (finding 1).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import pytest

from aitasks.runtime.audit import GENESIS, NOTE_DEV_KEY, NOTE_EMPTY, NOTE_HEAD_BESIDE, AuditLog, record_hash
from aitasks.runtime.errors import AuditIntegrityError
from aitasks.runtime.hashing import canonical_json

KEY = "k" * 40


def _keyed(tmp_path: Path, n: int = 5, *, apart: bool = True) -> AuditLog:
    head = tmp_path / "head-root" / "HEAD" if apart else None
    log = AuditLog(tmp_path / "audit", head, key=KEY)
    for i in range(n):
        log.append({"task": "t", "status": "succeeded", "i": i})
    return log


def _sha256(rec: dict[str, Any]) -> str:
    return hashlib.sha256(canonical_json({k: v for k, v in rec.items() if k != "hash"}).encode()).hexdigest()


def _sha256_rechain(recs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """What the attacker of finding 1 did: recompute the chain with plain sha256."""
    prev = GENESIS
    out = []
    for i, old in enumerate(recs):
        rec = {**old, "seq": i, "prev_hash": prev}
        rec["hash"] = _sha256(rec)
        prev = rec["hash"]
        out.append(rec)
    return out


def _guess_rechain(recs: list[dict[str, Any]], key: str) -> list[dict[str, Any]]:
    """A smarter attacker: recompute with HMAC under a guessed key (here the public dev key)."""
    prev = GENESIS
    out = []
    for i, old in enumerate(recs):
        rec = {**old, "seq": i, "prev_hash": prev}
        rec["hash"] = record_hash(rec, key)
        prev = rec["hash"]
        out.append(rec)
    return out


def _rewrite(log: AuditLog, recs: list[dict[str, Any]], head_key: str | None) -> None:
    log.log_path.write_text("".join(canonical_json(r) + "\n" for r in recs))
    if head_key is not None:  # rewrite the head too, with the attacker's key
        log.head_path.unlink()
        forger = AuditLog(log.root, log.head_path, key=head_key)
        if recs:
            forger._write_head(recs[-1]["seq"], recs[-1]["hash"])
        forger.close()


@pytest.mark.parametrize("rechain", ["sha256", "dev-key-hmac"])
@pytest.mark.parametrize("attack", ["edit-middle", "delete-middle", "truncate", "append-forged"])
def test_rewriting_chain_and_head_without_the_key_fails_verify(tmp_path: Path, attack: str, rechain: str) -> None:
    log = _keyed(tmp_path, apart=False)  # even with the head beside the log (the weakest set-up)
    assert log.verify().ok
    recs = log.records()
    if attack == "edit-middle":
        recs[2]["status"] = "failed"
    elif attack == "delete-middle":
        del recs[2]
    elif attack == "truncate":
        recs = recs[:3]
    else:
        recs.append({**recs[-1], "status": "succeeded", "task": "forged"})
    new = _sha256_rechain(recs) if rechain == "sha256" else _guess_rechain(recs, "aitasks-dev-only-audit-key")
    _rewrite(log, new, head_key="aitasks-dev-only-audit-key")
    rep = AuditLog(log.root, key=KEY).verify()
    assert not rep.ok, rep
    assert any("keyed hash" in p or "key check" in p or "key id" in p for p in rep.problems), rep.problems
    with pytest.raises(AuditIntegrityError):  # and no writer builds on a forged log
        AuditLog(log.root, key=KEY).append({"task": "next"})


def test_a_forged_record_appended_with_the_head_untouched_fails(tmp_path: Path) -> None:
    log = _keyed(tmp_path)
    recs = log.records()
    forged = {**recs[-1], "task": "forged", "seq": 5, "prev_hash": recs[-1]["hash"]}
    forged["hash"] = _sha256(forged)
    with log.log_path.open("a") as fh:
        fh.write(canonical_json(forged) + "\n")
    rep = log.verify()
    assert not rep.ok and "record 5" in rep.problems[0]


def test_rewritten_head_in_the_separate_head_root_is_detected(tmp_path: Path) -> None:
    log = _keyed(tmp_path)  # head in tmp/head-root, apart from the log
    assert log.verify().ok and NOTE_HEAD_BESIDE not in log.verify().notes
    # Truncate the log (still a valid keyed chain) and roll the head back with a guessed key.
    recs = log.records()[:3]
    _rewrite(log, recs, head_key="aitasks-dev-only-audit-key")
    rep = AuditLog(log.root, log.head_path, key=KEY).verify()
    assert not rep.ok and any("key check" in p for p in rep.problems), rep.problems


def test_truncation_and_deletion_are_proven_with_the_head_apart(tmp_path: Path) -> None:
    log = _keyed(tmp_path)
    log.log_path.write_text("".join(line + "\n" for line in log.log_path.read_text().splitlines()[:3]))
    assert "truncated" in log.verify().problems[0]
    log.log_path.unlink()  # the whole log deleted: the head apart still says 5 records
    rep = log.verify()
    assert not rep.ok and "truncated" in rep.problems[0]
    with pytest.raises(AuditIntegrityError):
        log.append({"task": "t"})


def test_verify_says_what_it_cannot_prove(tmp_path: Path) -> None:
    weak = AuditLog(tmp_path / "weak")
    weak.append({"task": "t"})
    assert weak.verify().ok and {NOTE_DEV_KEY, NOTE_HEAD_BESIDE} <= set(weak.verify().notes)
    strong = _keyed(tmp_path, 2)
    rep = strong.verify()
    assert rep.ok and rep.notes == [], rep.notes
    # Log and head beside it both deleted: verifies as empty, and says that an empty and a deleted
    # audit look the same (only a head apart, on storage the writer cannot rewrite, tells them apart).
    weak.log_path.unlink()
    weak.head_path.unlink()
    rep = weak.verify()
    assert rep.ok and rep.records == 0 and NOTE_EMPTY in rep.notes and NOTE_HEAD_BESIDE in rep.notes


def test_a_wrong_key_is_named_not_called_an_edit(tmp_path: Path) -> None:
    log = _keyed(tmp_path, 2)
    rep = AuditLog(log.root, log.head_path, key="another-key-" + "z" * 30).verify()
    assert not rep.ok and "key id" in rep.problems[0]


def test_records_carry_no_key_material(tmp_path: Path) -> None:
    log = _keyed(tmp_path, 1)
    text = log.log_path.read_text() + log.head_path.read_bytes().decode()
    assert KEY not in text and json.loads(text.splitlines()[0])["key_id"] == log.key_id


# ------------------------------------------------------------------ finding 2: crash between log and head
class _Crash(BaseException):
    """Stands for the process dying: not an OSError, so the append's own undo does not run."""


def _crash_before_head(monkeypatch: pytest.MonkeyPatch, log: AuditLog, entry: dict[str, Any]) -> None:
    def die(self: AuditLog, seq: int, digest: str) -> None:
        raise _Crash

    with monkeypatch.context() as m:
        m.setattr(AuditLog, "_write_head", die)
        with pytest.raises(_Crash):
            log.append(entry)


@pytest.mark.parametrize("apart", [True, False])
def test_crash_between_log_and_head_recovers_without_false_alarm_or_seq_reuse(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, apart: bool
) -> None:
    log = _keyed(tmp_path, 3, apart=apart)
    _crash_before_head(monkeypatch, log, {"task": "crashed"})
    rep = log.verify()
    assert rep.ok, rep.problems  # before: "appended outside the log API"
    assert any("head write did not happen" in n for n in rep.notes)
    fresh = AuditLog(log.root, log.head_path, key=KEY)  # another process
    rec = fresh.append({"task": "next"})
    assert rec["seq"] == 4  # before: 3 again, and the chain broken for good
    recs = fresh.records()
    assert [r["seq"] for r in recs] == [0, 1, 2, 3, 4] and recs[3]["task"] == "crashed"
    rep = fresh.verify()
    assert rep.ok and rep.head_seq == 4 and not any("head write" in n for n in rep.notes)


def test_crash_before_the_very_first_head(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    log = AuditLog(tmp_path / "audit", tmp_path / "head-root" / "HEAD", key=KEY)
    _crash_before_head(monkeypatch, log, {"task": "first"})
    assert log.verify().ok
    assert log.append({"task": "second"})["seq"] == 1 and log.verify().ok


def test_repair_finishes_an_interrupted_append(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    log = _keyed(tmp_path, 2)
    _crash_before_head(monkeypatch, log, {"task": "crashed"})
    assert "advanced the head to record 2" in log.repair()[0]
    assert log.repair() == [] and log.read_head() == (2, log.records()[-1]["hash"]) and log.verify().notes == []


def test_a_partial_last_line_is_cut_back(tmp_path: Path) -> None:
    log = _keyed(tmp_path, 3)
    good = log.log_path.read_bytes()
    with log.log_path.open("ab") as fh:
        fh.write(b'{"task":"torn","seq":3,"prev')  # a write that died part way
    rep = log.verify()
    assert rep.ok and rep.records == 3 and any("partial last line" in n for n in rep.notes)
    assert "cut a partial last line" in log.repair()[0]
    assert log.log_path.read_bytes() == good
    assert log.append({"task": "next"})["seq"] == 3 and log.verify().ok


def test_head_ahead_of_an_authentic_log_is_not_taken_for_a_crash(tmp_path: Path) -> None:
    log = _keyed(tmp_path, 4)
    lines = log.log_path.read_text().splitlines()
    log.log_path.write_text("".join(line + "\n" for line in lines[:2]))  # two records cut off
    with pytest.raises(AuditIntegrityError, match="head is at 3"):
        log.repair()
    with pytest.raises(AuditIntegrityError):
        log.append({"task": "t"})
    assert len(log.records()) == 2  # nothing appended on top of a truncated log


# ------------------------------------------------------------------ object storage (GCS): extra and missing records
def _gcs(client: Any = None, key: str = KEY, head: str = "gs://audit-head/HEAD") -> tuple[Any, Any]:
    from aitasks.runtime.audit import StorageAuditLog
    from aitasks.runtime.storage import GCSStorage
    from tests.fakes.gcs import FakeGCSClient

    c = client or FakeGCSClient()
    return c, StorageAuditLog(GCSStorage(c), "gs://audit-bucket/aitasks/audit", head_uri=head, key=key)


def _put(client: Any, name: str, rec: dict[str, Any]) -> None:
    client.bucket("audit-bucket").blob(name).upload_from_string(canonical_json(rec).encode())


def _name(seq: int) -> str:
    return f"aitasks/audit/records/{seq:012d}.json"


def test_gcs_extra_forged_record_with_the_head_untouched_is_detected() -> None:
    client, log = _gcs()
    for i in range(3):
        log.append({"task": "t", "i": i})
    last = log.records()[-1]
    forged = {**last, "task": "forged", "seq": 3, "prev_hash": last["hash"]}
    forged["hash"] = _sha256(forged)
    _put(client, _name(3), forged)
    rep = log.verify()
    assert not rep.ok and "record 3" in rep.problems[0], rep.problems
    with pytest.raises(AuditIntegrityError):  # a writer does not chain on it either
        log.append({"task": "next"})


def test_gcs_extra_object_under_another_name_is_detected() -> None:
    client, log = _gcs()
    for i in range(2):
        log.append({"task": "t", "i": i})
    _put(client, "aitasks/audit/records/000000000000-copy.json", log.records()[0])
    rep = log.verify()
    assert not rep.ok and "extra object" in rep.problems[0], rep.problems


def test_gcs_missing_middle_and_last_records_are_detected() -> None:
    client, log = _gcs()
    for i in range(4):
        log.append({"task": "t", "i": i})
    bucket = client.buckets["audit-bucket"]
    saved = bucket.pop(_name(1))
    rep = log.verify()
    assert not rep.ok and "missing" in rep.problems[0], rep.problems
    bucket[_name(1)] = saved
    bucket.pop(_name(3))
    rep = log.verify()
    assert not rep.ok and "truncated" in rep.problems[0], rep.problems


def test_gcs_forged_head_is_detected() -> None:
    client, log = _gcs()
    for i in range(3):
        log.append({"task": "t", "i": i})
    rec = log.records()[1]
    client.bucket("audit-head").blob("HEAD").upload_from_string(
        canonical_json({"seq": 1, "hash": rec["hash"], "mac": "0" * 32}).encode()
    )
    rep = log.verify()
    assert not rep.ok and "key check" in rep.problems[-1], rep.problems


def test_gcs_writer_died_before_the_head_is_a_note_and_repair_moves_it(monkeypatch: pytest.MonkeyPatch) -> None:
    from aitasks.runtime.audit import StorageAuditLog

    _client, log = _gcs()
    log.append({"task": "a"})
    monkeypatch.setattr(StorageAuditLog, "_advance_head", lambda self, seq, digest: None)
    log.append({"task": "b"})
    monkeypatch.undo()
    rep = log.verify()
    assert rep.ok and rep.head_seq == 0 and any("past the head" in n for n in rep.notes), rep
    assert "records 1..1" in log.repair()[0]
    rep = log.verify()
    assert rep.ok and rep.head_seq == 1 and rep.notes == []


def test_gcs_head_beside_the_log_is_noted() -> None:
    _client, log = _gcs(head="gs://audit-bucket/aitasks/audit/HEAD")
    log.append({"task": "t"})
    assert NOTE_HEAD_BESIDE in log.verify().notes
