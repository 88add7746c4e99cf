"""Where an MP3 or Ogg stream really ends: the container structure libsndfile does not judge.

libsndfile's length cannot reveal a cut MP3 or Ogg file:

- An MP3 without a Xing/Info/VBRI header stores no length. libsndfile (mpg123) estimates one from
  the file size and the first frame's size, which is off by up to one padding byte per frame
  (0.47% at 48 kbps, 44.1 kHz), and a file cut short estimates a shorter length that then decodes
  exactly. With such a header, the decoded length is exact (encoder delay and padding removed).
- An Ogg file's length is the granule position of its last page: a cut file's last page is simply
  an earlier one, and it decodes with no error.

So both are walked here, frame by frame and page by page, from the bytes: an MP3 that ends inside
a frame or holds fewer frames than its header declares, and an Ogg file that ends inside a page or
without its end-of-stream page, is cut. The walk reads headers only (no audio is decoded) and is
linear in the number of frames or pages.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

#: Layer III bitrates (kbit/s) by index: MPEG-1, then MPEG-2 and 2.5.
_BITRATES: Final = {
    1: (0, 32, 40, 48, 56, 64, 80, 96, 112, 128, 160, 192, 224, 256, 320),
    2: (0, 8, 16, 24, 32, 40, 48, 56, 64, 80, 96, 112, 128, 144, 160),
}
#: Sample rates by version bits (3: MPEG-1, 2: MPEG-2, 0: MPEG-2.5) and index.
_RATES: Final = {3: (44100, 48000, 32000), 2: (22050, 24000, 16000), 0: (11025, 12000, 8000)}
#: The most samples the LAME tag can say the encoder added: 12-bit delay plus 12-bit padding.
MAX_ENCODER_GAP: Final = 2 * 4095


@dataclass(frozen=True)
class MpegFrame:
    """One MPEG-1/2/2.5 Layer III frame header."""

    version: int  # version bits: 3 MPEG-1, 2 MPEG-2, 0 MPEG-2.5
    sample_rate: int
    length: int  # bytes, header included
    samples: int  # per channel
    mono: bool

    def same_stream(self, other: MpegFrame) -> bool:
        return self.version == other.version and self.sample_rate == other.sample_rate


def mpeg_frame(data: bytes, pos: int) -> MpegFrame | None:
    """The Layer III frame header at ``pos``, or None (no sync, reserved values, free format)."""
    if pos + 4 > len(data) or data[pos] != 0xFF or (data[pos + 1] & 0xE0) != 0xE0:
        return None
    b1, b2, b3 = data[pos + 1], data[pos + 2], data[pos + 3]
    version, layer = (b1 >> 3) & 3, (b1 >> 1) & 3
    bitrate_index, rate_index = b2 >> 4, (b2 >> 2) & 3
    if version == 1 or layer != 1 or bitrate_index in (0, 15) or rate_index == 3:
        return None
    rate = _RATES[version][rate_index]
    bitrate = _BITRATES[1 if version == 3 else 2][bitrate_index] * 1000
    per_frame = 1152 if version == 3 else 576
    length = (per_frame // 8) * bitrate // rate + ((b2 >> 1) & 1)
    return MpegFrame(version=version, sample_rate=rate, length=length, samples=per_frame, mono=(b3 >> 6) == 3)


def free_format(data: bytes) -> bool:
    """Whether the stream after the leading tags starts with a free-format Layer III frame (no bitrate)."""
    pos = leading_tags(data)[1]
    head = data[pos : pos + 3]
    return (
        len(head) == 3
        and head[0] == 0xFF
        and (head[1] & 0xE0) == 0xE0
        and (head[1] >> 1) & 3 == 1
        and (head[1] >> 3) & 3 != 1
        and head[2] >> 4 == 0
    )


def id3v2_length(data: bytes, pos: int = 0) -> int:
    """Bytes of the ID3v2 tag at ``pos`` (header, body and footer), or 0 when there is none."""
    if data[pos : pos + 3] != b"ID3" or len(data) < pos + 10:
        return 0
    size_bytes = data[pos + 6 : pos + 10]
    if any(b & 0x80 for b in size_bytes):
        return 0
    size = size_bytes[0] << 21 | size_bytes[1] << 14 | size_bytes[2] << 7 | size_bytes[3]  # "syncsafe"
    footer = 10 if data[pos + 5] & 0x10 else 0
    return 10 + size + footer


def leading_tags(data: bytes) -> tuple[int, int]:
    """(bytes of the ID3v2 tags at the start, where the content after them and any zero padding starts)."""
    pos = 0
    while n := id3v2_length(data, pos):
        pos += n
    tags = min(pos, len(data))
    while pos < len(data) and data[pos] == 0:
        pos += 1
    return tags, min(pos, len(data))


def _trailing_tags(data: bytes) -> int:
    """Where the audio ends: before an ID3v1 tag and an APEv2 tag at the end of the file."""
    end = len(data)
    if end >= 128 and data[end - 128 : end - 125] == b"TAG":
        end -= 128
    if end >= 32 and data[end - 32 : end - 24] == b"APETAGEX":
        size = int.from_bytes(data[end - 20 : end - 16], "little")
        has_header = bool(int.from_bytes(data[end - 12 : end - 8], "little") & 0x80000000)
        end = max(0, end - size - (32 if has_header else 0))
    return end


@dataclass(frozen=True)
class Mp3Stream:
    """What walking an MP3 file's frames found."""

    tag_bytes: int  # leading ID3v2 tags
    frames: int  # complete audio frames (a Xing/Info/VBRI header frame is not audio)
    samples_per_frame: int
    sample_rate: int
    header: str  # "Xing", "Info", "VBRI" or "" (none: no stored length)
    declared_frames: int | None  # audio frames the header declares
    cut: tuple[int, int, int] | None  # (frame number, bytes present, bytes it needs): the file ends inside it
    junk_bytes: int  # bytes between frames that are no frame (skipped, as decoders do)

    @property
    def samples(self) -> int:
        """Samples per channel the frames hold, before encoder delay and padding are removed."""
        return self.frames * self.samples_per_frame


def _vbr_header(data: bytes, pos: int, frame: MpegFrame) -> tuple[str, int | None]:
    """The Xing/Info or VBRI header in the frame at ``pos``: its name and declared frame count."""
    side = (17 if frame.mono else 32) if frame.version == 3 else (9 if frame.mono else 17)  # side information
    at = pos + 4 + side
    name = data[at : at + 4]
    if name in (b"Xing", b"Info") and at + 8 <= pos + frame.length:
        flags = int.from_bytes(data[at + 4 : at + 8], "big")
        frames = int.from_bytes(data[at + 8 : at + 12], "big") if flags & 1 else None
        return name.decode(), frames
    at = pos + 4 + 32
    if data[at : at + 4] == b"VBRI":
        return "VBRI", int.from_bytes(data[at + 14 : at + 18], "big")
    return "", None


def _resync(data: bytes, pos: int, end: int, first: MpegFrame | None) -> int | None:
    """The next position from ``pos`` where a frame of the stream starts and is followed by another."""
    while (pos := data.find(b"\xff", pos, end)) != -1:
        frame = mpeg_frame(data, pos)
        if frame is not None and (first is None or frame.same_stream(first)):
            after = pos + frame.length
            nxt = mpeg_frame(data, after) if after < end else None
            if after == end or (nxt is not None and nxt.same_stream(frame)):
                return pos
        pos += 1
    return None


def scan_mp3(data: bytes) -> Mp3Stream | None:
    """Walk the frames of an MP3 file; None when there is no Layer III frame at all after its tags."""
    tags, start = leading_tags(data)
    end = _trailing_tags(data)
    pos = start if mpeg_frame(data, start) is not None else _resync(data, start, end, None)
    if pos is None:
        return None
    junk = pos - start
    first: MpegFrame | None = None
    header, declared = "", None
    frames = 0
    cut: tuple[int, int, int] | None = None
    while pos < end:
        frame = mpeg_frame(data, pos)
        if frame is None or (first is not None and not frame.same_stream(first)):
            nxt = _resync(data, pos + 1, end, first)
            if nxt is None:
                if end - pos < 4 and data[pos] == 0xFF and first is not None:
                    cut = (frames + 1, end - pos, first.length)  # the file ends inside a frame header
                else:
                    junk += end - pos
                break
            junk += nxt - pos
            pos = nxt
            continue
        if pos + frame.length > end:
            cut = (frames + 1, end - pos, frame.length)
            break
        if first is None:
            first = frame
            header, declared = _vbr_header(data, pos, frame)
            if not header:
                frames += 1
        else:
            frames += 1
        pos += frame.length
    if first is None:
        return None
    return Mp3Stream(
        tag_bytes=tags,
        frames=frames,
        samples_per_frame=first.samples,
        sample_rate=first.sample_rate,
        header=header,
        declared_frames=declared,
        cut=cut,
        junk_bytes=junk,
    )


@dataclass(frozen=True)
class OggStream:
    """What walking an Ogg file's pages found."""

    pages: int
    unfinished: tuple[int, ...]  # serial numbers of logical streams with no end-of-stream page
    last_granule: int  # granule position of the last complete page
    cut: tuple[int, int, int] | None  # (page number, bytes present, bytes it needs): the file ends inside it
    junk_bytes: int


def scan_ogg(data: bytes) -> OggStream:
    """Walk the pages of an Ogg file (headers only; CRCs are not checked)."""
    pos, pages, junk = 0, 0, 0
    begun: dict[int, bool] = {}  # serial -> end-of-stream page seen
    granule = 0
    cut: tuple[int, int, int] | None = None
    size = len(data)
    while pos < size:
        if data[pos : pos + 4] != b"OggS":
            nxt = data.find(b"OggS", pos + 1)
            if nxt == -1:
                if b"OggS".startswith(data[pos:]):
                    cut = (pages + 1, size - pos, 27)
                else:
                    junk += size - pos
                break
            junk += nxt - pos
            pos = nxt
            continue
        if pos + 27 > size:
            cut = (pages + 1, size - pos, 27)
            break
        segments = data[pos + 26]
        if pos + 27 + segments > size:
            cut = (pages + 1, size - pos, 27 + segments)
            break
        length = 27 + segments + sum(data[pos + 27 : pos + 27 + segments])
        if pos + length > size:
            cut = (pages + 1, size - pos, length)
            break
        flags = data[pos + 5]
        serial = int.from_bytes(data[pos + 14 : pos + 18], "little")
        page_granule = int.from_bytes(data[pos + 6 : pos + 14], "little", signed=True)
        if page_granule >= 0:
            granule = page_granule
        begun.setdefault(serial, False)
        if flags & 0x04:
            begun[serial] = True
        pages += 1
        pos += length
    return OggStream(
        pages=pages,
        unfinished=tuple(s for s, ended in begun.items() if not ended),
        last_granule=granule,
        cut=cut,
        junk_bytes=junk,
    )
