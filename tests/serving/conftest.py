"""Fixtures of the serving tests: a real redis-server, and a small real world (model, published index).

The world (:mod:`aitasks.serving.sample`) is built offline, from scratch: a seeded two-tower model (the
platform's own classes, saved as safetensors), its item tower's vectors in an hnswlib index published
with ``CURRENT``, the model version in a model directory, and a catalog whose genres go through the open
vocabulary.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from aitasks.serving.sample import World, publish_for, sample_world
from tests.data_processing.conftest import redis_server  # noqa: F401 - fixture

__all__ = ["World", "publish_for"]


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    yield sample_world(tmp_path)
