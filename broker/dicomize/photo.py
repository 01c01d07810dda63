"""Photos (JPEG, PNG, TIFF) → VL Photographic Image Storage.

A baseline JPEG is kept byte for byte (JPEG Baseline transfer syntax): re-compressing a clinical
photo would lose detail for nothing. Anything else (PNG, TIFF, a JPEG that is not SOF0 baseline
or not in a sampling VL Photographic allows, or one whose EXIF orientation says it must be turned)
is decoded once and stored uncompressed, 8 bits per sample as the IOD requires.
"""

from __future__ import annotations

import datetime as dt
from io import BytesIO

import numpy as np
from PIL import Image, ImageOps, JpegImagePlugin, UnidentifiedImageError
from pydicom.dataset import Dataset
from pydicom.encaps import encapsulate
from pydicom.uid import ExplicitVRLittleEndian, JPEGBaseline8Bit

from broker.dicomize.common import DicomizeError, Placement, base, file_meta

VL_PHOTOGRAPHIC = "1.2.840.10008.5.1.4.1.1.77.1.4"
_ORIENTATION = 0x0112
_EXIF_IFD = 0x8769
_DATETIME_ORIGINAL = 0x9003
MAX_SIDE = 65535  # Rows and Columns are US (PS3.5 6.2)
_SOF_BASELINE = 0xC0
# JPEG markers C0-CF start a frame (SOFn), except DHT, JPG and DAC
_NOT_SOF = (0xC4, 0xC8, 0xCC)
_STANDALONE = (0x01, *range(0xD0, 0xD9))  # TEM, RSTn, SOI: no length field


def _open(data: bytes) -> Image.Image:
    if not data:
        raise DicomizeError("the file is empty")
    try:
        im = Image.open(BytesIO(data))
        _check_size(im)  # from the header, before decoding pixels that cannot be stored
        im.load()  # decodes everything: a truncated file fails here, not later
    except Image.DecompressionBombError as e:
        raise DicomizeError(f"the image is too large to decode: {e}") from None
    except (UnidentifiedImageError, OSError, SyntaxError) as e:
        raise DicomizeError(f"not a readable image: {e}") from None
    return im


def _check_size(im: Image.Image) -> None:
    if im.width > MAX_SIDE or im.height > MAX_SIDE:
        raise DicomizeError(
            f"the image is {im.width}x{im.height} pixels; DICOM Rows and Columns stop at {MAX_SIDE}"
        )


def _frame_marker(data: bytes) -> int | None:
    """The JPEG's SOFn marker (0xC0 baseline, 0xC1 extended sequential, 0xC2 progressive...),
    which Pillow does not report."""
    pos = 2  # after SOI
    while pos + 4 <= len(data) and data[pos] == 0xFF:
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
        elif 0xC0 <= marker <= 0xCF and marker not in _NOT_SOF:
            return marker
        elif marker in _STANDALONE:
            pos += 2
        else:
            pos += 2 + int.from_bytes(data[pos + 2 : pos + 4], "big")
    return None


def _taken(im: Image.Image) -> dt.datetime | None:
    """EXIF DateTimeOriginal, when the camera recorded it."""
    try:
        raw = im.getexif().get_ifd(_EXIF_IFD).get(_DATETIME_ORIGINAL)
        return dt.datetime.strptime(str(raw), "%Y:%m:%d %H:%M:%S") if raw else None
    except (ValueError, AttributeError):
        return None


def photo(data: bytes, place: Placement, number: int = 1) -> Dataset:
    im = _open(data)
    ds = base(VL_PHOTOGRAPHIC, "XC", place, number)
    taken = _taken(im)
    if taken is not None:
        ds.ContentDate = ds.AcquisitionDate = taken.strftime("%Y%m%d")
        ds.ContentTime = ds.AcquisitionTime = taken.strftime("%H%M%S")
        ds.AcquisitionDateTime = taken.strftime("%Y%m%d%H%M%S")
    ds.ImageType = ["ORIGINAL", "PRIMARY"]
    ds.Laterality = ""  # type 2C: unknown unless the device says (eye clinic: R or L)
    ds.PatientOrientation = ""
    ds.AcquisitionContextSequence = []
    ds.BurnedInAnnotation = "NO"
    ds.PixelRepresentation = 0
    ds.BitsAllocated = ds.BitsStored = 8
    ds.HighBit = 7
    if _keep_jpeg(im, data):
        _as_jpeg(ds, im, data)
    else:
        _as_pixels(ds, ImageOps.exif_transpose(im), lossy_source=im.format == "JPEG")
    return ds


def _keep_jpeg(im: Image.Image, data: bytes) -> bool:
    """Only what the JPEG Baseline transfer syntax and VL Photographic both allow: an upright
    SOF0 frame, grey or YCbCr with subsampled chroma (YBR_FULL_422). Anything else (4:4:4 would
    be YBR_FULL, which the IOD does not list) is decoded instead: no second lossy generation."""
    if im.format != "JPEG" or im.getexif().get(_ORIENTATION, 1) not in (0, 1):
        return False
    if _frame_marker(data) != _SOF_BASELINE:
        return False
    return im.mode == "L" or (im.mode == "RGB" and JpegImagePlugin.get_sampling(im) in (1, 2))


def _as_jpeg(ds: Dataset, im: Image.Image, data: bytes) -> None:
    ds.Rows, ds.Columns = im.height, im.width
    if im.mode == "L":
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    else:
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 3, "YBR_FULL_422"
        ds.PlanarConfiguration = 0
    ds.LossyImageCompression = "01"
    ds.LossyImageCompressionMethod = "ISO_10918_1"
    ds.PixelData = encapsulate([data])
    ds["PixelData"].VR = "OB"
    file_meta(ds, JPEGBaseline8Bit)


def _grey8(im: Image.Image) -> np.ndarray:
    """8-bit grey samples; 16-bit ones keep their top 8 bits (convert("L") clips them at 255)."""
    if im.mode in ("1", "L"):
        return np.asarray(im.convert("L"), dtype=np.uint8)
    wide = np.asarray(im, dtype=np.int64)  # "I" holds 16-bit PNG/TIFF samples as int32
    return (np.clip(wide, 0, 65535) >> 8).astype(np.uint8)


def _as_pixels(ds: Dataset, im: Image.Image, *, lossy_source: bool) -> None:
    grey = im.mode in ("1", "L", "I") or im.mode.startswith("I;16")
    pixels = _grey8(im) if grey else np.asarray(im.convert("RGB"), dtype=np.uint8)
    ds.Rows, ds.Columns = im.height, im.width
    if grey:
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    else:
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 3, "RGB"
        ds.PlanarConfiguration = 0
    ds.LossyImageCompression = "01" if lossy_source else "00"
    if lossy_source:
        ds.LossyImageCompressionMethod = "ISO_10918_1"
    ds.PixelData = pixels.tobytes()
    ds["PixelData"].VR = "OB"
    file_meta(ds, ExplicitVRLittleEndian)
