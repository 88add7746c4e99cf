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
* :func:`torch_threads`: pin torch's intra-op threads for a block and restore the caller's count
  afterwards (a task must not change the process for the next one).

torch is imported inside the functions that need it.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Final

from aitasks.runtime.errors import FieldIssue, InvalidInputError

if TYPE_CHECKING:
    import torch

__all__ = [
    "DEVICE_PATTERN",
    "MAX_DEFAULT_THREADS",
    "default_num_threads",
    "resolve_device",
    "torch_threads",
    "usable_cpus",
]

#: Default thread count cap (see the module docstring).
MAX_DEFAULT_THREADS: Final = 4
#: Device names :func:`resolve_device` accepts (besides ``None``).
DEVICE_PATTERN: Final = r"^(auto|cpu|cuda(:[0-9]+)?)$"
_DEVICE = re.compile(DEVICE_PATTERN)


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
