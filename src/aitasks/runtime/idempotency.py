"""Committed results keyed by idempotency key, where every pod of a run sees them.

The record lives at ``<root>/_idempotency/<task>/<key>.json`` on the run's storage (a directory
locally, GCS in production). It is written last and create-only, so of two racing attempts one wins
and the other returns the winner's result.

One execution per key: before running, a call takes the key's *lease* ``<key>.lease`` (a small JSON
object with an owner, a token and an expiry), created create-only (locally an exclusive create, on
GCS ``if_generation_match=0``). The holder renews it by compare-and-swap (the generation read before on
GCS, the content under an flock locally) while the body runs, and releases it after the commit by the
same compare-and-swap. Other calls wait (bounded, with backoff) for the commit, or take over a lease
that expired (its holder was killed or hung) by compare-and-swap against the version they read, so
of several callers one takes it over. ``<key>.audited`` marks that the commit's ``succeeded`` audit
record was written (a call killed in between leaves none; the next call's hit records it).
"""

from __future__ import annotations

import json
import os
import secrets
import socket
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from aitasks.runtime.errors import PreconditionFailedError
from aitasks.runtime.hashing import sha256_text
from aitasks.runtime.storage import LocalStorage, Storage, Version, join_uri

#: Seconds a lease lives without renewal; the holder renews it every ``ttl / 4``.
LEASE_TTL_S = 60.0
#: The longest a call waits for another holder's commit before giving up (a retryable error).
LEASE_WAIT_S = 900.0


def _dumps(value: Any) -> bytes:
    return json.dumps(value, sort_keys=True, separators=(",", ":")).encode()


@dataclass
class Lease:
    """A held lease on one key; renewed in the background until :meth:`release`."""

    store: IdempotencyStore
    uri: str
    body: dict[str, Any]
    version: Version
    taken_over: dict[str, Any] | None = None
    lost: bool = False
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    _stop: threading.Event = field(default_factory=threading.Event, repr=False)
    _thread: threading.Thread | None = field(default=None, repr=False)

    @property
    def token(self) -> str:
        return str(self.body["token"])

    def _swap(self, body: dict[str, Any]) -> bool:
        """Replace the lease if it is still ours (the version we wrote last); False if it was taken."""
        st = self.store.storage
        data = _dumps(body)
        with self._lock:
            if self.lost:
                return False
            try:
                st.compare_and_swap(self.uri, data, self.version)
            except PreconditionFailedError:
                self.lost = True
                return False
            self.body = body
            self.version = _written_version(st, self.uri, data)
            return True

    def renew(self) -> bool:
        ttl = float(self.body["ttl_s"])
        return self._swap({**self.body, "renewed_at": time.time(), "expires_at": time.time() + ttl})

    def start(self) -> None:
        """Renew every ``ttl / 4`` seconds in a daemon thread until released."""
        interval = max(float(self.body["ttl_s"]) / 4, 0.05)

        def beat() -> None:
            while not self._stop.wait(interval):
                if not self.renew():
                    return

        self._thread = threading.Thread(target=beat, name=f"lease-{self.token[:8]}", daemon=True)
        self._thread.start()

    def release(self) -> None:
        """Stop renewing and mark the lease released (expired at once) if it is still ours."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)
        self._swap({**self.body, "released": True, "expires_at": 0.0})


def _written_version(st: Storage, uri: str, data: bytes) -> Version:
    """The version of what we just wrote: the content hash locally, the generation on GCS."""
    if isinstance(st, LocalStorage):
        import hashlib

        return Version(hashlib.sha256(data).hexdigest())
    return st.version(uri)


def lease_expired(body: dict[str, Any], now: float | None = None) -> bool:
    return bool(body.get("released")) or float(body.get("expires_at", 0.0)) <= (time.time() if now is None else now)


class IdempotencyStore:
    def __init__(self, storage: Storage, root: str) -> None:
        self.storage = storage
        self.root = root

    def _write_marker(self, uri: str, data: bytes, *, if_absent: bool = False) -> None:
        """Write a small marker (record, lease, audited flag); ``if_absent``: create-only.

        A marker lost in a power cut only costs a recompute, never a wrong answer: locally the directory
        fsync is skipped (the marker's content is still fsynced before it becomes visible).

        Raises:
            PreconditionFailedError: ``if_absent`` and the marker exists.
        """
        if isinstance(self.storage, LocalStorage):
            self.storage.write_bytes(uri, data, if_absent=if_absent, sync_dir=False)
        else:
            self.storage.write_bytes(uri, data, if_absent=if_absent)

    def _uri(self, task: str, key: str) -> str:
        return join_uri(self.root, "_idempotency", task, f"{key}.json")

    def get(self, task: str, key: str) -> dict[str, Any] | None:
        uri = self._uri(task, key)
        try:
            data = self.storage.read_bytes(uri)
        except FileNotFoundError:
            return None
        record: dict[str, Any] = json.loads(data)
        return record

    def commit(self, task: str, key: str, record: dict[str, Any]) -> tuple[dict[str, Any], bool]:
        """Create the record; returns ``(committed_record, won)``. A lost race returns the winner's."""
        uri = self._uri(task, key)
        data = json.dumps(record, sort_keys=True, separators=(",", ":")).encode()
        try:
            self._write_marker(uri, data, if_absent=True)
        except PreconditionFailedError:
            winner = self.get(task, key)
            if winner is None:  # pragma: no cover - deleted between the two calls
                raise
            return winner, False
        return record, True

    def _failure_uri(self, task: str, key: str, run_id: str) -> str:
        return join_uri(self.root, "_idempotency", task, f"{key}.failed-{sha256_text(run_id)[:16]}.json")

    def record_failure(self, task: str, key: str, run_id: str, record: dict[str, Any]) -> None:
        """Remember that ``key`` failed for good in run ``run_id`` (a retry in that run fails at once)."""
        data = json.dumps({**record, "run_id": run_id}, sort_keys=True, separators=(",", ":")).encode()
        self.storage.write_bytes(self._failure_uri(task, key, run_id), data)

    def failure(self, task: str, key: str, run_id: str) -> dict[str, Any] | None:
        """The non-retryable failure of ``key`` recorded in run ``run_id``, if any."""
        try:
            record: dict[str, Any] = json.loads(self.storage.read_bytes(self._failure_uri(task, key, run_id)))
        except FileNotFoundError:
            return None
        return record

    def forget(self, task: str, key: str) -> None:
        """Drop the committed record (and its audited marker): only while holding the key's lease."""
        self.storage.delete(self._uri(task, key))
        self.storage.delete(self._audited_uri(task, key))

    # -- audited marker ---------------------------------------------------------------------------
    def _audited_uri(self, task: str, key: str) -> str:
        return join_uri(self.root, "_idempotency", task, f"{key}.audited")

    def audited(self, task: str, key: str) -> bool:
        """Whether the commit of ``key`` has its ``succeeded`` audit record (written after it)."""
        return self.storage.exists(self._audited_uri(task, key))

    def mark_audited(self, task: str, key: str, trace_id: str) -> None:
        self._write_marker(self._audited_uri(task, key), _dumps({"trace_id": trace_id, "at": time.time()}))

    def claim_audited(self, task: str, key: str, trace_id: str) -> bool:
        """Create the audited marker only if absent: True for the one caller that created it."""
        data = _dumps({"trace_id": trace_id, "at": time.time(), "adopted": True})
        try:
            self._write_marker(self._audited_uri(task, key), data, if_absent=True)
        except PreconditionFailedError:
            return False
        return True

    # -- leases -----------------------------------------------------------------------------------
    def _lease_uri(self, task: str, key: str) -> str:
        return join_uri(self.root, "_idempotency", task, f"{key}.lease")

    def read_lease(self, task: str, key: str) -> tuple[dict[str, Any], Version] | None:
        """The current lease and the version it was read at; ``None`` when there is none."""
        uri = self._lease_uri(task, key)
        version = self.storage.version(uri)
        if version.token is None:
            return None
        try:
            body: dict[str, Any] = json.loads(self.storage.read_bytes(uri))
        except FileNotFoundError:
            return None
        return body, version

    def try_lease(self, task: str, key: str, *, run_id: str, ttl_s: float) -> Lease | dict[str, Any] | None:
        """Take the lease of ``key``: a :class:`Lease` when taken (created, or an expired one taken over),
        the holder's lease body when another holds a live one, ``None`` when it changed under us (try again).
        """
        uri = self._lease_uri(task, key)
        now = time.time()
        body = {
            "token": secrets.token_hex(8),
            "run_id": run_id,
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "acquired_at": now,
            "renewed_at": now,
            "ttl_s": ttl_s,
            "expires_at": now + ttl_s,
        }
        data = _dumps(body)
        try:
            self._write_marker(uri, data, if_absent=True)
            return Lease(self, uri, body, _written_version(self.storage, uri, data))
        except PreconditionFailedError:
            pass
        current = self.read_lease(task, key)
        if current is None:
            return None
        held, version = current
        if not lease_expired(held, now):
            return held
        try:
            self.storage.compare_and_swap(uri, data, version)
        except PreconditionFailedError:
            return None  # another caller took it over (or the holder renewed) first
        return Lease(self, uri, body, _written_version(self.storage, uri, data), taken_over=held)
