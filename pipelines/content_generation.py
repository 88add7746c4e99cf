"""`content-generation`: validate prompts -> ParallelFor generate per batch (GPU) -> check outputs ->
publish the release atomically -> HTML report; a run summary on exit."""

from kfp import dsl

from aitasks.content_generation.config import CheckConfig, GenerationConfig
from aitasks.content_generation.prompts import PromptPolicy
from aitasks.run_forms import GROUPS
from pipelines import steps
from pipelines.k8s import GPU_NODE_SELECTOR, GPU_TOLERATION, RUN_CONTEXT_DEFAULT, PipelineRun

NAME = "content-generation"
#: At most this many batches are generated at once (a compile-time constant in KFP v2).
MAX_PARALLEL_BATCHES = 4
#: Defaults of the dict parameters: every key shown in the KFP UI form.
MODELS_DEFAULT = {"text": "", "image": "", "music": ""}
GENERATION_DEFAULT = GenerationConfig().model_dump(mode="json")
CHECKS_DEFAULT = CheckConfig().model_dump(mode="json")
POLICY_DEFAULT = PromptPolicy().model_dump(mode="json")
REPORT_DEFAULT = GROUPS["report"].default()


@dsl.pipeline(
    name=NAME,
    description="Generate playlist titles and descriptions, track blurbs, cover art and music clips from a "
    "prompt file: prompt safety checks, GPU generation per batch, output checks with quarantine, provenance on "
    "every output, an atomically published release and an HTML report with samples.",
)
def content_generation(
    prompts_uri: str,
    run_context: dict = RUN_CONTEXT_DEFAULT,
    models: dict = MODELS_DEFAULT,
    generation: dict = GENERATION_DEFAULT,
    batch_size: int = 4,
    blocked_terms_uri: str = "",
    default_blocked_terms: bool = True,
    prompt_policy: dict = POLICY_DEFAULT,
    on_invalid: str = "quarantine",
    checks: dict = CHECKS_DEFAULT,
    collection: str = "content",
    destination: str = "",
    report: dict = REPORT_DEFAULT,
    gpu_node_selector: dict = GPU_NODE_SELECTOR,
    gpu_toleration: dict = GPU_TOLERATION,
) -> None:
    """Batch content generation from a prompt file (on demand; kfp.local runs it in tests on tiny models).

    Args:
        prompts_uri: The prompt file (JSON Lines; gs:// or a path): one prompt per line with id, kind
            (text, image, music), prompt or template (playlist_title, playlist_description, track_blurb)
            and catalog metadata. See docs/en/content.md.
        run_context: Who and what started the run (storage root override, submitter, git revision,
            pipeline version, traceparent); filled by `python -m pipelines run/upload/schedule`.
        models: Model directory per kind (text, image, music): a path (PVC) or a gs:// prefix holding a
            save_pretrained directory with safetensors weights. A kind left empty fails its batches.
        generation: Generation settings: seed, device (auto, cpu, cuda), precision (auto, float32,
            float16, bfloat16), max_new_tokens, temperature, top_k, top_p, repetition_penalty,
            image_steps, image_size, guidance_scale, audio_seconds, audio_format (flac, ogg),
            audio_peak_dbfs. Sizes are bounded by the AITASKS_CONTENT_MAX_* settings.
        batch_size: Prompts per generation batch (each batch is one GPU step, up to 4 at once).
        blocked_terms_uri: Extra blocked terms for prompts and outputs (text, one per line). Empty: none.
        default_blocked_terms: Also apply the built-in blocked-terms list.
        prompt_policy: Prompt length limits (min_chars, max_chars).
        on_invalid: quarantine (refused prompts are recorded, the rest are generated) or fail (any
            refused prompt fails the run, naming each prompt and rule).
        checks: Output check thresholds (text repetition, image blankness, audio level, clipping,
            silence, duration). See docs/en/content.md.
        collection: Name of the published collection (releases, quarantine and LATEST.json under it).
        destination: Root of the published content (gs:// or a path). Empty: <storage root>/content.
        report: The HTML report shown in the run's artifacts: title, samples (shown per kind).
        gpu_node_selector: Node selector of the generation steps (the GPU pool).
        gpu_toleration: Toleration of the generation steps (the taint of the GPU node pool).
    """
    run = PipelineRun(NAME, run_context, gpu_node_selector=gpu_node_selector, gpu_toleration=gpu_toleration)
    summary = steps.SUMMARY(run)

    with dsl.ExitHandler(summary, name="content-generation-run"):
        validated = steps.VALIDATE_PROMPTS(
            run,
            prompts_uri=prompts_uri,
            blocked_terms_uri=blocked_terms_uri,
            default_blocked_terms=default_blocked_terms,
            batch_size=batch_size,
            policy=prompt_policy,
            on_invalid=on_invalid,
        )
        with dsl.ParallelFor(validated.outputs["Output"], parallelism=MAX_PARALLEL_BATCHES, name="batches") as batch:
            generated = steps.GENERATE_CONTENT(
                run,
                prompts=validated.outputs["prompts"],
                batch_index=batch,
                models=models,
                generation=generation,
            )
        checked = steps.CHECK_CONTENT(
            run,
            batch_uris=dsl.Collected(generated.output),
            checks=checks,
            blocked_terms_uri=blocked_terms_uri,
            default_blocked_terms=default_blocked_terms,
        )
        published = steps.PUBLISH_CONTENT(
            run, verdicts=checked.outputs["verdicts"], collection=collection, destination=destination
        )
        steps.CONTENT_REPORT(
            run,
            release_uri=published.outputs["Output"],
            verdicts=checked.outputs["verdicts"],
            report_settings=report,
        )
