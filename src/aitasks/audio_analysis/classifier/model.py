"""The mel-spectrogram CNN and how it runs: threads, device, determinism, clip windows and batched logits."""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Final

import numpy as np
import torch
from torch import nn

from aitasks.audio_analysis.classifier.config import _F32, _TASK, ClassifierConfig
from aitasks.platform.compute import torch_threads
from aitasks.runtime.errors import (
    FieldIssue,
    InvalidInputError,
)

if TYPE_CHECKING:
    from aitasks.audio_analysis.classifier.keras_backend import KerasMelCnn

#: Log-mel floor, in dB below the clip's maximum.
_TOP_DB: Final = 80.0


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
        return self.from_log_mel(self.log_mel(audio))

    def from_log_mel(self, image: torch.Tensor) -> torch.Tensor:
        """Class logits of log-mel images ``[batch, 1, n_mels, frames]`` (what the explainer differentiates)."""
        h = self.features(image)
        h = h.mean(dim=(2, 3))
        out: torch.Tensor = self.head(self.dropout(h))
        return out


# ---------------------------------------------------------------------------------------- runtime


@contextmanager
def _torch_runtime(cfg: ClassifierConfig, device: torch.device, *, seed: bool) -> Iterator[None]:
    """Pin threads, request deterministic algorithms, flush denormals and (optionally) fork and seed the RNG.

    Threads: ``cfg.num_threads``, else :func:`aitasks.platform.compute.default_num_threads`.
    Everything is restored afterwards (flush-denormal to torch's default, off).
    """
    det = torch.are_deterministic_algorithms_enabled()
    det_warn = torch.is_deterministic_algorithms_warn_only_enabled()
    benchmark = torch.backends.cudnn.benchmark
    devices = (
        [device.index if device.index is not None else torch.cuda.current_device()] if device.type == "cuda" else []
    )
    # warn_only: some CUDA kernels have no deterministic variant; CPU training is deterministic regardless.
    torch.use_deterministic_algorithms(True, warn_only=True)
    torch.backends.cudnn.benchmark = False
    # Denormals (tiny gradients squared in AdamW's state, decaying signal tails) slow CPU arithmetic.
    torch.set_flush_denormal(True)
    try:
        with torch_threads(cfg.num_threads), torch.random.fork_rng(devices=devices):
            if seed:
                torch.manual_seed(cfg.seed)
            yield
    finally:
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


def _check_model(model: MelCnn | KerasMelCnn, cfg: ClassifierConfig) -> None:
    arch = ("labels", "sample_rate", "n_fft", "hop_length", "n_mels", "f_min", "f_max", "channels", "backend")
    diff = [f for f in arch if getattr(model.config, f) != getattr(cfg, f)]
    if diff:
        raise InvalidInputError(_TASK, [FieldIssue(f"cfg.{f}", "differs from the model's configuration") for f in diff])
