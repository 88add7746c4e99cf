"""Labelled folders: ``labels.csv`` or ``<label>/`` sub-folders, decoded clip by clip, paths kept inside the root."""

from __future__ import annotations

import csv
from collections.abc import Callable
from pathlib import Path
from typing import Final

import numpy as np

from aitasks.audio_analysis.classifier.config import _F32, ClassifierConfig, LoadedFolder
from aitasks.runtime.errors import (
    DataFormatError,
    TaskError,
    UnsafePathError,
)
from aitasks.runtime.storage import check_relative_key

LABELS_CSV: Final = "labels.csv"
AUDIO_SUFFIXES: Final[tuple[str, ...]] = (".wav", ".flac", ".ogg", ".mp3")
Decoder = Callable[[Path], np.ndarray]


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
