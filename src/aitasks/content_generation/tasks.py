"""Platform tasks of the content-generation family.

``content.validate_prompts`` -> ``content.generate`` (one per batch, in parallel, GPU) ->
``content.check`` -> ``content.publish`` -> ``content.report``. Every step's output is a bundle (files +
``MANIFEST.json`` with checksums) under the run's storage root, so a step in another pod reads exactly
what the previous one wrote; the published release is a bundle too, its manifest written last.
"""

from __future__ import annotations

import json
import tempfile
import time
from collections import Counter
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, field_validator

from aitasks.content_generation.config import CheckConfig, GenerationConfig, ModelDirs, bound_issues
from aitasks.content_generation.prompts import PromptPolicy
from aitasks.runtime.errors import DataFormatError, FieldIssue, InvalidInputError
from aitasks.runtime.retry import RetryPolicy
from aitasks.runtime.task import (
    EmptyIsNone,
    InputArtifact,
    Metric,
    OutputArtifact,
    Runtime,
    TaskContext,
    TaskModel,
    ai_task,
    storage_of,
)

__all__ = [
    "check_content_task",
    "content_report_task",
    "generate_content_task",
    "publish_content_task",
    "validate_prompts_task",
]

PROMPTS_KIND = "content_prompts"
BATCH_KIND = "content_batch"
CHECKS_KIND = "content_checks"
RELEASE_KIND = "content_release"
QUARANTINE_KIND = "content_quarantine"


def _jsonl(rows: list[dict[str, Any]]) -> str:
    return "".join(json.dumps(r, sort_keys=True, ensure_ascii=False) + "\n" for r in rows)


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text("utf-8").splitlines() if line.strip()]


def _blocked_terms(uri: str | None, default: bool, ctx: TaskContext) -> Any:
    from aitasks.content_generation.policy import BlockedTerms, parse_terms

    extra: tuple[str, ...] = ()
    if uri:
        raw = storage_of(uri, ctx.runtime).read_bytes(uri)
        try:
            extra = parse_terms(raw.decode("utf-8"))
        except UnicodeDecodeError:
            raise DataFormatError(uri, "the blocked-terms file is not UTF-8 text") from None
    return BlockedTerms.build(default=default, extra=extra)


# ------------------------------------------------------------------------------ validate prompts


class ValidatePromptsParams(TaskModel):
    prompts_uri: InputArtifact = Field(description="Prompt file (JSON Lines: id, kind, prompt/template, metadata).")
    blocked_terms_uri: Annotated[InputArtifact | None, EmptyIsNone] = Field(
        default=None, description="Extra blocked terms (text, one per line, # comments). Empty: none."
    )
    default_blocked_terms: bool = Field(default=True, description="Also apply the built-in blocked-terms list.")
    batch_size: int = Field(default=4, ge=1, description="Prompts per generation batch (bounded by settings).")
    policy: PromptPolicy = Field(default_factory=PromptPolicy, description="Prompt length limits.")
    on_invalid: Literal["quarantine", "fail"] = Field(
        default="quarantine",
        description="quarantine: refused prompts are recorded and the rest go on; fail: any refusal fails the task.",
    )


class ValidatePromptsResult(TaskModel):
    prompts_uri: OutputArtifact
    batches: list[int]
    batch_count: Annotated[int, Metric(name="batches")]
    accepted: Annotated[int, Metric(name="prompts_accepted")]
    rejected: Annotated[int, Metric(name="prompts_rejected")]
    rules: Annotated[dict[str, int], Metric(prefix="rejected.")]
    kinds: Annotated[dict[str, int], Metric(prefix="prompts.")]

    def artifact_metadata(self, field: str) -> dict[str, Any]:
        return {"accepted": self.accepted, "rejected": self.rejected, "batches": self.batch_count}


@ai_task(name="content.validate_prompts", version="1.0.0", retry=RetryPolicy(max_attempts=2))
def validate_prompts_task(params: ValidatePromptsParams, ctx: TaskContext) -> ValidatePromptsResult:
    """Check every prompt of a prompt file and split the accepted ones into generation batches.

    EN: Reads the JSON Lines prompt file; renders text templates (playlist title, playlist description,
    track blurb) from catalog metadata; refuses a prompt that is malformed, has a duplicate id, lacks a
    template field, is too short or too long, contains control or invisible characters, a blocked term,
    or personal data (e-mail, phone, payment card, IBAN). Each refusal names the prompt and the rule and
    goes to the quarantine file (personal data redacted); ``on_invalid=fail`` fails instead. Accepted
    prompts are batched by kind.
    FR: Lit le fichier de prompts JSON Lines ; construit les prompts texte (titre et description de
    playlist, présentation de titre) à partir des métadonnées du catalogue ; refuse un prompt mal formé,
    à l'identifiant en double, sans le champ requis, trop court ou trop long, contenant des caractères de
    contrôle ou invisibles, un terme bloqué ou des données personnelles (e-mail, téléphone, carte, IBAN).
    Chaque refus nomme le prompt et la règle et va en quarantaine (données personnelles masquées) ;
    ``on_invalid=fail`` fait échouer la tâche. Les prompts acceptés sont groupés en lots par type.
    DE: Liest die JSON-Lines-Promptdatei; erzeugt Text-Prompts (Playlist-Titel, Playlist-Beschreibung,
    Titeltext) aus Katalog-Metadaten; weist einen Prompt ab, der fehlerhaft ist, eine doppelte ID hat,
    ein Vorlagenfeld vermisst, zu kurz oder zu lang ist, Steuer- oder unsichtbare Zeichen, einen
    gesperrten Begriff oder personenbezogene Daten (E-Mail, Telefon, Kartennummer, IBAN) enthält. Jede
    Abweisung nennt Prompt und Regel und landet in der Quarantäne (personenbezogene Daten geschwärzt);
    ``on_invalid=fail`` lässt die Aufgabe scheitern. Angenommene Prompts werden je Art in Stapel geteilt.
    """
    from aitasks.content_generation.prompts import parse_prompt_file, plan_batches
    from aitasks.runtime.bundle import publish_bundle

    s = ctx.settings
    issues = []
    if params.batch_size > s.content_max_batch_size:
        issues.append(
            FieldIssue(
                "batch_size",
                f"{params.batch_size} > {s.content_max_batch_size} (setting AITASKS_CONTENT_MAX_BATCH_SIZE)",
            )
        )
    if params.policy.max_chars > s.content_max_prompt_chars:
        issues.append(
            FieldIssue(
                "policy.max_chars",
                f"{params.policy.max_chars} > {s.content_max_prompt_chars} (setting AITASKS_CONTENT_MAX_PROMPT_CHARS)",
            )
        )
    if issues:
        raise InvalidInputError(ctx.task, issues)
    blocked = _blocked_terms(params.blocked_terms_uri, params.default_blocked_terms, ctx)
    raw = storage_of(params.prompts_uri, ctx.runtime).read_bytes(params.prompts_uri)
    try:
        accepted, rejected = parse_prompt_file(raw, params.policy, blocked, max_prompts=s.content_max_prompts)
    except ValueError as exc:
        raise DataFormatError(params.prompts_uri, str(exc)) from None
    if rejected and params.on_invalid == "fail":
        raise InvalidInputError(
            ctx.task,
            [FieldIssue(f"prompts[{r.prompt_id}]", f"line {r.line}: {r.rule}: {r.detail}") for r in rejected],
        )
    if not accepted:
        detail = "; ".join(str(r) for r in rejected[:5]) or "the file holds no prompt"
        raise InvalidInputError(ctx.task, [FieldIssue("prompts_uri", f"no prompt passed validation: {detail}")])
    batches = plan_batches(accepted, params.batch_size)
    batch_of = {pid: b["index"] for b in batches for pid in b["ids"]}
    rows = [p.as_json(batch_of[p.record.id]) for p in accepted]
    quarantine = [
        {"id": r.prompt_id, "line": r.line, "rule": r.rule, "detail": r.detail, "excerpt": r.excerpt} for r in rejected
    ]
    rules = Counter(r.rule for r in rejected)
    kinds = Counter(p.record.kind for p in accepted)
    for r in rejected:
        ctx.log.warning("content.prompt_rejected", prompt=r.prompt_id, line=r.line, rule=r.rule, detail=r.detail)
    with tempfile.TemporaryDirectory(prefix="aitasks-content-") as tmp:
        root = Path(tmp)
        (root / "prompts.jsonl").write_text(_jsonl(rows), "utf-8")
        (root / "rejected.jsonl").write_text(_jsonl(quarantine), "utf-8")
        (root / "batches.json").write_text(json.dumps(batches, indent=1), "utf-8")
        uri = publish_bundle(
            ctx.storage,
            root,
            ctx.output_uri("prompts"),
            kind=PROMPTS_KIND,
            meta={"accepted": len(rows), "rejected": len(quarantine), "batches": len(batches)},
        )
    return ValidatePromptsResult(
        prompts_uri=uri,
        batches=[b["index"] for b in batches],
        batch_count=len(batches),
        accepted=len(rows),
        rejected=len(quarantine),
        rules=dict(sorted(rules.items())),
        kinds=dict(sorted(kinds.items())),
    )


# ------------------------------------------------------------------------------------- generate


class GenerateParams(TaskModel):
    prompts_uri: InputArtifact = Field(description="Validated prompts bundle (content.validate_prompts).")
    batch_index: int = Field(default=-1, ge=-1, description="Batch to generate (-1: every batch).")
    models: ModelDirs = Field(default_factory=ModelDirs, description="Model directory per kind (path or gs://).")
    generation: GenerationConfig = Field(default_factory=GenerationConfig, description="Seed, device, sizes.")


class GenerateResult(TaskModel):
    batch_uri: OutputArtifact
    batches: list[int]
    items: Annotated[int, Metric(name="generated")]
    kinds: Annotated[dict[str, int], Metric(prefix="generated.")]
    models: dict[str, dict[str, str]]
    device: str
    precision: str
    seconds: Annotated[float, Metric(name="generation_seconds")]
    items_per_second: Annotated[float, Metric()]

    def artifact_metadata(self, field: str) -> dict[str, Any]:
        return {"items": self.items, "batches": self.batches}


def _batches_of(prompts_uri: str, rt: Runtime) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    from aitasks.runtime.bundle import open_bundle

    with open_bundle(prompts_uri, storage_of(prompts_uri, rt), kind=PROMPTS_KIND) as (folder, _):
        batches = json.loads((folder / "batches.json").read_text("utf-8"))
        prompts = _read_jsonl(folder / "prompts.jsonl")
    return batches, prompts


def _selected(batches: list[dict[str, Any]], index: int) -> list[dict[str, Any]]:
    if index < 0:
        return batches
    return [b for b in batches if b["index"] == index]


def _generate_state(params: GenerateParams, rt: Runtime) -> dict[str, Any]:
    """Fingerprints of the model directories this call uses: a changed model is new work, not a stale hit."""
    from aitasks.content_generation.models import remote_fingerprint

    batches, _ = _batches_of(params.prompts_uri, rt)
    kinds = sorted({b["kind"] for b in _selected(batches, params.batch_index)})
    out = {}
    for kind in kinds:
        uri = getattr(params.models, kind)
        out[kind] = remote_fingerprint(uri, storage_of(uri, rt)) if uri else ""
    return {"models": out}


def _cache_dir(ctx: TaskContext) -> Path | None:
    return Path(ctx.settings.content_model_cache) if ctx.settings.content_model_cache else None


@ai_task(
    name="content.generate",
    version="1.0.0",
    retry=RetryPolicy(max_attempts=2, initial_backoff_s=2.0),
    state=_generate_state,
)
def generate_content_task(params: GenerateParams, ctx: TaskContext) -> GenerateResult:
    """Generate one batch of text, cover images or music clips, each output with its provenance.

    EN: Loads the batch's model from its directory (local or gs://, downloaded once into a content-keyed
    cache; safetensors weights only, never pickle or remote code, the Hub never contacted), on the device
    and precision chosen at run time. Text: a causal language model continues the rendered prompts.
    Images: a diffusion pipeline, one seeded generator per image, written as PNG. Music: a text-to-audio
    model (MusicGen), peak-normalised, written as FLAC or Ogg Vorbis. Every output gets a provenance
    sidecar (model and its sha256, prompt hash, seeds, parameters, time, run, trace, task key), and
    images and audio carry the same record in their own metadata. Sizes are bounded by settings.
    FR: Charge le modèle du lot depuis son répertoire (local ou gs://, téléchargé une fois dans un cache
    indexé par le contenu ; poids safetensors uniquement, jamais de pickle ni de code distant, sans accès
    au Hub), sur le périphérique et la précision choisis à l'exécution. Texte : un modèle de langage causal
    prolonge les prompts. Images : un pipeline de diffusion, un générateur amorcé par image, en PNG.
    Musique : un modèle texte-vers-audio (MusicGen), normalisé en crête, en FLAC ou Ogg Vorbis. Chaque
    sortie a un fichier de provenance (modèle et son sha256, empreinte du prompt, graines, paramètres,
    date, exécution, trace, clé de la tâche), repris dans les métadonnées des images et de l'audio. Les
    tailles sont bornées par les réglages.
    DE: Lädt das Modell des Stapels aus seinem Verzeichnis (lokal oder gs://, einmal in einen
    inhaltsadressierten Cache geladen; nur safetensors-Gewichte, nie Pickle oder Fremdcode, ohne Hub-Zugriff)
    auf Gerät und Genauigkeit, die zur Laufzeit gewählt werden. Text: ein kausales Sprachmodell setzt die
    Prompts fort. Bilder: eine Diffusions-Pipeline mit einem geseedeten Generator je Bild, als PNG. Musik:
    ein Text-zu-Audio-Modell (MusicGen), spitzennormalisiert, als FLAC oder Ogg Vorbis. Jede Ausgabe hat
    eine Herkunftsdatei (Modell und sein sha256, Prompt-Hash, Seeds, Parameter, Zeit, Lauf, Trace,
    Aufgabenschlüssel), die Bilder und Audio auch in ihren eigenen Metadaten tragen. Größen sind durch
    Einstellungen begrenzt.
    """
    from aitasks.content_generation.generate import generate_images, generate_music, generate_text
    from aitasks.content_generation.models import (
        load_image_pipeline,
        load_music_model,
        load_text_model,
        resolve_precision,
    )
    from aitasks.platform.compute import resolve_device, torch_threads
    from aitasks.runtime.bundle import publish_bundle

    gen = params.generation
    issues = bound_issues(gen, ctx.settings)
    if issues:
        raise InvalidInputError(ctx.task, issues)
    batches, prompts = _batches_of(params.prompts_uri, ctx.runtime)
    chosen = _selected(batches, params.batch_index)
    if not chosen:
        raise InvalidInputError(
            ctx.task, [FieldIssue("batch_index", f"{params.batch_index} is not one of the {len(batches)} batches")]
        )
    by_id = {p["id"]: p for p in prompts}
    device = resolve_device(gen.device, task=ctx.task, field="generation.device")
    dtype = resolve_precision(gen.precision, device, task=ctx.task)
    precision = str(dtype).removeprefix("torch.")
    loaders = {"text": load_text_model, "image": load_image_pipeline, "music": load_music_model}
    loaded: dict[str, Any] = {}
    rows: list[dict[str, Any]] = []
    t0 = time.perf_counter()
    with torch_threads(gen.num_threads or None), tempfile.TemporaryDirectory(prefix="aitasks-content-") as tmp:
        root = Path(tmp)
        for batch in chosen:
            kind = batch["kind"]
            if kind not in loaded:
                uri = getattr(params.models, kind)
                loaded[kind] = loaders[kind](
                    uri,
                    device,
                    dtype,
                    task=ctx.task,
                    storage=storage_of(uri, ctx.runtime) if uri else None,
                    cache_dir=_cache_dir(ctx),
                )
            items = [by_id[i] for i in batch["ids"]]
            texts = [p["text"] for p in items]
            ids = [p["id"] for p in items]
            if kind == "text":
                outs = generate_text(loaded[kind], texts, [p["template"] for p in items], ids, gen)
            elif kind == "image":
                outs = generate_images(loaded[kind], texts, ids, gen)
            else:
                outs = generate_music(loaded[kind], texts, ids, gen)
            for prompt, out in zip(items, outs, strict=True):
                rows.append(_write_output(root, ctx, loaded[kind], prompt, out, batch, gen, precision))
        seconds = time.perf_counter() - t0
        (root / "items.jsonl").write_text(_jsonl(rows), "utf-8")
        uri = publish_bundle(
            ctx.storage,
            root,
            ctx.output_uri("batch"),
            kind=BATCH_KIND,
            meta={"batches": [b["index"] for b in chosen], "items": len(rows), "device": str(device)},
        )
    kinds = Counter(r["kind"] for r in rows)
    ctx.log.info("content.generated", items=len(rows), seconds=round(seconds, 3), device=str(device))
    return GenerateResult(
        batch_uri=uri,
        batches=[b["index"] for b in chosen],
        items=len(rows),
        kinds=dict(sorted(kinds.items())),
        models={k: {"name": m.identity.name, "sha256": m.identity.sha256} for k, m in sorted(loaded.items())},
        device=str(device),
        precision=precision,
        seconds=seconds,
        items_per_second=len(rows) / seconds if seconds > 0 else 0.0,
    )


_EXT = {"text": "txt", "image": "png"}


def _write_output(
    root: Path,
    ctx: TaskContext,
    lm: Any,
    prompt: Mapping[str, Any],
    out: Any,
    batch: Mapping[str, Any],
    gen: GenerationConfig,
    precision: str,
) -> dict[str, Any]:
    """Write one output file with its embedded provenance and its sidecar; return its items.jsonl row."""
    import aitasks
    from aitasks.content_generation.generate import encode_png
    from aitasks.content_generation.provenance import ModelInfo, Provenance, png_info, set_audio_tags, sidecar_name
    from aitasks.runtime.hashing import sha256_file

    kind = str(prompt["kind"])
    ext = _EXT.get(kind, gen.audio_format)
    name = f"{prompt['id']}.{ext}"
    ident = lm.identity
    prov = Provenance(
        item_id=str(prompt["id"]),
        kind=kind,  # type: ignore[arg-type]
        file=name,
        model=ModelInfo(
            name=ident.name,
            uri=lm.uri,
            sha256=ident.sha256,
            library=ident.library,
            architecture=ident.architecture,
        ),
        prompt_sha256=str(prompt["prompt_sha256"]),
        template=str(prompt["template"]),
        seed=gen.seed,
        derived_seed=out.derived_seed,
        seed_scope=out.seed_scope,
        batch=int(batch["index"]),
        batch_ids=list(batch["ids"]),
        parameters=out.parameters,
        device=str(lm.device),
        precision=precision,
        generated_at=datetime.now(UTC).isoformat(timespec="seconds"),
        run_id=ctx.runtime.run.run_id,
        pipeline=ctx.runtime.run.pipeline,
        trace_id=ctx.trace_id,
        task=ctx.task,
        task_version=ctx.version,
        idempotency_key=ctx.key,
        code_version=aitasks.__version__,
    )
    path = root / name
    if kind == "text":
        path.write_text(out.text + "\n", "utf-8")
    elif kind == "image":
        path.write_bytes(encode_png(out.image, png_info(prov)))
    else:
        import soundfile as sf

        fmt, subtype = ("FLAC", "PCM_16") if ext == "flac" else ("OGG", "VORBIS")
        with sf.SoundFile(
            str(path), "w", samplerate=out.sample_rate, channels=out.audio.shape[1], format=fmt, subtype=subtype
        ) as fh:
            set_audio_tags(fh, prov)
            fh.write(out.audio)
    digest = sha256_file(path)
    final = prov.model_copy(update={"sha256": digest})
    (root / sidecar_name(name)).write_text(final.model_dump_json(indent=1), "utf-8")
    return {
        "id": prov.item_id,
        "kind": kind,
        "file": name,
        "provenance": sidecar_name(name),
        "sha256": digest,
        "batch": prov.batch,
        "template": prov.template,
        "prompt_sha256": prov.prompt_sha256,
        "expected_size": gen.image_size if kind == "image" else 0,
        "measures": out.measures,
    }


# --------------------------------------------------------------------------------------- check


class CheckParams(TaskModel):
    batch_uris: list[str] = Field(min_length=1, max_length=4096, description="Batch bundles of content.generate.")
    checks: CheckConfig = Field(default_factory=CheckConfig, description="Thresholds of the output checks.")
    blocked_terms_uri: Annotated[InputArtifact | None, EmptyIsNone] = Field(
        default=None, description="Extra blocked terms (as for the prompts). Empty: none."
    )
    default_blocked_terms: bool = Field(default=True, description="Also apply the built-in blocked-terms list.")

    @field_validator("batch_uris")
    @classmethod
    def _unique(cls, value: list[str]) -> list[str]:
        if len(set(value)) != len(value):
            raise ValueError("batch URIs must be unique")
        return sorted(value)


class CheckResult(TaskModel):
    checks_uri: OutputArtifact
    checked: int
    accepted: Annotated[int, Metric(name="outputs_accepted")]
    rejected: Annotated[int, Metric(name="outputs_rejected")]
    rules: Annotated[dict[str, int], Metric(prefix="rejected.")]
    accepted_by_kind: Annotated[dict[str, int], Metric(prefix="accepted.")]

    def artifact_metadata(self, field: str) -> dict[str, Any]:
        return {"accepted": self.accepted, "rejected": self.rejected}


def _batch_state(params: CheckParams, rt: Runtime) -> dict[str, Any]:
    """Content hashes of the batch manifests (a list of artifacts: each joins the key)."""
    return {"batches": [storage_of(u, rt).content_hash(u) for u in params.batch_uris]}


@ai_task(name="content.check", version="1.0.0", retry=RetryPolicy(max_attempts=2), state=_batch_state)
def check_content_task(params: CheckParams, ctx: TaskContext) -> CheckResult:
    """Check every generated output; rejected ones are recorded with their reasons, never passed.

    EN: Verifies each batch bundle (checksums) and each output's provenance sidecar (present, naming the
    file, matching its sha256). Text: empty, degenerate (repeated words or n-grams, few distinct words,
    character runs), invisible characters, blocked terms, personal data. Images: unreadable, blank (flat
    pixels), wrong size. Music: decoded by the audio-analysis decoder (a refusal is a rejection with its
    reason), then too short, too quiet or too loud (RMS), clipping, silence. Writes every verdict and
    the quarantine list with reasons.
    FR: Vérifie chaque lot (sommes de contrôle) et le fichier de provenance de chaque sortie (présent,
    nommant le fichier, même sha256). Texte : vide, dégénéré (mots ou n-grammes répétés, peu de mots
    distincts, suites de caractères), caractères invisibles, termes bloqués, données personnelles.
    Images : illisibles, vides (pixels uniformes), mauvaise taille. Musique : décodée par le décodeur de
    l'analyse audio (un refus est un rejet avec son motif), puis trop courte, trop faible ou trop forte
    (RMS), écrêtage, silence. Écrit chaque verdict et la liste de quarantaine avec les motifs.
    DE: Prüft jedes Stapel-Bundle (Prüfsummen) und die Herkunftsdatei jeder Ausgabe (vorhanden, nennt die
    Datei, gleicher sha256). Text: leer, degeneriert (wiederholte Wörter oder N-Gramme, wenige
    verschiedene Wörter, Zeichenketten), unsichtbare Zeichen, gesperrte Begriffe, personenbezogene Daten.
    Bilder: unlesbar, leer (gleichförmige Pixel), falsche Größe. Musik: vom Decoder der Audioanalyse
    dekodiert (eine Ablehnung dort ist eine Zurückweisung mit Grund), dann zu kurz, zu leise oder zu laut
    (RMS), Übersteuerung, Stille. Schreibt jedes Urteil und die Quarantäneliste mit Gründen.
    """
    from contextlib import ExitStack

    from aitasks.content_generation.checks import check_audio, check_image, check_text
    from aitasks.runtime.bundle import open_bundle, publish_bundle
    from aitasks.runtime.hashing import sha256_file

    blocked = _blocked_terms(params.blocked_terms_uri, params.default_blocked_terms, ctx)
    cfg = params.checks
    verdicts: list[dict[str, Any]] = []
    with ExitStack() as stack:
        for batch_uri in params.batch_uris:
            folder, _ = stack.enter_context(open_bundle(batch_uri, storage_of(batch_uri, ctx.runtime), kind=BATCH_KIND))
            for item in _read_jsonl(folder / "items.jsonl"):
                path = folder / item["file"]
                reasons: list[str] = []
                measures: dict[str, float] = {}
                sidecar = folder / item["provenance"]
                prov = json.loads(sidecar.read_text("utf-8")) if sidecar.is_file() else None
                if prov is None:
                    reasons.append("provenance: the sidecar is missing")
                elif prov.get("file") != item["file"] or prov.get("sha256") != sha256_file(path):
                    reasons.append("provenance: the sidecar does not describe this file")
                if item["kind"] == "text":
                    verdict = check_text(path.read_text("utf-8", errors="replace"), cfg, blocked)
                elif item["kind"] == "image":
                    verdict = check_image(path, cfg, int(item.get("expected_size") or 0))
                else:
                    verdict = check_audio(path, cfg)
                reasons += verdict.reasons
                measures.update(verdict.measures)
                verdicts.append(
                    {
                        "id": item["id"],
                        "kind": item["kind"],
                        "batch_uri": batch_uri,
                        "file": item["file"],
                        "provenance": item["provenance"],
                        "sha256": item["sha256"],
                        "template": item["template"],
                        "passed": not reasons,
                        "reasons": reasons,
                        "measures": measures,
                    }
                )
    verdicts.sort(key=lambda v: (v["kind"], v["id"]))
    rejected = [v for v in verdicts if not v["passed"]]
    for v in rejected:
        ctx.log.warning("content.output_rejected", item=v["id"], kind=v["kind"], reasons=v["reasons"])
    rules = Counter(r.split(":", 1)[0] for v in rejected for r in v["reasons"])
    with tempfile.TemporaryDirectory(prefix="aitasks-content-") as tmp:
        root = Path(tmp)
        (root / "checks.jsonl").write_text(_jsonl(verdicts), "utf-8")
        (root / "quarantine.jsonl").write_text(
            _jsonl([{k: v[k] for k in ("id", "kind", "file", "sha256", "reasons")} for v in rejected]), "utf-8"
        )
        uri = publish_bundle(
            ctx.storage,
            root,
            ctx.output_uri("checks"),
            kind=CHECKS_KIND,
            meta={"checked": len(verdicts), "rejected": len(rejected), "config": cfg.model_dump(mode="json")},
        )
    return CheckResult(
        checks_uri=uri,
        checked=len(verdicts),
        accepted=len(verdicts) - len(rejected),
        rejected=len(rejected),
        rules=dict(sorted(rules.items())),
        accepted_by_kind=dict(sorted(Counter(v["kind"] for v in verdicts if v["passed"]).items())),
    )


# -------------------------------------------------------------------------------------- publish


class PublishParams(TaskModel):
    checks_uri: InputArtifact = Field(description="Checks bundle (content.check).")
    collection: str = Field(
        default="content", pattern=r"^[a-z0-9][a-z0-9_-]{0,62}$", description="Name of the published collection."
    )
    destination: str = Field(
        default="", max_length=2048, description="Root of the published content. Empty: <storage_root>/content."
    )


class PublishResult(TaskModel):
    release_uri: OutputArtifact
    quarantine_uri: OutputArtifact = ""
    latest_uri: str
    release_id: str
    published: Annotated[int, Metric(name="outputs_published")]
    quarantined: Annotated[int, Metric(name="outputs_quarantined")]

    def artifact_metadata(self, field: str) -> dict[str, Any]:
        return {"release_id": self.release_id, "published": self.published, "quarantined": self.quarantined}


@ai_task(name="content.publish", version="1.0.0", retry=RetryPolicy(max_attempts=4, initial_backoff_s=1.0))
def publish_content_task(params: PublishParams, ctx: TaskContext) -> PublishResult:
    """Publish the accepted outputs as one release, and the rejected ones to the quarantine.

    EN: The release is a bundle named by the content of the checks (the same content publishes to the
    same place): every accepted file and its provenance sidecar, and ``release.json`` listing them. Each
    file is written atomically and the manifest last, so readers see the whole release or none of it.
    Rejected outputs go to a quarantine bundle with ``reasons.jsonl``. ``LATEST.json`` then points at
    the release (atomic replace).
    FR: La publication est un bundle nommé d'après le contenu des vérifications (le même contenu est
    publié au même endroit) : chaque fichier accepté, son fichier de provenance et ``release.json`` qui
    les liste. Chaque fichier est écrit atomiquement et le manifeste en dernier : un lecteur voit toute
    la publication ou rien. Les sorties rejetées vont dans un bundle de quarantaine avec
    ``reasons.jsonl``. ``LATEST.json`` désigne ensuite la publication (remplacement atomique).
    DE: Die Veröffentlichung ist ein Bundle, benannt nach dem Inhalt der Prüfungen (gleicher Inhalt,
    gleicher Ort): jede angenommene Datei mit Herkunftsdatei und ``release.json`` als Liste. Jede Datei
    wird atomar geschrieben, das Manifest zuletzt, so sehen Leser die ganze Veröffentlichung oder
    nichts. Zurückgewiesene Ausgaben kommen in ein Quarantäne-Bundle mit ``reasons.jsonl``.
    ``LATEST.json`` zeigt danach auf die Veröffentlichung (atomar ersetzt).
    """
    import shutil
    from contextlib import ExitStack

    from aitasks.runtime.bundle import open_bundle, publish_bundle
    from aitasks.runtime.hashing import canonical_json, sha256_text
    from aitasks.runtime.storage import join_uri

    checks_store = storage_of(params.checks_uri, ctx.runtime)
    release_id = sha256_text(checks_store.content_hash(params.checks_uri))[:16]
    base = params.destination or join_uri(ctx.settings.storage_root, "content")
    home = join_uri(base, params.collection)
    with open_bundle(params.checks_uri, checks_store, kind=CHECKS_KIND) as (folder, _):
        verdicts = _read_jsonl(folder / "checks.jsonl")
    dest_store = storage_of(home, ctx.runtime)
    quarantine_uri = ""
    with ExitStack() as stack:
        batches: dict[str, Path] = {}
        for uri in sorted({v["batch_uri"] for v in verdicts}):
            batches[uri], _ = stack.enter_context(open_bundle(uri, storage_of(uri, ctx.runtime), kind=BATCH_KIND))
        accepted = [v for v in verdicts if v["passed"]]
        rejected = [v for v in verdicts if not v["passed"]]
        rel = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="aitasks-content-")))
        listing = []
        for v in accepted:
            src = batches[v["batch_uri"]]
            (rel / "items").mkdir(exist_ok=True)
            shutil.copyfile(src / v["file"], rel / "items" / v["file"])
            shutil.copyfile(src / v["provenance"], rel / "items" / v["provenance"])
            listing.append({k: v[k] for k in ("id", "kind", "file", "provenance", "sha256", "template")})
        meta = {"release_id": release_id, "collection": params.collection, "items": len(listing)}
        (rel / "release.json").write_text(canonical_json({**meta, "checks_uri": params.checks_uri, "items": listing}))
        release_uri = publish_bundle(
            dest_store, rel, join_uri(home, "releases", release_id), kind=RELEASE_KIND, meta=meta
        )
        if rejected:
            qdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="aitasks-content-")))
            (qdir / "files").mkdir()
            for v in rejected:
                src = batches[v["batch_uri"]]
                shutil.copyfile(src / v["file"], qdir / "files" / v["file"])
                if (src / v["provenance"]).is_file():
                    shutil.copyfile(src / v["provenance"], qdir / "files" / v["provenance"])
            (qdir / "reasons.jsonl").write_text(
                _jsonl([{k: v[k] for k in ("id", "kind", "file", "sha256", "reasons")} for v in rejected]), "utf-8"
            )
            quarantine_uri = publish_bundle(
                dest_store,
                qdir,
                join_uri(home, "quarantine", release_id),
                kind=QUARANTINE_KIND,
                meta={"release_id": release_id, "items": len(rejected)},
            )
    latest_uri = join_uri(home, "LATEST.json")
    dest_store.write_bytes(
        latest_uri,
        canonical_json(
            {
                "release_id": release_id,
                "release_uri": release_uri,
                "published_at": datetime.now(UTC).isoformat(timespec="seconds"),
                "run_id": ctx.runtime.run.run_id,
            }
        ).encode("utf-8"),
    )
    ctx.log.info("content.published", release=release_id, published=len(accepted), quarantined=len(rejected))
    return PublishResult(
        release_uri=release_uri,
        quarantine_uri=quarantine_uri,
        latest_uri=latest_uri,
        release_id=release_id,
        published=len(accepted),
        quarantined=len(rejected),
    )


# --------------------------------------------------------------------------------------- report


class ReportParams(TaskModel):
    release_uri: InputArtifact = Field(description="Published release bundle (content.publish).")
    checks_uri: InputArtifact = Field(description="Checks bundle (content.check): rejected outputs and reasons.")
    title: str = Field(default="Content generation", min_length=1, max_length=200, description="Report title.")
    samples: int = Field(default=6, ge=0, le=50, description="Samples shown per kind.")
    max_audio_kb: int = Field(default=2048, ge=0, le=65536, description="Larger clips are listed, not embedded.")


class ReportResult(TaskModel):
    report_uri: OutputArtifact
    published: int
    rejected: int
    samples: int


@ai_task(name="content.report", version="1.0.0", retry=RetryPolicy(max_attempts=2))
def content_report_task(params: ReportParams, ctx: TaskContext) -> ReportResult:
    """A self-contained HTML report of the generated content, with samples.

    EN: Counts per kind, accepted and rejected; samples of each kind with their provenance (model and
    hash, seed, prompt hash): text excerpts, image thumbnails, audio players (embedded as data URIs);
    the rejected outputs with every reason. No external resource; all text escaped.
    FR: Comptes par type, acceptés et rejetés ; des exemples de chaque type avec leur provenance (modèle
    et empreinte, graine, empreinte du prompt) : extraits de texte, vignettes, lecteurs audio (intégrés
    en URI data) ; les sorties rejetées avec chaque motif. Aucune ressource externe ; tout le texte est
    échappé.
    DE: Zahlen je Art, angenommen und zurückgewiesen; Beispiele jeder Art mit Herkunft (Modell und Hash,
    Seed, Prompt-Hash): Textauszüge, Vorschaubilder, Audioplayer (als Data-URIs eingebettet); die
    zurückgewiesenen Ausgaben mit allen Gründen. Keine externen Ressourcen; aller Text maskiert.
    """
    from aitasks.content_generation.report import Sample, render_report
    from aitasks.runtime.bundle import open_bundle

    with (
        open_bundle(params.release_uri, storage_of(params.release_uri, ctx.runtime), kind=RELEASE_KIND) as (rel, _),
        open_bundle(params.checks_uri, storage_of(params.checks_uri, ctx.runtime), kind=CHECKS_KIND) as (chk, _),
    ):
        release = json.loads((rel / "release.json").read_text("utf-8"))
        verdicts = _read_jsonl(chk / "checks.jsonl")
        measures = {v["id"]: v["measures"] for v in verdicts}
        shown: list[Sample] = []
        per_kind: Counter[str] = Counter()
        for item in release["items"]:
            if per_kind[item["kind"]] >= params.samples:
                continue
            per_kind[item["kind"]] += 1
            prov = json.loads((rel / "items" / item["provenance"]).read_text("utf-8"))
            shown.append(
                Sample.load(rel / "items" / item["file"], item, prov, measures.get(item["id"], {}), params.max_audio_kb)
            )
    rejected = [v for v in verdicts if not v["passed"]]
    html = render_report(
        title=params.title,
        release=release,
        verdicts=verdicts,
        samples=shown,
        rejected=rejected,
        meta={"run": ctx.runtime.run.run_id, "pipeline": ctx.runtime.run.pipeline, "trace": ctx.trace_id},
    )
    uri = ctx.output_uri("report.html")
    ctx.storage.write_bytes(uri, html.encode("utf-8"))
    return ReportResult(report_uri=uri, published=len(release["items"]), rejected=len(rejected), samples=len(shown))
