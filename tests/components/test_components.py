"""Components stay thin: only kfp at module level, images from the one table, one task call each."""

from __future__ import annotations

import ast
import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
COMPONENT_FILES = sorted(p for p in (ROOT / "components").glob("*.py") if p.name not in {"__init__.py", "images.py"})
HEAVY = {"aitasks", "torch", "tensorflow", "librosa", "feast", "mlflow", "transformers", "polars", "pyarrow"}


@pytest.mark.parametrize("path", COMPONENT_FILES, ids=lambda p: p.name)
def test_module_level_imports_are_light(path: Path) -> None:
    tree = ast.parse(path.read_text())
    for node in tree.body:
        if isinstance(node, ast.Import | ast.ImportFrom):
            mod = node.module if isinstance(node, ast.ImportFrom) else node.names[0].name
            assert (mod or "").split(".")[0] not in HEAVY, f"{path.name} imports {mod} at module level"


@pytest.mark.parametrize("path", COMPONENT_FILES, ids=lambda p: p.name)
def test_each_component_makes_exactly_one_task_call(path: Path) -> None:
    tree = ast.parse(path.read_text())
    for fn in [n for n in tree.body if isinstance(n, ast.FunctionDef)]:
        calls = [
            c.func.id
            for c in ast.walk(fn)
            if isinstance(c, ast.Call) and isinstance(c.func, ast.Name) and c.func.id.endswith("_task")
        ]
        assert len(calls) == 1, f"{fn.name} calls {calls}"


@pytest.mark.parametrize("path", COMPONENT_FILES, ids=lambda p: p.name)
def test_every_component_uses_an_image_from_the_table(path: Path) -> None:
    import importlib

    module = importlib.import_module(f"components.{path.stem}")
    table = json.loads((ROOT / "images" / "images.json").read_text())
    images = set(table["images"].values())
    comps = [v for v in vars(module).values() if hasattr(v, "component_spec")]
    assert comps
    for comp in comps:
        image = comp.component_spec.implementation.container.image
        assert image in images, f"{comp.name} uses {image}"
        assert ":" in image.rsplit("/", 1)[-1] and not image.endswith(":latest"), "immutable tag"
