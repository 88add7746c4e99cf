"""Deterministic training of a :class:`MelCnn` on labelled clips, with a stratified validation split."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Final

import numpy as np
import numpy.typing as npt
import torch
import torch.nn.functional as F  # noqa: N812 - the conventional name

from aitasks.audio_analysis.classifier.config import (
    _TASK,
    ClassifierConfig,
    ClassifierReport,
    EpochStats,
    TrainingSummary,
)
from aitasks.audio_analysis.classifier.inference import _check_labels, _report
from aitasks.audio_analysis.classifier.model import (
    MelCnn,
    _check_clips,
    _clip_logits,
    _fit_length,
    _torch_runtime,
)
from aitasks.platform.compute import resolve_device
from aitasks.runtime.errors import (
    FieldIssue,
    InvalidInputError,
)

#: Random gain range of the training augmentation, in dB.
_GAIN_DB: Final = (-12.0, 6.0)


# --------------------------------------------------------------------------------------- training


def _stratified_split(
    y: npt.NDArray[np.int64], val_fraction: float, seed: int
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]]:
    """Per class, a seeded shuffle; ``round(n_c * val_fraction)`` go to validation, >= 1 of each class to training."""
    rng = np.random.default_rng([seed, 0])
    train: list[int] = []
    val: list[int] = []
    for c in np.unique(y):
        idx = rng.permutation(np.flatnonzero(y == c))
        k = min(round(idx.size * val_fraction), idx.size - 1)
        if val_fraction > 0 and idx.size >= 2:
            k = max(k, 1)
        val.extend(idx[:k].tolist())
        train.extend(idx[k:].tolist())
    return np.sort(np.asarray(train, dtype=np.int64)), np.sort(np.asarray(val, dtype=np.int64))


def train_classifier(
    clips: Sequence[np.ndarray], labels: Sequence[int], cfg: ClassifierConfig, *, val_fraction: float = 0.2
) -> tuple[MelCnn, ClassifierReport]:
    """Train a :class:`MelCnn` with AdamW, augmentation and early stopping on validation accuracy.

    The clips are split per class (seeded): ``val_fraction`` of each class is held out. Each epoch
    takes a random crop and a random gain of every training clip; after it the model is scored on
    the validation clips (window-averaged, as :func:`evaluate` does). The weights of the best epoch
    (highest validation accuracy, ties broken by lower validation loss) are kept; training stops
    after ``cfg.patience`` epochs without improvement. Without a validation split every epoch runs
    and the last weights are kept.

    Args:
        clips: Mono float32 clips at ``cfg.sample_rate``.
        labels: Label index (into ``cfg.labels``) of each clip.
        cfg: Architecture and training settings.
        val_fraction: Share of each class held out for validation, in [0, 0.9].

    Returns:
        The model (CPU, eval mode) and the report on the validation clips (on the training clips
        when ``val_fraction`` is 0), with a :class:`TrainingSummary`.

    Raises:
        InvalidInputError: ``cfg.backend`` is not ``torch``; fewer than 2 clips, bad clips or labels, a bad
            ``val_fraction`` or an unavailable device.
        FatalError: The loss became NaN or infinite.
    """
    from aitasks.runtime.errors import FatalError

    if cfg.backend != "torch":
        raise InvalidInputError(
            _TASK, [FieldIssue("cfg.backend", f"is {cfg.backend!r}: use keras_backend.train_keras_classifier")]
        )
    if not 0.0 <= val_fraction <= 0.9:
        raise InvalidInputError(_TASK, [FieldIssue("val_fraction", f"{val_fraction} not in [0, 0.9]")])
    if len(clips) < 2:
        raise InvalidInputError(_TASK, [FieldIssue("clips", f"need at least 2 clips, got {len(clips)}")])
    data = _check_clips(clips)
    y = _check_labels(labels, len(data), len(cfg.labels))
    device = resolve_device(cfg.device, task=_TASK)
    train_idx, val_idx = _stratified_split(y, val_fraction, cfg.seed)
    n = cfg.clip_samples
    rng = np.random.default_rng([cfg.seed, 1])
    history: list[EpochStats] = []
    t_start = time.perf_counter()
    with _torch_runtime(cfg, device, seed=True):
        model = MelCnn(cfg).to(device)
        opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=cfg.epochs)
        y_dev = torch.from_numpy(y).to(device)
        best: tuple[float, float] | None = None
        best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        best_epoch = 0
        stale = 0
        for epoch in range(1, cfg.epochs + 1):
            t0 = time.perf_counter()
            model.train()
            order = rng.permutation(train_idx)
            loss_sum, correct = 0.0, 0
            for b in range(0, order.size, cfg.batch_size):
                batch = order[b : b + cfg.batch_size]
                if batch.size == 1 and order.size > 1:
                    continue  # batch norm cannot learn from a batch of one; the clip is in the next epoch's order
                offsets = [int(rng.integers(0, max(data[i].size - n, 0) + 1)) for i in batch]
                gains = 10.0 ** (rng.uniform(*_GAIN_DB, size=batch.size) / 20.0)
                x = np.stack(
                    [_fit_length(data[i], n, o) * np.float32(g) for i, o, g in zip(batch, offsets, gains, strict=True)]
                )
                target = y_dev[torch.from_numpy(batch).to(device)]
                logits = model(torch.from_numpy(x).to(device))
                loss = F.cross_entropy(logits, target)
                if not torch.isfinite(loss):
                    raise FatalError(f"training diverged at epoch {epoch}: loss is {loss.item()}")
                opt.zero_grad(set_to_none=True)
                loss.backward()  # type: ignore[no-untyped-call]
                opt.step()
                loss_sum += float(loss.detach()) * batch.size
                correct += int((logits.argmax(dim=1) == target).sum())
            sched.step()
            val_loss = val_acc = None
            if val_idx.size:
                val_logits = _clip_logits(model, [data[i] for i in val_idx], cfg, max(cfg.batch_size, 32))
                val_y = torch.from_numpy(y[val_idx])
                val_loss = float(F.cross_entropy(val_logits, val_y))
                val_acc = float((val_logits.argmax(dim=1) == val_y).double().mean())
            history.append(
                EpochStats(
                    epoch=epoch,
                    train_loss=loss_sum / max(train_idx.size, 1),
                    train_accuracy=correct / max(train_idx.size, 1),
                    val_loss=val_loss,
                    val_accuracy=val_acc,
                    seconds=time.perf_counter() - t0,
                )
            )
            if val_acc is None or val_loss is None:
                best_epoch = epoch
                continue
            if best is None or (val_acc, -val_loss) > best:
                best, best_epoch, stale = (val_acc, -val_loss), epoch, 0
                best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
            else:
                stale += 1
                if stale >= cfg.patience:
                    break
        if val_idx.size:
            model.load_state_dict(best_state)
        model.eval()
        eval_idx = val_idx if val_idx.size else train_idx
        pred = _clip_logits(model, [data[i] for i in eval_idx], cfg, max(cfg.batch_size, 32)).argmax(dim=1)
    model.cpu()
    report = _report(y[eval_idx], pred.numpy().astype(np.int64), cfg.labels, "validation" if val_idx.size else "train")
    summary = TrainingSummary(
        n_train=int(train_idx.size),
        n_val=int(val_idx.size),
        epochs_run=len(history),
        best_epoch=best_epoch,
        stopped_early=len(history) < cfg.epochs,
        seconds=time.perf_counter() - t_start,
        device=str(device),
        history=history,
    )
    return model, report.model_copy(update={"training": summary})
