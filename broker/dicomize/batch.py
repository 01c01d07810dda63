"""One upload batch: the patient from the registry (or PAS), one builder per file kind, all
objects built before any is sent, so a bad file leaves nothing half-filed."""

from __future__ import annotations

import io
import uuid
from dataclasses import dataclass
from pathlib import Path

from pydicom.dataset import Dataset

from broker.dicomize.common import Device, DicomizeError, Placement
from broker.dicomize.pdf import encapsulated_pdf
from broker.dicomize.photo import photo
from broker.dicomize.video import video
from broker.dicomize.waveform import waveform
from broker.pas import pdqm
from broker.pas.pdqm import PasAmbiguous, PasUnavailable
from storage import registry
from storage.archive import Archive
from storage.demographics import Identifier
from storage.patientmodule import PatientModule

PHOTO_SUFFIXES = {".jpg", ".jpeg", ".png", ".tif", ".tiff"}
VIDEO_SUFFIXES = {".mp4", ".m4v"}


@dataclass(frozen=True)
class Upload:
    name: str
    data: bytes


def resolve_patient(archive: Archive, patient_id: str, system: str = "") -> PatientModule:
    """Demographics come from the registry, else from PAS; never from the file or its name."""
    ident = Identifier(system, patient_id)
    with archive.sessions() as session:
        p = registry.find(session, ident)
        if p is not None:
            return PatientModule(p.patient_id, p.issuer, p.name, p.birth_date, p.sex)
    s = archive.settings
    pas = pdqm.client(s)
    if pas is not None:
        try:
            found = pas.lookup(ident)
        except PasUnavailable as e:
            raise DicomizeError(f"PAS cannot be asked about {patient_id} now: {e}") from None
        except PasAmbiguous as e:
            raise DicomizeError(f"PAS does not tell who {patient_id} is: {e}") from None
        if found is not None:
            return PatientModule(patient_id, "", found.name, found.birth_date, found.sex)
    raise DicomizeError(f"unknown patient {patient_id!r}: neither the registry nor PAS knows it")


def build(
    files: list[Upload],
    patient: PatientModule,
    *,
    uid_root: str,
    accession: str = "",
    title: str = "",
    device: Device | None = None,
    batch: str = "",
    ordered_study: str = "",
) -> list[Dataset]:
    """DICOM objects for every file, in order; raises DicomizeError naming the first bad file.
    `batch` names the upload (one series); a new one is made when not given."""
    place = Placement(
        patient,
        uid_root,
        batch=batch or uuid.uuid4().hex,
        accession=accession,
        device=device or Device(),
        ordered_study=ordered_study,
    )
    out = []
    for number, f in enumerate(files, start=1):
        name = f.name
        if any(c in name for c in "/\\\0") or name in ("", ".", ".."):
            raise DicomizeError(f"{name!r}: not a plain file name")
        suffix = Path(name).suffix.lower()
        try:
            if suffix == ".pdf":
                out.append(encapsulated_pdf(f.data, title or Path(name).stem, place, number))
            elif suffix in PHOTO_SUFFIXES:
                out.append(photo(f.data, place, number))
            elif suffix in VIDEO_SUFFIXES:
                out.append(video(f.data, place, number))
            elif suffix == ".csv":
                out.append(waveform(f.data, place, number))
            else:
                raise DicomizeError(f"unsupported file type {suffix or '(none)'}")
        except DicomizeError as e:
            raise DicomizeError(f"{name}: {e}") from None
    return out


def part10(ds: Dataset) -> bytes:
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def encode(files: list[Upload], objects: list[Dataset]) -> list[bytes]:
    """Each object as a Part 10 file; a value DICOM cannot encode (e.g. a US over 65535) is a
    refusal naming the file, like any other bad input, not a failure of the spool."""
    out = []
    for f, ds in zip(files, objects, strict=True):
        try:
            out.append(part10(ds))
        # written to memory, so no failure here is I/O (pydicom reports bad values as
        # OSError, ValueError or struct.error); its first line names the tag and the value
        except Exception as e:
            reason = str(e).splitlines()[0] if str(e) else type(e).__name__
            raise DicomizeError(f"{f.name}: cannot be encoded as DICOM: {reason}") from None
    return out
