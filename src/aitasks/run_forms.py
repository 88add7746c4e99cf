"""Run-form groups: related pipeline knobs travel as one dict parameter, validated here.

A pipeline's run form (the KFP UI, ``python -m pipelines run -p``, ``schedules.yaml``) stays short:
instead of forty flat parameters, related settings form one dict parameter per group (``training``,
``gate``, ``index``, ``data``, ...). Each group is a strict model derived from the fields of the tasks
it feeds, so types, bounds and descriptions have one source (the task's input model):

- an unknown key is refused, and every wrong key or value is named as ``group.key``;
- a key left out takes the group's documented default (a dict given in part is completed, as KFP
  replaces a dict parameter whole);
- :func:`step_params` routes each key to the task input it feeds (``data.lookback_days`` is the
  features' ``lookback_days`` and the drift check's ``warmup_days``).

The tasks' own inputs stay flat, so idempotency keys do not depend on how a form groups them.
Synthetic-data settings are not a group here: they are the ``synthetic`` parameter, validated by the
source task, and only used when no input data is given.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cached_property
from typing import Annotated, Any

from pydantic import Field, create_model
from pydantic.fields import FieldInfo

from aitasks.runtime.errors import FieldIssue, InvalidInputError
from aitasks.runtime.inputs import validate_strict
from aitasks.runtime.task import TaskModel

__all__ = ["GROUPS", "FormGroup", "form_issues", "group", "step_params"]


@dataclass(frozen=True)
class FormGroup:
    """One dict parameter of a run form.

    Attributes:
        name: The pipeline parameter's name (``training``).
        summary: One line saying what the group sets (docs and ``--help``).
        routes: Task name -> ``{group key: task input}``: where each key goes. A key routed to several
            tasks takes its type, bounds and description from the first.
        defaults: The group's defaults where they differ from the first task's (the pipelines' choices).
    """

    name: str
    summary: str
    routes: Mapping[str, Mapping[str, str]]
    defaults: Mapping[str, Any] = field(default_factory=dict)

    @property
    def keys(self) -> tuple[str, ...]:
        """The group's keys, in declaration order."""
        out: dict[str, None] = {}
        for mapping in self.routes.values():
            out.update(dict.fromkeys(mapping))
        return tuple(out)

    def source(self, key: str) -> tuple[str, str]:
        """``(task, input)`` that gives ``key`` its type, bounds and description."""
        for task, mapping in self.routes.items():
            if key in mapping:
                return task, mapping[key]
        raise KeyError(f"{self.name} has no key {key!r}")

    @cached_property
    def model(self) -> type[TaskModel]:
        """The strict model of the group: each key typed, bounded and described as its task input."""
        from aitasks.runtime.task import get_task

        fields: dict[str, Any] = {}
        for key in self.keys:
            task, name = self.source(key)
            info: FieldInfo = get_task(task).params_model.model_fields[name]
            default = self.defaults.get(key, info.get_default(call_default_factory=True))
            described = f"{info.description or key} ({task}: {name})"
            annotation = Annotated[(info.annotation, *info.metadata)] if info.metadata else info.annotation
            fields[key] = (annotation, Field(default=default, description=described))
        unknown = set(self.defaults) - set(fields)
        if unknown:
            raise KeyError(f"{self.name}: defaults for unknown keys {sorted(unknown)}")
        title = "".join(p.title() for p in self.name.split("_")) + "Form"
        return create_model(title, __base__=TaskModel, __doc__=self.summary, **fields)

    def default(self) -> dict[str, Any]:
        """The group's defaults as JSON: the run form's default value of the parameter."""
        return self.model().model_dump(mode="json")

    def validate(self, value: Any, *, task: str = "run form") -> TaskModel:
        """``value`` (a dict, possibly partial) validated; every problem named ``group.key`` in one error."""
        if not isinstance(value, Mapping):
            got = "null" if value is None else type(value).__name__
            raise InvalidInputError(task, [FieldIssue(self.name, f"must be a JSON object (dict), got {got}")])
        try:
            return validate_strict(task, self.model, value)
        except InvalidInputError as exc:
            raise InvalidInputError(task, [self._issue(i, value) for i in exc.issues]) from None

    def _issue(self, issue: FieldIssue, value: Mapping[str, Any]) -> FieldIssue:
        key = issue.field.split(".", 1)[0]
        if key in value and key not in self.keys:
            return FieldIssue(f"{self.name}.{key}", f"unknown key; known: {', '.join(self.keys)}")
        shown = f" (got {value[key]!r})" if key in value else ""
        return FieldIssue(f"{self.name}.{issue.field}", f"{issue.problem}{shown}")

    def task_inputs(self, task: str, value: Any) -> dict[str, Any]:
        """The inputs of ``task`` that ``value`` (this group's dict) sets, validated, defaults filled in."""
        if task not in self.routes:
            raise KeyError(f"group {self.name!r} feeds no input of task {task!r}; it feeds {', '.join(self.routes)}")
        data = self.validate(value, task=task).model_dump(mode="json")
        return {name: data[key] for key, name in self.routes[task].items()}


def _same(*names: str) -> dict[str, str]:
    return {n: n for n in names}


DATA = FormGroup(
    "data",
    "ETL, features and drift check: chunk size, feature window and half-life, drift thresholds.",
    {
        "data.ingest": _same("chunk_rows"),
        "data.features": _same("lookback_days", "half_life_days"),
        "data.drift": {
            "lookback_days": "warmup_days",
            "psi_threshold": "psi_threshold",
            "ks_pvalue_threshold": "ks_pvalue_threshold",
        },
    },
    {"chunk_rows": 65_536, "lookback_days": 28, "half_life_days": 14.0, "psi_threshold": 0.2},
)
FEAST = FormGroup(
    "feast",
    "Feast project and online store the features are written to and read from.",
    {
        "feast.materialize": _same("project", "online_store"),
        "reco.training_set": _same("project", "online_store"),
        "audio.feast_write": _same("project", "online_store"),
        "index.refresh": _same("project", "online_store"),
    },
    {"project": "aitasks", "online_store": "sqlite"},
)
#: Every setting of ``model.train`` (and of ``model.train_pytorchjob``, which runs the same training).
_TRAIN_SETTINGS = (
    "epochs",
    "batch_size",
    "lr",
    "sparse_lr",
    "seed",
    "embedding_dim",
    "id_dim",
    "hidden_dim",
    "temperature",
    "logq_correction",
    "device",
    "average_epochs",
    "checkpoints_per_epoch",
    "lr_decay",
    "precision",
    "workers",
    "checkpoint_every_steps",
)
TRAINING = FormGroup(
    "training",
    "The two-tower model's training: every setting of model.train, and the held-out days.",
    {
        "model.train": _same(*_TRAIN_SETTINGS),
        "reco.training_set": _same("holdout_days"),
        # reco-tuning: the trials' device and training seed (the other settings are the study's base).
        "tune.suggest": {"seed": "train_seed"},
        "tune.trial": _same("device"),
        # The same settings when the training runs as a Kubeflow PyTorchJob (workers: processes per CPU pod).
        "model.train_pytorchjob": _same(*_TRAIN_SETTINGS),
    },
    {"epochs": 4, "average_epochs": 3, "lr_decay": "cosine", "holdout_days": 1},
)
TUNING = FormGroup(
    "tuning",
    "The Optuna study of reco-tuning: name, trials, sampler seed, pruner, metric, protocol, validation days, "
    "search space.",
    {
        "tune.suggest": _same(
            "study_name", "n_trials", "seed", "pruner", "metric", "protocol", "validation_days", "search_space"
        )
    },
)
GATE = FormGroup(
    "gate",
    "The blessing rule: lift over popularity, regression vs the champion, paired bootstrap intervals.",
    {
        "model.evaluate": _same(
            "min_lift_over_popularity", "max_regression_vs_champion", "confidence", "bootstrap_resamples"
        )
    },
    {"min_lift_over_popularity": 1.2, "max_regression_vs_champion": 0.02, "confidence": 0.95},
)
INDEX = FormGroup(
    "index",
    "The HNSW index: backend, graph degree and build beam, recall floor and the recall ef_search is tuned to.",
    {
        "index.build": _same("backend", "m", "ef_construction", "recall_floor", "target_recall"),
        "index.refresh": _same("backend", "m", "ef_construction", "recall_floor", "target_recall"),
    },
    {"backend": "hnswlib", "m": 16, "ef_construction": 200, "recall_floor": 0.95, "target_recall": 0.97},
)
REFRESH = FormGroup(
    "refresh",
    "The hourly index refresh: the recall check's listeners and queries, and when to rebuild instead of "
    "updating in place.",
    {
        "index.refresh": _same(
            "active_hours",
            "sample_queries",
            "max_deleted_fraction",
            "max_recall_drift",
            "max_changed_fraction",
            "force_rebuild",
        )
    },
)
ANALYSIS = FormGroup(
    "analysis",
    "How the catalog is listed, sharded and decoded: shards, limit, track ids, sample rate, channels.",
    {
        "audio.list_catalog": _same("shards", "limit", "track_ids"),
        "audio.analyze": _same("sample_rate", "max_channels"),
    },
    {"shards": 4, "limit": 0, "track_ids": "stem", "sample_rate": 22050, "max_channels": 2},
)
ANOMALIES = FormGroup(
    "anomalies",
    "Catalog anomalies: expected share of feature outliers, fingerprint similarity of a duplicate.",
    {"audio.anomalies": _same("contamination", "duplicate_threshold")},
    {"contamination": 0.02, "duplicate_threshold": 0.8},
)
CLASSIFIER = FormGroup(
    "classifier",
    "The audio classifier: MLflow name, backend (torch or keras), training epochs, crop length, seed, accuracy "
    "needed to be champion, held-out clips explained per class.",
    {
        "audio.register_classifier": {"name": "model_name", "min_accuracy": "min_accuracy"},
        "audio.train_classifier": _same("backend", "epochs", "clip_seconds", "seed"),
        "audio.explain_classifier": {
            "name": "model_name",
            "explain_per_class": "per_class",
            "explain_steps": "n_steps",
        },
    },
    {
        "name": "audio-classifier",
        "min_accuracy": 0.6,
        "backend": "torch",
        "epochs": 30,
        "clip_seconds": 4.0,
        "seed": 0,
        "explain_per_class": 2,
        "explain_steps": 32,
    },
)
REPORT = FormGroup(
    "report",
    "The HTML report: title and samples shown per kind.",
    {"content.report": _same("title", "samples")},
    {"title": "Content generation", "samples": 6},
)

#: Every run-form group, by parameter name.
GROUPS: dict[str, FormGroup] = {
    g.name: g for g in (DATA, FEAST, TRAINING, TUNING, GATE, INDEX, REFRESH, ANALYSIS, ANOMALIES, CLASSIFIER, REPORT)
}


def group(name: str) -> FormGroup:
    """The run-form group ``name``."""
    try:
        return GROUPS[name]
    except KeyError:
        raise KeyError(f"no run-form group {name!r}; known: {', '.join(GROUPS)}") from None


def step_params(task: str, params: Mapping[str, Any], **groups: Any) -> dict[str, Any]:
    """``params`` plus the inputs of ``task`` that each group dict sets (``training=training``).

    What a component hands :func:`aitasks.runtime.step.run_step`: its own inputs and, per group
    parameter it receives, the keys routed to its task (validated; a bad group names ``group.key``).
    """
    out = dict(params)
    issues: list[FieldIssue] = []
    for name, value in groups.items():
        try:
            out.update(group(name).task_inputs(task, value))
        except InvalidInputError as exc:
            issues += exc.issues
    if issues:
        raise InvalidInputError(task, issues)
    return out


def form_issues(params: Mapping[str, Any]) -> list[FieldIssue]:
    """Every problem with the group parameters among ``params`` (a pipeline's arguments), before a run."""
    issues: list[FieldIssue] = []
    for name, value in params.items():
        if name in GROUPS:
            try:
                GROUPS[name].validate(value)
            except InvalidInputError as exc:
                issues += exc.issues
    return issues
