"""Evaluation (per-class metrics and a confusion matrix) and prediction with a trained :class:`MelCnn`."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Literal

import numpy as np
import numpy.typing as npt
import torch

from aitasks.audio_analysis.classifier.config import _TASK, ClassifierConfig, ClassifierReport, ClassMetrics, Prediction
from aitasks.audio_analysis.classifier.model import (
    MelCnn,
    _check_clips,
    _check_model,
    _clip_logits,
    _model_device,
    _torch_runtime,
)
from aitasks.runtime.errors import (
    FieldIssue,
    InvalidInputError,
)

if TYPE_CHECKING:
    from aitasks.audio_analysis.classifier.keras_backend import KerasMelCnn

# ---------------------------------------------------------------------------------------- metrics


def _report(
    y_true: npt.NDArray[np.int64],
    y_pred: npt.NDArray[np.int64],
    labels: tuple[str, ...],
    split: Literal["eval", "validation", "train"],
) -> ClassifierReport:
    k = len(labels)
    cm = np.zeros((k, k), dtype=np.int64)
    np.add.at(cm, (y_true, y_pred), 1)
    tp = np.diag(cm).astype(np.float64)
    support = cm.sum(axis=1)
    predicted = cm.sum(axis=0)
    precision = np.divide(tp, predicted, out=np.zeros(k), where=predicted > 0)
    recall = np.divide(tp, support, out=np.zeros(k), where=support > 0)
    denom = precision + recall
    f1 = np.divide(2 * precision * recall, denom, out=np.zeros(k), where=denom > 0)
    present = (support > 0) | (predicted > 0)
    n = int(y_true.size)
    return ClassifierReport(
        labels=labels,
        split=split,
        n=n,
        accuracy=float(tp.sum() / n) if n else 0.0,
        macro_f1=float(f1[present].mean()) if present.any() else 0.0,
        chance=1.0 / k,
        per_class={
            lab: ClassMetrics(
                precision=float(precision[i]), recall=float(recall[i]), f1=float(f1[i]), support=int(support[i])
            )
            for i, lab in enumerate(labels)
        },
        confusion=cm.tolist(),
    )


def _check_labels(labels: Sequence[int], n_clips: int, k: int) -> npt.NDArray[np.int64]:
    y = np.asarray(labels, dtype=np.int64)
    if y.ndim != 1 or y.size != n_clips:
        raise InvalidInputError(_TASK, [FieldIssue("labels", f"{y.size} labels for {n_clips} clips")])
    if y.size and (y.min() < 0 or y.max() >= k):
        raise InvalidInputError(_TASK, [FieldIssue("labels", f"label indices must be in [0, {k})")])
    return y


def _logits(
    model: MelCnn | KerasMelCnn, clips: list[npt.NDArray[np.float32]], cfg: ClassifierConfig, batch_size: int
) -> npt.NDArray[np.float64]:
    """Window-averaged logits per clip, from either backend (float64, CPU)."""
    if isinstance(model, MelCnn):
        with _torch_runtime(cfg, _model_device(model), seed=False):
            return _clip_logits(model, clips, cfg, batch_size).double().numpy()
    return np.asarray(model.clip_logits(clips, batch_size), dtype=np.float64)


def evaluate(
    model: MelCnn | KerasMelCnn,
    clips: Sequence[np.ndarray],
    labels: Sequence[int],
    cfg: ClassifierConfig,
    *,
    batch_size: int = 32,
) -> ClassifierReport:
    """Accuracy, macro F1, per-class metrics and the confusion matrix of ``model`` on labelled clips.

    Args:
        model: A trained model, torch (evaluated on its current device, in eval mode) or
            :class:`~aitasks.audio_analysis.classifier.keras_backend.KerasMelCnn`.
        clips: Mono float32 clips at ``cfg.sample_rate``.
        labels: Label index of each clip.
        cfg: The model's configuration.
        batch_size: Crops per forward pass.

    Returns:
        The report (``split="eval"``).

    Raises:
        InvalidInputError: No clips, mismatched labels, bad clips, or a configuration that does not match the model.
    """
    _check_model(model, cfg)
    if not clips:
        raise InvalidInputError(_TASK, [FieldIssue("clips", "nothing to evaluate")])
    checked = _check_clips(clips)
    y = _check_labels(labels, len(checked), len(cfg.labels))
    pred = _logits(model, checked, cfg, batch_size).argmax(axis=1).astype(np.int64)
    return _report(y, pred, cfg.labels, "eval")


def predict(
    model: MelCnn | KerasMelCnn, clips: Sequence[np.ndarray], cfg: ClassifierConfig, batch_size: int = 32
) -> list[Prediction]:
    """Classify clips in batches; a clip longer than ``clip_seconds`` is judged on up to ``max_windows`` crops.

    Args:
        model: A trained model, torch (run on its current device, in eval mode) or Keras.
        clips: Mono float32 clips at ``cfg.sample_rate``, any length.
        cfg: The model's configuration.
        batch_size: Crops per forward pass.

    Returns:
        One prediction per clip, in order: the softmax of the window-averaged logits.

    Raises:
        InvalidInputError: Bad clips or a configuration that does not match the model.
    """
    _check_model(model, cfg)
    if batch_size < 1:
        raise InvalidInputError(_TASK, [FieldIssue("batch_size", "must be >= 1")])
    if not clips:
        return []
    checked = _check_clips(clips)
    probs = torch.softmax(torch.from_numpy(_logits(model, checked, cfg, batch_size)), dim=1).numpy()
    out = []
    for row in probs:
        top = int(row.argmax())
        out.append(
            Prediction(
                label=cfg.labels[top],
                confidence=float(row[top]),
                probabilities={lab: float(p) for lab, p in zip(cfg.labels, row, strict=True)},
            )
        )
    return out
