"""The audio classifier's two backends: training and inference throughput, and the cost of an explanation.

Keras (TensorFlow) against torch, the baseline, on the same clips and configuration in the same run,
one thread each: training examples/s (epochs after the first, which pays for tracing), inference
crops/s, and seconds per integrated-gradients explanation (captum for torch, ``tf.GradientTape`` for
Keras). Small models and few clips: the ratios, not the absolute speeds, are the point, and on a
shared machine even those are noisy.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from bench.common import record


def _train_rate(report: Any) -> float:
    history = report.training.history[1:] or report.training.history
    return report.training.n_train * len(history) / sum(h.seconds for h in history)


def bench_classifier(*, per_class: int = 12, epochs: int = 4, seconds: float = 1.0) -> list[dict[str, Any]]:
    from aitasks.audio_analysis.classifier import ClassifierConfig, predict, train_classifier
    from aitasks.audio_analysis.classifier.explain import explain_clips
    from aitasks.audio_analysis.classifier.keras_backend import train_keras_classifier
    from aitasks.audio_analysis.synthetic import LABELS, synth_clip

    sr = 16000
    cfg = ClassifierConfig(
        labels=LABELS,
        sample_rate=sr,
        n_fft=512,
        hop_length=256,
        n_mels=32,
        clip_seconds=seconds,
        channels=(8, 16, 32),
        epochs=epochs,
        patience=epochs,
        seed=0,
        device="cpu",
        num_threads=1,
    )
    kcfg = cfg.model_copy(update={"backend": "keras"})
    clips = [synth_clip(lab, seed=s, sr=sr, duration_s=seconds) for lab in LABELS for s in range(per_class)]
    labels = [i for i in range(len(LABELS)) for _ in range(per_class)]
    torch_model, torch_report = train_classifier(clips, labels, cfg)
    keras_model, keras_report = train_keras_classifier(clips, labels, kcfg)
    params = {"clips": len(clips), "epochs": epochs, "clip_seconds": seconds, "channels": list(cfg.channels)}
    out = [
        record(
            "audio classifier training",
            "keras examples/s",
            _train_rate(keras_report),
            "examples/s",
            "torch",
            _train_rate(torch_report),
            params,
            higher_is_better=True,
        )
    ]

    def rate(model: Any, c: ClassifierConfig) -> float:
        predict(model, clips[:8], c)  # warm-up (tracing)
        t0 = time.perf_counter()
        predict(model, clips, c, batch_size=32)
        return len(clips) / (time.perf_counter() - t0)

    out.append(
        record(
            "audio classifier inference",
            "keras crops/s",
            rate(keras_model, kcfg),
            "crops/s",
            "torch",
            rate(torch_model, cfg),
            params,
            higher_is_better=True,
        )
    )

    def ig_seconds(model: Any, c: ClassifierConfig) -> float:
        sample = clips[::per_class][:4]
        explain_clips(model, sample[:1], c, names=["warm-up"], n_steps=32)
        t0 = time.perf_counter()
        explain_clips(model, sample, c, names=[str(i) for i in range(len(sample))], n_steps=32)
        return (time.perf_counter() - t0) / len(sample)

    out.append(
        record(
            "audio classifier explanation",
            "keras (GradientTape) s/example",
            ig_seconds(keras_model, kcfg),
            "s",
            "torch (captum)",
            ig_seconds(torch_model, cfg),
            {**params, "n_steps": 32},
        )
    )
    assert all(np.isfinite(r["value"]) for r in out)
    return out
