"""Content generation: text, cover images and music clips, with prompt safety, output checks and provenance.

``from aitasks.content_generation import generate_content_task`` is the public entry point; the tasks
module is imported on first access only (no import-time work, no heavy import).
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "check_content_task",
    "content_report_task",
    "generate_content_task",
    "publish_content_task",
    "validate_prompts_task",
]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from aitasks.content_generation import tasks

        return getattr(tasks, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
