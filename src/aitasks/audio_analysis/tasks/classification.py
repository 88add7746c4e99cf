"""The audio classifier's tasks: ``audio.train_classifier``, ``audio.register_classifier`` and ``audio.classify``."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Annotated, Any

from pydantic import Field, field_validator

from aitasks.audio_analysis.tasks.analysis import _workers
from aitasks.audio_analysis.tasks.inputs import ListCatalogParams, _catalog_state, _no_nul
from aitasks.runtime.retry import SERVICE_RETRY, RetryPolicy
from aitasks.runtime.task import (
    InputArtifact,
    InputLocation,
    Metric,
    OutputArtifact,
    Runtime,
    TaskContext,
    TaskModel,
    ai_task,
)

#: Registered name of the audio classifier in MLflow.
CLASSIFIER_NAME_PATTERN = r"^[a-z][a-z0-9_-]{0,62}$"


# -------------------------------------------------------------------------------- classifier


class TrainClassifierParams(TaskModel):
    labelled_root: InputLocation = Field(
        min_length=1, description="Labelled folder: labels.csv (path,label) or <label>/<files>; local directory."
    )
    labels: list[str] = Field(
        default=["drums", "tonal", "noise", "speech"], min_length=2, max_length=1000, description="Class names."
    )
    test_fraction: float = Field(default=0.25, gt=0, lt=0.9, description="Held-out share, per class, for the test.")
    epochs: int = Field(default=30, ge=1, le=10_000, description="Maximum epochs (early stopping on validation).")
    clip_seconds: float = Field(default=4.0, gt=0, le=120, description="Model input crop length.")
    seed: int = Field(default=0, ge=0, le=2**31 - 1, description="Seed of splits, init and augmentation.")
    device: str = Field(default="auto", pattern=r"^(auto|cpu|cuda)$", description="auto: CUDA when available.")
    backend: str = Field(
        default="torch", pattern=r"^(torch|keras)$", description="torch, or keras (Keras 3 on TensorFlow)."
    )

    _nul = field_validator("labelled_root")(_no_nul)


class TrainClassifierResult(TaskModel):
    model_uri: OutputArtifact
    labels: list[str]
    accuracy: Annotated[float, Metric()]
    macro_f1: Annotated[float, Metric()]
    chance: Annotated[float, Metric()]
    per_class_f1: Annotated[dict[str, float], Metric(prefix="f1_")]
    confusion: list[list[int]]
    n_train: int
    n_test: int
    skipped_files: int
    seconds: float

    def artifact_metadata(self, field: str) -> dict[str, Any]:
        return {"accuracy": self.accuracy}

    def confusion_matrix(self) -> tuple[list[str], list[list[int]]]:
        """(labels, rows) for the KFP UI's confusion matrix."""
        return self.labels, self.confusion


def _labelled_state(params: Any, rt: Runtime) -> dict[str, Any]:
    """The labelled folder's content: new or changed clips mean a new model."""
    return _catalog_state(ListCatalogParams(catalog_root=params.labelled_root), rt)


@ai_task(name="audio.train_classifier", version="1.1.0", retry=RetryPolicy(max_attempts=2), state=_labelled_state)
def train_classifier_task(params: TrainClassifierParams, ctx: TaskContext) -> TrainClassifierResult:
    """Train and test the mel-spectrogram CNN audio classifier on a labelled folder.

    EN: Reads any labelled folder (labels.csv or one sub-folder per label; undecodable files are
    skipped and counted), holds out a stratified test split, trains a small CNN on log-mel
    spectrograms computed in PyTorch (GPU when available) with augmentation and early stopping, and
    reports accuracy, macro F1, per-class F1 and the confusion matrix on the test split against chance.
    The model is saved as safetensors plus a JSON config (never pickle); with ``backend=keras`` the
    same model is trained with Keras 3 on TensorFlow and saved as ``.keras`` plus a SavedModel.
    FR: Lit n'importe quel dossier étiqueté (labels.csv ou un sous-dossier par étiquette ; les fichiers
    illisibles sont ignorés et comptés), réserve un jeu de test stratifié, entraîne un petit CNN sur des
    spectrogrammes log-mel calculés dans PyTorch (GPU si disponible) avec augmentation et arrêt
    anticipé, et rapporte exactitude, F1 macro, F1 par classe et matrice de confusion sur le jeu de
    test face au hasard. Le modèle est enregistré en safetensors plus une configuration JSON (jamais
    pickle) ; avec ``backend=keras``, le même modèle est entraîné avec Keras 3 sur TensorFlow et
    enregistré en ``.keras`` plus un SavedModel.
    DE: Liest einen beliebigen gelabelten Ordner (labels.csv oder ein Unterordner je Label; nicht
    dekodierbare Dateien werden übersprungen und gezählt), hält einen stratifizierten Testanteil
    zurück, trainiert ein kleines CNN auf in PyTorch berechneten Log-Mel-Spektrogrammen (GPU, wenn
    vorhanden) mit Augmentierung und Early Stopping und meldet Genauigkeit, Makro-F1, F1 je Klasse und
    die Konfusionsmatrix auf dem Testanteil im Vergleich zum Zufall. Das Modell wird als safetensors
    plus JSON-Konfiguration gespeichert (nie pickle); mit ``backend=keras`` wird dasselbe Modell mit
    Keras 3 auf TensorFlow trainiert und als ``.keras`` plus SavedModel gespeichert.
    """
    import time

    import numpy as np

    from aitasks.audio_analysis.classifier import (
        ClassifierConfig,
        evaluate,
        load_labelled_folder,
        save_classifier,
        train_classifier,
    )
    from aitasks.runtime.bundle import publish_bundle
    from aitasks.runtime.errors import FieldIssue, InvalidInputError
    from aitasks.runtime.storage import local_tree

    cfg = ClassifierConfig(
        labels=tuple(params.labels),
        epochs=params.epochs,
        clip_seconds=params.clip_seconds,
        seed=params.seed,
        device=params.device,  # type: ignore[arg-type]
        backend=params.backend,  # type: ignore[arg-type]
    )
    start = time.perf_counter()
    # A gs:// folder is downloaded to a temp directory: pods share no disk with the step that wrote it.
    try:
        with local_tree(params.labelled_root, ctx.storage) as root:
            if not root.is_dir():
                raise InvalidInputError(ctx.task, [FieldIssue("labelled_root", f"{root} is not a directory")])
            folder = load_labelled_folder(root, cfg)
    except FileNotFoundError:
        raise InvalidInputError(
            ctx.task, [FieldIssue("labelled_root", f"{params.labelled_root}: no labelled clips there")]
        ) from None
    test_mask = _test_mask(folder.labels, cfg.labels, params.test_fraction, params.seed, ctx.task)
    train_idx, test_idx = np.flatnonzero(~test_mask), np.flatnonzero(test_mask)
    train_x, train_y = [folder.clips[i] for i in train_idx], [folder.labels[i] for i in train_idx]
    if cfg.backend == "keras":  # TensorFlow is imported only here
        from aitasks.audio_analysis.classifier.keras_backend import save_keras_classifier, train_keras_classifier

        model: Any
        model, train_report = train_keras_classifier(train_x, train_y, cfg)
    else:
        model, train_report = train_classifier(train_x, train_y, cfg)
    report = evaluate(model, [folder.clips[i] for i in test_idx], [folder.labels[i] for i in test_idx], cfg)
    seconds = time.perf_counter() - start
    with tempfile.TemporaryDirectory(prefix="aitasks-clf-") as tmp:
        out = Path(tmp)
        if cfg.backend == "keras":
            save_keras_classifier(model, out)
        else:
            save_classifier(model, cfg, out)
        (out / "report.json").write_text(
            json.dumps(
                {
                    "test": report.model_dump(mode="json"),
                    "validation": train_report.model_dump(mode="json"),
                    "skipped": folder.skipped,
                },
                indent=1,
            ),
            "utf-8",
        )
        uri = publish_bundle(
            ctx.storage,
            out,
            ctx.output_uri("classifier"),
            kind="model",
            meta={
                "task": f"{ctx.task}@{ctx.version}",
                "params": params.model_dump(mode="json"),
                "accuracy": report.accuracy,
                "macro_f1": report.macro_f1,
            },
        )
    ctx.log.info("audio.classifier_trained", accuracy=round(report.accuracy, 4), macro_f1=round(report.macro_f1, 4))
    return TrainClassifierResult(
        model_uri=uri,
        labels=list(cfg.labels),
        accuracy=report.accuracy,
        macro_f1=report.macro_f1,
        chance=report.chance,
        per_class_f1={k: v.f1 for k, v in report.per_class.items()},
        confusion=report.confusion,
        n_train=len(train_idx),
        n_test=len(test_idx),
        skipped_files=len(folder.skipped),
        seconds=seconds,
    )


def _test_mask(labels: list[int], names: tuple[str, ...], test_fraction: float, seed: int, task: str) -> Any:
    """The held-out clips (a boolean mask): per class a seeded choice of ``round(n * test_fraction)``, at least 1.

    ``audio.explain_classifier`` calls it with the bundle's parameters to find the same clips.
    """
    import numpy as np

    from aitasks.runtime.errors import FieldIssue, InvalidInputError

    rng = np.random.default_rng(seed)
    y = np.asarray(labels)
    test_mask = np.zeros(len(y), bool)
    for k in range(len(names)):
        idx = np.flatnonzero(y == k)
        if len(idx) < 2:
            raise InvalidInputError(
                task, [FieldIssue("labelled_root", f"class {names[k]!r} has {len(idx)} clips; need >= 2")]
            )
        take = max(1, round(len(idx) * test_fraction))
        test_mask[rng.choice(idx, size=take, replace=False)] = True
    return test_mask


class RegisterClassifierParams(TaskModel):
    model_uri: InputArtifact = Field(description="Classifier bundle from audio.train_classifier.")
    model_name: str = Field(default="audio-classifier", pattern=CLASSIFIER_NAME_PATTERN, description="MLflow name.")
    min_accuracy: float = Field(default=0.6, ge=0, le=1, description="Test accuracy needed to become champion.")


class RegisterClassifierResult(TaskModel):
    model_name: str
    version: int
    created: bool
    promoted: bool
    accuracy: float


@ai_task(name="audio.register_classifier", version="1.0.0", retry=SERVICE_RETRY, deadline_s=1200)
def register_classifier_task(params: RegisterClassifierParams, ctx: TaskContext) -> RegisterClassifierResult:
    """Register the audio classifier in MLflow and make it champion when it is good enough.

    EN: Logs the classifier's files (safetensors + JSON, with checksums; never pickle), its test metrics
    and lineage tags (code version, git revision, trace id, KFP run id) as a model version, keyed by the
    model's content so a re-run never makes a second version, and moves the ``champion`` alias to it
    when its test accuracy reaches the threshold and beats chance, under the platform's one promotion
    policy: a version that was rolled back is not made champion again by a re-run.
    FR: Journalise les fichiers du classifieur (safetensors + JSON, avec sommes de contrôle ; jamais
    pickle), ses métriques de test et sa lignée (version du code, révision git, identifiant de trace,
    exécution KFP) comme version de modèle, indexée par le contenu du modèle pour qu'une relance ne crée
    jamais de seconde version, et y déplace l'alias ``champion`` quand son exactitude de test atteint le
    seuil et bat le hasard, selon la règle de promotion unique de la plateforme : une version retirée par
    un retour arrière ne redevient pas champion par une relance.
    DE: Protokolliert die Dateien des Klassifikators (safetensors + JSON, mit Prüfsummen; nie pickle),
    seine Testmetriken und Herkunft (Code-Version, Git-Revision, Trace-Id, KFP-Run) als Modellversion,
    nach Modellinhalt verschlüsselt, sodass ein erneuter Lauf keine zweite Version erzeugt, und setzt
    den Alias ``champion`` darauf, wenn die Testgenauigkeit die Schwelle erreicht und den Zufall schlägt,
    nach der einen Beförderungsregel der Plattform: eine zurückgerollte Version wird durch einen erneuten
    Lauf nicht wieder Champion.
    """
    from aitasks.platform.registry import Lineage, model_params, register_and_promote, registry_config
    from aitasks.runtime.bundle import open_bundle

    reg = registry_config(ctx.settings, model_name=params.model_name)
    model_hash = ctx.storage.content_hash(params.model_uri)
    with open_bundle(params.model_uri, ctx.storage, kind="model") as (model_dir, manifest):
        meta = manifest["meta"]
        report = json.loads((model_dir / "report.json").read_text("utf-8"))["test"]
        accuracy = float(report["accuracy"])
        # The same policy as the recommender's model.promote: a version a rollback demoted stays demoted.
        registration = register_and_promote(
            reg,
            model_dir,
            lineage=Lineage.of(ctx, model_sha=model_hash, meta=meta),
            tags={
                "aitasks.labels": ",".join(report["labels"]),
                "aitasks.backend": str(meta.get("params", {}).get("backend", "torch")),
            },
            params=model_params(meta),
            metrics={
                "accuracy": accuracy,
                "macro_f1": float(report["macro_f1"]),
                "chance": float(report["chance"]),
                **{f"f1_{k}": float(v["f1"]) for k, v in report["per_class"].items() if k.isidentifier()},
            },
            run_name=f"audio-classifier-{ctx.runtime.run.run_id}",
            blessed=accuracy >= params.min_accuracy and accuracy > float(report["chance"]),
        )
    version, promoted = registration.version, registration.promoted
    outcome = registration.promotion.outcome if registration.promotion else "not_blessed"
    ctx.log.info("audio.classifier_registered", version=version.version, promoted=promoted, promotion=outcome)
    return RegisterClassifierResult(
        model_name=params.model_name,
        version=version.version,
        created=version.created,
        promoted=promoted,
        accuracy=accuracy,
    )


class ClassifyParams(TaskModel):
    model_uri: InputArtifact = Field(description="Classifier bundle.")
    analysis_uri: InputArtifact = Field(description="Catalog analysis bundle (the tracks that decoded).")
    batch_size: int = Field(default=32, ge=1, le=4096, description="Crops per forward pass.")


class ClassifyResult(TaskModel):
    predictions_uri: OutputArtifact
    tracks: Annotated[int, Metric()]
    failed: Annotated[int, Metric()]
    class_counts: Annotated[dict[str, int], Metric(prefix="class_")]

    def artifact_metadata(self, field: str) -> dict[str, Any]:
        return {"tracks": self.tracks}


@ai_task(name="audio.classify", version="1.0.0", retry=RetryPolicy(max_attempts=2))
def classify_task(params: ClassifyParams, ctx: TaskContext) -> ClassifyResult:
    """Batch inference: classify every analysed track with the audio classifier.

    EN: Loads the classifier (torch: safetensors, shapes checked; Keras: a checked ``.keras``),
    decodes each track that passed
    analysis at the model's sample rate, and predicts its class from up to eight evenly spaced crops
    (averaged logits). Writes label, confidence and every class probability per track.
    FR: Charge le classifieur (torch : safetensors, formes vérifiées ; Keras : un ``.keras`` vérifié),
    décode chaque titre qui a
    passé l'analyse à la fréquence du modèle et prédit sa classe à partir d'au plus huit extraits
    régulièrement espacés (logits moyennés). Écrit étiquette, confiance et probabilité de chaque classe
    par titre.
    DE: Lädt den Klassifikator (torch: safetensors, Formen geprüft; Keras: ein geprüftes ``.keras``),
    dekodiert jeden Titel, der die Analyse
    bestanden hat, mit der Abtastrate des Modells und sagt seine Klasse aus bis zu acht gleichmäßig
    verteilten Ausschnitten vorher (gemittelte Logits). Schreibt Label, Konfidenz und die
    Wahrscheinlichkeit jeder Klasse je Titel.
    """
    from collections import Counter

    import pyarrow as pa
    import pyarrow.parquet as pq

    from aitasks.audio_analysis.analyze import FEATURES_FILE, decode_many
    from aitasks.audio_analysis.classifier import load_any_classifier, predict
    from aitasks.audio_analysis.decode import DecodeConfig
    from aitasks.runtime.bundle import open_bundle

    with (
        open_bundle(params.model_uri, ctx.storage, kind="model") as (model_dir, _),
        open_bundle(params.analysis_uri, ctx.storage, kind="audio_analysis") as (folder, _),
    ):
        model, cfg = load_any_classifier(model_dir)
        table = pq.read_table(folder / FEATURES_FILE, columns=["track_id", "uri"])
    s = ctx.settings
    dcfg = DecodeConfig(
        sample_rate=cfg.sample_rate,
        max_bytes=s.audio_max_bytes,
        max_duration_s=s.audio_max_duration_s,
        max_channels=64,  # analysis already applied the channel limit
        min_source_rate=1,
        max_source_rate=1_000_000,
    )
    track_ids = table.column("track_id").to_pylist()
    decoded = decode_many(
        table.column("uri").to_pylist(), dcfg, workers=_workers(s.audio_workers), timeout_s=s.audio_file_timeout_s
    )
    ids, clips, failed = [], [], 0
    for tid, out in zip(track_ids, decoded, strict=True):
        if isinstance(out, str):
            # Analysed a moment ago, unreadable now: the file changed; report it, classify the rest.
            failed += 1
            ctx.log.warning("audio.classify_skipped", track=tid, error=out[:200])
        else:
            ids.append(tid)
            clips.append(out)
    preds = predict(model, clips, cfg, batch_size=params.batch_size) if clips else []
    uri = ctx.output_uri("predictions.parquet")
    with ctx.publish(uri) as tmp:
        pq.write_table(
            pa.table(
                {
                    "track_id": pa.array(ids, pa.string()),
                    "label": pa.array([p.label for p in preds], pa.string()),
                    "confidence": pa.array([p.confidence for p in preds], pa.float32()),
                    "probabilities": pa.array([json.dumps(p.probabilities, sort_keys=True) for p in preds]),
                }
            ),
            tmp,
        )
    counts = Counter(p.label for p in preds)
    return ClassifyResult(
        predictions_uri=uri, tracks=len(ids), failed=failed, class_counts=dict(sorted(counts.items()))
    )
