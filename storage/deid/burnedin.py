"""Burned-in annotation: which objects cannot leave without cleaned pixels, and the masking.

Header de-identification cannot reach text drawn into the pixels. An object that declares
such text, or is of a kind that usually carries it (secondary capture, ultrasound, visible-light
photographs) without declaring itself clean, is held back unless a configured mask for its
device covers it. Nor can it reach the bytes of an encapsulated document (a referral letter
as PDF names its patient): those are held back unless the project allows them.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from pydicom.dataset import Dataset
from pydicom.uid import UID, ExplicitVRLittleEndian

from storage.settings import PixelMask

# Kinds that often carry burned-in text (screen captures, scanner overlays, photographs).
RISKY_CLASSES = {
    UID(u)
    for u in (
        "1.2.840.10008.5.1.4.1.1.7",  # Secondary Capture
        "1.2.840.10008.5.1.4.1.1.7.1",  # Multi-frame Single Bit SC
        "1.2.840.10008.5.1.4.1.1.7.2",  # Multi-frame Grayscale Byte SC
        "1.2.840.10008.5.1.4.1.1.7.3",  # Multi-frame Grayscale Word SC
        "1.2.840.10008.5.1.4.1.1.7.4",  # Multi-frame True Color SC
        "1.2.840.10008.5.1.4.1.1.6",  # Ultrasound (retired)
        "1.2.840.10008.5.1.4.1.1.6.1",  # Ultrasound
        "1.2.840.10008.5.1.4.1.1.3",  # Ultrasound Multi-frame (retired)
        "1.2.840.10008.5.1.4.1.1.3.1",  # Ultrasound Multi-frame
        "1.2.840.10008.5.1.4.1.1.77.1.4",  # VL Photographic
        "1.2.840.10008.5.1.4.1.1.77.1.4.1",  # Video Photographic
    )
}

# Encapsulated documents: their content is the document's own bytes, kept as they are.
DOCUMENT_CLASSES = {
    UID("1.2.840.10008.5.1.4.1.1.104.1"): "PDF",
    UID("1.2.840.10008.5.1.4.1.1.104.2"): "CDA",
    UID("1.2.840.10008.5.1.4.1.1.104.3"): "STL",
    UID("1.2.840.10008.5.1.4.1.1.104.4"): "OBJ",
    UID("1.2.840.10008.5.1.4.1.1.104.5"): "MTL",
}


@dataclass(frozen=True)
class Screening:
    """`reason` says why the object is held back (empty: it may go), `mask` what to black out."""

    reason: str = ""
    mask: PixelMask | None = None


def _text(ds: Dataset, keyword: str) -> str:
    return str(ds.get(keyword) or "").strip()


def _covers(mask: PixelMask, ds: Dataset) -> bool:
    return (
        mask.manufacturer.casefold() == _text(ds, "Manufacturer").casefold()
        and (
            not mask.model or mask.model.casefold() == _text(ds, "ManufacturerModelName").casefold()
        )
        and (mask.rows is None or mask.rows == int(ds.get("Rows") or 0))
        and (mask.columns is None or mask.columns == int(ds.get("Columns") or 0))
    )


def screen(ds: Dataset, masks: list[PixelMask], *, allow_documents: bool = False) -> Screening:
    """Whether `ds` may be exported, and with which mask; encapsulated documents only if
    `allow_documents`."""
    document = DOCUMENT_CLASSES.get(UID(str(ds.get("SOPClassUID", ""))))
    if document and not allow_documents:
        return Screening(
            f"encapsulated {document} document: its content is not de-identified, and the "
            "project does not allow encapsulated documents"
        )
    if _text(ds, "RecognizableVisualFeatures").upper() == "YES":
        return Screening("recognizable visual features (a face, for instance) in the pixels")
    declared = _text(ds, "BurnedInAnnotation").upper()
    if declared == "NO" or "PixelData" not in ds:
        return Screening()
    if declared != "YES" and UID(str(ds.get("SOPClassUID", ""))) not in RISKY_CLASSES:
        return Screening()
    mask = next((m for m in masks if _covers(m, ds)), None)
    if mask is not None:
        return Screening(mask=mask)
    why = "declares burned-in annotation" if declared == "YES" else "may carry burned-in text"
    device = " ".join(filter(None, (_text(ds, "Manufacturer"), _text(ds, "ManufacturerModelName"))))
    return Screening(f"{why} and no pixel mask covers its device ({device or 'unknown'})")


def apply_mask(ds: Dataset, mask: PixelMask) -> None:
    """Black out the mask's rectangles in every frame; the pixels end up uncompressed."""
    if UID(ds.file_meta.TransferSyntaxUID).is_compressed:
        ds.decompress(generate_instance_uid=False)
    pixels = ds.pixel_array.copy()
    frames = int(ds.get("NumberOfFrames") or 1)
    view = pixels if frames > 1 else pixels[np.newaxis, ...]
    for x, y, width, height in mask.rectangles:
        view[:, max(y, 0) : y + height, max(x, 0) : x + width] = 0
    ds.PixelData = pixels.tobytes()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
