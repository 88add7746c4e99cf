"""Committed results keyed by idempotency key, where every pod of a run sees them.

The record lives at ``<root>/_idempotency/<task>/<key>.json`` on the run's storage (a directory
locally, GCS in production). It is written last and create-only, so of two racing attempts one wins
and the other returns the winner's result.
"""

from __future__ import annotations

import json
from typing import Any

from aitasks.runtime.errors import PreconditionFailedError
from aitasks.runtime.hashing import sha256_text
from aitasks.runtime.storage import LocalStorage, Storage, join_uri


class IdempotencyStore:
    def __init__(self, storage: Storage, root: str) -> None:
        self.storage = storage
        self.root = root

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
            if isinstance(self.storage, LocalStorage):
                # A marker lost in a power cut only costs a recompute, never a wrong answer: skip the
                # directory fsync (the marker's content is still fsynced before it becomes visible).
                self.storage.write_bytes(uri, data, if_absent=True, sync_dir=False)
            else:
                self.storage.write_bytes(uri, data, if_absent=True)
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
        self.storage.delete(self._uri(task, key))
