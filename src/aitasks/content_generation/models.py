"""Model directories: where they come from, what they may hold, who they are, and how they load.

A model is a Hugging Face directory (``save_pretrained`` output) on a local path (a PVC) or under a
``gs://`` prefix. Before anything is loaded:

* a ``gs://`` directory is downloaded once into a local cache keyed by its content (the objects' names
  and hashes), published by a directory rename so concurrent loaders never see half a copy;
* the directory is checked (:func:`check_model_dir`): weights only as ``.safetensors`` (pickle-based
  ``.bin``/``.pt``/``.ckpt``/``.pkl`` and the like are refused, as is any Python file or ``auto_map``
  entry: no remote code), and a diffusers ``model_index.json`` may only name ``diffusers`` or
  ``transformers`` classes;
* its identity is computed (:func:`model_identity`): sha256 over every file's relative path and
  content, recorded in each output's provenance and joined to the task's idempotency key.

Loading always passes ``local_files_only=True`` (the Hub is never contacted: ``HF_HUB_OFFLINE``
semantics without changing the process environment), ``use_safetensors=True`` and
``trust_remote_code=False``. Device and precision are chosen at run time (:func:`resolve_precision`).
"""

from __future__ import annotations

import contextlib
import json
import shutil
import tempfile
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

from aitasks.runtime.errors import DataFormatError, FieldIssue, InvalidInputError
from aitasks.runtime.hashing import sha256_file, sha256_json, sha256_text
from aitasks.runtime.storage import Storage, check_relative_key, is_gcs, join_uri, storage_for

if TYPE_CHECKING:
    import torch

__all__ = [
    "REFUSED_SUFFIXES",
    "LoadedModel",
    "check_model_dir",
    "load_image_pipeline",
    "load_music_model",
    "load_text_model",
    "local_model_dir",
    "model_identity",
    "remote_fingerprint",
    "resolve_precision",
]

#: File suffixes refused anywhere in a model directory: pickle-based or code.
REFUSED_SUFFIXES: Final[tuple[str, ...]] = (
    ".bin",
    ".pt",
    ".pth",
    ".ckpt",
    ".pkl",
    ".pickle",
    ".joblib",
    ".npy",
    ".npz",
    ".h5",
    ".msgpack",
    ".py",
    ".pyc",
    ".so",
)
#: Libraries a diffusers ``model_index.json`` may name.
ALLOWED_LIBRARIES: Final[frozenset[str]] = frozenset({"diffusers", "transformers"})
_COMPLETE: Final = ".aitasks-complete"


def _files(root: Path) -> list[tuple[str, Path]]:
    return sorted((p.relative_to(root).as_posix(), p) for p in root.rglob("*") if p.is_file() and p.name != _COMPLETE)


def check_model_dir(root: Path, *, field: str, task: str) -> None:
    """Refuse a directory that is missing, holds no safetensors weights, or holds pickle or code.

    Raises:
        InvalidInputError: Missing directory (names ``field``).
        DataFormatError: Refused content (names the file and the reason).
    """
    if not root.is_dir():
        raise InvalidInputError(task, [FieldIssue(field, f"model directory not found: {root}")])
    files = _files(root)
    for rel, _ in files:
        if rel.lower().endswith(REFUSED_SUFFIXES):
            raise DataFormatError(
                str(root / rel), "refused: pickle-based weights or code (only .safetensors weights are loaded)"
            )
    if not any(rel.endswith(".safetensors") for rel, _ in files):
        raise DataFormatError(str(root), "no .safetensors weights in the model directory")
    for rel, path in files:
        if not rel.endswith(".json") or path.stat().st_size > 16 * 1024**2:
            continue
        try:
            doc = json.loads(path.read_text("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise DataFormatError(str(path), f"not JSON: {exc}") from None
        if isinstance(doc, dict) and "auto_map" in doc:
            raise DataFormatError(str(path), "auto_map asks for remote code, which is never run")
        if rel.rsplit("/", 1)[-1] == "model_index.json" and isinstance(doc, dict):
            for key, value in doc.items():
                if key.startswith("_") or not isinstance(value, list) or len(value) != 2 or value[0] is None:
                    continue
                if value[0] not in ALLOWED_LIBRARIES:
                    raise DataFormatError(str(path), f"component {key!r} names library {value[0]!r}")


@lru_cache(maxsize=32)
def _tree_sha256(root: str, stamp: str) -> str:
    del stamp  # part of the cache key only
    base = Path(root)
    return sha256_json([[rel, sha256_file(p)] for rel, p in _files(base)])


def _stamp(root: Path) -> str:
    """Sizes and modification times of every file: a changed file gives a new hash, an unchanged one is cached."""
    return sha256_json([[rel, p.stat().st_size, p.stat().st_mtime_ns] for rel, p in _files(root)])


@dataclass(frozen=True)
class ModelIdentity:
    name: str
    sha256: str
    library: str
    architecture: str


def model_identity(root: Path, uri: str) -> ModelIdentity:
    """Name, content hash, library and class of a checked model directory."""
    index = root / "model_index.json"
    if index.is_file():
        library, arch = "diffusers", str(json.loads(index.read_text("utf-8")).get("_class_name", "DiffusionPipeline"))
    else:
        cfg = json.loads((root / "config.json").read_text("utf-8")) if (root / "config.json").is_file() else {}
        archs = cfg.get("architectures") or [cfg.get("model_type", "unknown")]
        library, arch = "transformers", str(archs[0])
    name = uri.rstrip("/").rsplit("/", 1)[-1] or "model"
    return ModelIdentity(
        name=name, sha256=_tree_sha256(str(root.resolve()), _stamp(root)), library=library, architecture=arch
    )


def remote_fingerprint(uri: str, storage: Storage | None = None) -> str:
    """A fingerprint of a model directory without downloading it (GCS: names and object hashes).

    Local directories hash their content (cached by size and modification time).
    """
    if not is_gcs(uri):
        root = Path(uri.removeprefix("file://"))
        if not root.is_dir():
            return "missing"
        return _tree_sha256(str(root.resolve()), _stamp(root))
    st = storage or storage_for(uri)
    prefix = uri.rstrip("/") + "/"
    objects = sorted(o for o in st.list(prefix) if not o.endswith("/"))  # no folder placeholders
    return sha256_json([[o[len(prefix) :], st.content_hash(o)] for o in objects])


def default_cache_dir() -> Path:
    return Path(tempfile.gettempdir()) / "aitasks-content-models"


def local_model_dir(uri: str, *, storage: Storage | None = None, cache_dir: Path | None = None) -> Path:
    """A local directory holding the model at ``uri``: the path itself, or a cached download of a ``gs://`` prefix.

    The download goes to a temp directory beside the cache entry and is renamed into place once
    complete; a racing loader that lost the rename uses the winner's copy.

    Raises:
        FileNotFoundError: A ``gs://`` prefix holds no object.
    """
    if not is_gcs(uri):
        return Path(uri.removeprefix("file://"))
    st = storage or storage_for(uri)
    prefix = uri.rstrip("/") + "/"
    objects = sorted(o for o in st.list(prefix) if not o.endswith("/"))  # no folder placeholders
    if not objects:
        raise FileNotFoundError(f"{prefix}: no object under this prefix")
    fingerprint = sha256_json([[o[len(prefix) :], st.content_hash(o)] for o in objects])
    base = cache_dir or default_cache_dir()
    target = base / f"{sha256_text(uri)[:12]}-{fingerprint[:24]}"
    if (target / _COMPLETE).is_file():
        return target
    base.mkdir(parents=True, exist_ok=True)
    tmp = base / f".tmp-{target.name}-{uuid.uuid4().hex}"
    try:
        for obj in objects:
            key = check_relative_key(obj[len(prefix) :])
            local = tmp.joinpath(*key.split("/"))
            local.parent.mkdir(parents=True, exist_ok=True)
            st.get_file(join_uri(uri.rstrip("/"), key), local)
        (tmp / _COMPLETE).write_text(fingerprint, "utf-8")
        try:
            tmp.rename(target)
        except OSError:
            if not (target / _COMPLETE).is_file():
                raise
    finally:
        with contextlib.suppress(FileNotFoundError):
            shutil.rmtree(tmp)
    return target


def resolve_precision(precision: str, device: torch.device, *, task: str) -> torch.dtype:
    """The torch dtype for ``precision`` on ``device``: ``auto`` is bf16/fp16 on CUDA and fp32 on CPU.

    Raises:
        InvalidInputError: ``float16`` on a CPU (slow or unsupported kernels: ask for float32 or bfloat16).
    """
    import torch

    if precision == "auto":
        if device.type == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.float32
    if precision == "float16" and device.type != "cuda":
        raise InvalidInputError(task, [FieldIssue("generation.precision", "float16 needs a CUDA device")])
    return {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}[precision]


@dataclass
class LoadedModel:
    """A loaded model (or diffusion pipeline), its tokenizer when it has one, and where it came from."""

    model: Any
    tokenizer: Any
    identity: ModelIdentity
    uri: str
    device: torch.device
    dtype: torch.dtype


def _quiet_transformers() -> None:
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()


_OFFLINE: Final[dict[str, Any]] = {"local_files_only": True, "trust_remote_code": False}


def _prepare(
    uri: str, field: str, task: str, storage: Storage | None, cache_dir: Path | None
) -> tuple[Path, ModelIdentity]:
    if not uri:
        raise InvalidInputError(task, [FieldIssue(field, "no model directory given for this kind of prompt")])
    try:
        root = local_model_dir(uri, storage=storage, cache_dir=cache_dir)
    except FileNotFoundError as exc:
        raise InvalidInputError(task, [FieldIssue(field, str(exc))]) from None
    check_model_dir(root, field=field, task=task)
    return root, model_identity(root, uri)


def _load(loader: Callable[[Path], Any], root: Path, what: str) -> Any:
    try:
        return loader(root)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise DataFormatError(str(root), f"cannot load {what}: {exc}") from None


def _load_transformers(
    model_cls: Any,
    uri: str,
    field: str,
    what: str,
    device: torch.device,
    dtype: torch.dtype,
    *,
    task: str,
    storage: Storage | None,
    cache_dir: Path | None,
) -> tuple[Any, Any, ModelIdentity]:
    """``(model, tokenizer, identity)`` of a transformers model directory: safetensors only, offline."""
    from transformers import AutoTokenizer

    _quiet_transformers()
    root, ident = _prepare(uri, field, task, storage, cache_dir)
    tok = _load(lambda r: AutoTokenizer.from_pretrained(r, **_OFFLINE), root, "the tokenizer")
    model = _load(lambda r: model_cls.from_pretrained(r, use_safetensors=True, dtype=dtype, **_OFFLINE), root, what)
    return model.to(device).eval(), tok, ident


def load_text_model(
    uri: str,
    device: torch.device,
    dtype: torch.dtype,
    *,
    task: str,
    storage: Storage | None = None,
    cache_dir: Path | None = None,
) -> LoadedModel:
    """A causal language model and its tokenizer (``AutoModelForCausalLM`` / ``AutoTokenizer``)."""
    from transformers import AutoModelForCausalLM

    model, tok, ident = _load_transformers(
        AutoModelForCausalLM, uri, "models.text", "the causal language model", device, dtype,
        task=task, storage=storage, cache_dir=cache_dir,
    )  # fmt: skip
    # Decoder-only models continue the prompt: pad, and truncate a too-long prompt, on the left (the cue at
    # the prompt's end, "Title:", must stay next to the generated tokens).
    tok.padding_side = "left"
    tok.truncation_side = "left"
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return LoadedModel(model, tok, ident, uri, device, dtype)


def load_music_model(
    uri: str,
    device: torch.device,
    dtype: torch.dtype,
    *,
    task: str,
    storage: Storage | None = None,
    cache_dir: Path | None = None,
) -> LoadedModel:
    """A text-to-audio model (``AutoModelForTextToWaveform``: MusicGen) and its text tokenizer."""
    from transformers import AutoModelForTextToWaveform

    model, tok, ident = _load_transformers(
        AutoModelForTextToWaveform, uri, "models.music", "the text-to-audio model", device, dtype,
        task=task, storage=storage, cache_dir=cache_dir,
    )  # fmt: skip
    return LoadedModel(model, tok, ident, uri, device, dtype)


def load_image_pipeline(
    uri: str,
    device: torch.device,
    dtype: torch.dtype,
    *,
    task: str,
    storage: Storage | None = None,
    cache_dir: Path | None = None,
) -> LoadedModel:
    """A diffusers pipeline (``DiffusionPipeline.from_pretrained``), progress bars off."""
    from diffusers import DiffusionPipeline
    from diffusers.utils import logging as df_logging

    _quiet_transformers()
    df_logging.disable_progress_bar()
    df_logging.set_verbosity_error()
    root, ident = _prepare(uri, "models.image", task, storage, cache_dir)
    pipe = _load(
        lambda r: DiffusionPipeline.from_pretrained(r, use_safetensors=True, dtype=dtype, local_files_only=True),
        root,
        "the diffusion pipeline",
    )
    pipe = pipe.to(device)
    pipe.set_progress_bar_config(disable=True)
    return LoadedModel(pipe, None, ident, uri, device, dtype)
