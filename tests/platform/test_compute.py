"""Usable CPUs, default threads, device choice and thread pinning: one semantics for every family."""

from __future__ import annotations

import os

import pytest
import torch

from aitasks.platform import compute
from aitasks.platform.compute import default_num_threads, resolve_device, torch_threads, usable_cpus
from aitasks.runtime.errors import InvalidInputError


def test_usable_cpus_follows_the_affinity_mask_and_falls_back(monkeypatch: pytest.MonkeyPatch) -> None:
    if hasattr(os, "sched_getaffinity"):
        assert usable_cpus() == len(os.sched_getaffinity(0))
        monkeypatch.setattr(os, "sched_getaffinity", lambda _pid: {0, 3})
        assert usable_cpus() == 2
        monkeypatch.delattr(os, "sched_getaffinity")
    monkeypatch.setattr(os, "cpu_count", lambda: None)
    assert usable_cpus() == 1  # unknown count: at least one


def test_default_threads_are_the_usable_cpus_capped(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(compute, "usable_cpus", lambda: 64)
    assert default_num_threads() == compute.MAX_DEFAULT_THREADS
    monkeypatch.setattr(compute, "usable_cpus", lambda: 2)
    assert default_num_threads() == 2


def test_auto_and_none_pick_cuda_only_when_present(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device(None, task="t") == torch.device("cpu")
    assert resolve_device("auto", task="t") == torch.device("cpu")
    assert resolve_device("cpu", task="t") == torch.device("cpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert resolve_device("auto", task="t") == torch.device("cuda")
    assert resolve_device("cuda:1", task="t") == torch.device("cuda", 1)


def test_an_absent_gpu_or_an_unknown_name_is_a_typed_input_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(InvalidInputError, match="CUDA is not available") as err:
        resolve_device("cuda", task="model.train")
    assert err.value.issues[0].field == "device" and not err.value.retryable
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    with pytest.raises(InvalidInputError, match="only 1 GPU"):
        resolve_device("cuda:1", task="model.train")
    with pytest.raises(InvalidInputError, match="not auto, cpu, cuda"):
        resolve_device("tpu", task="model.train", field="cfg.device")


def test_torch_threads_pins_and_restores_even_on_error() -> None:
    before = torch.get_num_threads()
    with torch_threads(1) as n:
        assert n == 1 and torch.get_num_threads() == 1
    assert torch.get_num_threads() == before
    with pytest.raises(RuntimeError), torch_threads(None) as n:
        assert n == default_num_threads() and torch.get_num_threads() == n
        raise RuntimeError
    assert torch.get_num_threads() == before
