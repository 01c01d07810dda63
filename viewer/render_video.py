"""Frames of MPEG-2, H.264 and HEVC video objects, decoded with PyAV (pydicom decodes no video)."""

from __future__ import annotations

from io import BytesIO

import av
from PIL import Image
from pydicom.dataset import Dataset
from pydicom.encaps import generate_frames

from viewer.render import RenderError

# PS3.5 Table A-1: the video transfer syntaxes, each with its fragmentable twin (".1")
VIDEO_SYNTAXES = {f"1.2.840.10008.1.2.4.{n}{twin}" for n in range(100, 109) for twin in ("", ".1")}


def is_video(ds: Dataset) -> bool:
    meta = getattr(ds, "file_meta", None)
    return str(getattr(meta, "TransferSyntaxUID", "")) in VIDEO_SYNTAXES


def frame(ds: Dataset, number: int) -> Image.Image:
    """Frame `number` (1-based, in display order) of the encapsulated stream."""
    # the whole stream (MP4, MPEG-TS, ...) is one encapsulated frame, however many fragments
    stream = next(generate_frames(ds.PixelData, number_of_frames=1))
    seen = 0
    try:
        with av.open(BytesIO(stream), mode="r") as c:
            for seen, picture in enumerate(c.decode(video=0), start=1):
                if seen == number:
                    return picture.to_image()
    except av.FFmpegError as e:
        raise RenderError(f"the video cannot be decoded: {e}") from None
    raise RenderError(f"frame {number} out of range: the video has {seen}")
