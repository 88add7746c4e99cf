"""The mel-CNN classifier: learns the synthetic classes, round-trips safely, reads labelled folders safely."""

from __future__ import annotations

import csv
import json
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import soxr
import torch
from pydantic import ValidationError
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from aitasks.audio_analysis.classifier import (
    ClassifierConfig,
    ClassifierReport,
    MelCnn,
    evaluate,
    load_classifier,
    load_labelled_folder,
    predict,
    save_classifier,
    train_classifier,
)
from aitasks.audio_analysis.synthetic import LABELS, synth_clip, write_labelled_folder
from aitasks.runtime.errors import DataFormatError, InvalidInputError, UnsafePathError

SR = 16000
CFG = ClassifierConfig(
    labels=LABELS,
    sample_rate=SR,
    n_fft=512,
    hop_length=256,
    n_mels=48,
    clip_seconds=2.0,
    channels=(16, 32, 64),
    epochs=20,
    patience=6,
    batch_size=16,
    lr=3e-3,
    seed=0,
    device="cpu",
    # One thread: on a shared 2-core machine, two OpenMP threads slow down badly whenever a neighbour is busy.
    num_threads=1,
)


def sf_decode(path: Path) -> np.ndarray:
    """soundfile + mix-down + soxr: a decoder that does not depend on aitasks.audio_analysis.decode."""
    data, sr = sf.read(str(path), dtype="float32", always_2d=True)
    mono = data.mean(axis=1, dtype=np.float32)
    return mono if sr == SR else soxr.resample(mono, sr, SR).astype(np.float32)


@dataclass
class Trained:
    model: MelCnn
    report: ClassifierReport
    held_out: ClassifierReport
    test_clips: list[np.ndarray]
    test_labels: list[int]


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Trained:
    root = tmp_path_factory.mktemp("audio")
    write_labelled_folder(root / "train", per_class=24, seed=1, sr=SR, duration_s=2.5)
    write_labelled_folder(root / "test", per_class=12, seed=2, sr=SR, duration_s=2.5)
    train = load_labelled_folder(root / "train", CFG, decode=sf_decode)
    test = load_labelled_folder(root / "test", CFG, decode=sf_decode)
    assert train.skipped == [] and test.skipped == []
    assert len(train.clips) == 96 and len(test.clips) == 48
    model, report = train_classifier(train.clips, train.labels, CFG, val_fraction=0.2)
    held_out = evaluate(model, test.clips, test.labels, CFG)
    return Trained(model, report, held_out, test.clips, test.labels)


# ----------------------------------------------------------------------------------------- quality


def test_the_model_beats_chance_by_a_wide_margin_on_held_out_clips(trained: Trained) -> None:
    rep = trained.held_out
    summary = trained.report.training
    assert summary is not None
    print(f"held-out accuracy {rep.accuracy:.3f}, macro F1 {rep.macro_f1:.3f}, trained in {summary.seconds:.1f} s")
    assert rep.chance == 0.25
    assert rep.accuracy >= 0.7
    assert rep.macro_f1 >= 0.7
    assert rep.split == "eval" and rep.n == 48
    assert len(rep.confusion) == 4 and all(len(row) == 4 for row in rep.confusion)
    assert [sum(row) for row in rep.confusion] == [12, 12, 12, 12]  # rows are the true labels
    assert set(rep.per_class) == set(LABELS)
    assert all(m.support == 12 for m in rep.per_class.values())
    assert sum(rep.confusion[i][i] for i in range(4)) / 48 == pytest.approx(rep.accuracy)


def test_training_reports_validation_and_history(trained: Trained) -> None:
    rep = trained.report
    assert rep.split == "validation"
    summary = rep.training
    assert summary is not None
    assert (summary.n_train, summary.n_val) == (76, 20)  # round(24 * 0.2) = 5 per class held out
    assert 1 <= summary.best_epoch <= summary.epochs_run <= CFG.epochs
    assert len(summary.history) == summary.epochs_run
    assert summary.history[-1].train_loss < summary.history[0].train_loss
    assert summary.device == "cpu"


def test_training_is_deterministic_for_a_seed() -> None:
    cfg = CFG.model_copy(update={"labels": ("tonal", "noise"), "epochs": 2, "channels": (4, 8)})
    clips = [synth_clip(lab, seed=s, sr=SR, duration_s=2.2) for lab in cfg.labels for s in range(5)]
    labels = [i for i in range(2) for _ in range(5)]
    a, rep_a = train_classifier(clips, labels, cfg)
    b, rep_b = train_classifier(clips, labels, cfg)
    c, _ = train_classifier(clips, labels, cfg.model_copy(update={"seed": 1}))
    for name, tensor in a.state_dict().items():
        assert torch.equal(tensor, b.state_dict()[name]), name
    assert any(not torch.equal(t, c.state_dict()[n]) for n, t in a.state_dict().items())
    assert [h.train_loss for h in rep_a.training.history] == [h.train_loss for h in rep_b.training.history]  # type: ignore[union-attr]


# ------------------------------------------------------------------------------------- prediction


def test_predictions_are_probabilities_and_long_or_short_clips_work(trained: Trained) -> None:
    long_clip = np.concatenate([synth_clip("drums", seed=77, sr=SR, duration_s=3.0)] * 3)  # 9 s: several windows
    short_clip = synth_clip("noise", seed=78, sr=SR, duration_s=0.7)  # padded to 2 s
    preds = predict(trained.model, [long_clip, short_clip, *trained.test_clips[:6]], CFG, batch_size=4)
    assert len(preds) == 8
    for p in preds:
        assert set(p.probabilities) == set(LABELS)
        assert sum(p.probabilities.values()) == pytest.approx(1.0, abs=1e-6)
        assert p.confidence == max(p.probabilities.values())
        assert p.probabilities[p.label] == p.confidence
    assert preds[0].label == "drums"
    # Batching does not change the answer.
    one_by_one = predict(trained.model, [long_clip, short_clip], CFG, batch_size=1)
    for p, q in zip(preds[:2], one_by_one, strict=True):
        assert p.label == q.label
        assert p.confidence == pytest.approx(q.confidence, abs=1e-5)


def test_evaluate_refuses_a_configuration_that_does_not_match_the_model(trained: Trained) -> None:
    other = CFG.model_copy(update={"n_mels": 32})
    with pytest.raises(InvalidInputError, match="n_mels"):
        evaluate(trained.model, trained.test_clips, trained.test_labels, other)
    with pytest.raises(InvalidInputError, match="labels"):
        evaluate(trained.model, trained.test_clips, [9] * len(trained.test_clips), CFG)


# ------------------------------------------------------------------------------------ persistence


def test_save_then_load_gives_identical_predictions(trained: Trained, tmp_path: Path) -> None:
    save_classifier(trained.model, CFG, tmp_path / "m")
    assert sorted(p.name for p in (tmp_path / "m").iterdir()) == ["config.json", "model.safetensors"]
    doc = json.loads((tmp_path / "m" / "config.json").read_text("utf-8"))
    assert doc["format_version"] == 1
    assert doc["config"]["labels"] == list(LABELS)
    model, cfg = load_classifier(tmp_path / "m")
    assert cfg == CFG
    before = predict(trained.model, trained.test_clips, CFG)
    after = predict(model, trained.test_clips, cfg)
    assert [p.model_dump() for p in before] == [p.model_dump() for p in after]
    # The same weights give the same bytes.
    save_classifier(model, cfg, tmp_path / "m2")
    assert (tmp_path / "m" / "model.safetensors").read_bytes() == (tmp_path / "m2" / "model.safetensors").read_bytes()


def _tamper(model_dir: Path, edit: str) -> None:
    path = model_dir / "model.safetensors"
    with safe_open(str(path), framework="pt") as fh:
        metadata = fh.metadata()
    tensors = load_file(str(path))
    if edit == "shape":
        tensors["head.weight"] = torch.zeros(5, tensors["head.weight"].shape[1])
    elif edit == "missing":
        del tensors["features.0.weight"]
    elif edit == "extra":
        tensors["backdoor"] = torch.zeros(1)
    elif edit == "dtype":
        tensors["head.bias"] = tensors["head.bias"].double()
    save_file(tensors, str(path), metadata=metadata)  # a careful forger keeps the header


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        ("shape", "'head.weight'"),
        ("missing", re.escape("missing ['features.0.weight']")),
        ("extra", re.escape("unexpected ['backdoor']")),
        ("dtype", "'head.bias'"),
    ],
)
def test_tampered_weights_are_refused(trained: Trained, tmp_path: Path, edit: str, message: str) -> None:
    save_classifier(trained.model, CFG, tmp_path)
    _tamper(tmp_path, edit)
    with pytest.raises(DataFormatError, match=message) as err:
        load_classifier(tmp_path)
    assert err.value.uri.endswith("model.safetensors")


def test_corrupt_or_missing_files_are_refused(trained: Trained, tmp_path: Path) -> None:
    save_classifier(trained.model, CFG, tmp_path)
    weights = tmp_path / "model.safetensors"
    raw = weights.read_bytes()
    weights.write_bytes(raw[: len(raw) // 2])
    with pytest.raises(DataFormatError, match="not a valid safetensors file"):
        load_classifier(tmp_path)
    weights.write_bytes(os.urandom(256))
    with pytest.raises(DataFormatError, match=r"model\.safetensors"):
        load_classifier(tmp_path)
    weights.unlink()
    with pytest.raises(DataFormatError, match="missing"):
        load_classifier(tmp_path)

    save_classifier(trained.model, CFG, tmp_path)
    config = tmp_path / "config.json"
    doc = json.loads(config.read_text("utf-8"))
    config.write_text(json.dumps({**doc, "format_version": 2}), "utf-8")
    with pytest.raises(DataFormatError, match="format_version"):
        load_classifier(tmp_path)
    # n_mels changes no tensor shape (global pooling): only the config hash in the weights catches it.
    config.write_text(json.dumps({**doc, "config": {**doc["config"], "n_mels": 32}}), "utf-8")
    with pytest.raises(DataFormatError, match=r"another config\.json"):
        load_classifier(tmp_path)
    config.write_text(json.dumps({**doc, "config": {**doc["config"], "channels": [8, 16, 32]}}), "utf-8")
    with pytest.raises(DataFormatError, match=r"features\.0\.weight"):
        load_classifier(tmp_path)
    config.write_text("{not json", "utf-8")
    with pytest.raises(DataFormatError, match=r"config\.json"):
        load_classifier(tmp_path)


# ------------------------------------------------------------------------------------------- data


@pytest.fixture
def small_folder(tmp_path: Path) -> Path:
    root = tmp_path / "small"
    write_labelled_folder(root, per_class=2, seed=5, sr=SR, duration_s=0.5, formats=("wav", "flac"))
    return root


def _write_csv(root: Path, rows: list[tuple[str, str]]) -> None:
    with (root / "labels.csv").open("w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(["path", "label"])
        w.writerows(rows)


def test_labels_csv_and_folder_layout_read_the_same(small_folder: Path) -> None:
    from_csv = load_labelled_folder(small_folder, CFG, decode=sf_decode)
    (small_folder / "labels.csv").unlink()
    from_layout = load_labelled_folder(small_folder, CFG, decode=sf_decode)
    assert len(from_csv.clips) == 8
    assert sorted(zip(from_csv.paths, from_csv.labels, strict=True)) == sorted(
        zip(from_layout.paths, from_layout.labels, strict=True)
    )
    for path, label in zip(from_csv.paths, from_csv.labels, strict=True):
        assert path.startswith(f"{LABELS[label]}/")
    assert all(c.dtype == np.float32 and c.shape == (SR // 2,) for c in from_csv.clips)


@pytest.mark.parametrize("bad", ["../x.wav", "drums/../../x.wav", "/etc/passwd", "drums\\..\\x.wav"])
def test_paths_escaping_the_root_are_refused(small_folder: Path, bad: str) -> None:
    _write_csv(small_folder, [("drums/drums-0.wav", "drums"), (bad, "drums")])
    with pytest.raises(UnsafePathError):
        load_labelled_folder(small_folder, CFG, decode=sf_decode)


def test_a_symlink_out_of_the_root_is_refused(small_folder: Path, tmp_path: Path) -> None:
    outside = tmp_path / "outside.wav"
    shutil.copy(small_folder / "drums" / "drums-0.wav", outside)
    (small_folder / "drums" / "link.wav").symlink_to(outside)
    _write_csv(small_folder, [("drums/drums-0.wav", "drums"), ("drums/link.wav", "drums")])
    with pytest.raises(UnsafePathError, match=r"link\.wav"):
        load_labelled_folder(small_folder, CFG, decode=sf_decode)
    (small_folder / "labels.csv").unlink()  # the folder layout refuses it too
    with pytest.raises(UnsafePathError, match=r"link\.wav"):
        load_labelled_folder(small_folder, CFG, decode=sf_decode)


def test_an_unknown_label_is_named_with_its_file(small_folder: Path) -> None:
    _write_csv(small_folder, [("drums/drums-0.wav", "drums"), ("noise/noise-1.flac", "birdsong")])
    with pytest.raises(DataFormatError, match=r"noise/noise-1\.flac.*'birdsong'"):
        load_labelled_folder(small_folder, CFG, decode=sf_decode)
    (small_folder / "labels.csv").unlink()
    (small_folder / "noise").rename(small_folder / "birdsong")
    with pytest.raises(DataFormatError, match="'birdsong'") as err:
        load_labelled_folder(small_folder, CFG, decode=sf_decode)
    assert "birdsong" in err.value.uri


def test_an_undecodable_file_is_skipped_and_reported(small_folder: Path) -> None:
    (small_folder / "labels.csv").unlink()
    (small_folder / "speech" / "broken.wav").write_bytes(np.random.default_rng(0).bytes(4096))
    loaded = load_labelled_folder(small_folder, CFG, decode=sf_decode)
    assert len(loaded.clips) == 8
    assert "speech/broken.wav" not in loaded.paths
    assert [p for p, _ in loaded.skipped] == ["speech/broken.wav"]
    assert loaded.skipped[0][1]  # a reason


def test_the_default_decoder_reports_its_reason(small_folder: Path) -> None:
    pytest.importorskip("aitasks.audio_analysis.decode")
    (small_folder / "noise" / "broken.wav").write_bytes(np.random.default_rng(1).bytes(4096))
    _write_csv(
        small_folder, [("noise/broken.wav", "noise"), ("noise/noise-0.wav", "noise"), ("drums/drums-1.flac", "drums")]
    )
    loaded = load_labelled_folder(small_folder, CFG)
    assert loaded.paths == ["noise/noise-0.wav", "drums/drums-1.flac"]
    assert [p for p, _ in loaded.skipped] == ["noise/broken.wav"]


def test_mostly_undecodable_folders_are_an_error(small_folder: Path) -> None:
    for i in range(9):
        (small_folder / "tonal" / f"junk-{i}.ogg").write_bytes(b"not audio at all")
    (small_folder / "labels.csv").unlink()
    with pytest.raises(DataFormatError, match="9 of 17 files could not be decoded"):
        load_labelled_folder(small_folder, CFG, decode=sf_decode)


def test_an_empty_folder_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(DataFormatError, match="no audio files"):
        load_labelled_folder(tmp_path, CFG, decode=sf_decode)


# ----------------------------------------------------------------------------------------- config


@pytest.mark.parametrize(
    "update",
    [
        {"labels": ("a",)},
        {"labels": ("a", "a")},
        {"labels": ("a", " b")},
        {"hop_length": 2048},
        {"clip_seconds": 0.01},
        {"channels": (8,) * 7},
        {"f_min": 9000.0},
    ],
)
def test_bad_configurations_are_refused(update: dict[str, object]) -> None:
    with pytest.raises(ValidationError):
        ClassifierConfig.model_validate({**CFG.model_dump(), **update})
    with pytest.raises(ValidationError):
        ClassifierConfig.model_validate({**CFG.model_dump(), "surprise": 1})
