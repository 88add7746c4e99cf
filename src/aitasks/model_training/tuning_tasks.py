"""Platform tasks of tuning and model documentation: suggest, trial, select; model card; explanations.

The ``reco-tuning`` pipeline runs ``tune.suggest`` (create the study, carve the validation split, ask
for the trials), one ``tune.trial`` per asked trial in a ``dsl.ParallelFor`` (train, score on the
validation split with pruning, tell the study), ``tune.select`` (the best trial's settings feed the
final ``model.train``), then ``model.card`` and ``model.explain`` after ``model.register``. Heavy
imports (optuna, torch, captum, mlflow) happen inside the task bodies.
"""

from __future__ import annotations

import json
import re
import tempfile
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, field_validator

from aitasks.platform.registry import MODEL_NAME_PATTERN
from aitasks.runtime.retry import SERVICE_RETRY, RetryPolicy
from aitasks.runtime.task import InputArtifact, Metric, OutputArtifact, TaskContext, TaskModel, ai_task

_STUDY = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")

# ------------------------------------------------------------------------------------ suggest


#: Keys of the run form's ``training`` group that are not trial settings (``aitasks.run_forms``): the seed and
#: device reach the study and the trials through their own inputs; a trial trains in one process at the
#: default precision without checkpoints, and the final training uses all three.
_ROUTED_ELSEWHERE = frozenset({"seed", "device", "holdout_days", "precision", "workers", "checkpoint_every_steps"})


class SuggestParams(TaskModel):
    training_set_uri: InputArtifact = Field(description="Training-set bundle (its MANIFEST.json).")
    study_name: str = Field(
        default="", description="Optuna study name; empty: reco-<data snapshot>-<configuration hash>."
    )
    n_trials: int = Field(default=8, ge=1, le=256, description="Trials asked (trained in parallel).")
    seed: int = Field(default=0, ge=0, le=2**31 - 1, description="Seed of the TPE sampler.")
    train_seed: int = Field(default=0, ge=0, le=2**31 - 1, description="Training seed of every trial.")
    pruner: Literal["median", "successive_halving", "none"] = Field(default="median", description="Trial pruner.")
    metric: Literal["recall_at_10", "ndcg_at_10"] = Field(default="recall_at_10", description="Validation metric.")
    protocol: Literal["all", "discovery"] = Field(default="all", description="Validation protocol.")
    validation_days: int = Field(default=1, ge=1, le=30, description="Last training days held out for validation.")
    search_space: dict[str, Any] = Field(
        default_factory=dict, description="{setting: range} (see docs/en/tuning.md); empty: the default space."
    )
    base: dict[str, Any] = Field(
        default_factory=dict,
        description="Settings of every trial the space does not vary: the run form's training group (its seed, "
        "device and holdout_days reach the study and the trials through their own inputs).",
    )
    include_defaults: bool = Field(default=True, description="Trial 0 trains the default settings.")
    model_name: str = Field(default="reco-two-tower", pattern=MODEL_NAME_PATTERN, description="MLflow registry config.")

    @field_validator("base")
    @classmethod
    def _trial_settings(cls, v: dict[str, Any]) -> dict[str, Any]:
        # The training group's keys that are not trial settings; unknown keys stay and are refused by the config.
        return {k: x for k, x in v.items() if k not in _ROUTED_ELSEWHERE}

    @field_validator("study_name")
    @classmethod
    def _name(cls, v: str) -> str:
        if v and not _STUDY.match(v):
            raise ValueError("must be 1-128 letters, digits, '_', '.' or '-', starting with a letter or digit")
        return v


class SuggestResult(TaskModel):
    study_uri: OutputArtifact
    validation_set_uri: OutputArtifact
    study_name: str
    trial_numbers: Annotated[list[int], Metric(name="trials_asked")]
    mlflow_run_id: str
    validation_users: Annotated[int, Metric()]
    validation_targets: Annotated[int, Metric()]


def _config(params: SuggestParams) -> Any:
    from aitasks.model_training.tuning import parse_config

    raw: dict[str, Any] = {
        "n_trials": params.n_trials,
        "seed": params.seed,
        "train_seed": params.train_seed,
        "pruner": params.pruner,
        "metric": params.metric,
        "protocol": params.protocol,
        "validation_days": params.validation_days,
        "include_defaults": params.include_defaults,
        "base": params.base,
    }
    if params.search_space:
        raw["space"] = {"params": params.search_space}
    return parse_config(raw, task="tune.suggest")


@ai_task(name="tune.suggest", version="1.0.0", retry=SERVICE_RETRY)
def suggest_trials_task(params: SuggestParams, ctx: TaskContext) -> SuggestResult:
    """Create (or continue) the Optuna study and ask it for the trials of this run.

    EN: Validates the search space, carves the validation split out of the training rows (the last
    day(s) of the training window; the evaluation's held-out day stays unseen), creates the study in the
    tuning storage (PostgreSQL in a cluster, sqlite on one machine) with a seeded TPE sampler, asks it
    for `n_trials` parameter sets (trial 0: the default settings) and opens the study's MLflow parent run.
    A retry returns the same trials.
    FR: Valide l'espace de recherche, découpe la validation dans les lignes d'entraînement (les derniers
    jours de la fenêtre ; le jour réservé de l'évaluation reste inconnu), crée l'étude dans le stockage de
    réglage (PostgreSQL en grappe, sqlite sur une machine) avec un échantillonneur TPE à graine, lui
    demande `n_trials` jeux de paramètres (essai 0 : les réglages par défaut) et ouvre l'exécution MLflow
    parente de l'étude. Une reprise renvoie les mêmes essais.
    DE: Prüft den Suchraum, trennt die Validierung von den Trainingszeilen ab (die letzten Tage des
    Trainingsfensters; der zurückgehaltene Tag der Evaluation bleibt ungesehen), legt die Studie im
    Tuning-Speicher an (PostgreSQL im Cluster, sqlite auf einer Maschine) mit geseedetem TPE-Sampler,
    fragt `n_trials` Parametersätze ab (Versuch 0: die Standardeinstellungen) und öffnet den MLflow-
    Elternlauf der Studie. Eine Wiederholung liefert dieselben Versuche.
    """
    from aitasks.model_training import tracking
    from aitasks.model_training.tuning import ask_trials, create_study, open_storage, storage_url, write_validation_set
    from aitasks.platform.registry import registry_config
    from aitasks.runtime.bundle import open_bundle, publish_bundle
    from aitasks.runtime.hashing import sha256_json

    cfg = _config(params)
    url = storage_url(ctx.settings)
    reg = registry_config(ctx.settings, model_name=params.model_name)
    with (
        open_bundle(params.training_set_uri, ctx.storage, kind="training_set") as (ts_dir, manifest),
        tempfile.TemporaryDirectory(prefix="aitasks-val-") as tmp,
    ):
        snapshot = str(manifest["meta"].get("snapshot_hash", "")) or ctx.storage.content_hash(params.training_set_uri)
        config_hash = sha256_json(cfg.model_dump(mode="json", exclude={"n_trials"}))
        name = params.study_name or f"reco-{snapshot[:12]}-{config_hash[:8]}"
        facts = write_validation_set(ts_dir, Path(tmp), days=cfg.validation_days)
        val_uri = publish_bundle(
            ctx.storage, Path(tmp), ctx.output_uri("validation_set"), kind="training_set", meta=facts
        )
    study = create_study(cfg, name, open_storage(url))
    numbers = ask_trials(study, cfg, cfg.n_trials, key=ctx.key)
    run_id = tracking.study_run(
        reg, study_name=name, key=f"{name}:{ctx.key[:32]}", config={"study": name, **cfg.model_dump(mode="json")}
    )
    doc = {
        "study_name": name,
        "config": cfg.model_dump(mode="json"),
        "trial_numbers": numbers,
        "mlflow_run_id": run_id,
        "model_name": params.model_name,
        "validation": facts,
    }
    study_uri = ctx.output_uri("study.json")
    with ctx.publish(study_uri) as p:
        p.write_text(json.dumps(doc, indent=1, sort_keys=True), "utf-8")
    ctx.log.info("tune.suggested", study=name, trials=numbers)
    return SuggestResult(
        study_uri=study_uri,
        validation_set_uri=val_uri,
        study_name=name,
        trial_numbers=numbers,
        mlflow_run_id=run_id,
        validation_users=int(facts["validation_users"]),
        validation_targets=int(facts["validation_targets"]),
    )


# -------------------------------------------------------------------------------------- trial


class TrialTaskParams(TaskModel):
    study_uri: InputArtifact = Field(description="The study document of tune.suggest (study.json).")
    validation_set_uri: InputArtifact = Field(description="The validation split bundle of tune.suggest.")
    trial_number: int = Field(ge=0, description="Trial to train (asked by tune.suggest).")
    device: Literal["auto", "cpu", "cuda"] = Field(default="auto", description="Training device.")


class TrialTaskResult(TaskModel):
    trial_number: int
    state: Literal["complete", "pruned", "fail", "running", "waiting"]
    value: Annotated[float, Metric()] = Field(description="Validation metric at the last epoch budget trained.")
    params: dict[str, Any]
    epochs_trained: Annotated[int, Metric()]
    intermediate: dict[str, float]
    mlflow_run_id: str


def _study_doc(uri: str, ctx: TaskContext) -> dict[str, Any]:
    from aitasks.runtime.errors import DataFormatError
    from aitasks.runtime.storage import local_copy

    with local_copy(uri, ctx.storage) as path:
        try:
            doc: dict[str, Any] = json.loads(path.read_text("utf-8"))
        except (ValueError, UnicodeDecodeError) as exc:
            raise DataFormatError(uri, f"not a study document: {exc}") from None
    if not {"study_name", "config", "mlflow_run_id", "model_name"} <= set(doc):
        raise DataFormatError(uri, "not a study document of tune.suggest (keys missing)")
    return doc


@ai_task(name="tune.trial", version="1.0.0", retry=RetryPolicy(max_attempts=2))
def run_trial_task(params: TrialTaskParams, ctx: TaskContext) -> TrialTaskResult:
    """Train one asked trial, score it on the validation split with pruning, and tell the study.

    EN: Trains the trial's settings at growing epoch budgets (1, 2, 4, ..., its epochs), scores each on
    the validation split and reports it to the study's pruner, which may stop the trial early; tells the
    study the result (complete or pruned) and logs a nested MLflow run under the study's run. A trial
    already finished (a retried step) is returned as it is.
    FR: Entraîne les réglages de l'essai avec des budgets d'époques croissants (1, 2, 4, ..., ses
    époques), évalue chacun sur la validation et le signale à l'élagueur de l'étude, qui peut arrêter
    l'essai tôt ; transmet le résultat à l'étude (terminé ou élagué) et journalise une exécution MLflow
    imbriquée sous celle de l'étude. Un essai déjà terminé (étape reprise) est renvoyé tel quel.
    DE: Trainiert die Einstellungen des Versuchs mit wachsenden Epochenbudgets (1, 2, 4, ..., seine
    Epochen), bewertet jedes auf der Validierung und meldet es dem Pruner der Studie, der den Versuch
    früh beenden kann; teilt der Studie das Ergebnis mit (abgeschlossen oder beschnitten) und
    protokolliert einen verschachtelten MLflow-Lauf unter dem der Studie. Ein bereits beendeter Versuch
    (wiederholter Schritt) wird unverändert geliefert.
    """
    from aitasks.model_training import tracking
    from aitasks.model_training.tuning import create_study, open_storage, parse_config, run_asked_trial, storage_url
    from aitasks.platform.registry import registry_config
    from aitasks.runtime.bundle import open_bundle

    doc = _study_doc(params.study_uri, ctx)
    cfg = parse_config(doc["config"], task="tune.trial")
    study = create_study(cfg, str(doc["study_name"]), open_storage(storage_url(ctx.settings)))
    with open_bundle(params.validation_set_uri, ctx.storage, kind="training_set") as (val_dir, _):
        frozen, outcome = run_asked_trial(
            study, params.trial_number, cfg, val_dir, device=None if params.device == "auto" else params.device
        )
    state = frozen.state.name.lower()
    inter = {int(k): float(v) for k, v in frozen.intermediate_values.items()}
    value = frozen.value if frozen.value is not None else (inter[max(inter)] if inter else 0.0)
    reg = registry_config(ctx.settings, model_name=str(doc["model_name"]))
    run_id = tracking.log_trial_run(
        reg,
        str(doc["mlflow_run_id"]),
        number=frozen.number,
        state=state,
        params=frozen.params,
        value=frozen.value,
        intermediate=inter,
        metric=cfg.metric,
        seconds=None if outcome is None else outcome.seconds,
    )
    ctx.log.info("tune.trial", trial=frozen.number, state=state, value=round(float(value), 4))
    return TrialTaskResult(
        trial_number=frozen.number,
        state=state,  # type: ignore[arg-type]
        value=float(value),
        params=dict(frozen.params),
        epochs_trained=int(frozen.user_attrs.get("epochs_trained", 0)),
        intermediate={str(k): v for k, v in sorted(inter.items())},
        mlflow_run_id=run_id,
    )


# ------------------------------------------------------------------------------------- select


class SelectParams(TaskModel):
    study_uri: InputArtifact = Field(description="The study document of tune.suggest (study.json).")
    trial_values: list[float] = Field(default_factory=list, description="The trials' values (fan-in of the loop).")


class SelectResult(TaskModel):
    best_number: int
    best_value: Annotated[float, Metric()]
    complete: Annotated[int, Metric(name="trials_complete")]
    pruned: Annotated[int, Metric(name="trials_pruned")]
    failed: int
    summary_uri: OutputArtifact
    summary_markdown_uri: OutputArtifact
    epochs: int
    batch_size: int
    lr: float
    sparse_lr: float
    embedding_dim: int
    id_dim: int
    hidden_dim: int
    temperature: float
    logq_correction: bool
    average_epochs: int
    checkpoints_per_epoch: int
    lr_decay: Literal["none", "linear", "cosine"]

    def training_settings(self) -> dict[str, Any]:
        """The best trial's training settings, as keys of the run form's ``training`` group."""
        from aitasks.model_training.tuning import TrialParams

        return {name: getattr(self, name) for name in TrialParams.model_fields}


def _summary_markdown(summary: dict[str, Any], best: int, metric: str) -> str:
    names = sorted({k for r in summary["rows"] for k in r["params"]})
    lines = [
        f"# Tuning study {summary['study']}",
        "",
        f"Best trial: **{best}**; {summary['trials']} trials: "
        + ", ".join(f"{v} {k}" for k, v in sorted(summary["states"].items())),
        "",
        f"| trial | state | val {metric} | epochs trained | " + " | ".join(names) + " |",
        "|---|---|---|---|" + "---|" * len(names),
    ]
    for r in summary["rows"]:
        value = "" if r["value"] is None else f"{r['value']:.4f}"
        cells = [
            f"{r['params'][n]:.4g}" if isinstance(r["params"].get(n), float) else str(r["params"].get(n, ""))
            for n in names
        ]
        lines.append(
            f"| {r['number']} | {r['state']} | {value} | {r['epochs_trained'] or ''} | " + " | ".join(cells) + " |"
        )
    return "\n".join(lines) + "\n"


@ai_task(name="tune.select", version="1.0.0", retry=SERVICE_RETRY)
def select_trial_task(params: SelectParams, ctx: TaskContext) -> SelectResult:
    """Pick the study's best complete trial: its settings feed the final training step.

    EN: Reads the study, picks the complete trial with the best validation value (ties: the lowest
    number), logs its settings and value on the study's MLflow parent run with a summary of every trial,
    ends that run and returns the full training settings of the best trial.
    FR: Lit l'étude, choisit l'essai terminé de meilleure valeur de validation (à égalité : le plus petit
    numéro), journalise ses réglages et sa valeur sur l'exécution MLflow parente avec un résumé de tous
    les essais, clôt cette exécution et renvoie les réglages d'entraînement complets du meilleur essai.
    DE: Liest die Studie, wählt den abgeschlossenen Versuch mit dem besten Validierungswert (Gleichstand:
    die kleinste Nummer), protokolliert seine Einstellungen und seinen Wert im MLflow-Elternlauf mit einer
    Übersicht aller Versuche, beendet diesen Lauf und liefert die vollständigen Trainingseinstellungen des
    besten Versuchs.
    """
    from aitasks.model_training import tracking
    from aitasks.model_training.tuning import (
        best_trial,
        create_study,
        open_storage,
        parse_config,
        storage_url,
        study_summary,
    )
    from aitasks.platform.registry import registry_config

    doc = _study_doc(params.study_uri, ctx)
    cfg = parse_config(doc["config"], task="tune.select")
    study = create_study(cfg, str(doc["study_name"]), open_storage(storage_url(ctx.settings)))
    best = best_trial(study)
    chosen = cfg.trial_params(best.params)
    summary = study_summary(study)
    states = summary["states"]
    tracking.finish_study_run(
        registry_config(ctx.settings, model_name=str(doc["model_name"])),
        str(doc["mlflow_run_id"]),
        best_number=best.number,
        best_value=float(best.value or 0.0),
        best_params=chosen.model_dump(),
        counts=states,
        summary=summary,
        metric=cfg.metric,
    )
    summary_uri, md_uri = ctx.output_uri("study_summary.json"), ctx.output_uri("study_summary.md")
    with ctx.publish(summary_uri) as p:
        p.write_text(json.dumps({**summary, "best": best.number}, indent=1, sort_keys=True, default=str), "utf-8")
    with ctx.publish(md_uri) as p:
        p.write_text(_summary_markdown(summary, best.number, cfg.metric), "utf-8")
    ctx.log.info("tune.selected", study=study.study_name, best=best.number, value=round(float(best.value or 0), 4))
    return SelectResult(
        best_number=best.number,
        best_value=float(best.value or 0.0),
        complete=int(states.get("complete", 0)),
        pruned=int(states.get("pruned", 0)),
        failed=int(states.get("fail", 0)),
        summary_uri=summary_uri,
        summary_markdown_uri=md_uri,
        **chosen.model_dump(),
    )


# --------------------------------------------------------------------------------- model card


class ModelCardParams(TaskModel):
    model_uri: InputArtifact = Field(description="Model bundle (its MANIFEST.json).")
    metrics_uri: InputArtifact = Field(description="Evaluation metrics JSON (model.evaluate).")
    training_set_uri: InputArtifact = Field(description="Training-set bundle the model was trained on.")
    model_name: str = Field(default="reco-two-tower", pattern=MODEL_NAME_PATTERN, description="Registered model name.")
    version: int = Field(ge=1, description="Registered version the card describes.")


class ModelCardResult(TaskModel):
    card_markdown_uri: OutputArtifact
    card_json_uri: OutputArtifact
    model_name: str
    version: int
    mlflow_run_id: str
    blessed: bool


@ai_task(name="model.card", version="1.0.0", retry=SERVICE_RETRY, deadline_s=1200)
def model_card_task(params: ModelCardParams, ctx: TaskContext) -> ModelCardResult:
    """Write the model card of a registered version and attach it to the version in MLflow.

    EN: Gathers the data snapshot (training-set hash, rows, date range, genre vocabulary version), the
    metrics against popularity with the gate's intervals, the blessing, the training configuration, the
    code version and lineage, the intended use and the limits; renders them as Markdown and JSON, logs
    both as artifacts `model_card/` of the version's MLflow run and tags the version with their hash.
    FR: Rassemble l'instantané des données (empreinte du jeu d'entraînement, lignes, période, version du
    vocabulaire des genres), les métriques face à la popularité avec les intervalles de la porte, la
    validation, la configuration d'entraînement, la version du code et la lignée, l'usage prévu et les
    limites ; les rend en Markdown et JSON, les journalise comme artefacts `model_card/` de l'exécution
    MLflow de la version et étiquette la version avec leur empreinte.
    DE: Sammelt den Datenstand (Hash des Trainingssatzes, Zeilen, Zeitraum, Version des Genre-Vokabulars),
    die Metriken gegenüber Popularität mit den Intervallen des Gates, die Freigabe, die
    Trainingskonfiguration, Code-Version und Herkunft, den vorgesehenen Einsatz und die Grenzen; rendert
    sie als Markdown und JSON, protokolliert beide als Artefakte `model_card/` des MLflow-Laufs der Version
    und versieht die Version mit ihrem Hash.
    """
    from aitasks.model_training.model_card import CARD_DIR, build_model_card, render_markdown
    from aitasks.model_training.tracking import log_version_documents
    from aitasks.platform.registry import client, registry_config
    from aitasks.platform.registry.config import service
    from aitasks.runtime.bundle import open_bundle, read_manifest
    from aitasks.runtime.hashing import sha256_text
    from aitasks.runtime.storage import local_copy

    reg = registry_config(ctx.settings, model_name=params.model_name)
    with local_copy(params.metrics_uri, ctx.storage) as mpath:
        evaluation = json.loads(mpath.read_text("utf-8"))
    model_manifest = read_manifest(params.model_uri, ctx.storage, kind="model")
    with service(reg):
        mv = client(reg).get_model_version(params.model_name, str(params.version))
    with open_bundle(params.training_set_uri, ctx.storage, kind="training_set") as (ts_dir, ts_manifest):
        card = build_model_card(
            model_name=params.model_name,
            version=params.version,
            version_tags={str(k): str(v) for k, v in (mv.tags or {}).items()},
            model_meta=model_manifest.get("meta", {}),
            model_sha=ctx.storage.content_hash(params.model_uri),
            evaluation=evaluation,
            ts_dir=ts_dir,
            ts_sha=ctx.storage.content_hash(params.training_set_uri),
            ts_meta=ts_manifest.get("meta", {}),
        )
    markdown, doc = render_markdown(card), card.model_dump_json(indent=1)
    run_id = log_version_documents(
        reg,
        params.version,
        {"model_card.md": markdown, "model_card.json": doc},
        artifact_path=CARD_DIR,
        tags={"aitasks.model_card": f"{CARD_DIR}/model_card.json", "aitasks.model_card_sha256": sha256_text(doc)},
    )
    md_uri, json_uri = ctx.output_uri("model_card.md"), ctx.output_uri("model_card.json")
    for uri, text in ((md_uri, markdown), (json_uri, doc)):
        with ctx.publish(uri) as p:
            p.write_text(text, "utf-8")
    ctx.log.info("model.card", model=params.model_name, version=params.version)
    return ModelCardResult(
        card_markdown_uri=md_uri,
        card_json_uri=json_uri,
        model_name=params.model_name,
        version=params.version,
        mlflow_run_id=run_id,
        blessed=card.blessed,
    )


# ------------------------------------------------------------------------------------ explain


class ExplainParams(TaskModel):
    model_uri: InputArtifact = Field(description="Model bundle (its MANIFEST.json).")
    training_set_uri: InputArtifact = Field(description="Training-set bundle (held-out users and their history).")
    users: int = Field(default=5, ge=1, le=1000, description="Held-out listeners explained (most played first).")
    k: int = Field(default=5, ge=1, le=100, description="Recommendations explained per listener.")
    neighbours: int = Field(default=3, ge=1, le=20, description="Played tracks named per recommendation.")
    steps: int = Field(default=32, ge=2, le=512, description="Integrated-gradients steps.")
    model_name: str = Field(default="reco-two-tower", pattern=MODEL_NAME_PATTERN, description="Registered model name.")
    version: int = Field(default=0, ge=0, description="Registered version to attach the report to; 0: none.")


class ExplainResult(TaskModel):
    report_html_uri: OutputArtifact
    explanations_uri: OutputArtifact
    users: Annotated[int, Metric(name="explained_users")]
    max_abs_delta: Annotated[float, Metric()]
    mlflow_run_id: str


@ai_task(name="model.explain", version="1.0.0", retry=RetryPolicy(max_attempts=2), deadline_s=1800)
def explain_model_task(params: ExplainParams, ctx: TaskContext) -> ExplainResult:
    """Explain the recommender's top recommendations for a few held-out listeners (HTML report).

    EN: For each listener: the top recommendations (played tracks left out), the integrated-gradients
    attribution of the score to each dense user feature (genre affinities, activity, skips) from an
    average listener, and the played tracks closest to each recommendation ("recommended because you
    played"). Writes an HTML report and a JSON file; with a version, both become artifacts
    `explanations/` of the version's MLflow run.
    FR: Pour chaque auditeur : les meilleures recommandations (titres déjà écoutés exclus), l'attribution
    du score à chaque caractéristique dense de l'auditeur (affinités de genre, activité, titres passés)
    par gradients intégrés depuis un auditeur moyen, et les titres écoutés les plus proches de chaque
    recommandation (« recommandé parce que vous avez écouté »). Écrit un rapport HTML et un JSON ; avec
    une version, les deux deviennent des artefacts `explanations/` de son exécution MLflow.
    DE: Für jeden Hörer: die besten Empfehlungen (gehörte Titel ausgenommen), die Zuordnung des Scores zu
    jedem dichten Hörermerkmal (Genre-Affinitäten, Aktivität, Überspringen) per Integrated Gradients
    ausgehend von einem durchschnittlichen Hörer, und die gehörten Titel, die jeder Empfehlung am
    nächsten sind („empfohlen, weil du ... gehört hast“). Schreibt einen HTML-Bericht und eine JSON-Datei;
    mit einer Version werden beide zu Artefakten `explanations/` ihres MLflow-Laufs.
    """
    from aitasks.model_training.explain import explain_users, render_html
    from aitasks.model_training.tracking import log_version_documents
    from aitasks.platform.registry import registry_config
    from aitasks.runtime.bundle import open_bundle

    with (
        open_bundle(params.model_uri, ctx.storage, kind="model") as (model_dir, _),
        open_bundle(params.training_set_uri, ctx.storage, kind="training_set") as (ts_dir, ts_manifest),
    ):
        explained = explain_users(
            model_dir, ts_dir, users=params.users, k=params.k, neighbours=params.neighbours, steps=params.steps
        )
        split = str(ts_manifest["meta"].get("split_at", ""))
    facts = {
        "model": params.model_name + (f" v{params.version}" if params.version else " (unregistered)"),
        "features at": split,
        "integration steps": str(params.steps),
        "trace id": ctx.trace_id,
        "run id": ctx.runtime.run.run_id,
    }
    page = render_html(explained, title="Why these recommendations", facts=facts)
    doc = json.dumps([e.model_dump(mode="json") for e in explained], indent=1)
    run_id = ""
    if params.version:
        run_id = log_version_documents(
            registry_config(ctx.settings, model_name=params.model_name),
            params.version,
            {"explanations.html": page, "explanations.json": doc},
            artifact_path="explanations",
            tags={},
        )
    html_uri, json_uri = ctx.output_uri("explanations.html"), ctx.output_uri("explanations.json")
    for uri, text in ((html_uri, page), (json_uri, doc)):
        with ctx.publish(uri) as p:
            p.write_text(text, "utf-8")
    deltas = [abs(i.delta) for e in explained for i in e.items]
    ctx.log.info("model.explained", users=len(explained))
    return ExplainResult(
        report_html_uri=html_uri,
        explanations_uri=json_uri,
        users=len(explained),
        max_abs_delta=max(deltas, default=0.0),
        mlflow_run_id=run_id,
    )
