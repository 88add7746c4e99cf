"""Platform tasks of the audio-analysis family.

``audio.list_catalog`` -> ``audio.analyze`` (one per shard, in parallel) -> ``audio.collect`` ->
``audio.anomalies`` -> ``audio.train_classifier`` (torch or Keras) -> ``audio.register_classifier`` ->
``audio.explain_classifier`` / ``audio.classify`` -> ``audio.feast_write`` -> ``audio.report``. Every
step's output is a bundle (files + ``MANIFEST.json`` with checksums) under the run's
storage root, so a step in another pod reads exactly what the previous one wrote.
"""

from __future__ import annotations

from aitasks.audio_analysis.tasks.analysis import analyze_audio_task, anomalies_task, collect_task
from aitasks.audio_analysis.tasks.classification import classify_task, register_classifier_task, train_classifier_task
from aitasks.audio_analysis.tasks.explanation import explain_classifier_task
from aitasks.audio_analysis.tasks.inputs import list_catalog_task, source_task
from aitasks.audio_analysis.tasks.outputs import feast_write_task, report_task

__all__ = [
    "analyze_audio_task",
    "anomalies_task",
    "classify_task",
    "collect_task",
    "explain_classifier_task",
    "feast_write_task",
    "list_catalog_task",
    "register_classifier_task",
    "report_task",
    "source_task",
    "train_classifier_task",
]
