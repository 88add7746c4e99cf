"""Device and precision chosen at run time: the selection rules (CUDA faked) and the CPU paths for real."""

from __future__ import annotations

import math

import pytest
import torch

from aitasks.model_training.dataset import DEFAULT_SPEC, IdVocab, Interactions, TowerInputs
from aitasks.model_training.two_tower import TrainConfig, fit_config, train_two_tower
from aitasks.platform.compute import resolve_device, resolve_precision
from aitasks.runtime.errors import InvalidInputError

CPU = torch.device("cpu")
CUDA = torch.device("cuda")


@pytest.fixture
def fake_cuda(monkeypatch: pytest.MonkeyPatch) -> dict[str, bool]:
    """A CUDA that says it is there; ``bf16`` toggles bf16 support."""
    state = {"bf16": True}
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: state["bf16"])
    return state


def test_auto_is_cuda_with_bf16_when_the_gpu_has_it(fake_cuda: dict[str, bool]) -> None:
    device = resolve_device(None, task="t")
    assert device.type == "cuda"
    p = resolve_precision("auto", device, task="t")
    assert (p.name, p.device_type, p.chosen_by, p.autocast_dtype, p.needs_grad_scaler) == (
        "bf16",
        "cuda",
        "auto",
        torch.bfloat16,
        False,
    )


def test_auto_is_fp16_with_a_grad_scaler_on_an_older_gpu(fake_cuda: dict[str, bool]) -> None:
    fake_cuda["bf16"] = False
    p = resolve_precision(None, CUDA, task="t")
    assert (p.name, p.autocast_dtype, p.needs_grad_scaler) == ("fp16", torch.float16, True)
    with pytest.raises(InvalidInputError, match=r"precision.*'bf16' is not supported"):
        resolve_precision("bf16", CUDA, task="t")


def test_auto_is_cpu_fp32_without_cuda(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    device = resolve_device("auto", task="t")
    assert device == CPU
    p = resolve_precision("auto", device, task="t")
    assert (p.name, p.autocast_dtype, p.chosen_by) == ("fp32", None, "auto")


def test_forced_settings(fake_cuda: dict[str, bool]) -> None:
    assert resolve_precision("fp32", CUDA, task="t").name == "fp32"  # a GPU may be forced to fp32
    assert resolve_precision("fp16", CUDA, task="t").chosen_by == "setting"
    assert resolve_precision("bf16", CPU, task="t").name == "bf16"  # CPU autocast has bf16 kernels
    assert resolve_device("cpu", task="t") == CPU  # forcing the CPU on a GPU machine


def test_impossible_settings_are_errors_naming_the_field(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(InvalidInputError, match=r"precision.*'fp16' needs a CUDA device"):
        resolve_precision("fp16", CPU, task="t")
    with pytest.raises(InvalidInputError, match=r"precision.*'fp8' is not one of"):
        resolve_precision("fp8", CPU, task="t")
    with pytest.raises(InvalidInputError, match=r"device.*CUDA is not available"):
        resolve_device("cuda", task="t")


def _toy(n: int = 3000, users: int = 50, items: int = 40) -> tuple[Interactions, IdVocab, IdVocab]:
    """Users prefer tracks congruent to their id modulo 4: learnable, so the loss must fall."""
    g = torch.Generator().manual_seed(0)
    u = torch.randint(1, users, (n,), generator=g)
    i = (u % 4 + 4 * torch.randint(0, (items - 1) // 4, (n,), generator=g)).clamp(1, items - 1)
    spec = DEFAULT_SPEC

    def side(idx: torch.Tensor, dense_dim: int, cats: int) -> TowerInputs:
        return TowerInputs(
            idx=idx.numpy(),
            dense=torch.rand((n, dense_dim), generator=g).numpy(),
            cat=torch.zeros((n, cats), dtype=torch.int64).numpy(),
        )

    data = Interactions(
        users=side(u, len(spec.user_dense), len(spec.user_categorical)),
        items=side(i, len(spec.item_dense), len(spec.item_categorical)),
    )
    return data, IdVocab.build([f"u{k}" for k in range(1, users)]), IdVocab.build([f"t{k}" for k in range(1, items)])


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_cpu_training_runs_in_the_chosen_precision_and_learns(precision: str) -> None:
    data, uv, iv = _toy()
    config = fit_config(data, DEFAULT_SPEC, len(uv), len(iv), hidden_dim=32, embedding_dim=16)
    tcfg = TrainConfig(epochs=4, batch_size=128, seed=1, num_threads=1, device="cpu", precision=precision)
    model, report = train_two_tower(config, data, tcfg)
    assert (report.device, report.precision) == ("cpu", precision)
    losses = [h["loss"] for h in report.history]
    assert all(math.isfinite(x) for x in losses) and losses[-1] < 0.9 * losses[0]
    # Weights stay fp32 whatever the autocast precision (saved as F32 safetensors).
    assert all(p.dtype == torch.float32 for p in model.parameters())
