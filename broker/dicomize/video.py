"""MP4 (H.264) → Video Photographic or Video Endoscopic Image Storage, the file kept byte for byte.

PS3.5 8.2.7-8.2.9: one fragment holds the whole bit stream in its MP4 container, so the video is
never re-encoded; the transfer syntax says which H.264 profile and level a receiver must decode.
"""

from __future__ import annotations

import math

from pydicom.dataset import Dataset
from pydicom.encaps import encapsulate
from pydicom.tag import Tag
from pydicom.uid import MPEG4HP41, MPEG4HP42STEREO, MPEG4HP422D, MPEG4HP423D, UID

from broker.dicomize.common import DicomizeError, Placement, base, code, file_meta
from broker.dicomize.mp4 import Video, probe

VIDEO_PHOTOGRAPHIC = "1.2.840.10008.5.1.4.1.1.77.1.4.1"
VIDEO_ENDOSCOPIC = "1.2.840.10008.5.1.4.1.1.77.1.1.1"
# A High Profile decoder decodes these too (H.264 A.2.4); plain Baseline may use FMO/ASO, which
# High Profile lacks, and High 10 / 4:2:2 / 4:4:4 exceed the 8-bit 4:2:0 DICOM requires.
HIGH_DECODABLE = {"Constrained Baseline", "Main", "High"}
STEREO_HIGH = "Stereo High"
# H.264 Table A-1: level_idc → (MaxMBPS macroblocks/s, MaxFS macroblocks per frame)
LEVEL_LIMITS = {41: (245_760, 8_192), 42: (522_240, 8_704)}
AMBIENT_ROOM = ("109112", "DCM", "Ambient room environment")  # CID 3000: a camera's microphone
# VL Image module: a video must name its anatomic region (type 1). The uploader does not tell us,
# so by default we say SNOMED's root concept, "a body structure", rather than guess a part.
BODY_STRUCTURE = ("123037004", "SCT", "Body structure")


def video(
    data: bytes,
    place: Placement,
    number: int = 1,
    *,
    endoscopic: bool = False,
    region: tuple[str, str, str] = BODY_STRUCTURE,
) -> Dataset:
    """The MP4 as a video object; `region` (code value, scheme, meaning) when it is known."""
    v = probe(data)
    ts = transfer_syntax(v)
    sop, modality = (VIDEO_ENDOSCOPIC, "ES") if endoscopic else (VIDEO_PHOTOGRAPHIC, "XC")
    ds = base(sop, modality, place, number)
    if v.recorded is not None:
        ds.ContentDate = ds.AcquisitionDate = v.recorded.strftime("%Y%m%d")
        ds.ContentTime = ds.AcquisitionTime = v.recorded.strftime("%H%M%S")
        ds.AcquisitionDateTime = v.recorded.strftime("%Y%m%d%H%M%S")
    ds.ImageType = ["ORIGINAL", "PRIMARY"]
    ds.Laterality = ""  # type 2C: unknown unless the device says
    ds.PatientOrientation = ""
    ds.AnatomicRegionSequence = [code(*region)]
    ds.AcquisitionContextSequence = []
    ds.BurnedInAnnotation = "NO"
    ds.LossyImageCompression = "01"  # H.264 as the camera recorded it
    ds.LossyImageCompressionMethod = "ISO_14496_10"
    _cine(ds, v)
    if ts in (MPEG4HP423D, MPEG4HP42STEREO):
        ds.StereoPairsPresent = "YES"  # PS3.5 Table 8-6
    # PS3.5 8.2.7: fixed by the transfer syntax; Rows and Columns are the coded picture's
    ds.SamplesPerPixel = 3
    ds.PhotometricInterpretation = "YBR_PARTIAL_420"
    ds.PlanarConfiguration = 0
    ds.BitsAllocated = ds.BitsStored = 8
    ds.HighBit = 7
    ds.PixelRepresentation = 0
    ds.Rows, ds.Columns = v.height, v.width
    # one fragment, empty Basic Offset Table; encapsulate() pads the odd byte PS3.5 A.4 allows
    ds.PixelData = encapsulate([data], has_bot=False)
    ds["PixelData"].VR = "OB"
    ds["PixelData"].is_undefined_length = True
    file_meta(ds, ts)
    return ds


def _cine(ds: Dataset, v: Video) -> None:
    """Multi-frame and Cine modules: frame count and timing as the stream states them."""
    ds.NumberOfFrames = v.frames
    ds.FrameIncrementPointer = Tag("FrameTime")
    ds.FrameTime = f"{1000 / float(v.rate):.6g}"  # ms
    ds.CineRate = ds.RecommendedDisplayFrameRate = max(1, round(v.rate))
    ds.EffectiveDuration = f"{v.frames / float(v.rate):.6g}"  # s
    ds.PreferredPlaybackSequencing = 0  # looping
    if v.audio:
        ds.MultiplexedAudioChannelsDescriptionCodeSequence = [
            _audio_channel(i, channels) for i, channels in enumerate(v.audio, start=1)
        ]


def _audio_channel(number: int, channels: int) -> Dataset:
    item = Dataset()
    item.ChannelIdentificationCode = str(number)
    item.ChannelMode = "MONO" if channels == 1 else "STEREO"
    item.ChannelSourceSequence = [code(*AMBIENT_ROOM)]
    return item


def transfer_syntax(v: Video) -> UID:
    """PS3.5 8.2.7-8.2.9: the lowest H.264 transfer syntax whose profile and level fit.

    BD-compatible (.103) is never claimed: every stream it admits is also valid High Profile /
    Level 4.1, and the Blu-ray rules beyond size and rate cannot be checked from the file.
    """
    if v.profile not in HIGH_DECODABLE and v.profile != STEREO_HIGH:
        raise DicomizeError(
            f"H.264 profile {v.profile or 'unknown'}: DICOM's H.264 transfer syntaxes need "
            "High Profile or one it contains (Main, Constrained Baseline)"
        )
    if v.pix_fmt not in ("yuv420p", "yuvj420p"):
        raise DicomizeError(f"pixels are {v.pix_fmt}; PS3.5 8.2.7 requires 8-bit 4:2:0")
    level = next((lv for lv in sorted(LEVEL_LIMITS) if _fits(v, lv)), None)
    if level is None:
        said = f"level {v.level / 10:g}, " if v.level else ""
        raise DicomizeError(
            f"the video ({said}{v.width}x{v.height} at {float(v.rate):.4g} frames/s) exceeds "
            "H.264 Level 4.2, the highest DICOM defines for H.264"
        )
    if v.profile == STEREO_HIGH:
        return MPEG4HP42STEREO
    if v.frame_packed:
        return MPEG4HP423D
    return MPEG4HP41 if level == 41 else MPEG4HP422D


def _fits(v: Video, level: int) -> bool:
    """The stream claims at most this level and its size and rate keep within it."""
    max_mbps, max_fs = LEVEL_LIMITS[level]
    wide, high = math.ceil(v.width / 16), math.ceil(v.height / 16)
    mbs = wide * high
    return (
        v.level <= level
        and mbs <= max_fs
        and max(wide, high) ** 2 <= 8 * max_fs
        and mbs * float(v.rate) <= max_mbps
    )
