"""CPU, device and thread choices for every task family, with one semantics.

* :func:`usable_cpus`: the CPUs this process may run on (``sched_getaffinity``: honours taskset and
  cgroup cpusets, which is what a pod's CPU limit pins on a node with a static CPU manager), falling
  back to ``os.cpu_count()`` where the call does not exist (macOS). At least 1.
* :func:`default_num_threads`: torch threads when a config leaves them unset: the usable CPUs, at
  most :data:`MAX_DEFAULT_THREADS`. The models here multiply small matrices per batch; beyond 4
  threads they gain little, and on a shared node more threads mostly contend with the neighbours.
* :func:`resolve_device`: ``None`` or ``"auto"`` is CUDA when available, else CPU; ``"cpu"`` is the
  CPU; ``"cuda"`` / ``"cuda:N"`` is that GPU and fails with a typed, non-retryable
  :class:`~aitasks.runtime.errors.InvalidInputError` naming the field when CUDA (or GPU ``N``) is
  not there: a pipeline that asked for a GPU must not silently train on a CPU.
* :func:`resolve_precision`: ``None``/``"auto"`` is bf16 autocast on a CUDA device that supports
  bf16, fp16 autocast (with a gradient scaler) on an older GPU, fp32 on the CPU. ``"fp32"`` is always
  allowed, ``"bf16"`` on CUDA with bf16 support and on the CPU (CPU autocast has bf16 kernels),
  ``"fp16"`` only on CUDA; anything else is a typed :class:`~aitasks.runtime.errors.InvalidInputError`.
* :func:`torch_threads`: pin torch's intra-op threads for a block and restore the caller's count
  afterwards (a task must not change the process for the next one).

torch is imported inside the functions that need it.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final, Literal

from aitasks.runtime.errors import FieldIssue, InvalidInputError

if TYPE_CHECKING:
    import torch

__all__ = [
    "DEVICE_PATTERN",
    "MAX_DEFAULT_THREADS",
    "PRECISIONS",
    "Precision",
    "default_num_threads",
    "resolve_device",
    "resolve_precision",
    "torch_threads",
    "usable_cpus",
]

#: Default thread count cap (see the module docstring).
MAX_DEFAULT_THREADS: Final = 4
#: Device names :func:`resolve_device` accepts (besides ``None``).
DEVICE_PATTERN: Final = r"^(auto|cpu|cuda(:[0-9]+)?)$"
_DEVICE = re.compile(DEVICE_PATTERN)
#: Precision names :func:`resolve_precision` accepts (besides ``None``).
PRECISIONS: Final = ("auto", "fp32", "bf16", "fp16")
PrecisionName = Literal["fp32", "bf16", "fp16"]


@dataclass(frozen=True)
class Precision:
    """The numeric precision of a training run.

    Attributes:
        name: ``fp32``, ``bf16`` or ``fp16``.
        device_type: ``cpu`` or ``cuda`` (the autocast device type).
        chosen_by: ``auto`` or ``setting``.
    """

    name: PrecisionName
    device_type: str
    chosen_by: Literal["auto", "setting"]

    @property
    def autocast_dtype(self) -> torch.dtype | None:
        """The autocast dtype, or None for fp32 (no autocast)."""
        import torch

        return {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[self.name]

    @property
    def needs_grad_scaler(self) -> bool:
        """fp16 gradients underflow without loss scaling; bf16 has fp32's exponent range and does not."""
        return self.name == "fp16"


def usable_cpus() -> int:
    """The CPUs this process may run on (affinity/cgroup aware), at least 1."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


def default_num_threads() -> int:
    """Torch threads when a config leaves them unset: :func:`usable_cpus`, at most :data:`MAX_DEFAULT_THREADS`."""
    return min(usable_cpus(), MAX_DEFAULT_THREADS)


def resolve_device(name: str | None, *, task: str, field: str = "device") -> torch.device:
    """The torch device for ``name`` (see the module docstring for the rules).

    Args:
        name: ``None``, ``"auto"``, ``"cpu"``, ``"cuda"`` or ``"cuda:N"``.
        task: Task name for the error.
        field: Input field name for the error.

    Returns:
        The device.

    Raises:
        InvalidInputError: An unknown name, or a GPU that this process does not have.
    """
    import torch

    if name is not None and not _DEVICE.match(name):
        raise InvalidInputError(task, [FieldIssue(field, f"{name!r} is not auto, cpu, cuda or cuda:N")])
    if name is None or name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise InvalidInputError(task, [FieldIssue(field, f"{name!r} requested but CUDA is not available")])
        device = torch.device(name)
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise InvalidInputError(
                task, [FieldIssue(field, f"{name!r} requested but only {torch.cuda.device_count()} GPU(s) are visible")]
            )
        return device
    return torch.device(name)


def resolve_precision(name: str | None, device: torch.device, *, task: str, field: str = "precision") -> Precision:
    """The precision for ``name`` on ``device`` (see the module docstring for the rules).

    Raises:
        InvalidInputError: An unknown name, or a precision the device cannot run.
    """
    import torch

    if name is not None and name not in PRECISIONS:
        raise InvalidInputError(task, [FieldIssue(field, f"{name!r} is not one of {', '.join(PRECISIONS)}")])
    cuda = device.type == "cuda"
    bf16_ok = cuda and torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    if name is None or name == "auto":
        if not cuda:
            return Precision("fp32", device.type, "auto")
        return Precision("bf16" if bf16_ok else "fp16", "cuda", "auto")
    if name == "fp16" and not cuda:
        raise InvalidInputError(task, [FieldIssue(field, f"'fp16' needs a CUDA device, training runs on {device}")])
    if name == "bf16" and cuda and not bf16_ok:
        raise InvalidInputError(task, [FieldIssue(field, f"'bf16' is not supported by {device}; use fp16 or fp32")])
    chosen: PrecisionName = "fp32" if name == "fp32" else "bf16" if name == "bf16" else "fp16"
    return Precision(chosen, device.type, "setting")


@contextmanager
def torch_threads(n: int | None = None) -> Iterator[int]:
    """Run a block with ``n`` torch threads (``None``: :func:`default_num_threads`); restore afterwards.

    Yields:
        The thread count in effect.
    """
    import torch

    threads = n or default_num_threads()
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield threads
    finally:
        torch.set_num_threads(previous)


def integrated_gradients() -> type:
    """captum's ``IntegratedGradients``, imported without leaving matplotlib's font cache in ``$HOME``.

    captum imports matplotlib, which writes a font list under ``$MPLCONFIGDIR`` (default ``~/.cache``)
    on first import: a step must leave nothing in its home. Unless the environment names a config dir,
    matplotlib gets one under the temp dir, shared by the processes of this user.
    """
    import tempfile
    from pathlib import Path

    if not os.environ.get("MPLCONFIGDIR"):
        cache = Path(tempfile.gettempdir()) / f"aitasks-matplotlib-{os.getuid()}"
        cache.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.environ["MPLCONFIGDIR"] = str(cache)
    from captum.attr import IntegratedGradients

    return IntegratedGradients  # type: ignore[no-any-return]
