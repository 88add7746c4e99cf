"""Looking versions up, and moving aliases: the promotion policy, deliberate moves and rollbacks.

See :func:`promote` for the one promotion policy every family uses.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Literal

from pydantic import BaseModel, ConfigDict

from aitasks.platform.registry.config import (
    ALIAS_TASK,
    RegisteredVersion,
    RegistryConfig,
    as_version,
    client,
    error_code,
    service,
)
from aitasks.runtime.errors import FieldIssue, InvalidInputError

if TYPE_CHECKING:
    from mlflow import MlflowClient
    from mlflow.entities.model_registry import ModelVersion

__all__ = [
    "Promotion",
    "check_alias",
    "demoted_tag",
    "get_version",
    "previous_tag",
    "promote",
    "promote_if_blessed",
    "rollback_alias",
    "set_alias",
]

_ALIAS = re.compile(r"[A-Za-z][A-Za-z0-9_-]{0,62}")


def check_alias(alias: str) -> None:
    if not _ALIAS.fullmatch(alias) or alias.lower() == "latest" or re.fullmatch(r"[vV]\d+", alias):
        raise InvalidInputError(
            ALIAS_TASK,
            [FieldIssue("alias", "must be 1-63 letters, digits, '_' or '-' starting with a letter (not latest, vN)")],
        )


def _get_mv(c: MlflowClient, cfg: RegistryConfig, version: int | None, alias: str | None) -> ModelVersion | None:
    if (version is None) == (alias is None):
        raise InvalidInputError(ALIAS_TASK, [FieldIssue("version", "give exactly one of version and alias")])
    try:
        if alias is not None:
            check_alias(alias)
            # The registered model's alias map, not get_model_version_by_alias: a missing alias
            # is then "None", not an error message to parse.
            target = c.get_registered_model(cfg.model_name).aliases.get(alias)
            if target is None:
                return None
            version = int(target)
        return c.get_model_version(cfg.model_name, str(version))
    except Exception as exc:
        if error_code(exc) == "RESOURCE_DOES_NOT_EXIST":
            return None
        raise


def get_version(
    cfg: RegistryConfig, *, version: int | None = None, alias: str | None = None
) -> RegisteredVersion | None:
    """The model version with this number or alias (exactly one of the two).

    Returns:
        The version, or None when the model, the version or the alias does not exist.

    Raises:
        InvalidInputError: Neither or both of ``version`` and ``alias``, or a malformed alias.
        ServiceUnavailableError: The registry is unreachable.
    """
    with service(cfg):
        mv = _get_mv(client(cfg), cfg, version, alias)
        return None if mv is None else as_version(mv)


def previous_tag(alias: str) -> str:
    return f"aitasks.previous_{alias}"


def demoted_tag(alias: str) -> str:
    return f"aitasks.demoted_{alias}"


def _move_alias(c: MlflowClient, cfg: RegistryConfig, alias: str, version: int) -> bool:
    name = cfg.model_name
    if _get_mv(c, cfg, version, None) is None:
        raise InvalidInputError(ALIAS_TASK, [FieldIssue("version", f"{name} has no version {version}")])
    current = c.get_registered_model(name).aliases.get(alias)
    if current is not None and int(current) == version:
        return False
    if current is not None:
        # Recorded before the move: a crash in between leaves a tag that the retry rewrites.
        c.set_model_version_tag(name, str(version), previous_tag(alias), str(current))
    c.set_registered_model_alias(name, alias, str(version))
    return True


def set_alias(cfg: RegistryConfig, alias: str, version: int) -> None:
    """Point ``alias`` at ``version`` (a deliberate, human move: it also lifts an earlier rollback's ban).

    The previous holder is recorded as the version's tag ``aitasks.previous_<alias>``.

    Raises:
        InvalidInputError: A malformed alias or a version that does not exist.
    """
    check_alias(alias)
    with service(cfg):
        c = client(cfg)
        _move_alias(c, cfg, alias, version)
        mv = c.get_model_version(cfg.model_name, str(version))
        if demoted_tag(alias) in (mv.tags or {}):
            c.delete_model_version_tag(cfg.model_name, str(version), demoted_tag(alias))


class Promotion(BaseModel):
    """What the promotion policy decided for one version.

    Attributes:
        alias: The alias.
        version: The candidate version.
        blessed: The evaluation's verdict.
        outcome: ``moved`` (this call moved the alias), ``already`` (it pointed there before),
            ``not_blessed`` or ``demoted`` (a rollback took the alias away from this version).
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    alias: str
    version: int
    blessed: bool
    outcome: Literal["moved", "already", "not_blessed", "demoted"]

    @property
    def moved(self) -> bool:
        """Whether this call moved the alias."""
        return self.outcome == "moved"

    @property
    def holds(self) -> bool:
        """Whether the version holds the alias after the call, by this policy (moved or already)."""
        return self.outcome in ("moved", "already")


def promote(cfg: RegistryConfig, version: int, *, blessed: bool, alias: str = "champion") -> Promotion:
    """The one promotion policy: move ``alias`` to ``version`` only when blessed and not demoted.

    * Not blessed: nothing moves.
    * Demoted: a version that a rollback took the alias away from (tag ``aitasks.demoted_<alias>``)
      is never promoted again automatically, whatever the pipeline re-runs; only a deliberate
      :func:`set_alias` (a human's ``aitasks model`` command) lifts that ban.
    * Otherwise the alias moves, and the previous holder is recorded as the tag
      ``aitasks.previous_<alias>`` on ``version`` for :func:`rollback_alias`. A version that
      already holds the alias is left as it is (idempotent).

    Every family's automatic promotion goes through here (the recommender's ``model.promote`` task,
    the audio classifier's register task through :func:`~aitasks.platform.registry.register_and_promote`).

    Returns:
        The decision.

    Raises:
        InvalidInputError: A malformed alias or a version that does not exist.
        ServiceUnavailableError: The registry is unreachable.
    """
    check_alias(alias)

    def decided(outcome: Literal["moved", "already", "not_blessed", "demoted"]) -> Promotion:
        return Promotion(alias=alias, version=version, blessed=blessed, outcome=outcome)

    if not blessed:
        return decided("not_blessed")  # without a registry call: nothing to look up
    with service(cfg):
        c = client(cfg)
        mv = _get_mv(c, cfg, version, None)
        if mv is not None and demoted_tag(alias) in (mv.tags or {}):
            return decided("demoted")
        return decided("moved" if _move_alias(c, cfg, alias, version) else "already")


def promote_if_blessed(cfg: RegistryConfig, version: int, *, blessed: bool, alias: str = "champion") -> bool:
    """:func:`promote`, answering only whether the alias moved.

    Returns:
        Whether the alias moved: False when not blessed, demoted, or already pointing at ``version``.

    Raises:
        InvalidInputError: A malformed alias or a version that does not exist.
        ServiceUnavailableError: The registry is unreachable.
    """
    return promote(cfg, version, blessed=blessed, alias=alias).moved


def rollback_alias(cfg: RegistryConfig, alias: str = "champion") -> int:
    """Move ``alias`` back to the version it pointed at before its current holder; returns that version.

    The version losing the alias is tagged ``aitasks.demoted_<alias>`` so a re-run of the pipeline
    does not promote it again. Repeated rollbacks walk further back through the recorded history.

    Raises:
        InvalidInputError: The alias does not exist, or its holder records no (existing) previous version.
        ServiceUnavailableError: The registry is unreachable.
    """
    check_alias(alias)
    name = cfg.model_name
    with service(cfg):
        c = client(cfg)
        current = _get_mv(c, cfg, None, alias)
        if current is None:
            raise InvalidInputError(ALIAS_TASK, [FieldIssue("alias", f"{name} has no alias {alias!r}")])
        previous = (current.tags or {}).get(previous_tag(alias))
        if not previous or _get_mv(c, cfg, int(previous), None) is None:
            raise InvalidInputError(
                ALIAS_TASK,
                [FieldIssue("alias", f"{alias} (v{current.version}) records no existing previous version")],
            )
        c.set_model_version_tag(name, str(current.version), demoted_tag(alias), "true")
        c.set_registered_model_alias(name, alias, previous)
        return int(previous)
