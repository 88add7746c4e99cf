"""KFP components of tuning and model documentation: suggest, trial, select; model card; explanations.

Each body makes one :func:`aitasks.runtime.step.run_step` call. Nothing else.
"""

from kfp import dsl
from kfp.dsl import HTML, Artifact, Dataset, Input, Markdown, Metrics, Model, Output

from components.images import image_for

GPU_IMAGE = image_for("model_training")
CPU_IMAGE = image_for("model_evaluation")


@dsl.component(base_image=CPU_IMAGE, install_kfp_package=False)
def suggest_trials(
    training_set: Input[Dataset],
    tuning: dict,
    training: dict,
    model_name: str,
    run_context: dict,
    pipeline: str,
    run_id: str,
    step: str,
    study: Output[Artifact],
    validation_set: Output[Dataset],
    metrics: Output[Metrics],
) -> list:
    """Create or continue the Optuna study, carve the validation split, ask for the trials. Returns their numbers."""
    from aitasks.runtime.step import run_step

    res = run_step(
        "tune.suggest",
        {"training_set_uri": training_set, "base": training, "model_name": model_name},
        (run_context, pipeline, run_id, step),
        groups={"tuning": tuning, "training": training},
        outputs={"study_uri": study, "validation_set_uri": validation_set},
        metrics=metrics,
    )
    return res.trial_numbers


@dsl.component(base_image=GPU_IMAGE, install_kfp_package=False)
def run_trial(
    study: Input[Artifact],
    validation_set: Input[Dataset],
    trial_number: int,
    training: dict,
    run_context: dict,
    pipeline: str,
    run_id: str,
    step: str,
    metrics: Output[Metrics],
) -> float:
    """Train and score one trial with pruning, tell the study. Returns its validation value."""
    from aitasks.runtime.step import run_step

    res = run_step(
        "tune.trial",
        {
            "study_uri": study,
            "validation_set_uri": validation_set,
            "trial_number": int(trial_number),  # kfp.local hands loop items over as floats
        },
        (run_context, pipeline, run_id, step),
        groups={"training": training},
        metrics=metrics,
    )
    return res.value


@dsl.component(base_image=CPU_IMAGE, install_kfp_package=False)
def select_trial(
    study: Input[Artifact],
    trial_values: list,
    training: dict,
    run_context: dict,
    pipeline: str,
    run_id: str,
    step: str,
    summary: Output[Artifact],
    summary_markdown: Output[Markdown],
    metrics: Output[Metrics],
) -> dict:
    """Pick the best complete trial. Returns the run's ``training`` group with the best trial's settings."""
    from aitasks.runtime.step import run_step

    res = run_step(
        "tune.select",
        {"study_uri": study, "trial_values": [float(v) for v in trial_values]},
        (run_context, pipeline, run_id, step),
        outputs={"summary_uri": summary, "summary_markdown_uri": summary_markdown},
        metrics=metrics,
    )
    return {**training, **res.training_settings()}


@dsl.component(base_image=CPU_IMAGE, install_kfp_package=False)
def model_card(
    model: Input[Model],
    evaluation: Input[Artifact],
    training_set: Input[Dataset],
    model_name: str,
    version: int,
    run_context: dict,
    pipeline: str,
    run_id: str,
    step: str,
    card: Output[Markdown],
    card_json: Output[Artifact],
):
    """The registered version's model card (Markdown + JSON), also attached to the version in MLflow."""
    from aitasks.runtime.step import run_step

    run_step(
        "model.card",
        {
            "model_uri": model,
            "metrics_uri": evaluation,
            "training_set_uri": training_set,
            "model_name": model_name,
            "version": version,
        },
        (run_context, pipeline, run_id, step),
        outputs={"card_markdown_uri": card, "card_json_uri": card_json},
    )


@dsl.component(base_image=CPU_IMAGE, install_kfp_package=False)
def explain_model(
    model: Input[Model],
    training_set: Input[Dataset],
    users: int,
    k: int,
    model_name: str,
    version: int,
    run_context: dict,
    pipeline: str,
    run_id: str,
    step: str,
    report: Output[HTML],
    explanations: Output[Artifact],
    metrics: Output[Metrics],
):
    """Feature attributions and "because you played" for a few held-out listeners (HTML report)."""
    from aitasks.runtime.step import run_step

    run_step(
        "model.explain",
        {
            "model_uri": model,
            "training_set_uri": training_set,
            "users": users,
            "k": k,
            "model_name": model_name,
            "version": version,
        },
        (run_context, pipeline, run_id, step),
        outputs={"report_html_uri": report, "explanations_uri": explanations},
        metrics=metrics,
    )
