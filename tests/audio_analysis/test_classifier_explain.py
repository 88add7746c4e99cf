"""Integrated gradients over the log-mel input: complete, they find a known frequency band, and render safely."""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np
import pytest
from scipy.signal import butter, sosfilt

from aitasks.audio_analysis.classifier import ClassifierConfig, MelCnn, evaluate, train_classifier
from aitasks.audio_analysis.classifier.explain import (
    Explanation,
    band_share,
    explain_clips,
    mel_band_centres,
    render_explanations,
)
from aitasks.runtime.errors import InvalidInputError

SR = 16000
#: The band class's signal: noise in 2-3 kHz. The rows of the filter's skirts count as the band.
BAND = (2000.0, 3000.0)
BAND_WITH_SKIRTS = (1700.0, 3400.0)
CFG = ClassifierConfig(
    labels=("plain", "band"),
    sample_rate=SR,
    n_fft=512,
    hop_length=256,
    n_mels=32,
    clip_seconds=1.0,
    channels=(8, 16),
    epochs=12,
    patience=12,
    batch_size=16,
    seed=0,
    device="cpu",
    num_threads=1,
)


def band_clip(label: int, seed: int, seconds: float = 1.2) -> np.ndarray:
    """A clip whose class is a frequency band.

    Every clip: a loud sine at 300-700 Hz (it sets the clip's peak, so the model's per-clip scaling is
    the same for both classes) over a noise floor below the model's -80 dB range. Class ``band`` adds
    noise in 2-3 kHz 12-20 dB below the sine; class ``plain`` does not. Random phase, pitch, gain.
    """
    rng = np.random.default_rng([label, seed])
    n = round(seconds * SR)
    t = np.arange(n) / SR
    x = np.sin(2 * np.pi * rng.uniform(300, 700) * t + rng.uniform(0, 2 * np.pi))
    x += rng.standard_normal(n) * 10 ** (rng.uniform(-110, -100) / 20)
    if label == 1:
        sos = butter(8, [BAND[0] / (SR / 2), BAND[1] / (SR / 2)], btype="band", output="sos")
        b = sosfilt(sos, rng.standard_normal(n))
        x += b / b.std() * 10 ** (rng.uniform(-20, -12) / 20)
    return (x / np.abs(x).max() * 10 ** (rng.uniform(-30, -3) / 20)).astype(np.float32)


@dataclass
class Explained:
    model: MelCnn
    accuracy: float
    band: list[Explanation]


@pytest.fixture(scope="module")
def explained() -> Explained:
    clips = [band_clip(label, s) for label in (0, 1) for s in range(24)]
    labels = [label for label in (0, 1) for _ in range(24)]
    model, _ = train_classifier(clips, labels, CFG)
    test = [band_clip(label, 1000 + s) for label in (0, 1) for s in range(8)]
    accuracy = evaluate(model, test, [label for label in (0, 1) for _ in range(8)], CFG).accuracy
    band = explain_clips(model, test[8:], CFG, names=[f"band-{i}" for i in range(8)], targets=[1] * 8, n_steps=64)
    return Explained(model, accuracy, band)


def test_attributions_are_complete(explained: Explained) -> None:
    """Sum of attributions = f(x) - f(baseline), up to captum's convergence delta, which is small."""
    assert explained.accuracy >= 0.9, "the model must have learnt the band for the rest to mean anything"
    for e in explained.band:
        gap = e.score - e.baseline_score
        assert abs(gap) > 0.1
        assert float(e.attributions.sum()) == pytest.approx(gap, rel=0.02, abs=1e-3)
        assert e.delta == pytest.approx(float(e.attributions.sum()) - gap, abs=1e-4)  # captum's delta is that gap
        assert e.relative_delta < 0.02


def test_the_attribution_mass_concentrates_in_the_band(explained: Explained) -> None:
    centres = mel_band_centres(CFG)
    in_band = (centres >= BAND_WITH_SKIRTS[0]) & (centres <= BAND_WITH_SKIRTS[1])
    row_share = in_band.mean()  # 7 of 32 rows
    shares = []
    for e in explained.band:
        share = band_share(e, CFG, *BAND_WITH_SKIRTS)
        shares.append(share)
        per_row = np.abs(e.attributions).sum(axis=1)
        density_ratio = per_row[in_band].mean() / per_row[~in_band].mean()
        print(f"{e.name}: band share {share:.2f} (rows {row_share:.2f}), density ratio {density_ratio:.1f}")
        # The rest is mostly on the sine every clip has (the reference the band is judged against).
        assert share >= 1.8 * row_share
        assert density_ratio >= 2.5
        # The evidence *for* the class sits in the band: most positive attribution of the band rows' total.
        positive = np.clip(e.attributions, 0, None).sum(axis=1)
        assert positive[in_band].sum() >= 0.4 * positive.sum()
    assert np.mean(shares) >= 2 * row_share


def test_silence_is_not_explained_and_bad_inputs_are_named(explained: Explained) -> None:
    silent, loud = explain_clips(
        explained.model, [np.zeros(SR, np.float32), band_clip(1, 5)], CFG, names=["silence", "loud"], n_steps=8
    )
    assert silent.silent and not loud.silent
    assert not silent.attributions.any() and silent.delta == 0.0 and silent.dbfs.max() < -80
    assert loud.target == loud.predicted  # default: explain the predicted class
    with pytest.raises(InvalidInputError) as err:
        explain_clips(explained.model, [np.zeros(SR, np.float32)], CFG, names=["a", "b"], targets=[7], n_steps=1)
    assert set(err.value.fields) == {"names", "targets", "n_steps"}


def test_keras_attributions_by_hand_are_complete_too() -> None:
    from aitasks.audio_analysis.classifier.keras_backend import train_keras_classifier

    cfg = CFG.model_copy(update={"backend": "keras", "epochs": 6, "channels": (4, 8)})
    clips = [band_clip(label, s) for label in (0, 1) for s in range(8)]
    model, _ = train_keras_classifier(clips, [label for label in (0, 1) for _ in range(8)], cfg)
    for e in explain_clips(model, clips[7:10], cfg, names=["a", "b", "c"], targets=[1, 1, 1], n_steps=64):
        gap = e.score - e.baseline_score
        print(f"{e.name}: f(x) - f(baseline) {gap:+.3f}, delta {e.delta:+.2g}")
        assert abs(gap) > 0.1
        assert float(e.attributions.sum()) == pytest.approx(gap, rel=0.02, abs=1e-3)
        assert e.attributions.shape == (cfg.n_mels, 1 + cfg.clip_samples // cfg.hop_length)


def test_the_report_is_self_contained_and_escapes_names(explained: Explained) -> None:
    evil = "<script>alert(1)</script>.wav"
    extra = explain_clips(
        explained.model, [np.zeros(SR, np.float32), band_clip(0, 9)], CFG, names=[evil, "plain-9"], n_steps=8
    )
    page = render_explanations(
        [*explained.band[:2], *extra], CFG, title="Explained <b>", meta={"run": "r1", "labels": ["a"]}, n_steps=64
    )
    assert "<script>" not in page and "&lt;script&gt;" in page and "Explained &lt;b&gt;" in page
    assert "Content-Security-Policy" in page and "href=" not in page and "http" not in page.replace("http-equiv", "")
    assert page.count("<figure") == 4 and page.count('data-silent="true"') == 1
    assert re.search(r'data-count="explained">3<', page) and re.search(r'data-count="silent">1<', page)
    # One attribution range for the whole page: the same labels on every colour bar.
    assert len(set(re.findall(r'alt="attribution colour bar ([^"]+)"', page))) == 1
