"""Model weights as safetensors files, never pickle: canonical bytes on save, checks before load.

* :func:`save_tensors` writes a ``.safetensors`` file atomically (:mod:`aitasks.platform.files`)
  with its header made canonical (:func:`canonical_safetensors`): safetensors writes the metadata
  from a Rust ``HashMap`` whose order changes from process to process, so without it equal weights
  would give different bytes, hashes and registry versions.
* :func:`load_tensors` checks the file against what the caller's model expects **before** it
  loads a single tensor: the metadata (a caller's check, e.g. format and version), the tensor names
  (none missing, none unexpected), each shape and dtype. A truncated, tampered or foreign file is a
  :class:`~aitasks.runtime.errors.DataFormatError` naming the file and the problem.

safetensors holds raw arrays and a JSON header: loading one cannot run code, unlike ``torch.load``
or any pickle. torch and safetensors are imported inside the functions.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Final

from aitasks.runtime.errors import DataFormatError, FatalError

if TYPE_CHECKING:
    import torch

__all__ = [
    "TensorSpec",
    "canonical_safetensors",
    "load_tensors",
    "save_tensors",
    "tensor_specs",
]

#: ``(shape, safetensors dtype name)`` of one tensor, e.g. ``((64, 128), "F32")``.
TensorSpec = tuple[tuple[int, ...], str]

_DTYPE_NAMES: Final = {
    "float64": "F64",
    "float32": "F32",
    "float16": "F16",
    "bfloat16": "BF16",
    "int64": "I64",
    "int32": "I32",
    "int16": "I16",
    "int8": "I8",
    "uint8": "U8",
    "bool": "BOOL",
}


def canonical_safetensors(raw: bytes) -> bytes:
    """``raw`` with its metadata keys sorted, so that equal weights give equal bytes (and hashes).

    Tensor entries are already in a fixed order. The header keeps its length (same members, space
    padding), so the data offsets stay valid.

    Raises:
        FatalError: The canonical header would be longer (cannot happen for compact JSON of the
            same members; never write a broken file).
    """
    size = int.from_bytes(raw[:8], "little")
    header = json.loads(raw[8 : 8 + size])
    header["__metadata__"] = dict(sorted(header.get("__metadata__", {}).items()))
    text = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    if len(text) > size:
        raise FatalError(f"safetensors header grew from {size} to {len(text)} bytes when canonicalised")
    return raw[:8] + text.ljust(size, b" ") + raw[8 + size :]


def tensor_specs(state: Mapping[str, torch.Tensor]) -> dict[str, TensorSpec]:
    """The :data:`TensorSpec` of each tensor of a ``state_dict`` (works on the ``meta`` device too)."""
    specs: dict[str, TensorSpec] = {}
    for name, t in state.items():
        dtype = str(t.dtype).removeprefix("torch.")
        if dtype not in _DTYPE_NAMES:
            raise ValueError(f"tensor {name!r} has dtype {t.dtype}, which safetensors files here do not hold")
        specs[name] = (tuple(t.shape), _DTYPE_NAMES[dtype])
    return specs


def save_tensors(path: Path, tensors: Mapping[str, torch.Tensor], *, metadata: Mapping[str, str]) -> None:
    """Write ``tensors`` (moved to CPU, made contiguous) to ``path`` atomically, canonical header.

    Args:
        path: The ``.safetensors`` file (its directory is created).
        tensors: Name -> tensor.
        metadata: String metadata stored in the header (format, version, ...).
    """
    from safetensors.torch import save as safetensors_bytes

    from aitasks.platform.files import atomic_write

    cpu = {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}
    atomic_write(path, canonical_safetensors(safetensors_bytes(cpu, metadata=dict(metadata))))


def load_tensors(
    path: Path,
    expected: Mapping[str, TensorSpec],
    *,
    check_metadata: Callable[[dict[str, str]], object] | None = None,
) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """The tensors of ``path``, each checked against ``expected`` before any is loaded.

    Order of the checks: the file exists, ``check_metadata(metadata)`` (raise
    :class:`DataFormatError` to refuse), then names (missing and unexpected ones listed), then each
    tensor's shape and dtype.

    Args:
        path: The ``.safetensors`` file.
        expected: Name -> ``(shape, dtype)`` (see :func:`tensor_specs`).
        check_metadata: Checks the header metadata (``{}`` when the file has none); its result is ignored.

    Returns:
        (name -> tensor on CPU, the header metadata).

    Raises:
        DataFormatError: The file is missing, not a safetensors file, or does not match.
    """
    from safetensors import safe_open

    if not path.is_file():
        raise DataFormatError(str(path), "file is missing")
    try:
        with safe_open(str(path), framework="pt", device="cpu") as fh:
            meta = dict(fh.metadata() or {})
            if check_metadata is not None:
                check_metadata(meta)
            names = set(fh.keys())
            missing, unexpected = sorted(set(expected) - names), sorted(names - set(expected))
            if missing or unexpected:
                raise DataFormatError(str(path), f"tensor names differ: missing {missing}, unexpected {unexpected}")
            for name, (shape, dtype) in expected.items():
                sl = fh.get_slice(name)
                got = tuple(sl.get_shape())
                if got != tuple(shape) or sl.get_dtype() != dtype:
                    raise DataFormatError(
                        str(path), f"tensor {name!r} is {sl.get_dtype()}{list(got)}, expected {dtype}{list(shape)}"
                    )
            return {name: fh.get_tensor(name) for name in expected}, meta
    except DataFormatError:
        raise
    except Exception as exc:  # safetensors raises SafetensorError and OSError subclasses for bad files
        raise DataFormatError(str(path), f"not a valid safetensors file: {exc}") from None
