"""MLflow records of tuning studies (a parent run, one nested run per trial) and of version documents.

Every function is idempotent by tags, so a retried step finds what an earlier attempt logged instead
of logging it twice: the study's parent run carries ``aitasks.tuning_key``, a trial's run carries its
parent (``mlflow.parentRunId``, which makes it a nested run in the MLflow UI) and
``aitasks.trial_number``. Clients come from :func:`aitasks.platform.registry.client` (pickle off,
bounded HTTP timeouts) and service faults become retryable errors (:func:`~aitasks.platform.registry.
config.service`).
"""

from __future__ import annotations

import json
import math
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

from aitasks.platform.registry.config import RegistryConfig, client, error_code, service

if TYPE_CHECKING:
    from mlflow import MlflowClient

__all__ = ["TUNING_EXPERIMENT", "finish_study_run", "log_trial_run", "log_version_documents", "study_run"]

TUNING_EXPERIMENT: Final = "reco-tuning"
KEY_TAG: Final = "aitasks.tuning_key"
PARENT_TAG: Final = "mlflow.parentRunId"
TRIAL_TAG: Final = "aitasks.trial_number"


def _experiment(c: MlflowClient, name: str, artifact_location: str | None) -> str:
    exp = c.get_experiment_by_name(name)
    if exp is None:
        try:
            return str(c.create_experiment(name, artifact_location=artifact_location))
        except Exception as exc:
            if error_code(exc) != "RESOURCE_ALREADY_EXISTS":
                raise
            exp = c.get_experiment_by_name(name)  # a racing creator won
            if exp is None:
                raise
    if exp.lifecycle_stage == "deleted":
        c.restore_experiment(exp.experiment_id)
    return str(exp.experiment_id)


def _log(c: MlflowClient, run_id: str, params: Mapping[str, Any], metrics: list[tuple[str, float, int]]) -> None:
    from mlflow.entities import Metric, Param

    now = int(time.time() * 1000)
    ps = [Param(str(k)[:250], str(v)[:6000]) for k, v in sorted(params.items())]
    ms = [Metric(k, float(v), now, step) for k, v, step in metrics if math.isfinite(v)]
    for i in range(0, max(len(ps), len(ms), 1), 100):
        if ps[i : i + 100] or ms[i : i + 100]:
            c.log_batch(run_id, metrics=ms[i : i + 100], params=ps[i : i + 100], synchronous=True)


def study_run(reg: RegistryConfig, *, study_name: str, key: str, config: Mapping[str, Any]) -> str:
    """The study's parent run (created once per ``key``), with the study's configuration as params."""
    with service(reg):
        c = client(reg)
        exp_id = _experiment(c, TUNING_EXPERIMENT, reg.artifact_location)
        found = c.search_runs([exp_id], filter_string=f"tags.`{KEY_TAG}` = '{key}'", max_results=1)
        if found:
            return str(found[0].info.run_id)
        run = c.create_run(
            exp_id, run_name=f"study-{study_name}"[:250], tags={KEY_TAG: key, "aitasks.study": study_name}
        )
        run_id = str(run.info.run_id)
        flat = {k: json.dumps(v, sort_keys=True) if isinstance(v, dict | list) else v for k, v in config.items()}
        _log(c, run_id, flat, [])
        return run_id


def log_trial_run(
    reg: RegistryConfig,
    parent_run_id: str,
    *,
    number: int,
    state: str,
    params: Mapping[str, Any],
    value: float | None,
    intermediate: Mapping[int, float],
    metric: str,
    seconds: float | None = None,
) -> str:
    """A nested run of trial ``number`` under the study's run (once per trial): params, the validation
    metric per epoch budget (step = epochs), the final value; FINISHED, KILLED (pruned) or FAILED."""
    with service(reg):
        c = client(reg)
        parent = c.get_run(parent_run_id)
        exp_id = parent.info.experiment_id
        found = c.search_runs(
            [exp_id],
            filter_string=f"tags.`{PARENT_TAG}` = '{parent_run_id}' and tags.`{TRIAL_TAG}` = '{number}'",
            max_results=1,
        )
        if found:
            return str(found[0].info.run_id)
        run = c.create_run(
            exp_id,
            run_name=f"trial-{number}",
            tags={PARENT_TAG: parent_run_id, TRIAL_TAG: str(number), "aitasks.trial_state": state},
        )
        run_id = str(run.info.run_id)
        metrics = [(f"val_{metric}", v, int(step)) for step, v in sorted(intermediate.items())]
        if value is not None:
            metrics.append((f"val_{metric}_final", float(value), 0))
        if seconds is not None:
            metrics.append(("seconds", float(seconds), 0))
        _log(c, run_id, params, metrics)
        c.set_terminated(run_id, {"complete": "FINISHED", "pruned": "KILLED"}.get(state, "FAILED"))
        return run_id


def finish_study_run(
    reg: RegistryConfig,
    run_id: str,
    *,
    best_number: int,
    best_value: float,
    best_params: Mapping[str, Any],
    counts: Mapping[str, int],
    summary: Mapping[str, Any],
    metric: str,
) -> None:
    """Log the best trial (params ``best.<name>``, its value) and the study summary on the parent run; end it."""
    with service(reg):
        c = client(reg)
        metrics = [(f"best_val_{metric}", float(best_value), 0), ("best_trial", float(best_number), 0)]
        metrics += [(f"trials_{k}", float(v), 0) for k, v in sorted(counts.items())]
        existing = c.get_run(run_id).data.params
        params = {f"best.{k}": v for k, v in best_params.items() if f"best.{k}" not in existing}
        _log(c, run_id, params, metrics)
        with tempfile.TemporaryDirectory(prefix="aitasks-study-") as tmp:
            path = Path(tmp) / "study.json"
            path.write_text(json.dumps(summary, indent=1, sort_keys=True, default=str), "utf-8")
            c.log_artifact(run_id, str(path))
        if c.get_run(run_id).info.status != "FINISHED":
            c.set_terminated(run_id, "FINISHED")


def log_version_documents(
    reg: RegistryConfig, version: int, files: Mapping[str, str], *, artifact_path: str, tags: Mapping[str, str]
) -> str:
    """Log ``{file name: text}`` as artifacts ``<artifact_path>/`` of the registered version's run and tag
    the version; same names overwrite (a retry logs the same documents again). Returns the run id."""
    with service(reg):
        c = client(reg)
        mv = c.get_model_version(reg.model_name, str(version))
        run_id = str(mv.run_id)
        with tempfile.TemporaryDirectory(prefix="aitasks-docs-") as tmp:
            for name, text in files.items():
                (Path(tmp) / name).write_text(text, "utf-8")
            c.log_artifacts(run_id, tmp, artifact_path)
        for k, v in tags.items():
            c.set_model_version_tag(reg.model_name, str(version), k, v)
        return run_id
