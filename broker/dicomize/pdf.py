"""PDF → Encapsulated PDF Storage (PS3.3 A.45.1), the document bytes unchanged."""

from __future__ import annotations

from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian

from broker.dicomize.common import DicomizeError, Placement, base, file_meta

ENCAPSULATED_PDF = "1.2.840.10008.5.1.4.1.1.104.1"


def encapsulated_pdf(data: bytes, title: str, place: Placement, number: int = 1) -> Dataset:
    if not data.startswith(b"%PDF-"):
        raise DicomizeError("not a PDF: the file does not start with %PDF-")
    if b"%%EOF" not in data[-2048:]:
        raise DicomizeError("the PDF is truncated: no %%EOF marker at its end")
    ds = base(ENCAPSULATED_PDF, "DOC", place, number)
    ds.ConversionType = "WSD"  # workstation
    ds.BurnedInAnnotation = "YES"  # a document shows who it is about
    ds.DocumentTitle = title[:64]
    ds.ConceptNameCodeSequence = []
    ds.MIMETypeOfEncapsulatedDocument = "application/pdf"
    ds.AcquisitionDateTime = place.when.strftime("%Y%m%d%H%M%S")
    # OB values have even length; PS3.3 says pad with a trailing 0x00 byte.
    ds.EncapsulatedDocument = data + (b"\0" if len(data) % 2 else b"")
    ds.EncapsulatedDocumentLength = len(data)
    file_meta(ds, ExplicitVRLittleEndian)
    return ds
