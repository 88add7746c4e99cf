"""Give every kfp.local step process its own empty working directory, HOME and TMPDIR.

Only for local runs that must behave like a cluster (``python -m pipelines demo-cluster`` and the
no-shared-disk test): they put this directory on ``PYTHONPATH`` and set ``AITASKS_STEP_SANDBOX`` to a
directory. Python imports ``sitecustomize`` at start-up; in a KFP executor process (kfp's launcher
command sets ``_KFP_RUNTIME=true``) this module then creates ``<sandbox>/step-XXXXXX/{work,home,tmp}``,
points ``HOME`` and ``TMPDIR`` there and changes into ``work``, so a step that falls back to a local
default (a relative storage root, a sqlite file, a cache under HOME) writes into its own directory,
where the caller looks for it, instead of a disk the steps share. Every other process (the pip
bootstrap of kfp's command, the test runner, MLflow's server) is left alone.

Each sandbox gets a ``step.json`` naming the process and the component function it ran.
"""

import os


def _sandbox() -> None:
    root = os.environ.get("AITASKS_STEP_SANDBOX", "")
    if os.environ.get("_KFP_RUNTIME") != "true" or not root:
        return
    import json
    import tempfile
    from pathlib import Path

    base = Path(tempfile.mkdtemp(prefix="step-", dir=root))
    dirs = {name: base / name for name in ("work", "home", "tmp")}
    for path in dirs.values():
        path.mkdir()
    try:  # the executor's arguments (Linux): which component this process runs
        argv = [a.decode(errors="replace") for a in Path("/proc/self/cmdline").read_bytes().split(b"\0") if a]
    except OSError:
        argv = []
    function = argv[argv.index("--function_to_execute") + 1] if "--function_to_execute" in argv[:-1] else ""
    record = {"pid": os.getpid(), "function": function, "cwd_before": str(Path.cwd())}
    record.update({name: str(path) for name, path in dirs.items()})
    (base / "step.json").write_text(json.dumps(record), encoding="utf-8")
    os.environ["HOME"] = str(dirs["home"])
    os.environ["TMPDIR"] = str(dirs["tmp"])
    tempfile.tempdir = None  # recomputed from TMPDIR on next use
    os.chdir(dirs["work"])


_sandbox()
