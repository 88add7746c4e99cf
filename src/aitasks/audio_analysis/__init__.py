"""Audio analysis: checked decoding, one-STFT features, classification, anomaly detection.

``from aitasks.audio_analysis import analyze_audio_task`` is the public entry point; the tasks module
is imported on first access only (no import-time work).
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "analyze_audio_task",
    "anomalies_task",
    "classify_task",
    "collect_task",
    "feast_write_task",
    "list_catalog_task",
    "register_classifier_task",
    "report_task",
    "source_task",
    "train_classifier_task",
]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from aitasks.audio_analysis import tasks

        return getattr(tasks, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
