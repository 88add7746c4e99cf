"""Append-only, hash-chained audit log.

Each record is one JSON line carrying ``seq``, ``prev_hash`` and ``hash`` where
``hash = sha256(canonical_json(record without hash))`` and ``prev_hash`` is the previous record's
hash (``GENESIS`` for the first). The head (last ``seq`` and ``hash``) is kept in a separate file,
ideally on separate storage (``head_path``), so that cutting records off the end of the log, which
leaves a perfectly valid shorter chain, is still detected.

Concurrency: writers are separate processes (parallel pipeline steps on one machine, CLI, the
updater). The serialisation point is an exclusive ``flock`` on a lock file beside the log; the
append (read head, write line, fsync, write head, fsync) happens entirely under it. A test runs
concurrent appenders in separate processes and verifies the chain afterwards.

The head file has two fixed-size slots, written alternately in place (``pwrite`` + ``fsync``), each
with its own checksum: a write torn by a crash damages only the slot being written, and readers take
the valid slot with the highest ``seq``. This keeps an append to two fsyncs and no file creation
(file creation and rename are the slow part on network and overlay filesystems).
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

from aitasks.runtime.errors import AuditIntegrityError, PreconditionFailedError
from aitasks.runtime.hashing import canonical_json, sha256_text
from aitasks.runtime.storage import Storage, join_uri

GENESIS = "0" * 64
LOG_NAME = "audit.jsonl"
HEAD_NAME = "HEAD"
_SLOT = 256


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
        self._fds: dict[str, int] = {}
        self._pid = 0

    def _fd(self, name: str, path: Path, flags: int) -> int:
        # File descriptors are reused across appends, but never across fork: a child sharing its
        # parent's open file description would share its flock and break mutual exclusion.
        if self._pid != os.getpid():
            self._fds = {}
            self._pid = os.getpid()
        if name not in self._fds:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._fds[name] = os.open(path, flags, 0o640)
        return self._fds[name]

    def close(self) -> None:
        if self._pid == os.getpid():
            for fd in self._fds.values():
                os.close(fd)
        self._fds = {}

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        fd = self._fd("lock", self._lock_path, os.O_RDWR | os.O_CREAT)
        fcntl.flock(fd, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)

    @staticmethod
    def _slot_check(seq: int, digest: str) -> str:
        return sha256_text(f"{seq}:{digest}")[:16]

    def read_head(self) -> tuple[int, str] | None:
        """The head ``(seq, hash)`` from the valid slot with the highest seq; None if there is no head."""
        if not self.head_path.exists():
            return None
        raw = self.head_path.read_bytes()
        best: tuple[int, str] | None = None
        for i in range(0, len(raw), _SLOT):
            try:
                slot = json.loads(raw[i : i + _SLOT].decode("utf-8").strip())
                seq, digest = int(slot["seq"]), str(slot["hash"])
            except (ValueError, KeyError, TypeError, UnicodeDecodeError):
                continue  # a torn or empty slot
            if slot.get("check") == self._slot_check(seq, digest) and (best is None or seq > best[0]):
                best = (seq, digest)
        return best

    def _read_head(self) -> tuple[int, str]:
        head = self.read_head()
        if head is None:
            if self.log_path.exists() and self.log_path.stat().st_size > 0:
                raise AuditIntegrityError(f"audit head {self.head_path} is missing but the log has records")
            return -1, GENESIS
        return head

    def _write_head(self, seq: int, digest: str) -> None:
        body = json.dumps({"seq": seq, "hash": digest, "check": self._slot_check(seq, digest)})
        slot = body.ljust(_SLOT - 1).encode("utf-8") + b"\n"
        fd = self._fd("head", self.head_path, os.O_RDWR | os.O_CREAT)
        os.pwrite(fd, slot, (seq % 2) * _SLOT)
        os.fsync(fd)

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
            fd = self._fd("log", self.log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT)
            os.write(fd, line)
            os.fsync(fd)
            self._write_head(record["seq"], record["hash"])
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
        try:
            recs = self.records()
        except AuditIntegrityError as exc:
            return VerifyReport(False, 0, None, [str(exc)])
        problems = _chain_problems(recs)
        head = self.read_head()
        head_seq: int | None = None
        if head is not None:
            head_seq, head_hash = head
            last_seq = len(recs) - 1
            if head_seq > last_seq:
                problems.append(f"head says {head_seq + 1} records, log has {len(recs)} (truncated)")
            elif head_seq < last_seq:
                problems.append(f"log has {len(recs)} records, head says {head_seq + 1} (appended outside the log API)")
            elif recs and head_hash != recs[-1].get("hash"):
                problems.append("head hash does not match the last record (last record replaced)")
        elif recs:
            problems.append("head is missing or unreadable")
        return VerifyReport(not problems, len(recs), head_seq, problems)


class StorageAuditLog:
    """The same hash chain on object storage (GCS in production), for writers in separate pods.

    Each record is its own object ``records/<seq:012d>.json``, created with a create-only write
    (``if_generation_match=0`` on GCS): that write is the serialisation point, so of two writers
    racing for one ``seq`` exactly one wins and the other catches up and takes the next. The head
    object (``HEAD``, ideally in another bucket or prefix: ``head_uri``) is advanced afterwards by
    compare-and-swap on its generation and never moves backwards. A writer that dies between the two
    leaves the head one record behind; the next append catches up and moves it past.
    """

    def __init__(self, storage: Storage, root: str, head_uri: str | None = None) -> None:
        self.storage = storage
        self.root = root.rstrip("/")
        self.head_uri = head_uri or join_uri(self.root, "HEAD")

    def _record_uri(self, seq: int) -> str:
        return join_uri(self.root, "records", f"{seq:012d}.json")

    def read_head(self) -> tuple[int, str] | None:
        try:
            head = json.loads(self.storage.read_bytes(self.head_uri))
        except FileNotFoundError:
            return None
        return int(head["seq"]), str(head["hash"])

    def append(self, entry: dict[str, Any], *, max_tries: int = 100) -> dict[str, Any]:
        head = self.read_head()
        seq, prev = (head[0] + 1, head[1]) if head else (0, GENESIS)
        for _ in range(max_tries):
            while self.storage.exists(self._record_uri(seq)):  # catch up with records past the head
                prev = json.loads(self.storage.read_bytes(self._record_uri(seq)))["hash"]
                seq += 1
            record = {
                **entry,
                "seq": seq,
                "time": entry.get("time") or datetime.now(UTC).isoformat(timespec="microseconds"),
                "prev_hash": prev,
            }
            record["hash"] = record_hash(record)
            try:
                self.storage.write_bytes(self._record_uri(seq), canonical_json(record).encode(), if_absent=True)
            except PreconditionFailedError:
                continue  # another writer took this seq: catch up and try the next
            self._advance_head(seq, record["hash"])
            return record
        raise AuditIntegrityError(f"could not append to {self.root} after {max_tries} contended tries")

    def _advance_head(self, seq: int, digest: str) -> None:
        body = canonical_json({"seq": seq, "hash": digest}).encode()
        for _ in range(100):
            version = self.storage.version(self.head_uri)
            current = self.read_head() if version.token is not None else None
            if current is not None and current[0] >= seq:
                return  # a later writer already moved it further
            try:
                self.storage.compare_and_swap(self.head_uri, body, version)
                return
            except PreconditionFailedError:
                continue

    def records(self) -> list[dict[str, Any]]:
        prefix = join_uri(self.root, "records") + "/"
        return [json.loads(self.storage.read_bytes(uri)) for uri in self.storage.list(prefix)]

    def verify(self) -> VerifyReport:
        recs = self.records()
        problems = _chain_problems(recs)
        head = self.read_head()
        head_seq = head[0] if head else None
        if head is None and recs:
            problems.append("head is missing or unreadable")
        elif head is not None:
            by_seq = {r.get("seq"): r for r in recs}
            if head[0] > len(recs) - 1:
                problems.append(f"head says {head[0] + 1} records, storage has {len(recs)} (truncated)")
            elif by_seq.get(head[0], {}).get("hash") != head[1]:
                problems.append(f"head hash does not match record {head[0]} (record replaced)")
        return VerifyReport(not problems, len(recs), head_seq, problems)


def _chain_problems(recs: list[dict[str, Any]]) -> list[str]:
    prev = GENESIS
    for i, rec in enumerate(recs):
        if rec.get("seq") != i:
            return [f"record {i}: seq is {rec.get('seq')}, expected {i} (deleted or reordered)"]
        if rec.get("prev_hash") != prev:
            return [f"record {i}: prev_hash does not match record {i - 1} (deleted or reordered)"]
        if record_hash(rec) != rec.get("hash"):
            return [f"record {i}: content does not match its hash (edited)"]
        prev = str(rec.get("hash"))
    return []


def open_audit(root: str, *, gcs_client: Any | None = None) -> AuditLog | StorageAuditLog:
    """The audit log at ``root``: a local JSON-lines log, or per-record objects on ``gs://``."""
    from aitasks.runtime.storage import is_gcs, storage_for

    if is_gcs(root):
        return StorageAuditLog(storage_for(root, gcs_client=gcs_client), root)
    return AuditLog(Path(root))
