"""``audio.explain_classifier``: integrated-gradients heat maps of the audio classifier, as an HTML report."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Annotated, Any

from pydantic import Field, field_validator

from aitasks.audio_analysis.tasks.classification import CLASSIFIER_NAME_PATTERN, _labelled_state, _test_mask
from aitasks.audio_analysis.tasks.inputs import _no_nul
from aitasks.runtime.retry import RetryPolicy
from aitasks.runtime.task import InputArtifact, InputLocation, Metric, OutputArtifact, TaskContext, TaskModel, ai_task

#: Where the report goes in the registered version's MLflow run.
MLFLOW_ARTIFACT_DIR = "explanations"
REPORT_FILE = "explanations.html"


class ExplainClassifierParams(TaskModel):
    model_uri: InputArtifact = Field(description="Classifier bundle from audio.train_classifier (torch or keras).")
    labelled_root: InputLocation = Field(min_length=1, description="The labelled folder the classifier was trained on.")
    split: str = Field(
        default="test", pattern=r"^(test|all)$", description="test: the held-out clips; all: every clip."
    )
    per_class: int = Field(default=2, ge=1, le=50, description="Clips explained per class (folder order).")
    n_steps: int = Field(default=32, ge=4, le=256, description="Quadrature points of the integrated gradients.")
    model_name: str = Field(
        default="audio-classifier", pattern=CLASSIFIER_NAME_PATTERN, description="MLflow registered model."
    )
    registered_version: int = Field(
        default=0, ge=0, description="MLflow version of this model to attach the report to; 0: none."
    )
    title: str = Field(default="Audio classifier: what the model listens to", min_length=1, max_length=200)

    _nul = field_validator("labelled_root")(_no_nul)


class ExplainClassifierResult(TaskModel):
    report_uri: OutputArtifact
    explained: Annotated[int, Metric()]
    silent: Annotated[int, Metric()]
    max_relative_delta: Annotated[float, Metric()]
    mlflow_run_id: str

    def artifact_metadata(self, field: str) -> dict[str, Any]:
        return {"explained": self.explained}


@ai_task(name="audio.explain_classifier", version="1.0.0", retry=RetryPolicy(max_attempts=2), state=_labelled_state)
def explain_classifier_task(params: ExplainClassifierParams, ctx: TaskContext) -> ExplainClassifierResult:
    """Explain the audio classifier with integrated gradients over its log-mel input, as an HTML report.

    EN: For a few held-out clips per class (the training step's split, reproduced from the model's
    parameters), attributes the logit of the clip's class to the cells of the log-mel spectrogram the
    model sees (integrated gradients from a floor-level baseline: captum for torch models, the same
    quadrature with TensorFlow gradients for Keras ones) and draws them as heat maps over the
    spectrogram on fixed ranges, with the per-example completeness error. The report is a
    self-contained HTML page and, given a registered version, an artifact of its MLflow run.
    FR: Pour quelques extraits réservés par classe (le découpage de l'étape d'entraînement, reproduit à
    partir des paramètres du modèle), attribue le logit de la classe de l'extrait aux cellules du
    spectrogramme log-mel que voit le modèle (gradients intégrés depuis une référence au plancher :
    captum pour les modèles torch, la même quadrature avec les gradients TensorFlow pour Keras) et les
    dessine en cartes de chaleur sur le spectrogramme, à échelles fixes, avec l'erreur de complétude de
    chaque exemple. Le rapport est une page HTML autonome et, pour une version enregistrée, un artefact
    de son exécution MLflow.
    DE: Für einige zurückgehaltene Clips je Klasse (die Aufteilung des Trainingsschritts, aus den
    Modellparametern rekonstruiert) ordnet es den Logit der Klasse des Clips den Zellen des
    Log-Mel-Spektrogramms zu, das das Modell sieht (Integrated Gradients von einer Basislinie am
    Boden: captum für torch-Modelle, dieselbe Quadratur mit TensorFlow-Gradienten für Keras), und
    zeichnet sie als Heatmaps über dem Spektrogramm auf festen Skalen, mit dem Vollständigkeitsfehler
    je Beispiel. Der Bericht ist eine eigenständige HTML-Seite und, bei einer registrierten Version, ein
    Artefakt ihres MLflow-Laufs.
    """
    import numpy as np

    from aitasks.audio_analysis.classifier import load_any_classifier, load_labelled_folder
    from aitasks.audio_analysis.classifier.explain import explain_clips, render_explanations
    from aitasks.runtime.bundle import open_bundle
    from aitasks.runtime.errors import FieldIssue, InvalidInputError
    from aitasks.runtime.storage import local_tree

    # The registered version is checked first: a wrong one fails before any work.
    target = _registered_version(params, ctx) if params.registered_version else None
    with open_bundle(params.model_uri, ctx.storage, kind="model") as (model_dir, manifest):
        model, cfg = load_any_classifier(model_dir)
    trained = manifest.get("meta", {}).get("params", {})
    try:
        with local_tree(params.labelled_root, ctx.storage) as root:
            if not root.is_dir():
                raise InvalidInputError(ctx.task, [FieldIssue("labelled_root", f"{root} is not a directory")])
            folder = load_labelled_folder(root, cfg)
    except FileNotFoundError:
        raise InvalidInputError(
            ctx.task, [FieldIssue("labelled_root", f"{params.labelled_root}: no labelled clips there")]
        ) from None
    if params.split == "test":
        mask = _test_mask(
            folder.labels, cfg.labels, float(trained.get("test_fraction", 0.25)), int(trained.get("seed", 0)), ctx.task
        )
    else:
        mask = np.ones(len(folder.labels), bool)
    chosen = [
        i
        for k in range(len(cfg.labels))
        for i in [j for j in np.flatnonzero(mask) if folder.labels[j] == k][: params.per_class]
    ]
    explanations = explain_clips(
        model,
        [folder.clips[i] for i in chosen],
        cfg,
        names=[folder.paths[i] for i in chosen],
        true_labels=[folder.labels[i] for i in chosen],
        targets=[folder.labels[i] for i in chosen],
        n_steps=params.n_steps,
    )
    html = render_explanations(
        explanations,
        cfg,
        title=params.title,
        n_steps=params.n_steps,
        meta={
            "run": ctx.runtime.run.run_id,
            "pipeline": ctx.runtime.run.pipeline,
            "trace": ctx.trace_id,
            "model": f"{params.model_name} v{params.registered_version}" if params.registered_version else "",
            "backend": cfg.backend,
            "labels": list(cfg.labels),
            "clips": f"{params.split} split, {params.per_class} per class",
        },
    )
    uri = ctx.output_uri(REPORT_FILE)
    ctx.storage.write_bytes(uri, html.encode("utf-8"))
    run_id = _attach(target, html) if target is not None else ""
    explained = [e for e in explanations if not e.silent]
    ctx.log.info("audio.classifier_explained", explained=len(explained), mlflow_run=run_id)
    return ExplainClassifierResult(
        report_uri=uri,
        explained=len(explained),
        silent=len(explanations) - len(explained),
        max_relative_delta=max((e.relative_delta for e in explained), default=0.0),
        mlflow_run_id=run_id,
    )


def _registered_version(params: ExplainClassifierParams, ctx: TaskContext) -> tuple[Any, Any]:
    """(registry, version) of ``registered_version``, which must hold this very model (its content hash)."""
    from aitasks.platform.registry import get_version, registry_config
    from aitasks.runtime.errors import FieldIssue, InvalidInputError

    reg = registry_config(ctx.settings, model_name=params.model_name)
    version = get_version(reg, version=params.registered_version)
    if version is None:
        problem = f"{params.model_name} has no version {params.registered_version}"
        raise InvalidInputError(ctx.task, [FieldIssue("registered_version", problem)])
    if version.tags.get("aitasks.model_sha") != ctx.storage.content_hash(params.model_uri):
        problem = f"version {version.version} of {params.model_name} holds another model"
        raise InvalidInputError(ctx.task, [FieldIssue("registered_version", problem)])
    return reg, version


def _attach(target: tuple[Any, Any], html: str) -> str:
    """Log the report into the version's MLflow run and tag the version with its path; returns the run id."""
    from aitasks.platform.registry import client
    from aitasks.platform.registry.config import service

    reg, version = target
    with tempfile.TemporaryDirectory(prefix="aitasks-explain-") as tmp:
        path = Path(tmp) / REPORT_FILE
        path.write_text(html, "utf-8")
        with service(reg):
            c = client(reg)
            # Same name every time: a retry overwrites the file, it never adds a second one.
            c.log_artifact(version.run_id, str(path), MLFLOW_ARTIFACT_DIR)
            c.set_model_version_tag(
                reg.model_name, str(version.version), "aitasks.explanations", f"{MLFLOW_ARTIFACT_DIR}/{REPORT_FILE}"
            )
    return str(version.run_id)
