"""Saving and loading a classifier: safetensors weights plus ``config.json``, checked against each other."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import TYPE_CHECKING, Final, Literal

from pydantic import BaseModel, ConfigDict

from aitasks.audio_analysis.classifier.config import ClassifierConfig, read_model_file
from aitasks.audio_analysis.classifier.model import MelCnn, _check_model
from aitasks.platform.files import atomic_write
from aitasks.platform.weights import load_tensors, save_tensors, tensor_specs
from aitasks.runtime.errors import DataFormatError

if TYPE_CHECKING:
    from aitasks.audio_analysis.classifier.keras_backend import KerasMelCnn

FORMAT: Final = "aitasks.audio.mel_cnn"
FORMAT_VERSION: Final = 1
WEIGHTS_FILE: Final = "model.safetensors"
CONFIG_FILE: Final = "config.json"


# ------------------------------------------------------------------------------------ persistence


class _ModelFile(BaseModel):
    """Schema of ``config.json``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    format: Literal["aitasks.audio.mel_cnn"]
    format_version: Literal[1]
    config: ClassifierConfig


def save_classifier(model: MelCnn, cfg: ClassifierConfig, out_dir: Path) -> None:
    """Write ``model.safetensors`` and ``config.json`` into ``out_dir`` (each replaced atomically).

    Args:
        model: The model.
        cfg: Its configuration (stored whole, training settings included).
        out_dir: Output directory (created).

    Raises:
        InvalidInputError: ``cfg`` does not describe ``model``'s architecture.
    """
    _check_model(model, cfg)
    out_dir.mkdir(parents=True, exist_ok=True)
    save_tensors(out_dir / WEIGHTS_FILE, model.state_dict(), metadata=_weights_metadata(cfg))
    doc = _ModelFile(format=FORMAT, format_version=FORMAT_VERSION, config=cfg)
    atomic_write(out_dir / CONFIG_FILE, json.dumps(doc.model_dump(mode="json"), indent=1, sort_keys=True) + "\n")


def _config_sha256(cfg: ClassifierConfig) -> str:
    # ``backend`` came later: left out while it is the default, so models saved before it still load.
    doc = cfg.model_dump(mode="json", exclude={"backend"} if cfg.backend == "torch" else None)
    canonical = json.dumps(doc, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def _weights_metadata(cfg: ClassifierConfig) -> dict[str, str]:
    """The weights file's metadata: format, version and the hash of the configuration it belongs to.

    One metadata key holding sorted JSON (and :func:`~aitasks.platform.weights.save_tensors` sorts the
    header's keys anyway), so equal weights stay byte-identical.
    """
    doc = {"config_sha256": _config_sha256(cfg), "format": FORMAT, "format_version": FORMAT_VERSION}
    return {"aitasks": json.dumps(doc, sort_keys=True, separators=(",", ":"))}


def _header_config_sha(meta: dict[str, str], path: Path) -> str:
    """The config hash a weights file was saved with, after checking its format and version."""
    try:
        doc = json.loads(meta["aitasks"])
        fmt, version, sha = doc["format"], doc["format_version"], doc["config_sha256"]
    except (KeyError, TypeError, ValueError):
        raise DataFormatError(str(path), f"metadata {meta!r} is not an {FORMAT} header") from None
    if (fmt, version) != (FORMAT, FORMAT_VERSION):
        raise DataFormatError(
            str(path), f"format {fmt!r} version {version!r}, expected {FORMAT!r} version {FORMAT_VERSION}"
        )
    return str(sha)


def load_classifier(model_dir: Path) -> tuple[MelCnn, ClassifierConfig]:
    """Load a model written by :func:`save_classifier` (safetensors + JSON; nothing is unpickled).

    Args:
        model_dir: The directory with ``model.safetensors`` and ``config.json``.

    Returns:
        The model (CPU, eval mode) and its configuration.

    Raises:
        DataFormatError: A file is missing or corrupt, the format/version is unknown, or a tensor is
            missing, unexpected, or of the wrong shape or dtype; the error names the file and the problem.
    """
    cfg_path = model_dir / CONFIG_FILE
    doc = read_model_file(cfg_path, _ModelFile)
    cfg = doc.config
    if cfg.backend != "torch":
        raise DataFormatError(str(cfg_path), f"config.backend is {cfg.backend!r} in a {FORMAT} file")
    model = MelCnn(cfg)  # the configuration's bounds keep this small, whatever the file claims
    path = model_dir / WEIGHTS_FILE
    tensors, meta = load_tensors(
        path, tensor_specs(model.state_dict()), check_metadata=lambda m: _header_config_sha(m, path)
    )
    # Checked after the shapes: a shape mismatch names the tensor, which says more than a hash.
    saved_sha = _header_config_sha(meta, path)
    if saved_sha != _config_sha256(cfg):
        raise DataFormatError(
            str(path), f"the weights were saved with another {CONFIG_FILE} (config sha256 {saved_sha[:12]}...)"
        )
    model.load_state_dict(tensors, strict=True)
    model.eval()
    return model, cfg


def load_any_classifier(model_dir: Path) -> tuple[MelCnn | KerasMelCnn, ClassifierConfig]:
    """Load a classifier of either backend: ``config.json``'s ``format`` says which loader checks and loads it.

    A torch model loads through :func:`load_classifier`; a Keras one through
    :func:`~aitasks.audio_analysis.classifier.keras_backend.load_keras_classifier` (only then is
    TensorFlow imported).

    Raises:
        DataFormatError: ``config.json`` is missing, unreadable or of an unknown format, or the
            backend's loader refuses the files.
    """
    cfg_path = model_dir / CONFIG_FILE
    try:
        raw = cfg_path.read_bytes()
        fmt = json.loads(raw).get("format") if len(raw) < (1 << 20) else None
    except FileNotFoundError:
        raise DataFormatError(str(cfg_path), "file is missing") from None
    except (OSError, ValueError, AttributeError) as exc:
        raise DataFormatError(str(cfg_path), f"unreadable: {type(exc).__name__}: {exc}") from None
    if fmt == FORMAT:
        return load_classifier(model_dir)
    from aitasks.audio_analysis.classifier.keras_backend import KERAS_FORMAT, load_keras_classifier

    if fmt == KERAS_FORMAT:
        return load_keras_classifier(model_dir)
    raise DataFormatError(str(cfg_path), f"unknown model format {fmt!r} (expected {FORMAT!r} or {KERAS_FORMAT!r})")
