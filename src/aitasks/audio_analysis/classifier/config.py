"""The classifier's configuration and the reports, predictions and folders its functions return."""

from __future__ import annotations

from pathlib import Path
from typing import Final, Literal, NamedTuple, TypeVar

import numpy as np
import numpy.typing as npt
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from aitasks.runtime.errors import DataFormatError

_TASK: Final = "audio.classifier"
_F32 = npt.NDArray[np.float32]


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
        backend: ``torch`` (:class:`MelCnn`) or ``keras`` (Keras 3 on TensorFlow,
            :mod:`aitasks.audio_analysis.classifier.keras_backend`): the same architecture, front end,
            augmentation, early stopping and evaluation either way.
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
    backend: Literal["torch", "keras"] = "torch"

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


_Doc = TypeVar("_Doc", bound=BaseModel)


def read_model_file(path: Path, model: type[_Doc]) -> _Doc:
    """A saved classifier's JSON description (torch or Keras), validated; any problem names the file.

    Raises:
        DataFormatError: The file is missing, unreadable or not a valid ``model`` document (the first
            five problems, each with its location).
    """
    try:
        return model.model_validate_json(path.read_bytes())
    except FileNotFoundError:
        raise DataFormatError(str(path), "file is missing") from None
    except OSError as exc:
        raise DataFormatError(str(path), f"unreadable: {exc}") from None
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or '<root>'}: {e['msg']}" for e in exc.errors()[:5])
        raise DataFormatError(str(path), f"invalid {path.name}: {problems}") from None
