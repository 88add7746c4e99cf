"""Register-then-promote with lineage: the one path every family's register task takes.

A model bundle (safetensors + JSON) becomes a registered version tagged with where it came from
(:class:`Lineage`: code version, git revision, trace id, KFP run, pipeline, submitter, model sha),
keyed by the model's **content** (:func:`registration_key`): re-registering the same model, from a
re-evaluation or a re-run with other inputs, returns the existing version instead of a second one.
Then, when the caller has a verdict, the one promotion policy (:func:`~.aliases.promote`) decides
whether the alias moves; in particular a version that a rollback demoted is never promoted again
automatically.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict

from aitasks.platform.registry.aliases import Promotion, promote
from aitasks.platform.registry.config import RegisteredVersion, RegistryConfig
from aitasks.platform.registry.register import register_model
from aitasks.runtime.hashing import sha256_json

if TYPE_CHECKING:
    from aitasks.runtime.task import TaskContext

__all__ = ["Lineage", "Registration", "model_params", "register_and_promote", "registration_key"]


class Lineage(BaseModel):
    """Where a registered model came from; set as tags on its run and its version.

    Attributes:
        code_version: ``task@version`` of the step that trained it (the bundle's ``meta.task``).
        git_revision: Git revision of the code.
        trace_id: Trace id of the registering call.
        kfp_run_id: KFP run id.
        pipeline: Pipeline name.
        submitter: Who submitted the run.
        model_sha: Content hash of the model bundle.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    code_version: str
    git_revision: str
    trace_id: str
    kfp_run_id: str
    pipeline: str
    submitter: str
    model_sha: str

    @classmethod
    def of(cls, ctx: TaskContext, *, model_sha: str, meta: Mapping[str, Any]) -> Lineage:
        """The lineage of a model bundle registered by the task call ``ctx``.

        Args:
            ctx: The registering task's context (run context, trace id).
            model_sha: The bundle's content hash (``ctx.storage.content_hash(uri)``).
            meta: The bundle manifest's ``meta`` (``task`` names the training step).
        """
        run = ctx.runtime.run
        return cls(
            code_version=str(meta.get("task", "")),
            git_revision=run.git_revision,
            trace_id=ctx.trace_id,
            kfp_run_id=run.run_id,
            pipeline=run.pipeline,
            submitter=run.submitter,
            model_sha=model_sha,
        )

    def tags(self) -> dict[str, str]:
        """The ``aitasks.*`` tags."""
        return {f"aitasks.{k}": v for k, v in self.model_dump().items()}


class Registration(BaseModel):
    """What :func:`register_and_promote` did.

    Attributes:
        version: The registered version (``created`` False when the model was registered before).
        promotion: The promotion policy's decision; None when the caller promotes in a later step.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    version: RegisteredVersion
    promotion: Promotion | None = None

    @property
    def promoted(self) -> bool:
        """Whether the version holds the alias by the policy after this call (moved now or before)."""
        return self.promotion is not None and self.promotion.holds


def registration_key(model_name: str, model_sha: str) -> str:
    """Idempotency key of a registration: the model's content and name, not the call's inputs."""
    return sha256_json({"model": model_sha, "name": model_name})


def model_params(meta: Mapping[str, Any]) -> dict[str, str | int | float]:
    """The training parameters a bundle's ``meta.params`` records, scalars only (MLflow params)."""
    params = meta.get("params", {})
    return {str(k): v for k, v in params.items() if isinstance(v, str | int | float)}


def register_and_promote(
    cfg: RegistryConfig,
    model_dir: Path,
    *,
    lineage: Lineage,
    metrics: dict[str, float],
    params: dict[str, str | int | float] | None = None,
    tags: Mapping[str, str] | None = None,
    curves: dict[str, list[float]] | None = None,
    run_name: str | None = None,
    blessed: bool | None = None,
    alias: str = "champion",
) -> Registration:
    """Register the model (at most once per content) and apply the promotion policy.

    Args:
        cfg: The registry and model name.
        model_dir: The model's files.
        lineage: Lineage tags (:meth:`Lineage.of`).
        metrics: Final metrics.
        params: Run parameters (:func:`model_params`).
        tags: Family-specific tags besides the lineage (e.g. ``aitasks.labels``).
        curves: Per-epoch histories.
        run_name: MLflow run name (cut to 250 characters).
        blessed: The evaluation's verdict; ``None`` registers only (a later step promotes, through
            the same policy).
        alias: The alias the policy may move.

    Returns:
        The version and, when ``blessed`` is given, the promotion decision.

    Raises:
        InvalidInputError: Malformed tags, params, metrics or alias.
        DataFormatError: The model directory is missing, empty, or holds a pickle or a link.
        ServiceUnavailableError: The registry is unreachable (retryable: a retry finishes or skips
            what was done, it never doubles it).
    """
    version = register_model(
        cfg,
        model_dir,
        idempotency_key=registration_key(cfg.model_name, lineage.model_sha),
        tags={**lineage.tags(), **dict(tags or {})},
        params=dict(params or {}),
        metrics=metrics,
        curves=curves,
        run_name=None if run_name is None else run_name[:250],
    )
    if blessed is None:
        return Registration(version=version)
    return Registration(version=version, promotion=promote(cfg, version.version, blessed=blessed, alias=alias))
