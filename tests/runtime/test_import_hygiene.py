"""Start-up hygiene: a step of a family, and the CLI's light paths, load no heavy library they do not use.

Each check runs in a cold interpreter (a subprocess), because the test process itself has imported
everything by now. No timing is asserted (timings are `python -m bench --only startup`): what is checked
is which heavy modules are in ``sys.modules``.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from bench.startup_probe import HEAVY  # the libraries the start-up bench reports: one list

ROOT = Path(__file__).resolve().parents[2]

#: (component module, the family's main task, heavy libraries its body may import itself).
FAMILIES = {
    "audio": ("components.audio_analysis", "audio.analyze", set()),
    "data_processing": ("components.data_processing", "data.ingest", set()),
    "training": ("components.model_training", "model.train", {"torch"}),
    "recommendation": ("components.recommendation_update", "index.build", set()),
    "content_generation": ("components.content_generation", "content.generate", set()),
}


def _cold(code: str) -> dict[str, list[str]]:
    """Run ``code`` in a fresh interpreter; it prints one JSON object as its last line."""
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300, check=False
    )
    assert out.returncode == 0, out.stderr[-2000:]
    result: dict[str, list[str]] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


_FAMILY_CODE = """
import importlib, json, sys
HEAVY = {heavy!r}
loaded = lambda: sorted(m for m in HEAVY if m in sys.modules)
importlib.import_module({component!r})
at_component = loaded()
from aitasks.runtime.step import run_step  # noqa: F401 - what every component body imports
from aitasks.runtime.task import get_task
task = get_task({task!r})
at_task = loaded()
from bench.startup_probe import working_set
mods = working_set(task.fn)
for m in mods:
    try:
        importlib.import_module(m)
    except ModuleNotFoundError as exc:
        if exc.name != m:
            raise
print(json.dumps({{"component": at_component, "task": at_task, "body": loaded(),
                  "others": sorted(k for k in sys.modules if k.startswith("aitasks.") and k.endswith(".tasks"))}}))
"""


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_a_step_imports_only_what_its_body_uses(family: str) -> None:
    component, task, allowed = FAMILIES[family]
    got = _cold(_FAMILY_CODE.format(heavy=HEAVY, component=component, task=task))
    # The component module (what the KFP executor loads) and the task registry: no heavy library at all.
    assert got["component"] == [], f"{component} imports {got['component']} at module level"
    assert got["task"] == [], f"get_task({task!r}) imports {got['task']}"
    # The body's own imports: only what that family uses.
    assert set(got["body"]) <= allowed, f"{task}'s body imports {sorted(set(got['body']) - allowed)}"
    # Only the step's own family of tasks is imported, not every task module before it.
    own = {
        "audio": "aitasks.audio_analysis.tasks",
        "data_processing": "aitasks.data_processing.tasks",
        "training": "aitasks.model_training.tasks",
        "recommendation": "aitasks.recommendation_update.tasks",
        "content_generation": "aitasks.content_generation.tasks",
    }[family]
    assert got["others"] == [own], f"get_task({task!r}) imported {got['others']}"


def test_the_torch_check_can_fail() -> None:
    """The probe sees a heavy import when there is one (the checks above are not vacuous).

    The classifier's training body imports its torch model module directly (model.train's body reaches
    torch only one call deeper, in the trainer, which the probe does not follow).
    """
    got = _cold(_FAMILY_CODE.format(heavy=HEAVY, component="components.audio_analysis", task="audio.train_classifier"))
    assert "torch" in got["body"] and "torch" not in got["task"]


_CLI_CODE = """
import json, sys
HEAVY = {heavy!r}
sys.argv = ["aitasks", *{argv!r}]
from aitasks.cli import main
try:
    main()
except SystemExit as exc:
    assert exc.code in (0, None), exc.code
print()
print(json.dumps({{"loaded": sorted(m for m in HEAVY if m in sys.modules)}}))
"""


@pytest.mark.parametrize("argv", [["--help"], ["tasks", "list"], ["tasks", "list", "--json"], ["audit", "--help"]])
def test_the_cli_light_paths_import_no_heavy_library(argv: list[str]) -> None:
    got = _cold(_CLI_CODE.format(heavy=HEAVY, argv=argv))
    assert got["loaded"] == [], f"aitasks {' '.join(argv)} imports {got['loaded']}"


def test_every_builtin_task_family_maps_to_its_module() -> None:
    """get_task's family table names the modules that really register each built-in task."""
    from aitasks.runtime.task import FAMILY_MODULES, load_builtin_tasks

    for name, task in load_builtin_tasks().items():
        family = name.split(".", 1)[0]
        if family not in FAMILY_MODULES:  # a new family falls back to importing every task module
            continue
        modules = FAMILY_MODULES[family]
        mod = task.fn.__module__
        assert any(mod == m or mod.startswith(m + ".") for m in modules), (
            f"{name} is registered by {mod}: add it to FAMILY_MODULES[{family!r}] in aitasks/runtime/task.py"
        )
