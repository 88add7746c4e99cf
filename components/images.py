"""The image table (images/images.json) as seen by components at compile time."""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path

TABLE = Path(__file__).resolve().parent.parent / "images" / "images.json"


@cache
def _table() -> dict:
    return json.loads(TABLE.read_text("utf-8"))


def image_for(family: str) -> str:
    """Immutable image URI for a task family (``data_processing``, ``model_training``, ...)."""
    table = _table()
    return table["images"][table["families"][family]]
