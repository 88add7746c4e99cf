"""The MLflow model registry, without pickle, and the one promotion policy of every family.

A model is plain files (``model.safetensors`` + JSON) logged as run artifacts under ``model/`` with
a ``checksums.json``; the version carries the checksum list's sha256 as a tag, so a file changed in
artifact storage fails :func:`download_model`. Nothing here calls an MLflow flavor's ``log_model`` /
``load_model`` (they pickle), and every client this package makes first turns MLflow's pickle
deserialisation off for the process.

Modules:

* :mod:`.config`: :class:`RegistryConfig`, :func:`registry_config`, the bound :func:`client`,
  unreachable services as retryable typed errors with redacted URIs, :data:`MODEL_NAME_PATTERN`.
* :mod:`.register`: :func:`register_model`, at most one version per idempotency key, crash-safe.
* :mod:`.aliases`: :func:`get_version`; :func:`promote`, the promotion policy (blessed and not
  demoted by a rollback); :func:`set_alias`, the deliberate human move that lifts a ban;
  :func:`rollback_alias`.
* :mod:`.lineage`: :func:`register_and_promote` with :class:`Lineage` tags: the register step of
  every family.
* :mod:`.download`: :func:`download_model`, verified against the checksums.

Importing this package is cheap: ``mlflow`` is imported inside the functions.
"""

from aitasks.platform.registry.aliases import (
    Promotion,
    get_version,
    promote,
    promote_if_blessed,
    rollback_alias,
    set_alias,
)
from aitasks.platform.registry.config import (
    MODEL_NAME_PATTERN,
    RegisteredVersion,
    RegistryConfig,
    client,
    redact_uri,
    registry_config,
)
from aitasks.platform.registry.download import download_model
from aitasks.platform.registry.lineage import (
    Lineage,
    Registration,
    model_params,
    register_and_promote,
    registration_key,
)
from aitasks.platform.registry.register import (
    ARTIFACT_DIR,
    CHECKSUMS_FILE,
    CHECKSUMS_TAG,
    KEY_TAG,
    PICKLE_SUFFIXES,
    register_model,
)

__all__ = [
    "ARTIFACT_DIR",
    "CHECKSUMS_FILE",
    "CHECKSUMS_TAG",
    "KEY_TAG",
    "MODEL_NAME_PATTERN",
    "PICKLE_SUFFIXES",
    "Lineage",
    "Promotion",
    "RegisteredVersion",
    "Registration",
    "RegistryConfig",
    "client",
    "download_model",
    "get_version",
    "model_params",
    "promote",
    "promote_if_blessed",
    "redact_uri",
    "register_and_promote",
    "register_model",
    "registration_key",
    "registry_config",
    "rollback_alias",
    "set_alias",
]
