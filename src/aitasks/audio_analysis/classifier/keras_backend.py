"""The audio classifier on Keras 3 with TensorFlow: the same model as :class:`MelCnn`, trained and run the same way.

Only this module imports TensorFlow, and only inside its functions: importing it costs nothing, and
the torch path never loads TensorFlow. :func:`keras_module` sets ``KERAS_BACKEND=tensorflow`` before
Keras is first imported (and refuses a Keras already imported with another backend).

Model (:func:`build_keras_model`): raw mono samples ``[batch, clip_samples]`` -> ``LogMel`` (the same
front end as :meth:`MelCnn.log_mel`: zero-padded STFT with a periodic Hann window, a
``librosa.filters.mel`` filterbank, dB re the clip's own maximum floored at -80 dB, scaled to ~[-1, 1],
laid out ``[batch, n_mels, frames, 1]``) -> ``len(channels)`` blocks of conv 3x3 - batch norm (torch's
momentum and epsilon) - ReLU - max pool 2x2 -> global average pool -> dropout -> dense logits.
Layers have fixed names, so the architecture of a configuration is one exact JSON document.

Training (:func:`train_keras_classifier`) is the torch trainer's loop: the same seeded stratified
split, random crop and gain per clip and epoch, AdamW with the cosine learning rate per epoch, early
stopping on window-averaged validation accuracy and the best epoch's weights; evaluation and
prediction go through :func:`aitasks.audio_analysis.classifier.evaluate` / ``predict``, which accept a
:class:`KerasMelCnn`. Determinism on CPU: ``keras.utils.set_random_seed`` (Python, NumPy and
TensorFlow seeds), ``tf.config.experimental.enable_op_determinism()`` and, when TensorFlow is not
initialised yet, ``cfg.num_threads`` intra-op threads and one inter-op thread. The last two are
process-wide TensorFlow settings that cannot be undone; the seed is process-wide too (TensorFlow has
no forked generator like torch's ``fork_rng``).

Files (:func:`save_keras_classifier`): ``model.keras`` (Keras 3's native zip: ``config.json``,
``metadata.json``, ``model.weights.h5``; no pickle anywhere), ``config.json`` (format, version, the
whole :class:`ClassifierConfig` and the sha256 of ``model.keras``) and, for serving,
``saved_model/`` (``model.export``: a TensorFlow SavedModel whose ``serve`` signature takes
``[batch, clip_samples]`` float32 samples and returns logits). :func:`load_keras_classifier` checks the
sha256, opens the archive itself first and refuses any other member, any layer class outside the
model's own (a ``Lambda`` in particular: its code would be deserialised), and any architecture that
differs from the one ``config.json`` builds; only then is the file loaded, with ``safe_mode=True``.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import math
import os
import shutil
import sys
import time
import uuid
import zipfile
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, Final, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict

from aitasks.audio_analysis.classifier.config import (
    _F32,
    _TASK,
    ClassifierConfig,
    ClassifierReport,
    EpochStats,
    TrainingSummary,
    read_model_file,
)
from aitasks.runtime.errors import DataFormatError, FatalError, FieldIssue, InvalidInputError

KERAS_FORMAT: Final = "aitasks.audio.keras_mel_cnn"
KERAS_FORMAT_VERSION: Final = 1
KERAS_FILE: Final = "model.keras"
KERAS_CONFIG_FILE: Final = "config.json"
SAVED_MODEL_DIR: Final = "saved_model"
#: The members of a Keras 3 ``.keras`` archive without assets; anything else is refused.
_ARCHIVE_MEMBERS: Final = frozenset({"config.json", "metadata.json", "model.weights.h5"})
#: Every ``class_name`` the architecture of a :func:`build_keras_model` model holds.
_ALLOWED_CLASSES: Final = frozenset(
    {
        "Functional",
        "InputLayer",
        "LogMel",
        "Conv2D",
        "BatchNormalization",
        "ReLU",
        "MaxPooling2D",
        "GlobalAveragePooling2D",
        "Dropout",
        "Dense",
        "DTypePolicy",
        "GlorotUniform",
        "Zeros",
        "Ones",
        "__keras_tensor__",
    }
)
_MAX_ARCHIVE_CONFIG_BYTES: Final = 4 << 20
_TOP_DB: Final = 80.0


# ------------------------------------------------------------------------------------ keras import


def keras_module() -> Any:
    """Keras 3 on the TensorFlow backend (``KERAS_BACKEND`` is set before Keras's first import).

    Raises:
        FatalError: Keras was already imported in this process with another backend.
    """
    if "keras" not in sys.modules:
        os.environ["KERAS_BACKEND"] = "tensorflow"
    import keras

    backend = keras.backend.backend()
    if backend != "tensorflow":
        raise FatalError(
            f"Keras was imported with the {backend!r} backend; the audio classifier needs 'tensorflow' "
            "(set KERAS_BACKEND=tensorflow before anything imports keras)"
        )
    return keras


@functools.cache
def _log_mel_layer() -> Any:
    """The ``LogMel`` layer class, defined (and registered as ``aitasks>LogMel``) on first use."""
    keras = keras_module()
    from keras import ops

    @keras.saving.register_keras_serializable(package="aitasks", name="LogMel")
    class LogMel(keras.layers.Layer):  # type: ignore[misc,name-defined]
        """Samples ``[batch, n]`` -> log-mel image ``[batch, n_mels, frames, 1]`` (see :meth:`MelCnn.log_mel`)."""

        def __init__(
            self,
            sample_rate: int,
            n_fft: int,
            hop_length: int,
            n_mels: int,
            f_min: float,
            f_max: float | None,
            **kwargs: Any,
        ) -> None:
            super().__init__(**kwargs)
            self.sample_rate, self.n_fft, self.hop_length = sample_rate, n_fft, hop_length
            self.n_mels, self.f_min, self.f_max = n_mels, f_min, f_max
            import librosa

            fb = librosa.filters.mel(
                sr=sample_rate, n_fft=n_fft, n_mels=n_mels, fmin=f_min, fmax=f_max, dtype=np.float32
            )
            # A constant, not a weight: it follows from the configuration (as MelCnn's buffer does).
            self._fb = np.ascontiguousarray(fb.T)

        def call(self, audio: Any) -> Any:
            pad = self.n_fft // 2  # torch.stft(center=True, pad_mode="constant")
            x = ops.pad(audio, [[0, 0], [pad, pad]])
            re, im = ops.stft(x, self.n_fft, self.hop_length, self.n_fft, window="hann", center=False)
            mel = ops.matmul(re * re + im * im, ops.convert_to_tensor(self._fb))  # [batch, frames, n_mels]
            db = 10.0 * ops.log10(ops.maximum(mel, 1e-10))
            db = db - ops.max(db, axis=(1, 2), keepdims=True)
            db = ops.maximum(db, -_TOP_DB)
            return ops.expand_dims(ops.transpose(db / (_TOP_DB / 2) + 1.0, (0, 2, 1)), -1)

        def get_config(self) -> dict[str, Any]:
            return {
                **super().get_config(),
                "sample_rate": self.sample_rate,
                "n_fft": self.n_fft,
                "hop_length": self.hop_length,
                "n_mels": self.n_mels,
                "f_min": self.f_min,
                "f_max": self.f_max,
            }

    return LogMel


# ------------------------------------------------------------------------------------------ model


def build_keras_model(cfg: ClassifierConfig) -> Any:
    """The Keras model of ``cfg`` (untrained): raw samples ``[batch, clip_samples]`` -> logits."""
    keras = keras_module()
    layers = keras.layers
    log_mel = _log_mel_layer()
    inp = keras.Input((cfg.clip_samples,), name="audio")
    h = log_mel(
        sample_rate=cfg.sample_rate,
        n_fft=cfg.n_fft,
        hop_length=cfg.hop_length,
        n_mels=cfg.n_mels,
        f_min=cfg.f_min,
        f_max=cfg.f_max,
        name="log_mel",
    )(inp)
    for i, c in enumerate(cfg.channels):
        h = layers.Conv2D(c, 3, padding="same", use_bias=False, name=f"conv_{i}")(h)
        # torch's BatchNorm2d defaults: momentum 0.1 (Keras counts the other way), eps 1e-5.
        h = layers.BatchNormalization(momentum=0.9, epsilon=1e-5, name=f"bn_{i}")(h)
        h = layers.ReLU(name=f"relu_{i}")(h)
        h = layers.MaxPooling2D(2, name=f"pool_{i}")(h)
    h = layers.GlobalAveragePooling2D(name="global_pool")(h)
    h = layers.Dropout(cfg.dropout, name="dropout")(h)
    out = layers.Dense(len(cfg.labels), name="logits")(h)
    return keras.Model(inp, out, name="mel_cnn")


class KerasMelCnn:
    """A Keras classifier with its configuration: what ``evaluate``, ``predict`` and the explainer take.

    Attributes:
        model: The ``keras.Model`` (raw samples -> logits).
        config: Its :class:`ClassifierConfig` (``backend="keras"``).
    """

    backend: Final = "keras"

    def __init__(self, model: Any, config: ClassifierConfig) -> None:
        self.model = model
        self.config = config
        self._infer: Any = None

    def logits(self, x: np.ndarray) -> np.ndarray:
        """Logits ``[batch, labels]`` (float32) of crops ``[batch, clip_samples]``, inference mode."""
        if self._infer is None:
            import tensorflow as tf

            model = self.model
            # One trace for every batch size (a retrace per new shape costs more than the batch).
            spec = tf.TensorSpec([None, self.config.clip_samples], tf.float32)
            self._infer = tf.function(lambda t: model(t, training=False), input_signature=[spec])
        return np.asarray(self._infer(np.ascontiguousarray(x, dtype=np.float32)), dtype=np.float32)

    def clip_logits(self, clips: Sequence[_F32], batch_size: int) -> np.ndarray:
        """Per-clip logits ``[len(clips), labels]``: the mean over each clip's windows (as the torch model)."""
        with _keras_runtime(self.config, seed=False):
            return window_logits(clips, self.config, batch_size, self.logits)

    def log_mel(self, x: np.ndarray) -> np.ndarray:
        """The model's input image ``[batch, n_mels, frames]`` of crops ``[batch, clip_samples]``."""
        layer = self.model.get_layer("log_mel")
        return np.asarray(layer(np.ascontiguousarray(x, dtype=np.float32)))[..., 0]

    def from_log_mel(self, image: Any, *, training: bool = False) -> Any:
        """Logits from the log-mel image ``[batch, n_mels, frames, 1]`` (a tensor; differentiable)."""
        h = image
        for layer in self.model.layers:
            if layer.name in {"audio", "log_mel"}:
                continue
            h = layer(h, training=training)
        return h


def window_logits(
    clips: Sequence[_F32], cfg: ClassifierConfig, batch_size: int, forward: Callable[[np.ndarray], np.ndarray]
) -> np.ndarray:
    """Per-clip logits (float64): each clip's :func:`~.model._windows` through ``forward`` in batches, averaged."""
    from aitasks.audio_analysis.classifier.model import _windows

    k = len(cfg.labels)
    sums = np.zeros((len(clips), k), np.float64)
    counts = np.zeros(len(clips), np.float64)
    rows: list[_F32] = []
    owners: list[int] = []

    def flush() -> None:
        x = np.concatenate(rows)
        logits = np.concatenate([forward(x[i : i + batch_size]) for i in range(0, x.shape[0], batch_size)])
        idx = np.asarray(owners)
        np.add.at(sums, idx, logits.astype(np.float64))
        np.add.at(counts, idx, 1.0)
        rows.clear()
        owners.clear()

    for i, clip in enumerate(clips):
        w = _windows(clip, cfg.clip_samples, cfg.max_windows)
        rows.append(w)
        owners.extend([i] * w.shape[0])
        if len(owners) >= batch_size:
            flush()
    if owners:
        flush()
    return sums / counts[:, None]


# ---------------------------------------------------------------------------------------- runtime


def _device_name(cfg: ClassifierConfig) -> str:
    import tensorflow as tf

    gpus = tf.config.list_physical_devices("GPU")
    if cfg.device == "cuda" and not gpus:
        raise InvalidInputError(_TASK, [FieldIssue("device", "cuda asked for, but TensorFlow sees no GPU")])
    return "/GPU:0" if gpus and cfg.device in {"auto", "cuda"} else "/CPU:0"


@contextlib.contextmanager
def _keras_runtime(cfg: ClassifierConfig, *, seed: bool) -> Iterator[str]:
    """Threads (when TensorFlow is not initialised yet), op determinism, the device and (optionally) the seed."""
    from aitasks.platform.compute import default_num_threads

    keras = keras_module()
    import tensorflow as tf

    with contextlib.suppress(RuntimeError):  # already initialised: the process keeps its first setting
        tf.config.threading.set_intra_op_parallelism_threads(cfg.num_threads or default_num_threads())
        tf.config.threading.set_inter_op_parallelism_threads(1)
    tf.config.experimental.enable_op_determinism()
    if seed:
        keras.utils.set_random_seed(cfg.seed % 2**32)
    device = _device_name(cfg)
    with tf.device(device):
        yield device


# --------------------------------------------------------------------------------------- training


def train_keras_classifier(
    clips: Sequence[np.ndarray], labels: Sequence[int], cfg: ClassifierConfig, *, val_fraction: float = 0.2
) -> tuple[KerasMelCnn, ClassifierReport]:
    """Train the Keras model as :func:`~aitasks.audio_analysis.classifier.train_classifier` trains the torch one.

    Args:
        clips: Mono float32 clips at ``cfg.sample_rate``.
        labels: Label index (into ``cfg.labels``) of each clip.
        cfg: Architecture and training settings; ``backend`` must be ``keras``.
        val_fraction: Share of each class held out for validation, in [0, 0.9].

    Returns:
        The model and the report on the validation clips (the training clips when ``val_fraction``
        is 0), with a :class:`TrainingSummary`.

    Raises:
        InvalidInputError: ``cfg.backend`` is not ``keras``; fewer than 2 clips, bad clips or labels,
            a bad ``val_fraction`` or an unavailable device.
        FatalError: The loss became NaN or infinite.
    """
    from aitasks.audio_analysis.classifier.inference import _check_labels, _report
    from aitasks.audio_analysis.classifier.model import _check_clips, _fit_length
    from aitasks.audio_analysis.classifier.training import _GAIN_DB, _stratified_split

    if cfg.backend != "keras":
        raise InvalidInputError(_TASK, [FieldIssue("cfg.backend", f"is {cfg.backend!r}; this trainer is keras")])
    if not 0.0 <= val_fraction <= 0.9:
        raise InvalidInputError(_TASK, [FieldIssue("val_fraction", f"{val_fraction} not in [0, 0.9]")])
    if len(clips) < 2:
        raise InvalidInputError(_TASK, [FieldIssue("clips", f"need at least 2 clips, got {len(clips)}")])
    data = _check_clips(clips)
    y = _check_labels(labels, len(data), len(cfg.labels))
    train_idx, val_idx = _stratified_split(y, val_fraction, cfg.seed)
    n = cfg.clip_samples
    rng = np.random.default_rng([cfg.seed, 1])
    history: list[EpochStats] = []
    t_start = time.perf_counter()
    keras = keras_module()
    with _keras_runtime(cfg, seed=True) as device:
        import tensorflow as tf

        net = build_keras_model(cfg)
        wrapper = KerasMelCnn(net, cfg)
        opt = keras.optimizers.AdamW(learning_rate=cfg.lr, weight_decay=cfg.weight_decay)
        variables = net.trainable_variables

        @tf.function(reduce_retracing=True)  # type: ignore[untyped-decorator]
        def step(x: Any, target: Any) -> tuple[Any, Any]:
            with tf.GradientTape() as tape:
                logits = net(x, training=True)
                loss = tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(target, logits))
            opt.apply_gradients(zip(tape.gradient(loss, variables), variables, strict=True))
            return loss, logits

        best: tuple[float, float] | None = None
        best_weights = [w.copy() for w in net.get_weights()]
        best_epoch = 0
        stale = 0
        for epoch in range(1, cfg.epochs + 1):
            t0 = time.perf_counter()
            # torch's CosineAnnealingLR, stepped per epoch (eta_min 0).
            opt.learning_rate = cfg.lr * 0.5 * (1.0 + math.cos(math.pi * (epoch - 1) / cfg.epochs))
            order = rng.permutation(train_idx)
            loss_sum, correct = 0.0, 0
            for b in range(0, order.size, cfg.batch_size):
                batch = order[b : b + cfg.batch_size]
                if batch.size == 1 and order.size > 1:
                    continue  # batch norm cannot learn from a batch of one (as the torch trainer)
                offsets = [int(rng.integers(0, max(data[i].size - n, 0) + 1)) for i in batch]
                gains = 10.0 ** (rng.uniform(*_GAIN_DB, size=batch.size) / 20.0)
                x = np.stack(
                    [_fit_length(data[i], n, o) * np.float32(g) for i, o, g in zip(batch, offsets, gains, strict=True)]
                )
                loss_t, logits_t = step(tf.constant(x), tf.constant(y[batch].astype(np.int32)))
                loss = float(loss_t)
                if not math.isfinite(loss):
                    raise FatalError(f"training diverged at epoch {epoch}: loss is {loss}")
                loss_sum += loss * batch.size
                correct += int((np.asarray(logits_t).argmax(axis=1) == y[batch]).sum())
            val_loss = val_acc = None
            if val_idx.size:
                val_logits = window_logits([data[i] for i in val_idx], cfg, max(cfg.batch_size, 32), wrapper.logits)
                val_y = y[val_idx]
                val_loss = _cross_entropy(val_logits, val_y)
                val_acc = float((val_logits.argmax(axis=1) == val_y).mean())
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
                best_weights = [w.copy() for w in net.get_weights()]
            else:
                stale += 1
                if stale >= cfg.patience:
                    break
        if val_idx.size:
            net.set_weights(best_weights)
        eval_idx = val_idx if val_idx.size else train_idx
        pred = window_logits([data[i] for i in eval_idx], cfg, max(cfg.batch_size, 32), wrapper.logits).argmax(axis=1)
    report = _report(y[eval_idx], pred.astype(np.int64), cfg.labels, "validation" if val_idx.size else "train")
    summary = TrainingSummary(
        n_train=int(train_idx.size),
        n_val=int(val_idx.size),
        epochs_run=len(history),
        best_epoch=best_epoch,
        stopped_early=len(history) < cfg.epochs,
        seconds=time.perf_counter() - t_start,
        device=device,
        history=history,
    )
    return wrapper, report.model_copy(update={"training": summary})


def _cross_entropy(logits: np.ndarray, y: np.ndarray) -> float:
    z = logits - logits.max(axis=1, keepdims=True)
    log_p = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
    return float(-log_p[np.arange(y.size), y].mean())


# ------------------------------------------------------------------------------------ persistence


class _KerasModelFile(BaseModel):
    """Schema of the Keras bundle's ``config.json``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    format: Literal["aitasks.audio.keras_mel_cnn"]
    format_version: Literal[1]
    config: ClassifierConfig
    keras_sha256: str
    keras_version: str


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def save_keras_classifier(model: KerasMelCnn, out_dir: Path, *, saved_model: bool = True) -> None:
    """Write ``model.keras``, ``config.json`` and (``saved_model``) the ``saved_model/`` export into ``out_dir``.

    Each is written under a temporary name and renamed into place; ``config.json`` last, so a
    crash never leaves a ``config.json`` that names a missing or older ``model.keras``.

    Raises:
        InvalidInputError: The model's configuration is not a keras one.
    """
    from aitasks.platform.files import atomic_write

    keras = keras_module()
    cfg = model.config
    if cfg.backend != "keras":
        raise InvalidInputError(_TASK, [FieldIssue("config.backend", f"is {cfg.backend!r}, not 'keras'")])
    out_dir.mkdir(parents=True, exist_ok=True)
    tmp = out_dir / f".tmp-{uuid.uuid4().hex}.keras"  # Keras insists on the suffix
    try:
        model.model.save(tmp)
        os.replace(tmp, out_dir / KERAS_FILE)
    finally:
        tmp.unlink(missing_ok=True)
    if saved_model:
        export_saved_model(model, out_dir / SAVED_MODEL_DIR)
    doc = _KerasModelFile(
        format=KERAS_FORMAT,
        format_version=KERAS_FORMAT_VERSION,
        config=cfg,
        keras_sha256=_sha256(out_dir / KERAS_FILE),
        keras_version=str(keras.__version__),
    )
    atomic_write(out_dir / KERAS_CONFIG_FILE, json.dumps(doc.model_dump(mode="json"), indent=1, sort_keys=True) + "\n")


def export_saved_model(model: KerasMelCnn, out: Path) -> None:
    """``model.export`` to a SavedModel at ``out`` (replaced whole): ``serve`` takes samples, gives logits."""
    tmp = out.with_name(f".tmp-{uuid.uuid4().hex}-{out.name}")
    try:
        with _keras_runtime(model.config, seed=False):
            model.model.export(str(tmp), format="tf_saved_model", verbose=False)
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)


def _class_names(node: Any, out: list[tuple[str, str | None]]) -> None:
    """Every ``(class_name, registered_name)`` in a Keras config document."""
    if isinstance(node, dict):
        if "class_name" in node:
            out.append((str(node["class_name"]), node.get("registered_name")))
        for v in node.values():
            _class_names(v, out)
    elif isinstance(node, list):
        for v in node:
            _class_names(v, out)


def _normalised(node: Any) -> Any:
    """A Keras config document without ``shared_object_id`` (a memory address at save time)."""
    if isinstance(node, dict):
        return {k: _normalised(v) for k, v in node.items() if k != "shared_object_id"}
    if isinstance(node, list):
        return [_normalised(v) for v in node]
    return node


def _check_archive(path: Path, cfg: ClassifierConfig) -> None:
    """Refuse a ``.keras`` archive that is anything but the architecture ``cfg`` builds (see the module docstring)."""
    try:
        with zipfile.ZipFile(path) as zf:
            infos = zf.infolist()
            names = {i.filename for i in infos}
            if names != _ARCHIVE_MEMBERS or len(infos) != len(_ARCHIVE_MEMBERS):
                odd = sorted(names - _ARCHIVE_MEMBERS) or sorted(_ARCHIVE_MEMBERS - names)
                raise DataFormatError(
                    str(path), f"archive members must be exactly {sorted(_ARCHIVE_MEMBERS)}; found {odd[:5]}"
                )
            info = zf.getinfo("config.json")
            if info.file_size > _MAX_ARCHIVE_CONFIG_BYTES:
                raise DataFormatError(str(path), f"config.json is {info.file_size} bytes")
            arch = json.loads(zf.read(info).decode("utf-8"))
    except (zipfile.BadZipFile, OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DataFormatError(str(path), f"not a readable .keras archive: {type(exc).__name__}: {exc}") from None
    found: list[tuple[str, str | None]] = []
    _class_names(arch, found)
    for name, registered in found:
        if name not in _ALLOWED_CLASSES:
            raise DataFormatError(str(path), f"refusing layer or object class {name!r}: not part of this model")
        # Keras's own classes carry no registered name (Functional its own); ours exactly "aitasks>LogMel".
        if registered != "aitasks>LogMel" if name == "LogMel" else registered not in (None, name):
            raise DataFormatError(str(path), f"refusing registered object {registered!r} ({name})")
    keras = keras_module()
    expected = keras.saving.serialize_keras_object(build_keras_model(cfg))
    if _normalised(json.loads(json.dumps(expected))) != _normalised(arch):
        raise DataFormatError(str(path), f"the architecture differs from the one {KERAS_CONFIG_FILE} describes")


def load_keras_classifier(model_dir: Path) -> tuple[KerasMelCnn, ClassifierConfig]:
    """Load a model written by :func:`save_keras_classifier` (checked first, then ``safe_mode=True``).

    Args:
        model_dir: The directory with ``model.keras`` and ``config.json``.

    Returns:
        The model and its configuration.

    Raises:
        DataFormatError: A file is missing or corrupt, the format/version is unknown, ``model.keras``
            is not the file ``config.json`` names (sha256), holds other members, a layer class
            outside this model (``Lambda``, say) or another architecture; the error names the file.
    """
    cfg_path = model_dir / KERAS_CONFIG_FILE
    doc = read_model_file(cfg_path, _KerasModelFile)
    cfg = doc.config
    if cfg.backend != "keras":
        raise DataFormatError(str(cfg_path), f"config.backend is {cfg.backend!r}, not 'keras'")
    path = model_dir / KERAS_FILE
    if not path.is_file() or path.is_symlink():
        raise DataFormatError(str(path), "file is missing (or a link)")
    if _sha256(path) != doc.keras_sha256:
        raise DataFormatError(str(path), f"sha256 differs from the one {KERAS_CONFIG_FILE} records")
    keras = keras_module()
    _log_mel_layer()  # registers aitasks>LogMel
    _check_archive(path, cfg)
    try:
        net = keras.saving.load_model(str(path), compile=False, safe_mode=True)
    except Exception as exc:  # h5 or Keras errors: the file is not a model of this configuration
        raise DataFormatError(str(path), f"Keras could not load it: {type(exc).__name__}: {exc}") from None
    return KerasMelCnn(net, cfg), cfg
