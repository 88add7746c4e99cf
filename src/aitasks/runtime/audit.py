"""Append-only, hash-chained audit log.

Each record is one JSON line carrying ``seq``, ``prev_hash`` and ``hash`` where
``hash = sha256(canonical_json(record without hash))`` and ``prev_hash`` is the previous record's
hash (``GENESIS`` for the first). The head (last ``seq`` and ``hash``) is kept in a separate file,
ideally on separate storage (``head_path``), so that cutting records off the end of the log, which
leaves a perfectly valid shorter chain, is still detected.

Concurrency: writers are separate processes (parallel pipeline steps on one machine, CLI, the
updater). The serialisation point is an exclusive ``flock`` on a lock file beside the log; the
append (read head, write line, fsync, publish head atomically) happens entirely under it. A test
runs concurrent appenders in separate processes and verifies the chain afterwards.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from aitasks.runtime.errors import AuditIntegrityError
from aitasks.runtime.hashing import canonical_json, sha256_text
from aitasks.runtime.storage import LocalStorage

GENESIS = "0" * 64
LOG_NAME = "audit.jsonl"
HEAD_NAME = "HEAD.json"


def record_hash(record: dict[str, Any]) -> str:
    body = {k: v for k, v in record.items() if k != "hash"}
    return sha256_text(canonical_json(body))


@dataclass
class VerifyReport:
    """Outcome of :meth:`AuditLog.verify`."""

    ok: bool
    records: int
    head_seq: int | None
    problems: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"ok": self.ok, "records": self.records, "head_seq": self.head_seq, "problems": self.problems}


class AuditLog:
    """A local JSON-lines audit log with its head kept apart."""

    def __init__(self, root: Path, head_path: Path | None = None) -> None:
        self.root = Path(root)
        self.log_path = self.root / LOG_NAME
        self.head_path = head_path or (self.root / HEAD_NAME)
        self._lock_path = self.root / ".audit.lock"

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        self.root.mkdir(parents=True, exist_ok=True)
        with self._lock_path.open("a+") as lf:
            fcntl.flock(lf, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lf, fcntl.LOCK_UN)

    def _read_head(self) -> tuple[int, str]:
        if not self.head_path.exists():
            if self.log_path.exists() and self.log_path.stat().st_size > 0:
                raise AuditIntegrityError(f"audit head {self.head_path} is missing but the log has records")
            return -1, GENESIS
        head = json.loads(self.head_path.read_text())
        return int(head["seq"]), str(head["hash"])

    def append(self, entry: dict[str, Any]) -> dict[str, Any]:
        """Append one record (``entry`` plus chain fields) and return it as written."""
        with self._locked():
            seq, prev = self._read_head()
            record = {
                **entry,
                "seq": seq + 1,
                "time": entry.get("time") or datetime.now(UTC).isoformat(timespec="microseconds"),
                "prev_hash": prev,
            }
            record["hash"] = record_hash(record)
            line = (canonical_json(record) + "\n").encode("utf-8")
            fd = os.open(self.log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)
            try:
                os.write(fd, line)
                os.fsync(fd)
            finally:
                os.close(fd)
            LocalStorage().write_bytes(
                str(self.head_path), canonical_json({"seq": record["seq"], "hash": record["hash"]}).encode()
            )
            return record

    def records(self) -> list[dict[str, Any]]:
        if not self.log_path.exists():
            return []
        out = []
        for i, line in enumerate(self.log_path.read_text("utf-8").splitlines()):
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError as exc:
                raise AuditIntegrityError(f"line {i + 1} of {self.log_path} is not JSON: {exc}") from exc
        return out

    def verify(self) -> VerifyReport:
        """Check the whole chain and the head. Detects edited, reordered, deleted and truncated records."""
        problems: list[str] = []
        try:
            recs = self.records()
        except AuditIntegrityError as exc:
            return VerifyReport(False, 0, None, [str(exc)])
        prev = GENESIS
        for i, rec in enumerate(recs):
            if rec.get("seq") != i:
                problems.append(f"record {i}: seq is {rec.get('seq')}, expected {i} (deleted or reordered)")
            if rec.get("prev_hash") != prev:
                problems.append(f"record {i}: prev_hash does not match record {i - 1} (deleted or reordered)")
            if record_hash(rec) != rec.get("hash"):
                problems.append(f"record {i}: content does not match its hash (edited)")
            prev = str(rec.get("hash"))
            if problems:
                break
        head_seq: int | None = None
        if self.head_path.exists():
            head = json.loads(self.head_path.read_text())
            head_seq = int(head["seq"])
            last_seq = len(recs) - 1
            if head_seq > last_seq:
                problems.append(f"head says {head_seq + 1} records, log has {len(recs)} (truncated)")
            elif head_seq < last_seq:
                problems.append(f"log has {len(recs)} records, head says {head_seq + 1} (appended outside the log API)")
            elif recs and head["hash"] != recs[-1].get("hash"):
                problems.append("head hash does not match the last record (last record replaced)")
        elif recs:
            problems.append("head is missing")
        return VerifyReport(not problems, len(recs), head_seq, problems)
