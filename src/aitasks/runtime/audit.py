"""Append-only, keyed, hash-chained audit log.

Each record is one JSON line carrying ``seq``, ``prev_hash``, ``key_id`` and ``hash`` where
``hash = HMAC-SHA256(key, canonical_json(record without hash))`` and ``prev_hash`` is the previous
record's hash (``GENESIS`` for the first). Without the key nobody can recompute a chain: an edited,
inserted, deleted or forged record fails verification even when the attacker rewrites every later
record and the head (plain sha256 would let anyone with write access recompute everything). The
key comes from the step Secret (``AITASKS_AUDIT_KEY``); the public dev key proves nothing, and
production refuses it (:meth:`aitasks.runtime.settings.Settings.production_problems`).

The head (last ``seq`` and ``hash``, keyed too) is kept in a separate file. Beside the log it guards
only against accidents: whoever can write the audit directory can also cut records off the end and
roll the head back (or delete both). Kept apart (``AITASKS_AUDIT_HEAD_ROOT``: another volume or a
bucket with object versioning / retention that the log writer cannot rewrite), it makes truncation
provable. :meth:`AuditLog.verify` says which of the two it can prove (``VerifyReport.notes``).

Concurrency: writers are separate processes (parallel pipeline steps on one machine, CLI, the
updater). The serialisation point is an exclusive ``flock`` on a lock file beside the log; the
append (recover, read head, write line, fsync, write head, fsync) happens entirely under it. A test
runs concurrent appenders in separate processes and verifies the chain afterwards.

Crashes and full disks: an append writes the whole line (a short write is retried, then undone), then
fsyncs, then advances the head. If it fails part way the log is truncated back to its last good
record and :class:`AuditWriteError` is raised (the task fails). If the process dies instead, the next
append (or ``aitasks audit repair``) recovers under the lock: a partial last line is cut back to the
last complete record, and a complete, authentic last record that the head does not yet cover (a crash
between the log fsync and the head write) gets its head written. No seq is ever reused.

The head file has two fixed-size slots, written alternately in place (``pwrite`` + ``fsync``), each
with its own MAC: a write torn by a crash damages only the slot being written, and readers take the
valid slot with the highest ``seq``. This keeps an append to two fsyncs and no file creation.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import hmac
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from aitasks.runtime.errors import AuditIntegrityError, PreconditionFailedError
from aitasks.runtime.hashing import canonical_json
from aitasks.runtime.settings import DEV_AUDIT_KEY
from aitasks.runtime.storage import Storage, join_uri

GENESIS = "0" * 64
LOG_NAME = "audit.jsonl"
HEAD_NAME = "HEAD"
_SLOT = 256
_TAIL_CHUNK = 64 * 1024
#: What :meth:`AuditLog.check_space` wants free before a result commits (records are ~1-2 KiB).
MIN_FREE_BYTES = 1024 * 1024

NOTE_DEV_KEY = (
    "records are keyed with the public dev key: anyone can recompute the chain, so edits are not provable "
    "(set AITASKS_AUDIT_KEY from a Secret)"
)
NOTE_HEAD_BESIDE = (
    "head kept beside the log: truncation, or deletion of log and head, by someone who can write the audit "
    "directory is not provable (set AITASKS_AUDIT_HEAD_ROOT to storage the log writer cannot rewrite)"
)
NOTE_EMPTY = "no records and no head: an empty audit, or one deleted together with its head, look the same"


class AuditWriteError(AuditIntegrityError):
    """An audit record could not be written (disk full, I/O error); the log was cut back to its last record."""

    kind = "audit_write"


def _key_bytes(key: str | bytes | None) -> bytes:
    if key is None or key in {"", b""}:
        key = DEV_AUDIT_KEY
    return key.encode("utf-8") if isinstance(key, str) else key


def _mac(key: bytes, text: str) -> str:
    return hmac.new(key, text.encode("utf-8"), hashlib.sha256).hexdigest()


def key_id(key: str | bytes | None) -> str:
    """A short, non-secret fingerprint of the key, recorded in every record (tells a wrong key from an edit)."""
    return _mac(_key_bytes(key), "aitasks-audit-key-id")[:16]


def record_hash(record: dict[str, Any], key: str | bytes | None = None) -> str:
    """The record's chain hash: HMAC-SHA256 over its canonical JSON without ``hash``."""
    body = {k: v for k, v in record.items() if k != "hash"}
    return _mac(_key_bytes(key), canonical_json(body))


def _head_mac(key: bytes, seq: int, digest: str) -> str:
    return _mac(key, f"aitasks-audit-head:{seq}:{digest}")[:32]


@dataclass
class VerifyReport:
    """Outcome of :meth:`AuditLog.verify`.

    ``ok`` is whether what can be checked holds; ``notes`` say what could not be proven (dev key, head
    beside the log) or what a crash left for the next append to finish (no tampering).
    """

    ok: bool
    records: int
    head_seq: int | None
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "records": self.records,
            "head_seq": self.head_seq,
            "problems": self.problems,
            "notes": self.notes,
        }


def _write_all(fd: int, data: bytes) -> None:
    """Write every byte or raise: ``os.write`` may write part of the buffer (disk full, signals)."""
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        if n <= 0:
            raise OSError(errno.ENOSPC, "short write: no byte written")
        view = view[n:]


class AuditLog:
    """A local JSON-lines audit log; its head beside it or, better, on storage the writer cannot rewrite."""

    def __init__(self, root: Path, head_path: Path | None = None, *, key: str | bytes | None = None) -> None:
        self.root = Path(root)
        self.log_path = self.root / LOG_NAME
        self.head_path = head_path or (self.root / HEAD_NAME)
        self._key = _key_bytes(key)
        self.key_id = key_id(self._key)
        self._lock_path = self.root / ".audit.lock"
        self._fds: dict[str, int] = {}
        self._pid = 0

    @property
    def dev_key(self) -> bool:
        return hmac.compare_digest(self._key, _key_bytes(DEV_AUDIT_KEY))

    @property
    def head_beside_log(self) -> bool:
        return self.head_path.resolve().parent == self.root.resolve()

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

    def _log_fd(self) -> int:
        return self._fd("log", self.log_path, os.O_RDWR | os.O_APPEND | os.O_CREAT)

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

    # ------------------------------------------------------------------ head
    def read_head(self) -> tuple[int, str] | None:
        """The head ``(seq, hash)`` from the authentic slot with the highest seq; None if there is none."""
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
            mac = str(slot.get("mac", ""))
            if hmac.compare_digest(mac, _head_mac(self._key, seq, digest)) and (best is None or seq > best[0]):
                best = (seq, digest)
        return best

    def _head_has_bytes(self) -> bool:
        return self.head_path.exists() and self.head_path.stat().st_size > 0

    def _write_head(self, seq: int, digest: str) -> None:
        body = json.dumps({"seq": seq, "hash": digest, "mac": _head_mac(self._key, seq, digest)})
        slot = body.ljust(_SLOT - 1).encode("utf-8") + b"\n"
        fd = self._fd("head", self.head_path, os.O_RDWR | os.O_CREAT)
        if os.pwrite(fd, slot, (seq % 2) * _SLOT) != len(slot):
            raise OSError(errno.ENOSPC, f"short write of the audit head {self.head_path}")
        os.fsync(fd)

    # ------------------------------------------------------------------ records
    def authentic(self, rec: dict[str, Any]) -> bool:
        """Whether ``rec`` carries a hash made with this log's key."""
        return hmac.compare_digest(str(rec.get("hash", "")), record_hash(rec, self._key))

    @staticmethod
    def _tail(fd: int) -> tuple[int, int, bytes | None]:
        """``(size, good_end, last_line)``: the end of the last complete line and that line (None if none)."""
        size = os.fstat(fd).st_size
        pos, buf = size, b""
        while pos > 0 and buf.count(b"\n") < 2:
            chunk = min(_TAIL_CHUNK, pos)
            pos -= chunk
            buf = os.pread(fd, chunk, pos) + buf
        last_nl = buf.rfind(b"\n")
        if last_nl < 0:
            return size, 0, None
        prev_nl = buf.rfind(b"\n", 0, last_nl)
        return size, pos + last_nl + 1, buf[prev_nl + 1 : last_nl]

    def _parse_last(self, line: bytes) -> dict[str, Any]:
        try:
            rec = json.loads(line)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise AuditIntegrityError(f"the last record of {self.log_path} is not JSON: {exc}") from exc
        if not isinstance(rec, dict) or not self.authentic(rec):
            raise AuditIntegrityError(f"the last record of {self.log_path} fails its key check (edited or forged)")
        return rec

    def _recover(self) -> tuple[int, str, list[str]]:
        """Under the lock: bring log and head to one consistent state; return ``(seq, hash, what was done)``.

        A partial last line (a write that died part way) is cut back to the last complete record; a
        complete, authentic last record one past the head (a crash between log fsync and head write) gets
        its head. Anything else is not a crash this writer can leave behind: refuse, never reuse a seq.
        """
        done: list[str] = []
        fd = self._log_fd()
        size, good_end, last = self._tail(fd)
        if good_end < size:
            os.ftruncate(fd, good_end)
            os.fsync(fd)
            done.append(f"cut a partial last line ({size - good_end} bytes) back to the last complete record")
        head = self.read_head()
        if last is None:
            if head is not None or self._head_has_bytes():
                raise AuditIntegrityError(
                    f"audit head {self.head_path} says {head[0] + 1 if head else 'some'} records "
                    f"but {self.log_path} is empty (truncated or deleted)"
                )
            return -1, GENESIS, done
        rec = self._parse_last(last)
        seq, digest = int(rec["seq"]), str(rec["hash"])
        if head is None:
            if seq == 0 and rec.get("prev_hash") == GENESIS:
                self._write_head(seq, digest)
                return seq, digest, [*done, "wrote the head of record 0 (an append died before its head)"]
            raise AuditIntegrityError(f"audit head {self.head_path} is missing or unreadable but the log has records")
        if head == (seq, digest):
            return seq, digest, done
        if seq == head[0] + 1 and rec.get("prev_hash") == head[1]:
            self._write_head(seq, digest)
            return seq, digest, [*done, f"advanced the head to record {seq} (an append died before its head)"]
        raise AuditIntegrityError(
            f"{self.log_path} ends at record {seq} but the head is at {head[0]}: not a crash this writer leaves "
            "(truncated, rolled back or written outside the log API); run `aitasks audit verify`"
        )

    def repair(self) -> list[str]:
        """Finish or undo an interrupted append (see :meth:`_recover`); return what was done."""
        with self._locked():
            return self._recover()[2]

    def check_space(self, min_free: int | None = None) -> None:
        """Raise :class:`AuditWriteError` when the audit volume has less than ``min_free`` bytes free.

        Call it before committing a result, so a task does not commit and then fail to audit it.
        ``min_free`` None: :data:`MIN_FREE_BYTES`.
        """
        min_free = MIN_FREE_BYTES if min_free is None else min_free
        self.root.mkdir(parents=True, exist_ok=True)
        st = os.statvfs(self.root)
        free = st.f_bavail * st.f_frsize
        if free < min_free:
            raise AuditWriteError(f"audit volume {self.root} has {free} bytes free (< {min_free}): refusing to commit")

    def append(self, entry: dict[str, Any]) -> dict[str, Any]:
        """Append one record (``entry`` plus chain fields) and return it as written.

        Raises:
            AuditWriteError: the record could not be written in full; the log is back at its last record.
            AuditIntegrityError: log and head disagree in a way no crash explains.
        """
        with self._locked():
            seq, prev, _ = self._recover()
            record = {
                **entry,
                "seq": seq + 1,
                "time": entry.get("time") or datetime.now(UTC).isoformat(timespec="microseconds"),
                "prev_hash": prev,
                "key_id": self.key_id,
            }
            record["hash"] = record_hash(record, self._key)
            line = (canonical_json(record) + "\n").encode("utf-8")
            fd = self._log_fd()
            start = os.fstat(fd).st_size
            try:
                _write_all(fd, line)
                os.fsync(fd)
                self._write_head(record["seq"], record["hash"])
            except OSError as exc:
                self._undo(fd, start, seq)
                raise AuditWriteError(
                    f"could not write audit record {seq + 1} to {self.log_path}: {exc}; the log is back at record {seq}"
                ) from exc
            return record

    def _undo(self, fd: int, start: int, seq: int) -> None:
        # Best effort: if this fails too, the next append's recovery cuts the partial line.
        with contextlib.suppress(OSError):
            os.ftruncate(fd, start)
            os.fsync(fd)
        head = self.read_head()
        if head is not None and head[0] > seq:
            # The head slot of seq + 1 was written before the failure: blank it, so the other slot
            # (seq) is the newest again.
            with contextlib.suppress(OSError):
                fd_head = self._fd("head", self.head_path, os.O_RDWR | os.O_CREAT)
                os.pwrite(fd_head, b" " * (_SLOT - 1) + b"\n", ((seq + 1) % 2) * _SLOT)
                os.fsync(fd_head)

    def records(self) -> list[dict[str, Any]]:
        """Every complete record (a partial last line, left by a write that died, is not a record)."""
        if not self.log_path.exists():
            return []
        text = self.log_path.read_text("utf-8", errors="replace")
        lines = text.split("\n")[:-1]  # the last element is "" or a partial line
        out = []
        for i, line in enumerate(lines):
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError as exc:
                raise AuditIntegrityError(f"line {i + 1} of {self.log_path} is not JSON: {exc}") from exc
        return out

    def _partial_tail(self) -> int:
        if not self.log_path.exists():
            return 0
        with self.log_path.open("rb") as fh:
            size, good_end, _ = self._tail(fh.fileno())
        return size - good_end

    def verify(self) -> VerifyReport:
        """Check every record's key, the chain and the head; say what cannot be proven.

        Detects edited, forged, reordered, deleted and (with the head kept apart) truncated records.
        """
        notes: list[str] = []
        if self.dev_key:
            notes.append(NOTE_DEV_KEY)
        if self.head_beside_log:
            notes.append(NOTE_HEAD_BESIDE)
        try:
            recs = self.records()
        except AuditIntegrityError as exc:
            return VerifyReport(False, 0, None, [str(exc)], notes)
        problems = _chain_problems(recs, self._key, self.key_id)
        partial = self._partial_tail()
        if partial:
            notes.append(
                f"a partial last line ({partial} bytes) after record {len(recs) - 1}: an append died mid-write; "
                "the next append or `aitasks audit repair` cuts it"
            )
        head = self.read_head()
        head_seq: int | None = None
        if head is not None:
            head_seq, head_hash = head
            last_seq = len(recs) - 1
            if head_seq > last_seq:
                problems.append(f"head says {head_seq + 1} records, log has {len(recs)} (truncated)")
            elif head_seq == last_seq - 1 and not problems and recs[-1].get("prev_hash") == head_hash:
                notes.append(
                    f"record {last_seq} is authentic but its head write did not happen (an append died between "
                    "log and head); the next append or `aitasks audit repair` finishes it"
                )
            elif head_seq < last_seq:
                problems.append(f"log has {len(recs)} records, head says {head_seq + 1} (appended outside the log API)")
            elif recs and head_hash != recs[-1].get("hash"):
                problems.append("head hash does not match the last record (last record replaced)")
        elif self._head_has_bytes():
            problems.append(f"head {self.head_path} fails its key check (forged, or another key)")
        elif len(recs) == 1 and not problems:
            notes.append(
                "record 0 has no head yet (the first append died before its head); the next append finishes it"
            )
        elif recs:
            problems.append("head is missing or unreadable")
        else:
            notes.append(NOTE_EMPTY)
        return VerifyReport(not problems, len(recs), head_seq, problems, notes)


class StorageAuditLog:
    """The same keyed chain on object storage (GCS in production), for writers in separate pods.

    Each record is its own object ``records/<seq:012d>.json``, created with a create-only write
    (``if_generation_match=0`` on GCS): that write is the serialisation point, so of two writers
    racing for one ``seq`` exactly one wins and the other catches up and takes the next. The head
    object (``HEAD``; in production in another bucket with object versioning or a retention policy,
    ``AITASKS_AUDIT_HEAD_ROOT``) is advanced afterwards by compare-and-swap on its generation and never
    moves backwards. A writer that dies between the two leaves the head behind; the next append catches
    up and moves it past. Records past the head are therefore legitimate only while they are authentic
    and chain on: :meth:`verify` reports them as pending, and a forged one (no key) as a problem.
    """

    def __init__(
        self, storage: Storage, root: str, head_uri: str | None = None, *, key: str | bytes | None = None
    ) -> None:
        self.storage = storage
        self.root = root.rstrip("/")
        self.head_uri = head_uri or join_uri(self.root, HEAD_NAME)
        self._key = _key_bytes(key)
        self.key_id = key_id(self._key)

    @property
    def dev_key(self) -> bool:
        return hmac.compare_digest(self._key, _key_bytes(DEV_AUDIT_KEY))

    @property
    def head_beside_log(self) -> bool:
        return self.head_uri.startswith(self.root + "/")

    def _record_uri(self, seq: int) -> str:
        return join_uri(self.root, "records", f"{seq:012d}.json")

    def authentic(self, rec: dict[str, Any]) -> bool:
        return hmac.compare_digest(str(rec.get("hash", "")), record_hash(rec, self._key))

    def _read_head_raw(self) -> dict[str, Any] | None:
        try:
            head = json.loads(self.storage.read_bytes(self.head_uri))
        except FileNotFoundError:
            return None
        except (json.JSONDecodeError, UnicodeDecodeError):
            return {}
        return head if isinstance(head, dict) else {}

    def read_head(self) -> tuple[int, str] | None:
        """The head ``(seq, hash)``; None if there is none. Raises on a head that fails its key check."""
        head = self._read_head_raw()
        if head is None:
            return None
        try:
            seq, digest = int(head["seq"]), str(head["hash"])
        except (KeyError, TypeError, ValueError):
            raise AuditIntegrityError(f"audit head {self.head_uri} is unreadable") from None
        if not hmac.compare_digest(str(head.get("mac", "")), _head_mac(self._key, seq, digest)):
            raise AuditIntegrityError(f"audit head {self.head_uri} fails its key check (forged, or another key)")
        return seq, digest

    def _read_record(self, seq: int) -> dict[str, Any]:
        rec = json.loads(self.storage.read_bytes(self._record_uri(seq)))
        if not isinstance(rec, dict) or not self.authentic(rec) or rec.get("seq") != seq:
            raise AuditIntegrityError(f"audit record {self._record_uri(seq)} fails its key check (edited or forged)")
        return rec

    def append(self, entry: dict[str, Any], *, max_tries: int = 100) -> dict[str, Any]:
        head = self.read_head()
        seq, prev = (head[0] + 1, head[1]) if head else (0, GENESIS)
        for _ in range(max_tries):
            while self.storage.exists(self._record_uri(seq)):  # catch up with records past the head
                rec = self._read_record(seq)
                if rec.get("prev_hash") != prev:
                    raise AuditIntegrityError(f"audit record {seq} does not chain on record {seq - 1}")
                prev = str(rec["hash"])
                seq += 1
            record = {
                **entry,
                "seq": seq,
                "time": entry.get("time") or datetime.now(UTC).isoformat(timespec="microseconds"),
                "prev_hash": prev,
                "key_id": self.key_id,
            }
            record["hash"] = record_hash(record, self._key)
            try:
                self.storage.write_bytes(self._record_uri(seq), canonical_json(record).encode(), if_absent=True)
            except PreconditionFailedError:
                continue  # another writer took this seq: catch up and try the next
            self._advance_head(seq, record["hash"])
            return record
        raise AuditIntegrityError(f"could not append to {self.root} after {max_tries} contended tries")

    def _advance_head(self, seq: int, digest: str) -> None:
        body = canonical_json({"seq": seq, "hash": digest, "mac": _head_mac(self._key, seq, digest)}).encode()
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

    def repair(self) -> list[str]:
        """Advance the head over authentic records a dead writer left past it; return what was done."""
        head = self.read_head()
        seq, prev = (head[0] + 1, head[1]) if head else (0, GENESIS)
        start = seq
        while self.storage.exists(self._record_uri(seq)):
            rec = self._read_record(seq)
            if rec.get("prev_hash") != prev:
                raise AuditIntegrityError(f"audit record {seq} does not chain on record {seq - 1}")
            prev = str(rec["hash"])
            seq += 1
        if seq == start:
            return []
        self._advance_head(seq - 1, prev)
        return [f"advanced the head over records {start}..{seq - 1} (a writer died before moving it)"]

    def check_space(self, min_free: int = MIN_FREE_BYTES) -> None:
        """Object storage does not run full: nothing to check (kept for the same interface as AuditLog)."""

    def _objects(self) -> list[tuple[str, dict[str, Any] | None]]:
        prefix = join_uri(self.root, "records") + "/"
        out: list[tuple[str, dict[str, Any] | None]] = []
        for uri in self.storage.list(prefix):
            try:
                rec = json.loads(self.storage.read_bytes(uri))
            except (json.JSONDecodeError, UnicodeDecodeError):
                rec = None
            out.append((uri, rec if isinstance(rec, dict) else None))
        return out

    def records(self) -> list[dict[str, Any]]:
        """Every readable record object under ``records/``, in name order."""
        return [rec for _, rec in self._objects() if rec is not None]

    def verify(self) -> VerifyReport:
        """Key, chain, object names and head: detects edited, forged, extra, missing and truncated records."""
        notes: list[str] = []
        if self.dev_key:
            notes.append(NOTE_DEV_KEY)
        if self.head_beside_log:
            notes.append(NOTE_HEAD_BESIDE)
        objects = self._objects()
        problems: list[str] = []
        for i, (uri, rec) in enumerate(objects):
            if uri != self._record_uri(i):
                problems.append(
                    f"object {uri} where {self._record_uri(i)} belongs (an extra object, or record {i} is missing)"
                )
                break
            if rec is None:
                problems.append(f"object {uri} is not a JSON record")
                break
        recs = [rec for _, rec in objects if rec is not None]
        if not problems:
            problems = _chain_problems(recs, self._key, self.key_id)
        try:
            head = self.read_head()
        except AuditIntegrityError as exc:
            return VerifyReport(False, len(recs), None, [*problems, str(exc)], notes)
        head_seq = head[0] if head else None
        if head is None:
            if recs and not problems:
                notes.append(
                    f"{len(recs)} authentic record(s) and no head yet (a writer died before its head); "
                    "the next append or `aitasks audit repair` moves it"
                )
            elif not recs:
                notes.append(NOTE_EMPTY)
        else:
            by_seq = {r.get("seq"): r for r in recs}
            if head[0] > len(recs) - 1:
                problems.append(f"head says {head[0] + 1} records, storage has {len(recs)} (truncated)")
            elif by_seq.get(head[0], {}).get("hash") != head[1]:
                problems.append(f"head hash does not match record {head[0]} (record replaced)")
            elif head[0] < len(recs) - 1 and not problems:
                notes.append(
                    f"{len(recs) - 1 - head[0]} authentic record(s) past the head (a writer died before moving "
                    "it, or one is appending now); the next append or `aitasks audit repair` moves it"
                )
        return VerifyReport(not problems, len(recs), head_seq, problems, notes)


def _chain_problems(recs: list[dict[str, Any]], key: bytes, kid: str) -> list[str]:
    prev = GENESIS
    for i, rec in enumerate(recs):
        if rec.get("seq") != i:
            return [f"record {i}: seq is {rec.get('seq')}, expected {i} (deleted, inserted or reordered)"]
        if rec.get("prev_hash") != prev:
            return [f"record {i}: prev_hash does not match record {i - 1} (deleted, inserted or reordered)"]
        if not hmac.compare_digest(str(rec.get("hash", "")), record_hash(rec, key)):
            if rec.get("key_id") not in (None, kid):
                return [f"record {i}: written with key id {rec.get('key_id')}, not the configured key {kid}"]
            return [f"record {i}: content does not match its keyed hash (edited or forged)"]
        prev = str(rec.get("hash"))
    return []


def open_audit(
    root: str,
    *,
    key: str | bytes | None = None,
    head_root: str | None = None,
    gcs_client: Any | None = None,
) -> AuditLog | StorageAuditLog:
    """The audit log at ``root``: a local JSON-lines log, or per-record objects on ``gs://``.

    Args:
        root: The log's directory or ``gs://`` prefix.
        key: The HMAC key (None: the public dev key, which proves nothing).
        head_root: Where the head lives, apart from the log (None: beside it). Local for a local log,
            ``gs://`` for a ``gs://`` log.
        gcs_client: A GCS client (tests pass a fake).
    """
    from aitasks.runtime.errors import ConfigurationError
    from aitasks.runtime.storage import is_gcs, storage_for

    if head_root and is_gcs(head_root) != is_gcs(root):
        raise ConfigurationError(
            f"audit head root {head_root!r} and audit root {root!r} must both be gs:// or both local"
        )
    if is_gcs(root):
        head_uri = join_uri(head_root.rstrip("/"), HEAD_NAME) if head_root else None
        return StorageAuditLog(storage_for(root, gcs_client=gcs_client), root, head_uri, key=key)
    return AuditLog(Path(root), Path(head_root) / HEAD_NAME if head_root else None, key=key)


def audit_from_settings(settings: Any, *, gcs_client: Any | None = None) -> AuditLog | StorageAuditLog:
    """The audit log that ``settings`` (:class:`~aitasks.runtime.settings.Settings`) describe: root, key, head."""
    return open_audit(
        settings.resolved_audit_root(),
        key=settings.audit_key.get_secret_value(),
        head_root=settings.audit_head_root or None,
        gcs_client=gcs_client,
    )
