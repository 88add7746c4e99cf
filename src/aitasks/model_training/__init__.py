"""Model training: the two-tower recommender, training sets from Feast, evaluation, register and promote.

The MLflow registry and the promotion policy live in :mod:`aitasks.platform.registry` (shared with
the audio classifier).

``from aitasks.model_training import train_model_task`` is the public entry point; the tasks module
is imported on first access only (no import-time work).
"""

from __future__ import annotations

from typing import Any

__all__ = ["evaluate_model_task", "register_model_task", "train_model_task", "training_set_task"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from aitasks.model_training import tasks

        return getattr(tasks, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
