"""Child process of the start-up bench: one pipeline step of a family, from a cold interpreter to its task body.

Run as ``python -m bench.startup_probe FAMILY`` by :mod:`bench.startup`, never imported by it. It does what a
step's pod does, in order, and prints the ``time.monotonic()`` (CLOCK_MONOTONIC, one clock for every process of
the machine) of each stage as one JSON line:

* ``interp``: the interpreter is up (this module's first line);
* ``component``: the family's component module is imported (``kfp`` and the image table, as the KFP executor
  loads the component);
* ``body``: the real :func:`aitasks.runtime.step.run_step` has built the step's runtime from the run context,
  imported the family's task module (``get_task`` of the family's main task), validated the inputs, computed
  the idempotency key, written the ``started`` audit record and entered the task body;
* ``ready``: the body has imported its working set: the modules the family's main task body imports first
  (read from its source), i.e. what that body needs before it does any work.

The body is a probe task registered here (``bench.startup.<family>``) so that no real work runs: only the
start-up is measured. It also lists which heavy libraries were loaded at ``body`` and at ``ready``.
"""

from __future__ import annotations

import time

T_INTERP = time.monotonic()

import ast  # noqa: E402 - the first mark is taken before any import
import importlib  # noqa: E402
import inspect  # noqa: E402
import json  # noqa: E402
import sys  # noqa: E402
import textwrap  # noqa: E402
from typing import Any  # noqa: E402

#: family -> (component module, the family's main task).
FAMILIES: dict[str, tuple[str, str]] = {
    "audio": ("components.audio_analysis", "audio.analyze"),
    "data_processing": ("components.data_processing", "data.ingest"),
    "training": ("components.model_training", "model.train"),
    "recommendation": ("components.recommendation_update", "index.build"),
    "content_generation": ("components.content_generation", "content.generate"),
}

#: Libraries whose import costs a second or more; a step should load only those its body uses.
HEAVY: tuple[str, ...] = (
    "feast",
    "mlflow",
    "tensorflow",
    "keras",
    "torch",
    "transformers",
    "diffusers",
    "librosa",
    "celery",
    "optuna",
    "sklearn",
    "numba",
    "matplotlib",
)


def loaded_heavy() -> list[str]:
    return [m for m in HEAVY if m in sys.modules]


def working_set(fn: Any) -> list[str]:
    """The modules a task body imports (``import x`` / ``from x import y`` anywhere in its source)."""
    mods: list[str] = []
    for node in ast.walk(ast.parse(textwrap.dedent(inspect.getsource(fn)))):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            mods.append(node.module)
            # ``from aitasks.platform import feature_store as fs`` imports a submodule.
            mods += [f"{node.module}.{a.name}" for a in node.names]
        elif isinstance(node, ast.Import):
            mods += [a.name for a in node.names]
    return list(dict.fromkeys(mods))


def _import_all(mods: list[str]) -> None:
    for m in mods:
        try:
            importlib.import_module(m)
        except ModuleNotFoundError as exc:
            if exc.name != m:  # a missing dependency of a real module is an error, a class name is not
                raise


def main(family: str, storage_root: str) -> None:
    component, main_task = FAMILIES[family]
    importlib.import_module(component)
    t_component = time.monotonic()

    from aitasks.runtime.step import run_step
    from aitasks.runtime.task import TaskContext, TaskModel, ai_task, get_task

    marks: dict[str, Any] = {}

    class ProbeParams(TaskModel):
        family: str

    class ProbeResult(TaskModel):
        ok: bool

    def probe(params: ProbeParams, ctx: TaskContext) -> ProbeResult:
        marks["body"] = time.monotonic()
        marks["cpu_body"] = time.process_time()  # CPU seconds of this process so far: less swayed by load
        marks["heavy_at_body"] = loaded_heavy()
        mods = working_set(get_task(main_task).fn)
        _import_all(mods)
        marks["ready"] = time.monotonic()
        marks["cpu_ready"] = time.process_time()
        marks["modules_at_ready"] = len(sys.modules)
        marks["heavy_at_ready"] = loaded_heavy()
        marks["working_set"] = mods
        return ProbeResult(ok=True)

    probe.__annotations__ = {"params": ProbeParams, "ctx": TaskContext, "return": ProbeResult}
    probe.__doc__ = "EN: Start-up probe. FR: Sonde de démarrage. DE: Startmessung."
    name = f"bench.startup.{family}"
    ai_task(name=name, version="1.0.0")(probe)
    # The step's own task module, imported as run_step would import it for the real task.
    get_task(main_task)
    run_step(name, {"family": family}, ({"storage_root": storage_root}, "bench-startup", "bench", family))
    print(json.dumps({"interp": T_INTERP, "component": t_component, **marks}))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
