"""Decode one audio file into mono float32 at the configured rate, or refuse it with a reason.

Every file is checked before any sample is decoded, from the cheapest check to the dearest:

1. it is a regular file (not a FIFO, device or directory: those can block a reader forever);
2. its size is within ``max_bytes`` and not zero;
3. its real container, sniffed from the first bytes (after any ID3v2 tag), is one we decode
   (WAV/RF64, FLAC, OGG, MP3) and matches the extension; a file holding only an ID3 tag has no audio;
4. an MP3 or Ogg file's structure is whole (:mod:`aitasks.audio_analysis.streams`): the file does not
   end inside a frame or page, an MP3 holds every frame its Xing/Info/VBRI header declares, and every
   Ogg stream reaches its end-of-stream page;
5. the header's channel count, sample rate and duration are within limits;
6. the decoded stream has as many frames as the header promised (a truncated stream or a header
   that lies about its length is refused, not silently shortened). An MP3's reference is the
   samples its frames hold, and it may decode up to the encoder delay plus padding shorter;
7. every sample is finite (a float WAV can hold NaN/Inf).

Refusals raise :class:`AudioDecodeError` with a machine-readable ``reason`` (one of
:data:`REASONS`) and a sentence naming the measured value and the limit. Nothing here can hang on a
hostile file except the decoder itself; the per-file timeout lives in the process pool
(:mod:`aitasks.audio_analysis.parallel`), which kills a worker that overruns.

Decoding goes through libsndfile (``soundfile``), which reads all four formats, MP3 included, at
about 1,000x realtime per core; audioread/ffmpeg is not used. Resampling is done once, with soxr.
"""

from __future__ import annotations

import stat
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Final, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

from aitasks.audio_analysis.streams import (
    MAX_ENCODER_GAP,
    Mp3Stream,
    free_format,
    id3v2_length,
    scan_mp3,
    scan_ogg,
)
from aitasks.runtime.errors import DataFormatError

#: Machine-readable reasons a file is refused; each is a quarantine reason and an anomaly flag detail.
REASONS: Final[dict[str, str]] = {
    "not_found": "the file does not exist",
    "not_regular_file": "not a regular file (FIFO, device, directory)",
    "unsafe_path": "the path escapes the catalog root",
    "empty": "the file has zero bytes",
    "no_audio": "the file holds only metadata (an ID3 tag, an MP3 header frame), no audio",
    "too_large": "the file is larger than the size limit",
    "unknown_format": "the content is not a supported audio container",
    "format_mismatch": "the content's real format does not match the extension",
    "too_many_channels": "more channels than allowed",
    "sample_rate_out_of_range": "the sample rate is outside the accepted range",
    "too_long": "the duration is over the limit",
    "truncated": "the stream ends before the header says it should",
    "length_mismatch": "the decoded length differs from the header's",
    "non_finite": "the samples contain NaN or Inf",
    "decode_error": "the decoder failed",
    "timeout": "decoding took longer than the per-file timeout",
}

#: Container -> the extensions it may carry.
EXTENSIONS: Final[dict[str, tuple[str, ...]]] = {
    "WAV": (".wav", ".wave"),
    "FLAC": (".flac",),
    "OGG": (".ogg", ".oga"),
    "MP3": (".mp3",),
}
AUDIO_EXTENSIONS: Final[tuple[str, ...]] = tuple(ext for exts in EXTENSIONS.values() for ext in exts)


class AudioDecodeError(DataFormatError):
    """A file was refused before or during decoding; ``reason`` is a key of :data:`REASONS`."""

    kind = "audio_decode"

    def __init__(self, uri: str, reason: str, detail: str) -> None:
        if reason not in REASONS:
            raise ValueError(f"unknown decode reason {reason!r}")
        self.reason = reason
        self.detail = detail
        super().__init__(uri, f"{reason}: {detail}")


class DecodeConfig(BaseModel):
    """Limits and target format of decoding. Every field changes results, so all are task inputs."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    sample_rate: int = Field(default=22050, ge=8000, le=96000, description="Target rate after resampling.")
    max_bytes: int = Field(default=256 * 1024**2, ge=1, description="Files over this size are refused.")
    max_duration_s: float = Field(default=1800.0, gt=0, description="Longer tracks are refused from the header.")
    min_source_rate: int = Field(default=8000, ge=1, description="Lowest accepted file sample rate.")
    max_source_rate: int = Field(default=192000, ge=1, description="Highest accepted file sample rate.")
    max_channels: int = Field(default=2, ge=1, le=64, description="Files with more channels are refused.")
    resample_quality: Literal["VHQ", "HQ", "MQ"] = Field(default="HQ", description="soxr quality recipe.")
    length_tolerance: float = Field(
        default=0.002,
        ge=0,
        le=0.5,
        description="Allowed relative gap between header and decoded length (MP3: plus encoder delay/padding).",
    )
    allow_extension_mismatch: bool = Field(
        default=False, description="Accept a supported container under another supported extension."
    )

    @model_validator(mode="after")
    def _rates(self) -> DecodeConfig:
        if self.min_source_rate > self.max_source_rate:
            raise ValueError("min_source_rate must be <= max_source_rate")
        return self


@dataclass(frozen=True)
class DecodedAudio:
    """A decoded track: mono at the target rate, and mono at the file's own rate (for clipping/DC checks)."""

    samples: np.ndarray
    native: np.ndarray
    sample_rate: int
    source_rate: int
    channels: int
    format: str
    subtype: str
    source_frames: int

    @property
    def duration_s(self) -> float:
        return self.source_frames / self.source_rate


def sniff_format(head: bytes) -> str | None:
    """The container named by a file's first bytes (at least 12), or None when it is not one we decode."""
    if len(head) >= 12 and head[:4] in (b"RIFF", b"RF64") and head[8:12] == b"WAVE":
        return "WAV"
    if head[:4] == b"fLaC":
        return "FLAC"
    if head[:4] == b"OggS":
        return "OGG"
    if head[:3] == b"ID3":
        return "MP3"
    # An MPEG audio frame header: 11 sync bits, layer III (bits 01), a bitrate index that is not "bad".
    if len(head) >= 3 and head[0] == 0xFF and (head[1] & 0xE0) == 0xE0 and (head[1] & 0x06) == 0x02:
        return "MP3" if (head[2] >> 4) != 0x0F else None
    return None


def _describe_content(head: bytes) -> str:
    if not head:
        return "no bytes"
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError:
        return "unrecognised binary data"
    return "text" if text.isprintable() or "\n" in text else "unrecognised data"


def check_file(path: Path, cfg: DecodeConfig) -> str:
    """Run the checks that need no decoding; returns the sniffed container or raises AudioDecodeError."""
    uri = str(path)
    try:
        st = path.stat()
    except FileNotFoundError:
        raise AudioDecodeError(uri, "not_found", "no such file") from None
    except OSError as exc:
        raise AudioDecodeError(uri, "decode_error", f"cannot stat: {exc.strerror}") from None
    if not stat.S_ISREG(st.st_mode):
        raise AudioDecodeError(uri, "not_regular_file", "refusing to read a FIFO, device or directory")
    if st.st_size == 0:
        raise AudioDecodeError(uri, "empty", "0 bytes")
    if st.st_size > cfg.max_bytes:
        raise AudioDecodeError(uri, "too_large", f"{st.st_size} bytes > limit {cfg.max_bytes}")
    with open(path, "rb") as fh:
        head = fh.read(64)
        if head[:3] == b"ID3":
            _check_after_id3(uri, fh, st.st_size)
    fmt = sniff_format(head)
    ext = path.suffix.lower()
    if fmt is None:
        claimed = f"extension {ext!r}" if ext else "no extension"
        raise AudioDecodeError(uri, "unknown_format", f"content is {_describe_content(head)}, {claimed}")
    if ext not in EXTENSIONS[fmt] and not (cfg.allow_extension_mismatch and ext in AUDIO_EXTENSIONS):
        raise AudioDecodeError(uri, "format_mismatch", f"content is {fmt}, extension is {ext or 'missing'!r}")
    return fmt


def _check_after_id3(uri: str, fh: BinaryIO, size: int) -> None:
    """Refuse a file whose ID3v2 tags are followed by no audio, or by a container other than MP3.

    libsndfile answers a tag-only file with "not a regular file (possibly a pipe?)", and a FLAC or
    WAV behind an ID3 tag with "format not recognised": the real reason is said here instead.
    """
    pos = 0
    while True:
        fh.seek(pos)
        length = id3v2_length(fh.read(10))
        if not length:
            break
        pos += length
    if pos > size:
        raise AudioDecodeError(
            uri, "truncated", f"the file ends inside its ID3v2 tag ({pos} bytes declared, {size} present), no audio"
        )
    fh.seek(pos)
    while chunk := fh.read(1 << 16):
        rest = chunk.lstrip(b"\x00")
        if rest:
            after = sniff_format(rest[:64] + fh.read(64))
            if after in ("WAV", "FLAC", "OGG"):
                raise AudioDecodeError(
                    uri, "unknown_format", f"{after} data behind an ID3v2 tag of {pos} bytes (ID3 tags belong to MP3)"
                )
            return
    raise AudioDecodeError(uri, "no_audio", f"an ID3v2 tag of {pos} bytes and no audio after it")


def _check_structure(uri: str, fmt: str, data: bytes) -> Mp3Stream | None:
    """Refuse an MP3 or Ogg file whose frames or pages show it was cut; returns the MP3's frame walk."""
    if fmt == "OGG":
        ogg = scan_ogg(data)
        if ogg.cut is not None:
            page, present, needed = ogg.cut
            raise AudioDecodeError(
                uri, "truncated", f"the Ogg stream ends inside page {page}: {present} of its {needed} bytes are present"
            )
        if ogg.unfinished:
            raise AudioDecodeError(
                uri,
                "truncated",
                f"the Ogg stream stops after {ogg.pages} pages (granule position {ogg.last_granule}) without its "
                "end-of-stream page: the rest of the file is missing",
            )
        return None
    if fmt != "MP3":
        return None
    mp3 = scan_mp3(data)
    if mp3 is None:
        if free_format(data):
            return None  # no frame lengths to walk: libsndfile's own length is the only reference
        raise AudioDecodeError(uri, "unknown_format", "no MPEG Layer III frame in the file")
    if mp3.cut is not None:
        frame, present, needed = mp3.cut
        raise AudioDecodeError(
            uri, "truncated", f"the MP3 stream ends inside frame {frame}: {present} of its {needed} bytes are present"
        )
    # One frame of slack: encoders differ on whether the count includes the header's own frame.
    if mp3.declared_frames is not None and mp3.frames < mp3.declared_frames - 1:
        declared = mp3.declared_frames
        raise AudioDecodeError(
            uri, "truncated", f"the {mp3.header} header declares {declared} frames, the file holds {mp3.frames}"
        )
    if mp3.frames == 0:
        raise AudioDecodeError(uri, "no_audio", f"an MP3 with a {mp3.header or 'lone'} header frame and no audio frame")
    return mp3


def _wav_data_gap(path: Path) -> tuple[int, int] | None:
    """For a RIFF/WAVE file: (bytes the ``data`` chunk declares, bytes present), or None when unknowable.

    libsndfile quietly clamps a ``data`` chunk that claims more bytes than the file holds, so a
    truncated WAV would decode as a shorter track; the header's claim is read here instead.
    RF64 and streaming placeholders (size 0 or 0xFFFFFFFF) are not judged.
    """
    size = path.stat().st_size
    with open(path, "rb") as fh:
        riff = fh.read(12)
        if riff[:4] != b"RIFF":
            return None
        pos = 12
        while pos + 8 <= size:
            fh.seek(pos)
            head = fh.read(8)
            chunk_id, chunk_size = head[:4], int.from_bytes(head[4:8], "little")
            if chunk_id == b"data":
                if chunk_size in (0, 0xFFFFFFFF):
                    return None
                return chunk_size, size - pos - 8
            pos += 8 + chunk_size + (chunk_size & 1)
    return None


def _mono(data: np.ndarray) -> np.ndarray:
    if data.shape[1] == 1:
        return np.ascontiguousarray(data[:, 0])
    # A mat-vec, not ``mean(axis=1)``: numpy reduces a (frames, 2) array row by row, ~20x slower.
    weights = np.full(data.shape[1], 1.0 / data.shape[1], dtype=np.float32)
    mono: np.ndarray = data @ weights
    return mono


def decode_file(path: str | Path, cfg: DecodeConfig | None = None) -> DecodedAudio:
    """Check, decode, mix down and resample one local file.

    Args:
        path: A local file path (remote objects are copied to a local temp file by the caller).
        cfg: Limits and target rate; defaults to :class:`DecodeConfig`'s defaults.

    Returns:
        The decoded track.

    Raises:
        AudioDecodeError: the file is refused; ``reason`` says why.
    """
    import soundfile as sf
    import soxr

    cfg = cfg or DecodeConfig()
    p = Path(path)
    uri = str(p)
    fmt = check_file(p, cfg)
    mp3 = _check_structure(uri, fmt, p.read_bytes()) if fmt in ("MP3", "OGG") else None
    try:
        info = sf.info(str(p))
    except (sf.LibsndfileError, RuntimeError) as exc:
        raise AudioDecodeError(uri, "decode_error", f"{fmt} header unreadable: {exc}") from None
    if info.channels > cfg.max_channels:
        raise AudioDecodeError(uri, "too_many_channels", f"{info.channels} channels > limit {cfg.max_channels}")
    if not cfg.min_source_rate <= info.samplerate <= cfg.max_source_rate:
        raise AudioDecodeError(
            uri,
            "sample_rate_out_of_range",
            f"{info.samplerate} Hz outside [{cfg.min_source_rate}, {cfg.max_source_rate}] Hz",
        )
    if fmt == "WAV":
        gap_bytes = _wav_data_gap(p)
        if gap_bytes is not None and gap_bytes[1] < gap_bytes[0]:
            raise AudioDecodeError(
                uri, "truncated", f"WAV data chunk declares {gap_bytes[0]} bytes, the file holds {gap_bytes[1]}"
            )
    header_frames = int(info.frames)
    if header_frames <= 0:
        raise AudioDecodeError(uri, "truncated", f"{fmt} stream has no decodable length (its end is missing)")
    if header_frames / info.samplerate > cfg.max_duration_s:
        raise AudioDecodeError(
            uri, "too_long", f"{header_frames / info.samplerate:.1f} s > limit {cfg.max_duration_s:.1f} s"
        )
    try:
        data, sr = sf.read(str(p), dtype="float32", always_2d=True)
    except (sf.LibsndfileError, RuntimeError) as exc:
        raise AudioDecodeError(
            uri, "truncated", f"{fmt} stream ends before the {header_frames} frames its header announces ({exc})"
        ) from None
    got = int(data.shape[0])
    if got == 0:
        raise AudioDecodeError(uri, "truncated", f"header announces {header_frames} frames, none decode")
    if mp3 is not None:
        # libsndfile's MP3 length is an estimate without a Xing/Info header: the frames are the reference,
        # and the encoder's delay and padding (removed when a LAME tag says how much) may be missing.
        slack = cfg.length_tolerance * mp3.samples
        if not mp3.samples - MAX_ENCODER_GAP - slack <= got <= mp3.samples + slack:
            raise AudioDecodeError(
                uri,
                "length_mismatch",
                f"its {mp3.frames} frames hold {mp3.samples} samples, {got} decode (encoder delay and padding "
                f"explain at most {MAX_ENCODER_GAP} fewer)",
            )
    elif abs(got - header_frames) / header_frames > cfg.length_tolerance:
        # Cut short or lying: the two cannot be told apart here, and both are refused.
        raise AudioDecodeError(uri, "length_mismatch", f"header announces {header_frames} frames, {got} decode")
    finite = np.isfinite(data)
    if not finite.all():
        bad = int(data.size - np.count_nonzero(finite))
        raise AudioDecodeError(uri, "non_finite", f"{bad} of {data.size} samples are NaN or Inf")
    native = _mono(data)
    if sr == cfg.sample_rate:
        samples = native
    else:
        samples = soxr.resample(native, sr, cfg.sample_rate, quality=cfg.resample_quality).astype(
            np.float32, copy=False
        )
    return DecodedAudio(
        samples=samples,
        native=native,
        sample_rate=cfg.sample_rate,
        source_rate=int(sr),
        channels=int(info.channels),
        format=fmt,
        subtype=str(info.subtype),
        source_frames=got,
    )
