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

Keras (:mod:`~aitasks.audio_analysis.classifier.keras_backend`, ``ClassifierConfig.backend="keras"``):
the same model and training on Keras 3 with TensorFlow, saved as ``model.keras`` (+ a SavedModel for
serving); :func:`evaluate` and :func:`predict` take either model, :func:`load_any_classifier` loads
either bundle. TensorFlow is imported only on that path. Explanations (integrated gradients over the
log-mel input, an HTML report): :mod:`~aitasks.audio_analysis.classifier.explain`.

Persistence: ``model.safetensors`` (weights and batch-norm statistics; never pickle) and
``config.json`` (format, ``format_version`` and the whole :class:`ClassifierConfig`, labels
included). The weights' metadata holds the sha256 of that configuration, so a ``config.json`` from
another model is refused even when the tensor shapes happen to fit. :func:`load_classifier` checks
the metadata and every tensor name, shape and dtype before loading. The mel filterbank and the STFT
window are not stored: they are rebuilt from the configuration.
"""

from __future__ import annotations

from aitasks.audio_analysis.classifier.config import (
    ClassifierConfig,
    ClassifierReport,
    ClassMetrics,
    EpochStats,
    LoadedFolder,
    Prediction,
    TrainingSummary,
)
from aitasks.audio_analysis.classifier.data import AUDIO_SUFFIXES, load_labelled_folder
from aitasks.audio_analysis.classifier.inference import evaluate, predict
from aitasks.audio_analysis.classifier.model import MelCnn
from aitasks.audio_analysis.classifier.persistence import (
    CONFIG_FILE,
    FORMAT,
    FORMAT_VERSION,
    WEIGHTS_FILE,
    load_any_classifier,
    load_classifier,
    save_classifier,
)
from aitasks.audio_analysis.classifier.training import train_classifier

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
    "load_any_classifier",
    "load_classifier",
    "load_labelled_folder",
    "predict",
    "save_classifier",
    "train_classifier",
]
