"""Committed results keyed by idempotency key, where every pod of a run sees them.

The record lives at ``<root>/_idempotency/<task>/<key>.json`` on the run's storage (a directory
locally, GCS in production). It is written last and create-only, so of two racing attempts one wins
and the other returns the winner's result.
"""

from __future__ import annotations

import json
from typing import Any

from aitasks.runtime.errors import PreconditionFailedError
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

    def forget(self, task: str, key: str) -> None:
        self.storage.delete(self._uri(task, key))
