"""Platform tasks of the model-training family: training set, train, evaluate, register, promote.

Each task resolves its artifact URIs (bundles addressed by their ``MANIFEST.json``), calls the
core functions of this package and publishes its outputs under the call's keyed work directory.
Heavy imports (torch, mlflow, Feast) happen inside the task bodies.
"""

from __future__ import annotations

import json
import re
import tempfile
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import AwareDatetime, Field, field_validator

from aitasks.platform.registry import MODEL_NAME_PATTERN
from aitasks.runtime.retry import SERVICE_RETRY, RetryPolicy
from aitasks.runtime.task import (
    InputArtifact,
    Metric,
    OutputArtifact,
    Runtime,
    TaskContext,
    TaskModel,
    ai_task,
)

_PROJECT = re.compile(r"^[a-z][a-z0-9_]{0,62}$")

# ------------------------------------------------------------------------------- training set


class TrainingSetParams(TaskModel):
    events_uri: InputArtifact = Field(description="Validated events (Parquet, contract schema).")
    catalog_uri: InputArtifact = Field(description="Track catalog (Parquet).")
    user_features_uri: InputArtifact = Field(description="User feature snapshots (Feast offline source).")
    track_features_uri: InputArtifact = Field(description="Track feature snapshots (Feast offline source).")
    project: str = Field(default="aitasks", description="Feast project name.")
    online_store: Literal["sqlite", "redis"] = Field(default="sqlite", description="Feast online store kind.")
    holdout_days: int = Field(default=1, ge=1, le=30, description="Final days held out for evaluation.")

    @field_validator("project")
    @classmethod
    def _ident(cls, v: str) -> str:
        if not _PROJECT.match(v):
            raise ValueError("must be lowercase letters, digits and underscores, starting with a letter")
        return v


class TrainingSetResult(TaskModel):
    training_set_uri: OutputArtifact
    split_at: AwareDatetime
    train_rows: Annotated[int, Metric()]
    train_users: Annotated[int, Metric()]
    holdout_users: Annotated[int, Metric()]
    holdout_targets: Annotated[int, Metric()]
    items: Annotated[int, Metric()]
    snapshot_hash: str

    @property
    def split_at_iso(self) -> str:
        return self.split_at.isoformat()

    def artifact_metadata(self, field: str) -> dict[str, Any]:
        return {"snapshot_hash": self.snapshot_hash}


@ai_task(name="reco.training_set", version="1.1.0", retry=RetryPolicy(max_attempts=3))
def training_set_task(params: TrainingSetParams, ctx: TaskContext) -> TrainingSetResult:
    """Build the recommender's training set from Feast with a time-based split.

    EN: Takes the plays that were not skipped, holds out the final day(s) as evaluation targets and joins
    point-in-time user and track features from Feast `get_historical_features` (each training row sees
    only the snapshot valid at its play time). Writes the training rows, the held-out users and targets,
    the catalog snapshot and the already-played pairs as one bundle of Parquet files.
    FR: Prend les écoutes non passées, réserve le ou les derniers jours comme cibles d'évaluation et joint
    les caractéristiques des auditeurs et des titres à la date de chaque écoute via Feast
    `get_historical_features` (chaque ligne ne voit que l'instantané valide à l'instant de l'écoute).
    Écrit les lignes d'entraînement, les auditeurs et cibles réservés, l'instantané du catalogue et les
    paires déjà écoutées dans un seul lot de fichiers Parquet.
    DE: Nimmt die nicht übersprungenen Wiedergaben, hält den oder die letzten Tage als Evaluationsziele
    zurück und verbindet zeitpunktgenaue Hörer- und Titelmerkmale aus Feast `get_historical_features`
    (jede Trainingszeile sieht nur die zum Zeitpunkt der Wiedergabe gültige Momentaufnahme). Schreibt
    Trainingszeilen, zurückgehaltene Hörer und Ziele, den Katalogstand und bereits gehörte Paare als ein
    Bündel von Parquet-Dateien.
    """
    from aitasks.model_training.training_set import build_training_set, read_feature_vocabularies
    from aitasks.platform import feature_store as fs
    from aitasks.runtime.bundle import publish_bundle
    from aitasks.runtime.storage import local_copy

    with (
        local_copy(params.events_uri, ctx.storage) as events,
        local_copy(params.catalog_uri, ctx.storage) as catalog,
        local_copy(params.user_features_uri, ctx.storage) as user_features,
        local_copy(params.track_features_uri, ctx.storage) as track_features,
        tempfile.TemporaryDirectory(prefix="aitasks-ts-") as tmp,
    ):
        cfg = fs.config_for(
            settings=ctx.settings,
            project=params.project,
            user_features=user_features,
            track_features=track_features,
            online_store=params.online_store,
        )
        # The vocabularies the features were computed with travel on to the model.
        vocab = read_feature_vocabularies(user_features, track_features)
        # Applying is idempotent; it points the registry's offline sources at this step's files.
        fs.apply_repo(cfg)
        report = build_training_set(
            cfg,
            events=events,
            tracks=catalog,
            out_dir=Path(tmp),
            holdout_days=params.holdout_days,
            vocabularies=vocab,
        )
        uri = publish_bundle(
            ctx.storage,
            Path(tmp),
            ctx.output_uri("training_set"),
            kind="training_set",
            meta={"split_at": report.split_at.isoformat(), "snapshot_hash": report.snapshot_hash},
        )
    ctx.log.info("reco.training_set", train_rows=report.train_rows, holdout_users=report.holdout_users)
    return TrainingSetResult(
        training_set_uri=uri,
        split_at=report.split_at,
        train_rows=report.train_rows,
        train_users=report.train_users,
        holdout_users=report.holdout_users,
        holdout_targets=report.holdout_targets,
        items=report.items,
        snapshot_hash=report.snapshot_hash,
    )


# -------------------------------------------------------------------------------------- train


class TrainParams(TaskModel):
    training_set_uri: InputArtifact = Field(description="Training-set bundle (its MANIFEST.json).")
    epochs: int = Field(default=4, ge=1, le=1000, description="Passes over the training rows.")
    batch_size: int = Field(default=1024, ge=8, le=65_536, description="Rows per batch (in-batch negatives).")
    lr: float = Field(default=3e-3, gt=0, le=1, description="Learning rate of the dense parameters (Adam).")
    sparse_lr: float = Field(default=3e-2, gt=0, le=10, description="Learning rate of the id embeddings.")
    seed: int = Field(default=0, ge=0, le=2**31 - 1, description="Random seed; same seed, same weights.")
    embedding_dim: int = Field(default=64, ge=2, le=1024, description="Output embedding size (index dim).")
    id_dim: int = Field(default=32, ge=1, le=1024, description="Id embedding size.")
    hidden_dim: int = Field(default=128, ge=2, le=8192, description="Hidden layer size of each tower.")
    temperature: float = Field(default=0.05, gt=0, le=10, description="Softmax temperature.")
    logq_correction: bool = Field(default=True, description="Correct in-batch negatives for popularity.")
    device: Literal["auto", "cpu", "cuda"] = Field(default="auto", description="Training device.")
    average_epochs: int = Field(
        default=3, ge=1, le=1000, description="Average the weights of checkpoints over the last this many epochs."
    )
    checkpoints_per_epoch: int = Field(default=4, ge=1, le=1000, description="Checkpoints averaged per epoch.")
    lr_decay: Literal["none", "linear", "cosine"] = Field(default="cosine", description="Learning-rate schedule.")
    precision: Literal["auto", "fp32", "bf16", "fp16"] = Field(
        default="auto", description="Autocast precision: auto (bf16/fp16 on CUDA, fp32 on CPU) or forced."
    )
    workers: int = Field(
        default=1, ge=1, le=64, description="Data-parallel processes on this node (DDP through torchrun when > 1)."
    )
    checkpoint_every_steps: int = Field(
        default=0, ge=0, le=10_000_000, description="Checkpoint every this many steps (0: at each epoch's end)."
    )


def _train_config(params: TrainParams) -> tuple[Any, dict[str, Any]]:
    """The :class:`~aitasks.model_training.two_tower.TrainConfig` and architecture of ``params``."""
    from aitasks.model_training.two_tower import TrainConfig

    tcfg = TrainConfig(
        epochs=params.epochs,
        batch_size=params.batch_size,
        lr=params.lr,
        sparse_lr=params.sparse_lr,
        seed=params.seed,
        logq_correction=params.logq_correction,
        device=None if params.device == "auto" else params.device,
        average_epochs=params.average_epochs,
        checkpoints_per_epoch=params.checkpoints_per_epoch,
        lr_decay=params.lr_decay,
        precision=params.precision,
    )
    arch = {
        "embedding_dim": params.embedding_dim,
        "id_dim": params.id_dim,
        "hidden_dim": params.hidden_dim,
        "temperature": params.temperature,
    }
    return tcfg, arch


class TrainResult(TaskModel):
    model_uri: OutputArtifact
    examples: Annotated[int, Metric()]
    examples_per_s: Annotated[float, Metric()]
    seconds: float
    final_loss: Annotated[float, Metric()]
    loss_curve: list[float]
    seed: int
    data_snapshot: str
    device: str = Field(default="cpu", description="Device rank 0 trained on.")
    precision: str = Field(default="fp32", description="Precision trained with (fp32, bf16, fp16).")
    world_size: Annotated[int, Metric()] = 1
    resumed_from_step: int | None = Field(default=None, description="Checkpoint step a retry resumed from.")

    def artifact_metadata(self, field: str) -> dict[str, Any]:
        return {"framework": "pytorch", "format": "safetensors", "seed": self.seed}


@ai_task(name="model.train", version="1.3.0", retry=RetryPolicy(max_attempts=2))
def train_model_task(params: TrainParams, ctx: TaskContext) -> TrainResult:
    """Train the two-tower retrieval model (PyTorch) and save it as safetensors.

    EN: Trains a user tower (Feast user features + id embedding) and an item tower (track features + id
    embedding) with in-batch sampled softmax and a popularity (logQ) correction. Id embeddings are
    sparse (SparseAdam), batches vectorised, threads pinned; the same seed gives the same weights.
    The model bundle holds the weights (safetensors, never pickle), its configuration, the id
    vocabularies and the popularity fallback. Device and precision are chosen at run time (bf16/fp16
    autocast on CUDA, fp32 on CPU); `workers` > 1 trains with PyTorch DDP through torchrun (the same model
    as one process); checkpoints go to the call's work directory, so a retry after a killed pod resumes.
    FR: Entraîne une tour auditeur (caractéristiques Feast + plongement d'identifiant) et une tour titre
    (caractéristiques du titre + plongement d'identifiant) avec un softmax échantillonné dans le lot et
    une correction de popularité (logQ). Les plongements d'identifiants sont creux (SparseAdam), les lots
    vectorisés, les threads fixés ; la même graine donne les mêmes poids. Le lot du modèle contient les
    poids (safetensors, jamais pickle), sa configuration, les vocabulaires et le repli de popularité.
    Appareil et précision sont choisis à l'exécution (autocast bf16/fp16 sur CUDA, fp32 sur CPU) ;
    `workers` > 1 entraîne avec PyTorch DDP via torchrun (le même modèle qu'un seul processus) ; les
    points de reprise vont dans le répertoire de travail de l'appel : une relance après un pod tué reprend.
    DE: Trainiert einen Hörer-Turm (Feast-Merkmale + Id-Embedding) und einen Titel-Turm (Titelmerkmale +
    Id-Embedding) mit In-Batch-Sampled-Softmax und Popularitätskorrektur (logQ). Id-Embeddings sind
    dünn besetzt (SparseAdam), Batches vektorisiert, Threads fest; derselbe Seed ergibt dieselben
    Gewichte. Das Modellbündel enthält die Gewichte (safetensors, nie pickle), die Konfiguration, die
    Id-Vokabulare und den Popularitäts-Fallback. Gerät und Präzision werden zur Laufzeit gewählt
    (bf16/fp16-Autocast auf CUDA, fp32 auf der CPU); `workers` > 1 trainiert mit PyTorch DDP über torchrun
    (dasselbe Modell wie ein Prozess); Checkpoints liegen im Arbeitsverzeichnis des Aufrufs, ein erneuter
    Versuch nach einem beendeten Pod setzt dort fort.
    """
    from aitasks.model_training.checkpoint import CheckpointPolicy, CheckpointStore
    from aitasks.model_training.recommender import train_recommender
    from aitasks.runtime.bundle import open_bundle, publish_bundle

    tcfg, arch = _train_config(params)
    # In the call's work directory (keyed by the idempotency key): a retry of this call resumes from it.
    checkpoint = CheckpointPolicy(
        uri=ctx.output_uri("checkpoints"), every_steps=params.checkpoint_every_steps or None, keep=2
    )
    with (
        open_bundle(params.training_set_uri, ctx.storage, kind="training_set") as (ts_dir, ts_manifest),
        tempfile.TemporaryDirectory(prefix="aitasks-model-") as tmp,
    ):
        report = train_recommender(ts_dir, Path(tmp), tcfg, arch=arch, workers=params.workers, checkpoint=checkpoint)
        curve = [float(h["loss"]) for h in report.history]
        ran = {"device_used": report.device, "precision_used": report.precision, "world_size": report.world_size}
        snapshot = str(ts_manifest["meta"].get("snapshot_hash", ""))
        uri = publish_bundle(
            ctx.storage,
            Path(tmp),
            ctx.output_uri("model"),
            kind="model",
            meta={
                "task": f"{ctx.task}@{ctx.version}",
                # What the run used (not only what it asked for): the register step logs these as MLflow params.
                "params": params.model_dump(mode="json", exclude={"training_set_uri"}) | ran,
                "data_snapshot": snapshot,
                "loss_curve": curve,
                "examples_per_s": report.examples_per_s,
            },
        )
    CheckpointStore(checkpoint, ctx.storage).clear()
    ctx.log.info(
        "model.trained",
        examples=report.examples,
        examples_per_s=round(report.examples_per_s),
        device=report.device,
        precision=report.precision,
        world_size=report.world_size,
        resumed_from_step=report.resumed_from_step,
    )
    return TrainResult(
        model_uri=uri,
        examples=report.examples,
        examples_per_s=report.examples_per_s,
        seconds=report.seconds,
        final_loss=curve[-1] if curve else float("nan"),
        loss_curve=curve,
        seed=params.seed,
        data_snapshot=snapshot,
        device=report.device,
        precision=report.precision,
        world_size=report.world_size,
        resumed_from_step=report.resumed_from_step,
    )


# ------------------------------------------------------------------------- train on a PyTorchJob

_K8S_NAME = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"


class PyTorchJobTrainParams(TrainParams):
    """``model.train``'s settings plus where and how the PyTorchJob runs (``workers``: processes per CPU pod)."""

    image: str = Field(min_length=3, description="Training image with an immutable tag (the GPU image).")
    namespace: str = Field(default="kubeflow", pattern=_K8S_NAME, max_length=63, description="Namespace of the job.")
    replicas: int = Field(default=2, ge=1, le=256, description="Pods: one Master and replicas-1 Workers.")
    gpus_per_replica: int = Field(default=1, ge=0, le=16, description="nvidia.com/gpu per pod (0: CPU, gloo).")
    node_selector: dict[str, str] = Field(default_factory=dict, description="Node selector of the pods.")
    tolerations: list[dict[str, Any]] = Field(default_factory=list, description="Tolerations of the pods.")
    timeout_s: int = Field(default=6 * 3600, ge=60, le=7 * 24 * 3600, description="Give up after this long.")
    cleanup: Literal["always", "on_success", "never"] = Field(
        default="on_success", description="Delete the job: always, on success (keep failed ones), never."
    )


@ai_task(name="model.train_pytorchjob", version="1.0.0", retry=RetryPolicy(max_attempts=2), deadline_s=7 * 24 * 3600)
def train_pytorchjob_task(params: PyTorchJobTrainParams, ctx: TaskContext) -> TrainResult:
    """Train the two-tower model on a Kubeflow PyTorchJob (Master + Workers, GPUs) and wait for it.

    EN: Writes the training job (settings, training set, output and checkpoint locations) to the run's
    storage, submits a kubeflow.org/v1 PyTorchJob whose replicas run the same DDP entry point as
    `model.train` (torchrun, NCCL on GPUs), streams its status conditions to the log, and fails with the
    failed replica and the operator's reason, or on timeout. The job name derives from the idempotency
    key: a retry re-attaches to the running job, and a new job resumes from the checkpoints. Rank 0
    publishes the model bundle; the result is the same as `model.train`'s.
    FR: Écrit la tâche d'entraînement (réglages, jeu d'entraînement, emplacements du modèle et des points
    de reprise) dans le stockage de l'exécution, soumet un PyTorchJob kubeflow.org/v1 dont les réplicas
    lancent le même point d'entrée DDP que `model.train` (torchrun, NCCL sur GPU), journalise ses
    conditions d'état et échoue en nommant le réplica en échec et la raison de l'opérateur, ou au délai
    dépassé. Le nom du job dérive de la clé d'idempotence : une relance se rattache au job en cours, un
    nouveau job reprend depuis les points de reprise. Le rang 0 publie le lot du modèle ; le résultat est
    celui de `model.train`.
    DE: Schreibt den Trainingsauftrag (Einstellungen, Trainingsdaten, Modell- und Checkpoint-Orte) in den
    Speicher des Laufs, reicht einen kubeflow.org/v1 PyTorchJob ein, dessen Replikas denselben
    DDP-Einstiegspunkt wie `model.train` starten (torchrun, NCCL auf GPUs), protokolliert seine
    Statusbedingungen und schlägt mit dem ausgefallenen Replika und dem Grund des Operators fehl, oder bei
    Zeitüberschreitung. Der Jobname folgt aus dem Idempotenzschlüssel: ein erneuter Versuch hängt sich an
    den laufenden Job, ein neuer Job setzt an den Checkpoints fort. Rang 0 veröffentlicht das
    Modellbündel; das Ergebnis ist das von `model.train`.
    """
    from aitasks.model_training.checkpoint import CheckpointPolicy
    from aitasks.model_training.distributed import JobSpec
    from aitasks.model_training.pytorchjob import (
        SECRET_ENV,
        PyTorchJobConfig,
        PyTorchJobLauncher,
        custom_objects_api,
        job_name,
        render_pytorchjob,
    )
    from aitasks.runtime.bundle import read_manifest
    from aitasks.runtime.errors import ConfigurationError
    from aitasks.runtime.settings import Settings
    from aitasks.runtime.storage import is_gcs, join_uri

    if not is_gcs(ctx.output_uri("job.json")):
        # Pods on other nodes cannot see this machine's disk.
        raise ConfigurationError("a PyTorchJob needs a storage root every pod sees (gs://); set AITASKS_STORAGE_ROOT")
    tcfg, arch = _train_config(params)
    checkpoint = CheckpointPolicy(uri=ctx.output_uri("checkpoints"), every_steps=params.checkpoint_every_steps or None)
    ts_manifest = read_manifest(params.training_set_uri, ctx.storage, kind="training_set")
    snapshot = str(ts_manifest["meta"].get("snapshot_hash", ""))
    job = JobSpec(
        training_set=params.training_set_uri,
        output=ctx.output_uri("model"),
        train=tcfg.model_dump(mode="json"),
        arch=arch,
        checkpoint=checkpoint.model_dump(mode="json"),
        meta={
            "task": f"{ctx.task}@{ctx.version}",
            "params": params.model_dump(mode="json", include=set(TrainParams.model_fields) - {"training_set_uri"}),
            "data_snapshot": snapshot,
        },
    )
    job_uri = ctx.output_uri("job.json")
    ctx.storage.write_bytes(job_uri, job.model_dump_json().encode("utf-8"))
    secret_vars = set(SECRET_ENV.values())
    cfg = PyTorchJobConfig(
        name=job_name(ctx.key),
        namespace=params.namespace,
        image=params.image,
        job_uri=job_uri,
        replicas=params.replicas,
        gpus_per_replica=params.gpus_per_replica,
        procs_per_replica=None if params.gpus_per_replica else params.workers,
        node_selector=params.node_selector,
        tolerations=params.tolerations,
        settings_env=tuple(sorted({f"AITASKS_{f.upper()}" for f in Settings.model_fields} - secret_vars)),
        labels={"aitasks.io/task": "model-train_pytorchjob", "aitasks.io/task-version": ctx.version},
    )
    launcher = PyTorchJobLauncher(
        custom_objects_api(), on_condition=lambda c: ctx.log.info("pytorchjob.condition", job=cfg.name, **c)
    )
    outcome = launcher.run(render_pytorchjob(cfg), timeout_s=params.timeout_s, cleanup=params.cleanup)
    uri = join_uri(job.output, "MANIFEST.json")
    meta = read_manifest(uri, ctx.storage, kind="model")["meta"]
    report = meta.get("train_report") or {}
    curve = [float(x) for x in meta.get("loss_curve", [])]
    ctx.log.info("model.trained_pytorchjob", job=cfg.name, adopted=outcome.adopted, deleted=outcome.deleted)
    return TrainResult(
        model_uri=uri,
        examples=int(report.get("examples", 0)),
        examples_per_s=float(report.get("examples_per_s", 0.0)),
        seconds=float(report.get("seconds", 0.0)),
        final_loss=curve[-1] if curve else float("nan"),
        loss_curve=curve,
        seed=params.seed,
        data_snapshot=snapshot,
        device=str(report.get("device", "")),
        precision=str(report.get("precision", "")),
        world_size=int(report.get("world_size", 1)),
        resumed_from_step=report.get("resumed_from_step"),
    )


# ----------------------------------------------------------------------------------- evaluate


class EvaluateParams(TaskModel):
    model_uri: InputArtifact = Field(description="Model bundle (its MANIFEST.json).")
    training_set_uri: InputArtifact = Field(description="Training-set bundle with the held-out day.")
    model_name: str = Field(
        default="reco-two-tower", pattern=MODEL_NAME_PATTERN, description="Registered model whose champion to compare."
    )
    serving_mode: Literal["auto", "all", "discovery"] = Field(
        default="auto",
        description="Serving mode and gate protocol: all (keep played), discovery (drop played), or auto (the "
        "one that recovers more next plays).",
    )
    min_lift_over_popularity: float = Field(
        default=1.2, ge=0, le=100, description="Blessing: lower bound of model / popularity >= this."
    )
    max_regression_vs_champion: float = Field(
        default=0.02, ge=0, le=1, description="Blessing: lower bound of model / champion >= 1 - this."
    )
    metric: Literal["recall_at_10", "ndcg_at_10"] = Field(default="recall_at_10", description="Blessing metric.")
    confidence: float = Field(default=0.95, gt=0, lt=1, description="Two-sided coverage of the gate's intervals.")
    bootstrap_resamples: int = Field(default=2000, ge=100, le=100_000, description="Paired bootstrap resamples.")
    bootstrap_seed: int = Field(default=0, ge=0, le=2**31 - 1, description="Seed of the bootstrap resampling.")


class EvaluateResult(TaskModel):
    metrics_uri: OutputArtifact
    report_markdown_uri: OutputArtifact
    report_html_uri: OutputArtifact
    blessed: bool
    reasons: list[str]
    serving_mode: Literal["all", "discovery"] = Field(description="The gate protocol and the serving default.")
    filter_played: bool = Field(description="The serving default of `recommend` recorded for this model.")
    model: Annotated[dict[str, Any], Metric()]
    popularity: Annotated[dict[str, Any], Metric(prefix="popularity_")]
    own_history: Annotated[dict[str, Any], Metric(prefix="own_history_")]
    champion: dict[str, Any] | None
    champion_version: int | None
    lift_over_popularity: Annotated[float, Metric()]
    vs_popularity: Annotated[dict[str, Any], Metric(prefix="vs_popularity_")]
    vs_champion: Annotated[dict[str, Any] | None, Metric(prefix="vs_champion_")]
    vs_own_history: Annotated[dict[str, Any], Metric(prefix="vs_own_history_")]
    protocols: dict[str, dict[str, Any]] = Field(description="Per protocol: model/popularity/own_history/champion.")
    recall_at_10_by_protocol: Annotated[dict[str, float], Metric(prefix="recall_at_10_")]

    def artifact_metadata(self, field: str) -> dict[str, Any]:
        return {"blessed": self.blessed, "serving_mode": self.serving_mode} if field == "metrics_uri" else {}


def _champion_state(params: Any, rt: Runtime) -> dict[str, Any]:
    """The champion a comparison ran against: a new champion means a new evaluation."""
    from aitasks.platform.registry import get_version, registry_config

    champion = get_version(registry_config(rt.settings, model_name=params.model_name), alias="champion")
    return {"champion": None if champion is None else champion.version}


@ai_task(name="model.evaluate", version="2.1.0", retry=RetryPolicy(max_attempts=3), state=_champion_state)
def evaluate_model_task(params: EvaluateParams, ctx: TaskContext) -> EvaluateResult:
    """Evaluate the model on the held-out day under two protocols; choose the serving mode; gate it.

    EN: Ranks the whole catalog exactly for every held-out user with the model, the popularity
    baseline, the user's own most played tracks and the current `champion` of the registry, under two
    protocols: all next plays (re-listens count) and discovery (only tracks the user had not played,
    which every ranker leaves out). Computes recall@10, recall@50, NDCG@10 and catalog coverage. The
    serving mode (whether `recommend` drops played tracks by default) is the variant that recovers more
    of the day's plays, or the configured one, and is the gate's protocol. The gate is a paired
    bootstrap over the same users: blessed only when the lower bound of the interval of model /
    popularity clears the lift and that of model / champion the allowed regression. Writes metrics JSON
    and a Markdown and HTML report with both protocols, the intervals and a recall@k plot. The champion
    version is part of the idempotency key.
    FR: Classe exactement tout le catalogue pour chaque auditeur réservé avec le modèle, la référence de
    popularité, les titres les plus écoutés de l'auditeur lui-même et le `champion` actuel du registre,
    selon deux protocoles : toutes les écoutes suivantes (les réécoutes comptent) et découverte (seuls
    les titres jamais écoutés, que chaque classement écarte). Calcule recall@10, recall@50, NDCG@10 et la
    couverture du catalogue. Le mode de service (si `recommend` écarte par défaut les titres déjà
    écoutés) est la variante qui retrouve le plus d'écoutes du jour, ou celle configurée, et c'est le
    protocole de la validation. La validation est un bootstrap apparié sur les mêmes auditeurs : validé
    seulement si la borne inférieure de l'intervalle de modèle / popularité atteint la marge et celle de
    modèle / champion la régression permise. Écrit les métriques en JSON et un rapport Markdown et HTML
    avec les deux protocoles, les intervalles et une courbe recall@k. La version du champion fait partie
    de la clé d'idempotence.
    DE: Rankt den ganzen Katalog exakt für jeden zurückgehaltenen Hörer mit dem Modell, der
    Popularitäts-Baseline, den meistgehörten Titeln des Hörers selbst und dem aktuellen `champion` der
    Registry, nach zwei Protokollen: alle nächsten Wiedergaben (Wiederholungen zählen) und Entdeckung
    (nur noch nie gehörte Titel, die jedes Ranking auslässt). Berechnet recall@10, recall@50, NDCG@10
    und Katalogabdeckung. Der Auslieferungsmodus (ob `recommend` gehörte Titel standardmäßig entfernt)
    ist die Variante, die mehr Wiedergaben des Tages trifft, oder die konfigurierte, und ist das
    Protokoll der Freigabe. Die Freigabe ist ein gepaarter Bootstrap über dieselben Hörer: freigegeben
    nur, wenn die untere Grenze des Intervalls von Modell / Popularität die Marge und die von Modell /
    Champion die erlaubte Verschlechterung erreicht. Schreibt Metriken als JSON und einen Markdown- und
    HTML-Bericht mit beiden Protokollen, den Intervallen und einer recall@k-Kurve. Die Champion-Version
    ist Teil des Idempotenzschlüssels.
    """
    from aitasks.model_training import recommender as rec
    from aitasks.model_training.evaluation import (
        BlessingRule,
        PairedComparison,
        ProtocolMetrics,
        choose_serving,
        decide_blessing,
        paired_bootstrap,
        render_report,
    )
    from aitasks.platform.registry import download_model, get_version, registry_config
    from aitasks.runtime.bundle import open_bundle

    reg = registry_config(ctx.settings, model_name=params.model_name)
    rule = BlessingRule(
        min_lift_over_popularity=params.min_lift_over_popularity,
        max_regression_vs_champion=params.max_regression_vs_champion,
        metric=params.metric,
        confidence=params.confidence,
        resamples=params.bootstrap_resamples,
        seed=params.bootstrap_seed,
    )
    with (
        open_bundle(params.training_set_uri, ctx.storage, kind="training_set") as (ts_dir, ts_manifest),
        open_bundle(params.model_uri, ctx.storage, kind="model") as (model_dir, _),
    ):
        day = rec.load_held_out_day(ts_dir)
        model = rec.evaluate_lists(day, rec.model_lists(model_dir, ts_dir, day), rule.metric)
        popularity = rec.evaluate_lists(day, rec.popularity_lists(day), rule.metric)
        own = rec.evaluate_lists(day, rec.own_history_lists(day), rule.metric)
        champion_version = get_version(reg, alias="champion")
        champion = None
        if champion_version is not None:
            with tempfile.TemporaryDirectory(prefix="aitasks-champion-") as tmp:
                _, champ_dir = download_model(reg, version=champion_version.version, dest=Path(tmp))
                champion = rec.evaluate_lists(day, rec.model_lists(champ_dir, ts_dir, day), rule.metric)

    serving = choose_serving(
        float(getattr(model.metrics["all"], rule.metric)),
        float(getattr(model.filtered_on_all, rule.metric)),
        metric=rule.metric,
        configured=None if params.serving_mode == "auto" else params.serving_mode,
    )
    gate = serving.protocol

    def versus(reference: rec.RankerEvaluation, name: str) -> PairedComparison:
        return paired_bootstrap(
            model.per_user[gate],
            reference.per_user[gate],
            reference_name=name,
            metric=rule.metric,
            confidence=rule.confidence,
            resamples=rule.resamples,
            seed=rule.seed,
        )

    vs_pop, vs_own = versus(popularity, "popularity"), versus(own, "own history")
    vs_champ = None if champion is None else versus(champion, "champion")
    blessing = decide_blessing(vs_pop, vs_champ, rule)
    protocols = [
        ProtocolMetrics(
            protocol=p,
            model=model.metrics[p],
            popularity=popularity.metrics[p],
            own_history=own.metrics[p],
            champion=None if champion is None else champion.metrics[p],
        )
        for p in ("all", "discovery")
    ]
    facts = {
        "model name": params.model_name,
        "champion version": "none" if champion_version is None else str(champion_version.version),
        "held out from": str(ts_manifest["meta"].get("split_at", "")),
        "data snapshot": str(ts_manifest["meta"].get("snapshot_hash", ""))[:16],
        "held-out users": str(len(day.user_ids)),
        "serving mode": f"{serving.protocol} ({serving.chosen_by}), filter_played={str(serving.filter_played).lower()}",
        "trace id": ctx.trace_id,
        "run id": ctx.runtime.run.run_id,
    }
    markdown, html = render_report(
        protocols=protocols,
        serving=serving,
        blessing=blessing,
        title="Recommender evaluation",
        facts=facts,
        rule=rule,
        vs_own_history=vs_own,
    )
    by_protocol = {pm.protocol: pm.model_dump(mode="json", exclude={"protocol"}) for pm in protocols}
    served = by_protocol[gate]
    payload = {
        "model": served["model"],
        "popularity": served["popularity"],
        "own_history": served["own_history"],
        "champion": served["champion"],
        "champion_version": None if champion_version is None else champion_version.version,
        "protocols": by_protocol,
        "serving": serving.model_dump(mode="json"),
        "gate": {
            "rule": rule.model_dump(mode="json"),
            "vs_popularity": vs_pop.model_dump(mode="json"),
            "vs_champion": None if vs_champ is None else vs_champ.model_dump(mode="json"),
            "vs_own_history": vs_own.model_dump(mode="json"),
        },
        "blessing": blessing.model_dump(mode="json", exclude={"vs_popularity_test", "vs_champion_test"}),
    }
    metrics_uri = ctx.output_uri("metrics.json")
    md_uri = ctx.output_uri("report.md")
    html_uri = ctx.output_uri("report.html")
    for uri, text in (
        (metrics_uri, json.dumps(payload, indent=2, sort_keys=True)),
        (md_uri, markdown),
        (html_uri, html),
    ):
        with ctx.publish(uri) as p:
            p.write_text(text, "utf-8")
    ctx.log.info(
        "model.evaluated",
        serving_mode=serving.protocol,
        recall_at_10=round(model.metrics[gate].recall_at_10, 4),
        popularity_recall_at_10=round(popularity.metrics[gate].recall_at_10, 4),
        own_history_recall_at_10=round(own.metrics[gate].recall_at_10, 4),
        lift_lower_bound=round(vs_pop.ratio_low, 4),
        blessed=blessing.blessed,
    )
    return EvaluateResult(
        metrics_uri=metrics_uri,
        report_markdown_uri=md_uri,
        report_html_uri=html_uri,
        blessed=blessing.blessed,
        reasons=list(blessing.reasons),
        serving_mode=serving.protocol,
        filter_played=serving.filter_played,
        model=served["model"],
        popularity=served["popularity"],
        own_history=served["own_history"],
        champion=served["champion"],
        champion_version=payload["champion_version"],
        lift_over_popularity=blessing.lift_over_popularity,
        vs_popularity=payload["gate"]["vs_popularity"],
        vs_champion=payload["gate"]["vs_champion"],
        vs_own_history=payload["gate"]["vs_own_history"],
        protocols=by_protocol,
        recall_at_10_by_protocol={
            f"{p}_{r}": float(by_protocol[p][r]["recall_at_10"])
            for p in ("all", "discovery")
            for r in ("model", "popularity", "own_history")
        },
    )


# ----------------------------------------------------------------------------------- register


class RegisterParams(TaskModel):
    model_uri: InputArtifact = Field(description="Model bundle (its MANIFEST.json).")
    metrics_uri: InputArtifact = Field(description="Evaluation metrics JSON (model.evaluate).")
    model_name: str = Field(default="reco-two-tower", pattern=MODEL_NAME_PATTERN, description="Registered model name.")
    feature_service: str = Field(default="reco_training", description="Feast feature service used (lineage).")


class RegisterResult(TaskModel):
    model_name: str
    version: int
    created: bool
    mlflow_run_id: str
    blessed: bool


@ai_task(name="model.register", version="1.1.0", retry=SERVICE_RETRY, deadline_s=1200)
def register_model_task(params: RegisterParams, ctx: TaskContext) -> RegisterResult:
    """Register the model in MLflow with lineage; the same model never becomes a second version.

    EN: Logs parameters, evaluation metrics and the learning curve to an MLflow run, stores the model
    bundle (safetensors + JSON, with checksums) as its artifacts and creates a model version tagged with
    its lineage: data snapshot hash, feature service, code version, trace id and KFP run id. The version
    is keyed by the model's content: re-running with the same model returns the existing version.
    FR: Journalise paramètres, métriques d'évaluation et courbe d'apprentissage dans une exécution MLflow,
    stocke le lot du modèle (safetensors + JSON, avec sommes de contrôle) comme artefacts et crée une
    version de modèle étiquetée avec sa lignée : empreinte de l'instantané de données, service de
    caractéristiques, version du code, identifiant de trace et identifiant d'exécution KFP. La version est
    indexée par le contenu du modèle : relancer avec le même modèle renvoie la version existante.
    DE: Protokolliert Parameter, Evaluationsmetriken und die Lernkurve in einem MLflow-Run, speichert das
    Modellbündel (safetensors + JSON, mit Prüfsummen) als dessen Artefakte und legt eine Modellversion
    mit ihrer Herkunft an: Hash des Datenstands, Feature-Service, Code-Version, Trace-Id und KFP-Run-Id.
    Die Version ist nach dem Modellinhalt verschlüsselt: ein erneuter Lauf mit demselben Modell liefert
    die bestehende Version.
    """
    from aitasks.platform.registry import Lineage, model_params, register_and_promote, registry_config
    from aitasks.runtime.bundle import open_bundle
    from aitasks.runtime.storage import local_copy

    reg = registry_config(ctx.settings, model_name=params.model_name)
    with local_copy(params.metrics_uri, ctx.storage) as mpath:
        evaluation = json.loads(mpath.read_text("utf-8"))
    model_hash = ctx.storage.content_hash(params.model_uri)
    with open_bundle(params.model_uri, ctx.storage, kind="model") as (model_dir, manifest):
        meta = manifest["meta"]
        blessed = bool(evaluation["blessing"]["blessed"])
        metrics = {
            f"{k}": float(v) for k, v in evaluation["model"].items() if isinstance(v, int | float) and k != "users"
        }
        for ranker in ("popularity", "own_history"):
            metrics |= {
                f"{ranker}_{k}": float(v)
                for k, v in (evaluation.get(ranker) or {}).items()
                if isinstance(v, int | float) and k != "users"
            }
        serving = evaluation.get("serving") or {}
        gate = evaluation.get("gate") or {}
        for name in ("vs_popularity", "vs_champion"):
            test = gate.get(name) or {}
            metrics |= {f"{name}_{k}": float(test[k]) for k in ("ratio", "ratio_low", "ratio_high") if k in test}
        # The serving default travels with the version: `recommend` reads it from these tags.
        serving_tags = (
            {
                "aitasks.serving_mode": str(serving["protocol"]),
                "aitasks.filter_played": str(bool(serving["filter_played"])).lower(),
            }
            if "protocol" in serving
            else {}
        )
        # Registration only: the pipeline's model.promote step applies the promotion policy.
        version = register_and_promote(
            reg,
            model_dir,
            lineage=Lineage.of(ctx, model_sha=model_hash, meta=meta),
            tags={
                "aitasks.data_snapshot": str(meta.get("data_snapshot", "")),
                "aitasks.feature_service": params.feature_service,
                "aitasks.blessed": str(blessed).lower(),
                **serving_tags,
            },
            params=model_params(meta),
            metrics=metrics,
            curves={"train_loss": [float(x) for x in meta.get("loss_curve", [])]},
            run_name=f"train-{ctx.runtime.run.run_id}",
        ).version
    ctx.log.info("model.registered", model=params.model_name, version=version.version, created=version.created)
    return RegisterResult(
        model_name=params.model_name,
        version=version.version,
        created=version.created,
        mlflow_run_id=version.run_id,
        blessed=blessed,
    )


# ------------------------------------------------------------------------------------ promote


class PromoteParams(TaskModel):
    model_name: str = Field(default="reco-two-tower", pattern=MODEL_NAME_PATTERN, description="Registered model name.")
    version: int = Field(ge=1, description="Model version to promote.")
    blessed: bool = Field(description="Evaluation verdict; the alias moves only when true.")
    alias: str = Field(default="champion", pattern=r"^[a-z][a-z0-9_-]{0,62}$", description="Alias to move.")


class PromoteResult(TaskModel):
    model_name: str
    alias: str
    version: int
    moved: bool


@ai_task(name="model.promote", version="1.0.0", retry=SERVICE_RETRY, deadline_s=300)
def promote_model_task(params: PromoteParams, ctx: TaskContext) -> PromoteResult:
    """Move the model's `champion` alias to a blessed version (never to an unblessed one).

    EN: Points the alias at the version when the evaluation blessed it; records the previous champion on
    the version so `aitasks model rollback` can restore it. Idempotent: a re-run with the same version is
    a no-op, and a human rollback is not undone by re-running the same pipeline inputs.
    FR: Fait pointer l'alias vers la version quand l'évaluation l'a validée ; note l'ancien champion sur
    la version pour que `aitasks model rollback` puisse le rétablir. Idempotent : relancer avec la même
    version ne fait rien, et relancer les mêmes entrées n'annule pas un retour arrière manuel.
    DE: Setzt den Alias auf die Version, wenn die Evaluation sie freigegeben hat; vermerkt den bisherigen
    Champion an der Version, damit `aitasks model rollback` ihn wiederherstellen kann. Idempotent: ein
    erneuter Lauf mit derselben Version ändert nichts, und ein manuelles Zurücksetzen wird durch dieselben
    Pipeline-Eingaben nicht rückgängig gemacht.
    """
    from aitasks.platform.registry import promote, registry_config

    reg = registry_config(ctx.settings, model_name=params.model_name)
    decision = promote(reg, params.version, blessed=params.blessed, alias=params.alias)
    ctx.log.info(
        "model.promoted" if decision.moved else "model.not_promoted",
        version=params.version,
        alias=params.alias,
        outcome=decision.outcome,
    )
    return PromoteResult(model_name=params.model_name, alias=params.alias, version=params.version, moved=decision.moved)
