"""What an MP4 file holds, read without decoding more than its first frame (PyAV for the codec
facts, a walk over the top-level ISO BMFF boxes for completeness)."""

from __future__ import annotations

import datetime as dt
import struct
from dataclasses import dataclass
from fractions import Fraction
from io import BytesIO

import av
from av.sidedata.sidedata import Type

from broker.dicomize.common import DicomizeError

# PS3.5 8.2.12, MP4 column: codec → (sampling rates, channel counts, maximum bit rate)
AUDIO_RULES = {
    "aac": ({48_000}, {2, 6}, 640_000),
    "mp3": ({32_000, 44_100, 48_000}, {1, 2}, 320_000),
    "mp2": ({32_000, 44_100, 48_000}, {2}, 384_000),
}
STRIP_AUDIO = "ffmpeg -i in.mp4 -an -c copy out.mp4"


@dataclass(frozen=True)
class Video:
    width: int
    height: int
    frames: int
    rate: Fraction
    profile: str  # as FFmpeg names it: "High", "Main", "Constrained Baseline", ...
    level: int  # level_idc: 41 means Level 4.1; 0 when the stream does not say
    pix_fmt: str
    frame_packed: bool  # a frame packing arrangement SEI: stereo (3D) video in one picture
    recorded: dt.datetime | None
    audio: tuple[int, ...]  # the channel count of each audio track


def check_boxes(data: bytes) -> None:
    """The file is an ISO BMFF (MP4) file and no box runs past its end (a truncated copy)."""
    if not data:
        raise DicomizeError("the file is empty")
    if data[4:8] != b"ftyp":
        raise DicomizeError("not an MP4: the file does not start with an 'ftyp' box")
    if data[8:12] == b"qt  ":
        raise DicomizeError("a QuickTime movie, not an MP4 (PS3.5 8.2.7 allows MP4 or MPEG-TS)")
    seen, pos = set(), 0
    while pos < len(data):
        if len(data) - pos < 8:
            raise DicomizeError("the MP4 is truncated: it ends inside a box header")
        size, kind = struct.unpack_from(">I4s", data, pos)
        header = 8
        if size == 1:  # a 64-bit size follows the type
            if len(data) - pos < 16:
                raise DicomizeError("the MP4 is truncated: it ends inside a box header")
            (size,) = struct.unpack_from(">Q", data, pos + 8)
            header = 16
        elif size == 0:  # the last box runs to the end of the file
            size = len(data) - pos
        name = kind.decode("latin-1")
        if size < header:
            raise DicomizeError(f"not a valid MP4: box '{name}' has an impossible size {size}")
        if pos + size > len(data):
            missing = pos + size - len(data)
            raise DicomizeError(f"the MP4 is truncated: box '{name}' misses {missing} bytes")
        seen.add(name)
        pos += size
    for needed in ("moov", "mdat"):
        if needed not in seen:
            raise DicomizeError(f"the MP4 is incomplete: it has no '{needed}' box")


def probe(data: bytes) -> Video:
    """The facts DICOM needs about the one H.264 video track; DicomizeError says what is wrong."""
    check_boxes(data)
    try:
        with av.open(BytesIO(data), mode="r") as c:
            return _probe(c, len(data))
    except av.FFmpegError as e:
        raise DicomizeError(f"the MP4 cannot be read: {e}") from None


def _probe(c: av.container.InputContainer, size: int) -> Video:
    videos = c.streams.video
    if not videos:
        raise DicomizeError("the MP4 has no video track")
    if len(videos) > 1:
        raise DicomizeError(f"the MP4 has {len(videos)} video tracks; DICOM holds one")
    v = videos[0]
    cc = v.codec_context
    if cc.name != "h264":
        raise DicomizeError(f"the video track is {cc.name}, not H.264 (MPEG-4 AVC)")
    audio = tuple(_audio(a) for a in c.streams.audio)
    frames = 0
    for packet in c.demux(v):
        if packet.size == 0:
            continue  # the demuxer's end-of-stream marker
        if packet.pos is not None and packet.pos + packet.size > size:
            raise DicomizeError("the MP4 is truncated: frame data runs past the end of the file")
        frames += 1
    if v.frames and frames != v.frames:
        raise DicomizeError(f"the MP4 is truncated: {frames} of its {v.frames} frames are there")
    c.seek(0)
    try:
        first = next(c.decode(v))
    except (StopIteration, av.FFmpegError) as e:
        raise DicomizeError(f"the video does not decode: {e or 'no frame'}") from None
    rate = v.average_rate or v.guessed_rate
    if not rate:
        raise DicomizeError("the video track does not say its frame rate")
    return Video(
        width=cc.width,
        height=cc.height,
        frames=frames,
        rate=Fraction(rate),
        profile=cc.profile or "",
        level=max(cc.level or 0, 0),
        pix_fmt=cc.pix_fmt or "",
        frame_packed=Type.STEREO3D in first.side_data,
        recorded=_recorded(c.metadata.get("creation_time", "")),
        audio=audio,
    )


def _audio(stream: av.audio.stream.AudioStream) -> int:
    """PS3.5 8.2.12: what audio an MP4 inside a DICOM object may carry."""
    cc = stream.codec_context
    name, rate, channels = cc.name, cc.sample_rate, cc.layout.nb_channels
    if name not in AUDIO_RULES:
        raise DicomizeError(
            f"the audio track is {name}; PS3.5 8.2.12 allows AAC, MP3 or MPEG-1 Layer II in MP4; "
            f"remove it without re-encoding the video: {STRIP_AUDIO}"
        )
    rates, counts, max_bits = AUDIO_RULES[name]
    if rate not in rates or channels not in counts or (cc.bit_rate or 0) > max_bits:
        raise DicomizeError(
            f"the {name} audio track ({rate} Hz, {channels} channels, {cc.bit_rate or '?'} bit/s) "
            f"is outside PS3.5 8.2.12 ({sorted(rates)} Hz, {sorted(counts)} channels, "
            f"≤ {max_bits} bit/s); remove it without re-encoding the video: {STRIP_AUDIO}"
        )
    return channels


def _recorded(text: str) -> dt.datetime | None:
    """The MP4 creation time (UTC by ISO/IEC 14496-12), in local time; None if absent or zero."""
    try:
        when = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    if when.year < 1971:  # muxers that do not know write 0, i.e. 1904-01-01
        return None
    return (when if when.tzinfo else when.replace(tzinfo=dt.UTC)).astimezone()
