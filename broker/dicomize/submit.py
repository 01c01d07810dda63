"""One DICOM-ization request from any entry point (HTTP upload, hot folder): patient from the
registry or PAS, every file built, then every object spooled like a C-STORE."""

from __future__ import annotations

import io
from dataclasses import dataclass, field

from pydicom.dataset import Dataset

from broker.dicomize.batch import Upload, build, resolve_patient
from broker.dicomize.common import Device, DicomizeError
from storage import worklist
from storage.archive import Archive
from storage.intake import Intake


@dataclass(frozen=True)
class Request:
    """Who the files are about and where they are filed; never taken from the files."""

    patient_id: str
    system: str = ""
    accession: str = ""
    title: str = ""
    device: Device = field(default_factory=Device)
    batch: str = ""  # names the upload; the same batch gives the same UIDs


def part10(ds: Dataset) -> bytes:
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def submit(
    archive: Archive,
    intake: Intake,
    files: list[Upload],
    req: Request,
    *,
    source: str,
    address: str,
) -> list[Dataset]:
    """Build all objects before spooling any, so a bad file leaves nothing in the archive
    (raises DicomizeError naming the file)."""
    if not files:
        raise DicomizeError("no files given")
    patient = resolve_patient(archive, req.patient_id.strip(), req.system.strip())
    accession = req.accession.strip()
    ordered_study = ""
    if accession:
        with archive.sessions() as session:
            order = worklist.order_by_accession(session, accession)
            if order is not None:
                if order.patient_id != patient.patient_id:
                    raise DicomizeError(
                        f"accession number {accession} is an order for another patient"
                    )
                ordered_study = order.study_uid
    objects = build(
        files,
        patient,
        uid_root=archive.settings.uid_root,
        accession=accession,
        title=req.title,
        device=req.device,
        batch=req.batch,
        ordered_study=ordered_study,
    )
    encoded = [part10(ds) for ds in objects]
    for payload in encoded:
        intake.accept(payload, source=source[:64], address=address)
    return objects
