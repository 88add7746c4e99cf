"""The Keras backend of the audio classifier: learns like the torch one, round-trips safely, refuses unsafe files."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from aitasks.audio_analysis.classifier import (
    ClassifierConfig,
    ClassifierReport,
    MelCnn,
    evaluate,
    load_any_classifier,
    load_labelled_folder,
    predict,
    train_classifier,
)
from aitasks.audio_analysis.classifier.keras_backend import (
    KERAS_FILE,
    SAVED_MODEL_DIR,
    KerasMelCnn,
    keras_module,
    load_keras_classifier,
    save_keras_classifier,
    train_keras_classifier,
)
from aitasks.audio_analysis.synthetic import LABELS, synth_clip, write_labelled_folder
from aitasks.runtime.errors import DataFormatError, InvalidInputError

SR = 16000
CFG = ClassifierConfig(
    labels=LABELS,
    sample_rate=SR,
    n_fft=512,
    hop_length=256,
    n_mels=32,
    clip_seconds=1.0,
    channels=(8, 16, 32),
    epochs=14,
    patience=14,  # no early stop: with 3 batches an epoch, batch-norm statistics lag the first epochs' validation
    batch_size=16,
    lr=3e-3,
    seed=0,
    device="cpu",
    num_threads=1,  # a shared 2-core machine: one thread each
)
KERAS_CFG = CFG.model_copy(update={"backend": "keras"})


@dataclass
class Both:
    torch_model: MelCnn
    keras_model: KerasMelCnn
    torch_report: ClassifierReport
    keras_report: ClassifierReport
    test_clips: list[np.ndarray]
    test_labels: list[int]


@pytest.fixture(scope="module")
def both(tmp_path_factory: pytest.TempPathFactory) -> Both:
    """Both backends trained on the same synthetic folder (written and read back the same way)."""
    root = tmp_path_factory.mktemp("keras-audio")
    write_labelled_folder(root / "train", per_class=16, seed=1, sr=SR, duration_s=1.3)
    write_labelled_folder(root / "test", per_class=8, seed=2, sr=SR, duration_s=1.3)
    train = load_labelled_folder(root / "train", CFG)
    test = load_labelled_folder(root / "test", CFG)
    assert train.skipped == [] and test.skipped == [] and len(test.clips) == 32
    torch_model, _ = train_classifier(train.clips, train.labels, CFG)
    keras_model, _ = train_keras_classifier(train.clips, train.labels, KERAS_CFG)
    return Both(
        torch_model,
        keras_model,
        evaluate(torch_model, test.clips, test.labels, CFG),
        evaluate(keras_model, test.clips, test.labels, KERAS_CFG),
        test.clips,
        test.labels,
    )


@pytest.mark.slow
def test_both_backends_beat_chance_by_a_clear_margin_on_the_same_held_out_clips(both: Both) -> None:
    for name, rep in (("torch", both.torch_report), ("keras", both.keras_report)):
        print(f"{name}: held-out accuracy {rep.accuracy:.3f}, macro F1 {rep.macro_f1:.3f}")
        assert rep.chance == 0.25 and rep.n == 32 and rep.split == "eval"
        assert rep.accuracy >= 0.6, f"{name} backend: {rep.accuracy:.3f}"
        assert rep.macro_f1 >= 0.55
        assert [sum(row) for row in rep.confusion] == [8, 8, 8, 8]


@pytest.mark.slow
def test_the_exported_keras_model_reloads_and_predicts_the_same(both: Both, tmp_path: Path) -> None:
    save_keras_classifier(both.keras_model, tmp_path / "m")
    assert sorted(p.name for p in (tmp_path / "m").iterdir()) == ["config.json", KERAS_FILE, SAVED_MODEL_DIR]
    loaded, cfg = load_any_classifier(tmp_path / "m")
    assert isinstance(loaded, KerasMelCnn) and cfg == KERAS_CFG
    clips = [*both.test_clips[:6], np.concatenate(both.test_clips[6:9])]  # a long clip: several windows
    before = predict(both.keras_model, clips, KERAS_CFG, batch_size=4)
    after = predict(loaded, clips, cfg, batch_size=4)
    for a, b in zip(before, after, strict=True):
        assert a.label == b.label
        assert list(a.probabilities.values()) == pytest.approx(list(b.probabilities.values()), abs=1e-6)
    assert evaluate(loaded, both.test_clips, both.test_labels, cfg) == both.keras_report
    # The SavedModel for serving: raw samples in, the same logits out.
    import tensorflow as tf

    served = tf.saved_model.load(str(tmp_path / "m" / SAVED_MODEL_DIR))
    crops = np.stack([c[: CFG.clip_samples] for c in both.test_clips[:5]])
    assert np.asarray(served.serve(tf.constant(crops))) == pytest.approx(both.keras_model.logits(crops), abs=1e-5)


def test_keras_and_torch_front_ends_agree() -> None:
    """Same STFT framing, window, filterbank and dB scaling: the same log-mel image from either backend."""
    import torch

    clips = np.stack([synth_clip(lab, seed=3, sr=SR, duration_s=1.0) for lab in LABELS])
    torch_image = MelCnn(CFG).log_mel(torch.from_numpy(clips)).detach().numpy()[:, 0]
    keras_image = KerasMelCnn(_untrained(KERAS_CFG), KERAS_CFG).log_mel(clips)
    assert torch_image.shape == keras_image.shape == (4, CFG.n_mels, 1 + CFG.clip_samples // CFG.hop_length)
    assert np.abs(torch_image - keras_image).max() < 1e-4


def _untrained(cfg: ClassifierConfig) -> object:
    from aitasks.audio_analysis.classifier.keras_backend import build_keras_model

    return build_keras_model(cfg)


def _tiny() -> tuple[list[np.ndarray], list[int], ClassifierConfig]:
    cfg = KERAS_CFG.model_copy(update={"labels": ("tonal", "noise"), "epochs": 2, "channels": (4, 8)})
    clips = [synth_clip(lab, seed=s, sr=SR, duration_s=1.1) for lab in cfg.labels for s in range(4)]
    return clips, [i for i in range(2) for _ in range(4)], cfg


def test_keras_training_is_deterministic_for_a_seed() -> None:
    clips, labels, cfg = _tiny()
    a, rep_a = train_keras_classifier(clips, labels, cfg)
    b, rep_b = train_keras_classifier(clips, labels, cfg)
    c, _ = train_keras_classifier(clips, labels, cfg.model_copy(update={"seed": 1}))
    wa, wb, wc = a.model.get_weights(), b.model.get_weights(), c.model.get_weights()
    assert all(np.array_equal(x, y) for x, y in zip(wa, wb, strict=True))
    assert any(not np.array_equal(x, y) for x, y in zip(wa, wc, strict=True))
    assert rep_a.training is not None and rep_b.training is not None
    assert [h.train_loss for h in rep_a.training.history] == [h.train_loss for h in rep_b.training.history]


def test_each_trainer_refuses_the_other_backend() -> None:
    clips, labels, cfg = _tiny()
    with pytest.raises(InvalidInputError, match=r"cfg\.backend"):
        train_classifier(clips, labels, cfg)
    with pytest.raises(InvalidInputError, match=r"cfg\.backend"):
        train_keras_classifier(clips, labels, cfg.model_copy(update={"backend": "torch"}))


# --------------------------------------------------------------------------------------- unsafe files


@pytest.fixture(scope="module")
def saved(tmp_path_factory: pytest.TempPathFactory) -> Path:
    clips, labels, cfg = _tiny()
    model, _ = train_keras_classifier(clips, labels, cfg.model_copy(update={"epochs": 1}))
    out = tmp_path_factory.mktemp("keras-model")
    save_keras_classifier(model, out, saved_model=False)
    return out


def _copy(src: Path, dst: Path) -> Path:
    import shutil

    shutil.copytree(src, dst)
    return dst


def _reseal(model_dir: Path) -> None:
    """Record the current model.keras's sha256 in config.json, as an attacker who controls both files would."""
    from aitasks.audio_analysis.classifier.keras_backend import _sha256

    doc = json.loads((model_dir / "config.json").read_text())
    doc["keras_sha256"] = _sha256(model_dir / KERAS_FILE)
    (model_dir / "config.json").write_text(json.dumps(doc))


def _rewrite_archive(path: Path, edit: dict[str, bytes | None]) -> None:
    with zipfile.ZipFile(path) as zf:
        members = {n: zf.read(n) for n in zf.namelist()}
    for name, data in edit.items():
        if data is None:
            members.pop(name, None)
        else:
            members[name] = data
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)


def test_a_lambda_layer_is_refused_before_keras_reads_the_file(saved: Path, tmp_path: Path) -> None:
    keras = keras_module()
    inp = keras.Input((4,))
    evil = keras.Model(inp, keras.layers.Lambda(lambda x: x * 2.0, name="log_mel")(inp))
    evil.save(tmp_path / "evil.keras")
    target = _copy(saved, tmp_path / "m")
    (target / KERAS_FILE).write_bytes((tmp_path / "evil.keras").read_bytes())
    _reseal(target)
    with pytest.raises(DataFormatError, match="refusing layer or object class 'Lambda'"):
        load_keras_classifier(target)


def test_an_edited_file_is_refused_by_its_checksum(saved: Path, tmp_path: Path) -> None:
    target = _copy(saved, tmp_path / "m")
    with (target / KERAS_FILE).open("ab") as f:
        f.write(b"\0")
    with pytest.raises(DataFormatError, match="sha256 differs"):
        load_keras_classifier(target)


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        ({"assets/payload.pkl": b"\x80\x04."}, "archive members must be exactly"),
        ({"metadata.json": None}, "archive members must be exactly"),
    ],
)
def test_odd_archive_members_are_refused(
    saved: Path, tmp_path: Path, edit: dict[str, bytes | None], message: str
) -> None:
    target = _copy(saved, tmp_path / "m")
    _rewrite_archive(target / KERAS_FILE, edit)
    _reseal(target)
    with pytest.raises(DataFormatError, match=message):
        load_keras_classifier(target)


def test_an_architecture_other_than_the_configured_one_is_refused(saved: Path, tmp_path: Path) -> None:
    target = _copy(saved, tmp_path / "m")
    doc = json.loads((target / "config.json").read_text())
    doc["config"]["channels"] = [4, 9]
    (target / "config.json").write_text(json.dumps(doc))
    with pytest.raises(DataFormatError, match="architecture differs"):
        load_keras_classifier(target)


def test_a_torch_bundle_and_an_unknown_format_are_told_apart(saved: Path, tmp_path: Path) -> None:
    target = _copy(saved, tmp_path / "m")
    doc = json.loads((target / "config.json").read_text())
    doc["format"] = "something.else"
    (target / "config.json").write_text(json.dumps(doc))
    with pytest.raises(DataFormatError, match=r"unknown model format 'something\.else'"):
        load_any_classifier(target)
    with pytest.raises(DataFormatError, match="file is missing"):
        load_any_classifier(tmp_path / "nowhere")


def test_tensorflow_is_imported_only_on_the_keras_path() -> None:
    code = (
        "import sys\n"
        "import aitasks.audio_analysis.classifier, aitasks.audio_analysis.tasks\n"
        "import aitasks.audio_analysis.classifier.keras_backend, aitasks.audio_analysis.classifier.explain\n"
        "print(sorted(m for m in ('tensorflow', 'keras') if m in sys.modules))\n"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300, check=True)
    assert out.stdout.strip() == "[]"
