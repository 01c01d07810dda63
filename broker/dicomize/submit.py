"""One DICOM-ization request from any entry point (CLI, HTTP upload, hot folder): patient from
the registry or PAS, the worklist order's study, every file built, then every object spooled
like a C-STORE (the CLI sends them over C-STORE instead)."""

from __future__ import annotations

from dataclasses import dataclass, field

from pydicom.dataset import Dataset

from broker.dicomize.batch import Upload, build, encode, resolve_patient
from broker.dicomize.common import Device, DicomizeError
from storage import worklist
from storage.archive import Archive
from storage.intake import Intake
from storage.patientmodule import PatientModule


@dataclass(frozen=True)
class Request:
    """Who the files are about and where they are filed; never taken from the files."""

    patient_id: str
    system: str = ""
    accession: str = ""
    title: str = ""
    device: Device = field(default_factory=Device)
    batch: str = ""  # names the upload; the same batch gives the same UIDs


def ordered_study(archive: Archive, accession: str, patient: PatientModule) -> str:
    """The Study Instance UID of the worklist order with this accession number, or '' when
    there is none; an order of another patient is refused."""
    with archive.sessions() as session:
        order = worklist.order_by_accession(session, accession) if accession else None
        if order is None:
            return ""
        if order.patient_id != patient.patient_id:
            raise DicomizeError(f"accession number {accession} is an order for another patient")
        return order.study_uid


def prepare(archive: Archive, files: list[Upload], req: Request) -> list[tuple[Dataset, bytes]]:
    """Every file built and encoded, with its Part 10 bytes, before anything is sent (raises
    DicomizeError naming the file); the CLI, uploads and hot folders all come through here."""
    if not files:
        raise DicomizeError("no files given")
    patient = resolve_patient(archive, req.patient_id.strip(), req.system.strip())
    accession = req.accession.strip()
    objects = build(
        files,
        patient,
        uid_root=archive.settings.uid_root,
        accession=accession,
        title=req.title,
        device=req.device,
        batch=req.batch,
        ordered_study=ordered_study(archive, accession, patient),
    )
    return list(zip(objects, encode(files, objects), strict=True))


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
    prepared = prepare(archive, files, req)
    for _, payload in prepared:
        intake.accept(payload, source=source[:64], address=address)
    return [ds for ds, _ in prepared]
