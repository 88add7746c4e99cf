"""Audio classification with a small mel-spectrogram CNN (PyTorch): load, train, evaluate, predict, save.

Model (:class:`MelCnn`): the log-mel front end runs inside torch (``torch.stft`` and a
``librosa.filters.mel`` filterbank registered as a buffer), so the same module runs on CPU or GPU and
takes raw mono samples. Log-mel values are in dB relative to the clip's own maximum and floored at
-80 dB, which makes the model independent of the clip's gain. Then ``len(channels)`` blocks of
conv 3x3 - batch norm - ReLU - max pool 2x2, a global average pool, dropout and a linear layer.

Clips are cropped or zero-padded to ``clip_seconds``. Training takes a random crop of each clip
(and a random gain); evaluation and prediction average the logits of up to ``max_windows`` crops
evenly spaced over the clip, so a long track is judged on all of it.

Training is deterministic on CPU for a given seed: the split, batch order and augmentation come
from seeded generators, torch's RNG is forked and seeded, deterministic algorithms are requested
and the thread count is pinned (and all of this is restored afterwards).

Data (:func:`load_labelled_folder`): either ``root/labels.csv`` (columns ``path,label``; paths
relative to ``root``) or, without it, the layout ``root/<label>/*.{wav,flac,ogg,mp3}`` (the layout
:func:`aitasks.audio_analysis.synthetic.write_labelled_folder` writes). A file that cannot be
decoded is skipped and reported; more than half failing is an error.

Persistence: ``model.safetensors`` (weights and batch-norm statistics; never pickle) and
``config.json`` (format, ``format_version`` and the whole :class:`ClassifierConfig`, labels
included). The weights' metadata holds the sha256 of that configuration, so a ``config.json`` from
another model is refused even when the tensor shapes happen to fit. :func:`load_classifier` checks
the metadata and every tensor name, shape and dtype before loading. The mel filterbank and the STFT
window are not stored: they are rebuilt from the configuration.
"""

from __future__ import annotations

import csv
import hashlib
import json
import math
import os
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Final, Literal, NamedTuple

import numpy as np
import numpy.typing as npt
import torch
import torch.nn.functional as F  # noqa: N812 - the conventional name
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from torch import nn

from aitasks.runtime.errors import (
    DataFormatError,
    FieldIssue,
    InvalidInputError,
    TaskError,
    UnsafePathError,
)
from aitasks.runtime.storage import check_relative_key

__all__ = [
    "AUDIO_SUFFIXES",
    "CONFIG_FILE",
    "FORMAT",
    "FORMAT_VERSION",
    "WEIGHTS_FILE",
    "ClassMetrics",
    "ClassifierConfig",
    "ClassifierReport",
    "EpochStats",
    "LoadedFolder",
    "MelCnn",
    "Prediction",
    "TrainingSummary",
    "evaluate",
    "load_classifier",
    "load_labelled_folder",
    "predict",
    "save_classifier",
    "train_classifier",
]

_TASK: Final = "audio.classifier"
FORMAT: Final = "aitasks.audio.mel_cnn"
FORMAT_VERSION: Final = 1
WEIGHTS_FILE: Final = "model.safetensors"
CONFIG_FILE: Final = "config.json"
LABELS_CSV: Final = "labels.csv"
AUDIO_SUFFIXES: Final[tuple[str, ...]] = (".wav", ".flac", ".ogg", ".mp3")
#: Log-mel floor, in dB below the clip's maximum.
_TOP_DB: Final = 80.0
#: Random gain range of the training augmentation, in dB.
_GAIN_DB: Final = (-12.0, 6.0)
#: Safetensors dtype names of the tensors a model holds.
_DTYPES: Final[dict[torch.dtype, str]] = {torch.float32: "F32", torch.int64: "I64"}

_F32 = npt.NDArray[np.float32]
Decoder = Callable[[Path], np.ndarray]


# ------------------------------------------------------------------------------------------ config


class ClassifierConfig(BaseModel):
    """Everything needed to rebuild, train and run a :class:`MelCnn`.

    Attributes:
        labels: Class names, in output order (unique, non-empty).
        sample_rate: Rate of the input samples, in Hz.
        n_fft: STFT size (Hann window of the same length).
        hop_length: STFT hop.
        n_mels: Mel bands.
        f_min: Lowest mel frequency, in Hz.
        f_max: Highest mel frequency, in Hz (None: Nyquist).
        clip_seconds: Length of the model's input crop; shorter clips are zero-padded.
        channels: Output channels of each conv block (one 2x2 max pool per block).
        dropout: Dropout before the linear layer.
        epochs: Maximum training epochs.
        patience: Epochs without validation improvement before training stops early.
        batch_size: Training batch size.
        lr: AdamW learning rate (cosine-annealed over ``epochs``).
        weight_decay: AdamW weight decay.
        seed: Seed of the split, initialisation, batch order and augmentation.
        device: ``auto`` (CUDA when available), ``cpu`` or ``cuda``.
        num_threads: Torch CPU threads (None: the usable CPUs, at most 4).
        max_windows: Evaluation/prediction crops averaged per clip, at most.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    labels: tuple[str, ...] = Field(min_length=2, max_length=10_000)
    sample_rate: int = Field(default=22050, ge=8000, le=96000)
    n_fft: int = Field(default=1024, ge=64, le=16384)
    hop_length: int = Field(default=512, ge=16, le=16384)
    n_mels: int = Field(default=64, ge=8, le=512)
    f_min: float = Field(default=20.0, ge=0.0)
    f_max: float | None = Field(default=None, gt=0.0)
    clip_seconds: float = Field(default=4.0, gt=0.0, le=120.0)
    channels: tuple[int, ...] = Field(default=(16, 32, 64), min_length=1, max_length=8)
    dropout: float = Field(default=0.2, ge=0.0, lt=1.0)
    epochs: int = Field(default=30, ge=1, le=100_000)
    patience: int = Field(default=6, ge=1)
    batch_size: int = Field(default=16, ge=1, le=65_536)
    lr: float = Field(default=3e-3, gt=0.0, le=10.0)
    weight_decay: float = Field(default=1e-4, ge=0.0)
    seed: int = Field(default=0, ge=0, le=2**63 - 1)
    device: Literal["auto", "cpu", "cuda"] = "auto"
    num_threads: int | None = Field(default=None, ge=1, le=1024)
    max_windows: int = Field(default=8, ge=1, le=1024)

    @property
    def clip_samples(self) -> int:
        """Samples of one model input."""
        return round(self.clip_seconds * self.sample_rate)

    @model_validator(mode="after")
    def _check(self) -> ClassifierConfig:
        if any(not lab or lab != lab.strip() for lab in self.labels):
            raise ValueError("labels must be non-empty without surrounding whitespace")
        if len(set(self.labels)) != len(self.labels):
            raise ValueError(f"labels must be unique, got {list(self.labels)}")
        if any(not 1 <= c <= 1024 for c in self.channels):
            raise ValueError("each channel count must be in [1, 1024]")
        if self.hop_length > self.n_fft:
            raise ValueError("hop_length must be <= n_fft")
        f_max = self.sample_rate / 2 if self.f_max is None else self.f_max
        if not self.f_min < f_max <= self.sample_rate / 2:
            raise ValueError(f"need f_min < f_max <= sample_rate / 2, got {self.f_min} and {f_max}")
        if self.clip_samples < self.n_fft:
            raise ValueError(f"clip_seconds gives {self.clip_samples} samples, fewer than n_fft ({self.n_fft})")
        # Every block halves both axes: the log-mel image must survive all of them.
        frames = 1 + self.clip_samples // self.hop_length
        need = 2 ** len(self.channels)
        if self.n_mels < need or frames < need:
            raise ValueError(f"{len(self.channels)} pooling blocks need >= {need} mel bands and frames")
        return self


class ClassMetrics(BaseModel):
    """Precision, recall and F1 of one class, and its support (true examples)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    precision: float
    recall: float
    f1: float
    support: int


class EpochStats(BaseModel):
    """One training epoch (validation values are None without a validation split)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    epoch: int
    train_loss: float
    train_accuracy: float
    val_loss: float | None
    val_accuracy: float | None
    seconds: float


class TrainingSummary(BaseModel):
    """How a model was trained."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    n_train: int
    n_val: int
    epochs_run: int
    best_epoch: int
    stopped_early: bool
    seconds: float
    device: str
    history: list[EpochStats]


class ClassifierReport(BaseModel):
    """Classification quality on one set of clips.

    Attributes:
        labels: Class names (the order of ``per_class`` and of the confusion matrix).
        split: What was measured: ``eval`` (:func:`evaluate`), ``validation`` (the held-out part of
            training) or ``train`` (training without a validation split).
        n: Clips measured.
        accuracy: Share of clips classified correctly.
        macro_f1: Mean F1 over the classes that occur (as truth or prediction).
        chance: ``1 / len(labels)``, the accuracy of a uniform guess.
        per_class: Metrics per label.
        confusion: ``confusion[true][predicted]`` counts, in label order.
        training: Set by :func:`train_classifier`.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    labels: tuple[str, ...]
    split: Literal["eval", "validation", "train"]
    n: int
    accuracy: float
    macro_f1: float
    chance: float
    per_class: dict[str, ClassMetrics]
    confusion: list[list[int]]
    training: TrainingSummary | None = None


class Prediction(BaseModel):
    """The prediction for one clip: top label, its probability, and every label's probability."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    label: str
    confidence: float
    probabilities: dict[str, float]


class LoadedFolder(NamedTuple):
    """What :func:`load_labelled_folder` read.

    Attributes:
        clips: Decoded mono float32 clips at the configured sample rate.
        labels: Label index of each clip (into ``ClassifierConfig.labels``).
        paths: Each clip's path relative to the root (``/`` separators).
        skipped: ``(relative path, reason)`` of each file that could not be decoded.
    """

    clips: list[_F32]
    labels: list[int]
    paths: list[str]
    skipped: list[tuple[str, str]]


# ------------------------------------------------------------------------------------------- model


class MelCnn(nn.Module):
    """Raw mono samples ``[batch, samples]`` -> class logits ``[batch, len(labels)]``."""

    mel_fb: torch.Tensor
    window: torch.Tensor

    def __init__(self, config: ClassifierConfig) -> None:
        import librosa

        super().__init__()
        self.config = config
        fb = librosa.filters.mel(
            sr=config.sample_rate,
            n_fft=config.n_fft,
            n_mels=config.n_mels,
            fmin=config.f_min,
            fmax=config.f_max,
            dtype=np.float32,
        )
        # Not persistent: both follow from the configuration, so the weights file holds only what was learnt.
        self.register_buffer("mel_fb", torch.from_numpy(np.ascontiguousarray(fb)), persistent=False)
        self.register_buffer("window", torch.hann_window(config.n_fft), persistent=False)
        layers: list[nn.Module] = []
        c_in = 1
        for c in config.channels:
            layers += [nn.Conv2d(c_in, c, 3, padding=1, bias=False), nn.BatchNorm2d(c), nn.ReLU(), nn.MaxPool2d(2)]
            c_in = c
        self.features = nn.Sequential(*layers)
        self.dropout = nn.Dropout(config.dropout)
        self.head = nn.Linear(c_in, len(config.labels))

    def log_mel(self, audio: torch.Tensor) -> torch.Tensor:
        """Log-mel image ``[batch, 1, n_mels, frames]``: dB re the clip's max, floored at -80, scaled to ~[-1, 1]."""
        cfg = self.config
        # Samples this small (-300 dB) carry nothing, but their squares are denormals: slow on CPU.
        audio = audio.masked_fill(audio.abs() < 1e-15, 0.0)
        spec = torch.stft(
            audio,
            cfg.n_fft,
            cfg.hop_length,
            window=self.window,
            center=True,
            pad_mode="constant",
            return_complex=True,
        )
        power = spec.real.square() + spec.imag.square()
        mel = torch.matmul(self.mel_fb, power)
        db = 10.0 * torch.log10(mel.clamp_min(1e-10))
        db = db - db.amax(dim=(1, 2), keepdim=True)
        db = db.clamp_min(-_TOP_DB)
        return (db / (_TOP_DB / 2) + 1.0).unsqueeze(1)

    def forward(self, audio: torch.Tensor) -> torch.Tensor:
        """Class logits of a batch of clips of ``config.clip_samples`` samples."""
        h = self.features(self.log_mel(audio))
        h = h.mean(dim=(2, 3))
        out: torch.Tensor = self.head(self.dropout(h))
        return out


# ---------------------------------------------------------------------------------------- runtime


def _default_num_threads() -> int:
    try:
        cpus = len(os.sched_getaffinity(0))  # cgroup/taskset aware
    except AttributeError:  # not on Linux
        cpus = os.cpu_count() or 1
    return max(1, min(cpus, 4))


def _resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise InvalidInputError(_TASK, [FieldIssue("device", "'cuda' requested but CUDA is not available")])
    return torch.device(name)


@contextmanager
def _torch_runtime(cfg: ClassifierConfig, device: torch.device, *, seed: bool) -> Iterator[None]:
    """Pin threads, request deterministic algorithms, flush denormals and (optionally) fork and seed the RNG.

    Everything is restored afterwards (flush-denormal to torch's default, off).
    """
    threads = torch.get_num_threads()
    det = torch.are_deterministic_algorithms_enabled()
    det_warn = torch.is_deterministic_algorithms_warn_only_enabled()
    benchmark = torch.backends.cudnn.benchmark
    devices = (
        [device.index if device.index is not None else torch.cuda.current_device()] if device.type == "cuda" else []
    )
    torch.set_num_threads(cfg.num_threads or _default_num_threads())
    # warn_only: some CUDA kernels have no deterministic variant; CPU training is deterministic regardless.
    torch.use_deterministic_algorithms(True, warn_only=True)
    torch.backends.cudnn.benchmark = False
    # Denormals (tiny gradients squared in AdamW's state, decaying signal tails) slow CPU arithmetic.
    torch.set_flush_denormal(True)
    try:
        with torch.random.fork_rng(devices=devices):
            if seed:
                torch.manual_seed(cfg.seed)
            yield
    finally:
        torch.set_num_threads(threads)
        torch.use_deterministic_algorithms(det, warn_only=det_warn)
        torch.backends.cudnn.benchmark = benchmark
        torch.set_flush_denormal(False)  # torch's default (there is no getter to restore the caller's setting)


def _fit_length(clip: _F32, n: int, offset: int = 0) -> _F32:
    """``clip[offset : offset + n]``, zero-padded at the end when the clip is shorter."""
    if clip.size >= n:
        return clip[offset : offset + n]
    out = np.zeros(n, dtype=np.float32)
    out[: clip.size] = clip
    return out


def _windows(clip: _F32, n: int, max_windows: int) -> _F32:
    """Up to ``max_windows`` crops of ``n`` samples, evenly spaced from the start to the end of ``clip``."""
    if clip.size <= n:
        return _fit_length(clip, n)[None, :]
    k = min(max_windows, math.ceil(clip.size / n))
    starts = np.linspace(0, clip.size - n, k).round().astype(np.int64)
    return np.stack([clip[s : s + n] for s in starts])


def _model_device(model: MelCnn) -> torch.device:
    return next(model.parameters()).device


def _clip_logits(model: MelCnn, clips: Sequence[_F32], cfg: ClassifierConfig, batch_size: int) -> torch.Tensor:
    """Per-clip logits ``[len(clips), len(labels)]`` (CPU): the mean over each clip's windows, in batches."""
    device = _model_device(model)
    n = cfg.clip_samples
    sums = torch.zeros(len(clips), len(cfg.labels), dtype=torch.float64)
    counts = torch.zeros(len(clips), dtype=torch.float64)
    rows: list[_F32] = []
    owners: list[int] = []

    def flush() -> None:
        x = torch.from_numpy(np.concatenate(rows)).to(device)
        logits = torch.cat([model(x[i : i + batch_size]) for i in range(0, x.shape[0], batch_size)])
        idx = torch.tensor(owners)
        sums.index_add_(0, idx, logits.double().cpu())
        counts.index_add_(0, idx, torch.ones(len(owners), dtype=torch.float64))
        rows.clear()
        owners.clear()

    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            for i, clip in enumerate(clips):
                w = _windows(clip, n, cfg.max_windows)
                rows.append(w)
                owners.extend([i] * w.shape[0])
                if len(owners) >= batch_size:
                    flush()
            if owners:
                flush()
    finally:
        model.train(was_training)
    return (sums / counts[:, None]).float()


def _check_clips(clips: Sequence[np.ndarray], field: str = "clips") -> list[_F32]:
    out = []
    issues = []
    for i, c in enumerate(clips):
        a = np.asarray(c, dtype=np.float32)
        if a.ndim != 1 or a.size == 0:
            issues.append(FieldIssue(f"{field}[{i}]", f"must be a non-empty 1-D array, got shape {a.shape}"))
        elif not np.isfinite(a).all():
            issues.append(FieldIssue(f"{field}[{i}]", "contains NaN or Inf"))
        out.append(np.ascontiguousarray(a))
        if len(issues) >= 5:
            break
    if issues:
        raise InvalidInputError(_TASK, issues)
    return out


def _check_model(model: MelCnn, cfg: ClassifierConfig) -> None:
    arch = ("labels", "sample_rate", "n_fft", "hop_length", "n_mels", "f_min", "f_max", "channels")
    diff = [f for f in arch if getattr(model.config, f) != getattr(cfg, f)]
    if diff:
        raise InvalidInputError(_TASK, [FieldIssue(f"cfg.{f}", "differs from the model's configuration") for f in diff])


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


def evaluate(
    model: MelCnn, clips: Sequence[np.ndarray], labels: Sequence[int], cfg: ClassifierConfig, *, batch_size: int = 32
) -> ClassifierReport:
    """Accuracy, macro F1, per-class metrics and the confusion matrix of ``model`` on labelled clips.

    Args:
        model: A trained model (evaluated on its current device, in eval mode).
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
    with _torch_runtime(cfg, _model_device(model), seed=False):
        pred = _clip_logits(model, checked, cfg, batch_size).argmax(dim=1).numpy().astype(np.int64)
    return _report(y, pred, cfg.labels, "eval")


def predict(
    model: MelCnn, clips: Sequence[np.ndarray], cfg: ClassifierConfig, batch_size: int = 32
) -> list[Prediction]:
    """Classify clips in batches; a clip longer than ``clip_seconds`` is judged on up to ``max_windows`` crops.

    Args:
        model: A trained model (run on its current device, in eval mode).
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
    with _torch_runtime(cfg, _model_device(model), seed=False):
        probs = torch.softmax(_clip_logits(model, checked, cfg, batch_size).double(), dim=1).numpy()
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
        InvalidInputError: Fewer than 2 clips, bad clips or labels, a bad ``val_fraction`` or an unavailable device.
        FatalError: The loss became NaN or infinite.
    """
    from aitasks.runtime.errors import FatalError

    if not 0.0 <= val_fraction <= 0.9:
        raise InvalidInputError(_TASK, [FieldIssue("val_fraction", f"{val_fraction} not in [0, 0.9]")])
    if len(clips) < 2:
        raise InvalidInputError(_TASK, [FieldIssue("clips", f"need at least 2 clips, got {len(clips)}")])
    data = _check_clips(clips)
    y = _check_labels(labels, len(data), len(cfg.labels))
    device = _resolve_device(cfg.device)
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


# ------------------------------------------------------------------------------------------- data


def _soundfile_decoder(sample_rate: int) -> Decoder:
    """Fallback decoder (soundfile + mix-down + soxr) for when :mod:`aitasks.audio_analysis.decode` is absent."""

    def decode(path: Path) -> np.ndarray:
        import soundfile as sf
        import soxr

        data, sr = sf.read(str(path), dtype="float32", always_2d=True)
        mono: _F32 = data.mean(axis=1, dtype=np.float32)
        if sr == sample_rate:
            return mono
        return np.asarray(soxr.resample(mono, sr, sample_rate), dtype=np.float32)

    return decode


def _default_decoder(sample_rate: int) -> Decoder:
    try:
        from aitasks.audio_analysis.decode import DecodeConfig, decode_file
    except ImportError:
        return _soundfile_decoder(sample_rate)
    dcfg = DecodeConfig(sample_rate=sample_rate)

    def decode(path: Path) -> np.ndarray:
        return decode_file(path, dcfg).samples

    return decode


def _inside(root: Path, path: Path, shown: str) -> Path:
    """``path`` resolved, refusing anything (a symlink, typically) that lands outside ``root``."""
    target = path.resolve()
    if not target.is_relative_to(root):
        raise UnsafePathError(f"{shown!r} resolves outside the data root {str(root)!r}")
    return target


def _read_labels_csv(root: Path, cfg: ClassifierConfig) -> list[tuple[str, Path, int]]:
    csv_path = root / LABELS_CSV
    index = {lab: i for i, lab in enumerate(cfg.labels)}
    try:
        text = csv_path.read_text("utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise DataFormatError(str(csv_path), f"unreadable: {exc}") from None
    reader = csv.reader(text.splitlines())
    header = next(reader, None)
    if header is None or [h.strip() for h in header[:2]] != ["path", "label"]:
        raise DataFormatError(str(csv_path), f"header must start with 'path,label', got {header!r}")
    rows: list[tuple[str, Path, int]] = []
    for line, row in enumerate(reader, start=2):
        if not row or all(not cell.strip() for cell in row):
            continue
        if len(row) < 2 or not row[0].strip() or not row[1].strip():
            raise DataFormatError(str(csv_path), f"line {line}: need a path and a label, got {row!r}")
        rel, label = row[0].strip(), row[1].strip()
        try:
            check_relative_key(rel)
        except UnsafePathError as exc:
            raise UnsafePathError(f"{csv_path}: line {line}: {exc}") from None
        target = _inside(root, root / rel, rel)
        if label not in index:
            raise DataFormatError(
                str(csv_path), f"line {line}: {rel!r} has label {label!r}, which is not one of {list(cfg.labels)}"
            )
        rows.append((rel, target, index[label]))
    return rows


def _read_layout(root: Path, cfg: ClassifierConfig) -> list[tuple[str, Path, int]]:
    index = {lab: i for i, lab in enumerate(cfg.labels)}
    rows: list[tuple[str, Path, int]] = []
    for folder in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        files = sorted(
            f
            for f in folder.iterdir()
            if f.suffix.lower() in AUDIO_SUFFIXES and not f.name.startswith(".") and not f.is_dir()
        )
        if not files:
            continue
        if folder.name not in index:
            raise DataFormatError(
                str(files[0]), f"label {folder.name!r} (its folder name) is not one of {list(cfg.labels)}"
            )
        for f in files:
            rel = f"{folder.name}/{f.name}"
            rows.append((rel, _inside(root, f, rel), index[folder.name]))
    return rows


def load_labelled_folder(root: Path, cfg: ClassifierConfig, decode: Decoder | None = None) -> LoadedFolder:
    """Read a labelled folder: ``root/labels.csv`` when present, else ``root/<label>/*.{wav,flac,ogg,mp3}``.

    Args:
        root: The folder.
        cfg: Gives the known labels and the sample rate to decode to.
        decode: ``path -> mono float32 samples at cfg.sample_rate``; by default
            :func:`aitasks.audio_analysis.decode.decode_file` (soundfile + soxr when that module is absent).
            Its exceptions mark the file as undecodable.

    Returns:
        The decoded clips, their label indices and relative paths, and the skipped files with reasons.

    Raises:
        UnsafePathError: A path in ``labels.csv`` is absolute, has ``..``, or resolves (through a
            symlink) outside ``root``; or a layout file links outside ``root``.
        DataFormatError: ``root`` is missing or holds no audio; ``labels.csv`` is malformed; a label is
            not in ``cfg.labels`` (the error names the file and the label); more than half of the
            files cannot be decoded.
    """
    if not root.is_dir():
        raise DataFormatError(str(root), "not a directory")
    base = root.resolve()
    rows = _read_labels_csv(base, cfg) if (base / LABELS_CSV).is_file() else _read_layout(base, cfg)
    if not rows:
        raise DataFormatError(str(root), f"no audio files (labels.csv or <label>/*{{{','.join(AUDIO_SUFFIXES)}}})")
    decoder = decode or _default_decoder(cfg.sample_rate)
    out = LoadedFolder([], [], [], [])
    for rel, path, label in rows:
        try:
            samples = np.asarray(decoder(path), dtype=np.float32)
        except DataFormatError as exc:
            out.skipped.append((rel, exc.problem))
            continue
        except (TaskError, MemoryError, KeyboardInterrupt):
            raise
        except Exception as exc:  # any decoder failure is a property of the file: skip it and say why
            out.skipped.append((rel, f"{type(exc).__name__}: {exc}"))
            continue
        if samples.ndim == 2:  # (frames, channels), soundfile's convention
            samples = samples.mean(axis=1, dtype=np.float32)
        if samples.ndim != 1 or samples.size == 0:
            out.skipped.append((rel, f"decoded to shape {samples.shape}, not a non-empty mono signal"))
        elif not np.isfinite(samples).all():
            out.skipped.append((rel, "decoded samples contain NaN or Inf"))
        else:
            out.clips.append(np.ascontiguousarray(samples))
            out.labels.append(label)
            out.paths.append(rel)
    if 2 * len(out.skipped) > len(rows):
        first = out.skipped[0]
        raise DataFormatError(
            str(root), f"{len(out.skipped)} of {len(rows)} files could not be decoded (first: {first[0]}: {first[1]})"
        )
    return out


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
