"""Recommendation updates: ANN index build, recall gate, versioned publish and rollback, serving reads.

``from aitasks.recommendation_update import build_index_task, publish_index_task`` (imported lazily).
"""

from __future__ import annotations

from typing import Any

__all__ = ["build_index_task", "publish_index_task"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from aitasks.recommendation_update import tasks

        return getattr(tasks, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
