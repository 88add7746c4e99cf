"""The synthetic audio generator: determinism, sane samples, class structure, and the folder contract."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from aitasks.audio_analysis.synthetic import LABELS, clip_seed, synth_clip, write_labelled_folder
from aitasks.runtime.errors import InvalidInputError

SR = 16000
MP3 = "MP3" in sf.available_formats()


# ------------------------------------------------------------------------------------ determinism


@pytest.mark.parametrize("label", LABELS)
def test_same_seed_gives_the_same_clip_and_another_seed_does_not(label: str) -> None:
    a = synth_clip(label, seed=3, sr=SR, duration_s=1.5)
    b = synth_clip(label, seed=3, sr=SR, duration_s=1.5)
    c = synth_clip(label, seed=4, sr=SR, duration_s=1.5)
    assert a.tobytes() == b.tobytes()
    assert not np.allclose(a, c)


def test_labels_with_the_same_seed_differ() -> None:
    clips = [synth_clip(lab, seed=0, sr=SR, duration_s=1.0) for lab in LABELS]
    for i in range(len(clips)):
        for j in range(i + 1, len(clips)):
            assert not np.allclose(clips[i], clips[j])


@pytest.mark.parametrize("label", LABELS)
@pytest.mark.parametrize(("sr", "duration_s"), [(8000, 0.5), (22050, 1.0), (44100, 0.7)])
def test_clips_are_mono_float32_finite_and_within_full_scale(label: str, sr: int, duration_s: float) -> None:
    for seed in range(3):
        x = synth_clip(label, seed=seed, sr=sr, duration_s=duration_s)
        assert x.dtype == np.float32
        assert x.shape == (round(sr * duration_s),)
        assert np.isfinite(x).all()
        assert np.abs(x).max() <= 1.0
        assert np.abs(x).max() > 1e-3  # not silent


def test_a_clip_shorter_than_one_drum_hit_still_works() -> None:
    x = synth_clip("drums", seed=1, sr=SR, duration_s=0.01)
    assert x.shape == (160,)
    assert np.isfinite(x).all()


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"label": "jazz", "seed": 0}, "label"),
        ({"label": "noise", "seed": -1}, "seed"),
        ({"label": "noise", "seed": 0, "duration_s": 0.0}, "duration_s"),
        ({"label": "noise", "seed": 0, "duration_s": float("nan")}, "duration_s"),
        ({"label": "noise", "seed": 0, "sr": 100}, "sr"),
    ],
)
def test_bad_arguments_are_refused_with_the_field_named(kwargs: dict[str, object], field: str) -> None:
    label = kwargs.pop("label")
    with pytest.raises(InvalidInputError) as err:
        synth_clip(label, **kwargs)  # type: ignore[arg-type]
    assert field in err.value.fields


# ---------------------------------------------------------------------------------- class structure


def _frames(x: np.ndarray, n: int, hop: int) -> np.ndarray:
    k = 1 + (x.size - n) // hop
    idx = np.arange(n)[None, :] + hop * np.arange(k)[:, None]
    return x[idx] * np.hanning(n)


def _flatness(x: np.ndarray) -> float:
    """Median over frames of the spectral flatness (geometric / arithmetic mean of the power spectrum)."""
    power = np.abs(np.fft.rfft(_frames(x, 1024, 256), axis=1)) ** 2 + 1e-12
    return float(np.median(np.exp(np.log(power).mean(axis=1)) / power.mean(axis=1)))


def _onset_periodicity(x: np.ndarray) -> float:
    """Highest normalised autocorrelation of the spectral flux at lags 0.1-1 s (a beat makes it high)."""
    hop = 256
    mag = np.abs(np.fft.rfft(_frames(x, 512, hop), axis=1))
    flux = np.maximum(np.diff(np.log(mag + 1e-6), axis=0), 0.0).sum(axis=1)
    flux -= flux.mean()
    ac = np.correlate(flux, flux, "full")[flux.size - 1 :]
    ac /= ac[0] + 1e-12
    return float(ac[int(0.1 * SR / hop) : int(1.0 * SR / hop)].max())


def _syllabic_modulation(x: np.ndarray) -> float:
    """Share of the RMS envelope's modulation energy (above 0.5 Hz) that lies at 2-8 Hz (syllable rates)."""
    hop = 160
    env = np.sqrt((_frames(x, 320, hop) ** 2).mean(axis=1))
    spec = np.abs(np.fft.rfft(env - env.mean())) ** 2
    f = np.fft.rfftfreq(env.size, hop / SR)
    return float(spec[(f >= 2) & (f <= 8)].sum() / (spec[f > 0.5].sum() + 1e-12))


@pytest.fixture(scope="module")
def features() -> dict[str, dict[str, float]]:
    """Median of each descriptor over 10 clips per class."""
    out: dict[str, dict[str, float]] = {}
    for label in LABELS:
        clips = [synth_clip(label, seed=s, sr=SR, duration_s=3.0) for s in range(10)]
        out[label] = {
            "flatness": float(np.median([_flatness(x) for x in clips])),
            "onsets": float(np.median([_onset_periodicity(x) for x in clips])),
            "syllabic": float(np.median([_syllabic_modulation(x) for x in clips])),
        }
    return out


def test_noise_is_flatter_than_tonal(features: dict[str, dict[str, float]]) -> None:
    assert features["noise"]["flatness"] > 10 * features["tonal"]["flatness"]
    # Tonal clips are the least flat of all: their energy sits on harmonics.
    assert features["tonal"]["flatness"] == min(f["flatness"] for f in features.values())


def test_drums_have_the_strongest_onset_periodicity(features: dict[str, dict[str, float]]) -> None:
    others = max(features[lab]["onsets"] for lab in LABELS if lab != "drums")
    assert features["drums"]["onsets"] > others + 0.1


def test_speech_is_modulated_at_syllable_rate(features: dict[str, dict[str, float]]) -> None:
    assert features["speech"]["syllabic"] > 2 * features["noise"]["syllabic"]
    assert features["speech"]["syllabic"] > features["tonal"]["syllabic"]


def test_speech_pitch_stays_in_the_speaking_range() -> None:
    x = synth_clip("speech", seed=5, sr=SR, duration_s=2.0).astype(np.float64)
    # Autocorrelation pitch of the loudest frames: the peak lag must be a period of 80-250 Hz.
    frames = _frames(x, 1024, 512)
    loud = frames[np.argsort((frames**2).sum(axis=1))[-5:]]
    for frame in loud:
        ac = np.correlate(frame, frame, "full")[frame.size - 1 :]
        lo, hi = SR // 250, SR // 80
        f0 = SR / (lo + int(np.argmax(ac[lo : hi + 1])))
        assert 78 <= f0 <= 255


# ---------------------------------------------------------------------------------- folder contract


def test_folder_layout_labels_csv_and_round_trip(tmp_path: Path) -> None:
    formats = ("wav", "flac", "ogg", "mp3") if MP3 else ("wav", "flac", "ogg")
    per_class = len(formats)
    root = tmp_path / "data"
    written = write_labelled_folder(root, per_class=per_class, seed=9, sr=SR, duration_s=1.0, formats=formats)

    assert len(written) == per_class * len(LABELS)
    expected = [
        (root / lab / f"{lab}-{i}.{formats[i % len(formats)]}", lab) for lab in LABELS for i in range(per_class)
    ]
    assert written == expected
    with (root / "labels.csv").open(newline="", encoding="utf-8") as fh:
        rows = list(csv.reader(fh))
    assert rows[0] == ["path", "label"]
    assert rows[1:] == [[p.relative_to(root).as_posix(), lab] for p, lab in written]
    assert not list(root.rglob(".*")), "temporary files left behind"

    for path, label in written:
        i = int(path.stem.rsplit("-", 1)[1])
        data, sr = sf.read(str(path), dtype="float32")
        assert sr == SR
        assert data.ndim == 1
        original = synth_clip(label, seed=clip_seed(9, i), sr=SR, duration_s=1.0)
        if path.suffix in (".wav", ".flac"):
            assert data.size == original.size
            np.testing.assert_allclose(data, original, atol=1.5 / 32768)  # 16-bit quantisation
        else:  # lossy codecs: length within a few codec frames
            assert abs(data.size - original.size) <= 2304, (path, data.size)
            assert np.isfinite(data).all()


def test_same_seed_writes_the_same_samples(tmp_path: Path) -> None:
    a = write_labelled_folder(tmp_path / "a", per_class=2, seed=1, sr=SR, duration_s=0.5, formats=("wav",))
    b = write_labelled_folder(tmp_path / "b", per_class=2, seed=1, sr=SR, duration_s=0.5, formats=("wav",))
    c = write_labelled_folder(tmp_path / "c", per_class=2, seed=2, sr=SR, duration_s=0.5, formats=("wav",))
    for (pa, _), (pb, _), (pc, _) in zip(a, b, c, strict=True):
        assert pa.read_bytes() == pb.read_bytes()
        assert pa.read_bytes() != pc.read_bytes()


def test_a_label_subset_can_be_written(tmp_path: Path) -> None:
    written = write_labelled_folder(tmp_path, per_class=1, seed=0, sr=SR, duration_s=0.3, labels=("speech", "noise"))
    assert [lab for _, lab in written] == ["speech", "noise"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["labels.csv", "noise", "speech"]


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"per_class": 0}, "per_class"),
        ({"formats": ("aiff",)}, "formats"),
        ({"formats": ()}, "formats"),
        ({"labels": ("drums", "opera")}, "labels"),
    ],
)
def test_bad_folder_arguments_are_refused(tmp_path: Path, kwargs: dict[str, object], field: str) -> None:
    args: dict[str, object] = {"per_class": 1, "seed": 0, "sr": SR, "duration_s": 0.2, **kwargs}
    with pytest.raises(InvalidInputError) as err:
        write_labelled_folder(tmp_path, **args)  # type: ignore[arg-type]
    assert field in err.value.fields
    assert not list(tmp_path.iterdir())


def test_a_crash_while_writing_leaves_no_torn_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real_write = sf.write
    calls = {"n": 0}

    def flaky_write(file: object, data: np.ndarray, samplerate: int, **kw: object) -> None:
        calls["n"] += 1
        if calls["n"] == 2:
            real_write(file, data[: data.size // 2], samplerate, **kw)  # half a file, then the "crash"
            raise OSError("disk full")
        real_write(file, data, samplerate, **kw)

    monkeypatch.setattr(sf, "write", flaky_write)  # synthetic imports soundfile lazily, so this is what it calls
    with pytest.raises(OSError, match="disk full"):
        write_labelled_folder(tmp_path, per_class=3, seed=0, sr=SR, duration_s=0.3, formats=("wav",))
    files = sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*") if p.is_file())
    assert files == ["drums/drums-0.wav"]  # the first file is whole, the second never appeared
    assert sf.info(str(tmp_path / "drums/drums-0.wav")).frames == round(0.3 * SR)
