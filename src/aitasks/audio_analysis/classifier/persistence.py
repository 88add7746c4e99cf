"""Saving and loading a classifier: safetensors weights plus ``config.json``, checked against each other."""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Final, Literal

import torch
from pydantic import BaseModel, ConfigDict, ValidationError

from aitasks.audio_analysis.classifier.config import ClassifierConfig
from aitasks.audio_analysis.classifier.model import MelCnn, _check_model
from aitasks.runtime.errors import (
    DataFormatError,
)

FORMAT: Final = "aitasks.audio.mel_cnn"
FORMAT_VERSION: Final = 1
WEIGHTS_FILE: Final = "model.safetensors"
CONFIG_FILE: Final = "config.json"
#: Safetensors dtype names of the tensors a model holds.
_DTYPES: Final[dict[torch.dtype, str]] = {torch.float32: "F32", torch.int64: "I64"}


# ------------------------------------------------------------------------------------ persistence


class _ModelFile(BaseModel):
    """Schema of ``config.json``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    format: Literal["aitasks.audio.mel_cnn"]
    format_version: Literal[1]
    config: ClassifierConfig


def _replace_atomic(path: Path, write: Callable[[Path], object]) -> None:
    fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def save_classifier(model: MelCnn, cfg: ClassifierConfig, out_dir: Path) -> None:
    """Write ``model.safetensors`` and ``config.json`` into ``out_dir`` (each replaced atomically).

    Args:
        model: The model.
        cfg: Its configuration (stored whole, training settings included).
        out_dir: Output directory (created).

    Raises:
        InvalidInputError: ``cfg`` does not describe ``model``'s architecture.
    """
    from safetensors.torch import save_file

    _check_model(model, cfg)
    out_dir.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    meta = _weights_metadata(cfg)
    _replace_atomic(out_dir / WEIGHTS_FILE, lambda p: save_file(tensors, str(p), metadata=meta))
    doc = _ModelFile(format=FORMAT, format_version=FORMAT_VERSION, config=cfg)
    text = json.dumps(doc.model_dump(mode="json"), indent=1, sort_keys=True) + "\n"
    _replace_atomic(out_dir / CONFIG_FILE, lambda p: p.write_text(text, "utf-8"))


def _config_sha256(cfg: ClassifierConfig) -> str:
    canonical = json.dumps(cfg.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def _weights_metadata(cfg: ClassifierConfig) -> dict[str, str]:
    """The weights file's metadata: format, version and the hash of the configuration it belongs to.

    One metadata key holding sorted JSON: safetensors writes metadata keys in hash-map order, which
    changes between processes; a single key keeps equal weights byte-identical.
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


def _read_weights(
    path: Path, expected: dict[str, tuple[tuple[int, ...], str]], cfg: ClassifierConfig
) -> dict[str, torch.Tensor]:
    """Tensors of a safetensors file, checked (metadata, names, shapes, dtypes) before any is loaded."""
    from safetensors import safe_open

    if not path.is_file():
        raise DataFormatError(str(path), "file is missing")
    try:
        with safe_open(str(path), framework="pt", device="cpu") as fh:
            saved_sha = _header_config_sha(fh.metadata() or {}, path)
            names = set(fh.keys())
            missing, unexpected = sorted(set(expected) - names), sorted(names - set(expected))
            if missing or unexpected:
                raise DataFormatError(str(path), f"tensor names differ: missing {missing}, unexpected {unexpected}")
            for name, (shape, dtype) in expected.items():
                sl = fh.get_slice(name)
                got = tuple(sl.get_shape())
                if got != shape or sl.get_dtype() != dtype:
                    raise DataFormatError(
                        str(path), f"tensor {name!r} is {sl.get_dtype()}{list(got)}, expected {dtype}{list(shape)}"
                    )
            # Checked after the shapes: a shape mismatch names the tensor, which says more than a hash.
            if saved_sha != _config_sha256(cfg):
                raise DataFormatError(
                    str(path), f"the weights were saved with another {CONFIG_FILE} (config sha256 {saved_sha[:12]}...)"
                )
            return {name: fh.get_tensor(name) for name in expected}
    except DataFormatError:
        raise
    except Exception as exc:  # safetensors raises SafetensorError and OSError subclasses for bad files
        raise DataFormatError(str(path), f"not a valid safetensors file: {exc}") from None


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
    try:
        doc = _ModelFile.model_validate_json(cfg_path.read_bytes())
    except FileNotFoundError:
        raise DataFormatError(str(cfg_path), "file is missing") from None
    except OSError as exc:
        raise DataFormatError(str(cfg_path), f"unreadable: {exc}") from None
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or '<root>'}: {e['msg']}" for e in exc.errors()[:5])
        raise DataFormatError(str(cfg_path), f"invalid {CONFIG_FILE}: {problems}") from None
    cfg = doc.config
    model = MelCnn(cfg)  # the configuration's bounds keep this small, whatever the file claims
    expected = {}
    for name, t in model.state_dict().items():
        expected[name] = (tuple(t.shape), _DTYPES[t.dtype])
    model.load_state_dict(_read_weights(model_dir / WEIGHTS_FILE, expected, cfg), strict=True)
    model.eval()
    return model, cfg
