"""Photos (JPEG, PNG, TIFF) → VL Photographic Image Storage.

A baseline JPEG is kept byte for byte (JPEG Baseline transfer syntax): re-compressing a clinical
photo would lose detail for nothing. Anything else (PNG, TIFF, progressive JPEG, or a JPEG whose
EXIF orientation says it must be turned) is decoded once and stored uncompressed.
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


def _open(data: bytes) -> Image.Image:
    if not data:
        raise DicomizeError("the file is empty")
    try:
        im = Image.open(BytesIO(data))
        im.load()  # decodes everything: a truncated file fails here, not later
    except (UnidentifiedImageError, OSError, SyntaxError) as e:
        raise DicomizeError(f"not a readable image: {e}") from None
    return im


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
    upright = im.getexif().get(_ORIENTATION, 1) in (0, 1)
    keep = (
        im.format == "JPEG"
        and upright
        and im.mode in ("L", "RGB")
        and not im.info.get("progressive")
        and not im.info.get("progression")
    )
    if keep:
        _as_jpeg(ds, im, data)
    else:
        _as_pixels(ds, ImageOps.exif_transpose(im), lossy_source=im.format == "JPEG")
    return ds


def _as_jpeg(ds: Dataset, im: Image.Image, data: bytes) -> None:
    ds.Rows, ds.Columns = im.height, im.width
    if im.mode == "L":
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    else:
        subsampled = JpegImagePlugin.get_sampling(im) in (1, 2)
        ds.SamplesPerPixel = 3
        ds.PhotometricInterpretation = "YBR_FULL_422" if subsampled else "YBR_FULL"
        ds.PlanarConfiguration = 0
    ds.LossyImageCompression = "01"
    ds.LossyImageCompressionMethod = "ISO_10918_1"
    ds.PixelData = encapsulate([data])
    ds["PixelData"].VR = "OB"
    file_meta(ds, JPEGBaseline8Bit)


def _as_pixels(ds: Dataset, im: Image.Image, *, lossy_source: bool) -> None:
    grey = im.mode in ("1", "L", "I;16", "I")
    im = im.convert("L" if grey else "RGB")
    pixels = np.asarray(im, dtype=np.uint8)
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
