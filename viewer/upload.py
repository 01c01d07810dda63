"""HTTP upload of non-DICOM files (photos, PDFs, video, waveforms) to be DICOM-ized."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, File, Form, HTTPException, Request, UploadFile
from pydantic import BaseModel
from starlette.concurrency import run_in_threadpool

from broker.dicomize.batch import Upload
from broker.dicomize.common import Device, DicomizeError
from broker.dicomize.submit import Request as Dicomize
from broker.dicomize.submit import submit
from storage.archive import Archive
from storage.audit import AuditTrail
from storage.intake import Intake
from viewer.auth import UPLOADERS, Caller, requires

Uploader = Annotated[Caller, Depends(requires(UPLOADERS, "uploading files"))]


class Created(BaseModel):
    file: str
    sop_class_uid: str
    series_uid: str  # one series per modality, so files of one upload may differ
    sop_instance_uid: str


class Result(BaseModel):
    patient_id: str
    patient_name: str
    study_uid: str
    series_uid: str
    instances: list[Created]


async def _read(files: list[UploadFile], limit: int) -> list[Upload]:
    """The files' bytes, refusing the request once their sum passes `limit`."""
    out: list[Upload] = []
    left = limit
    for f in files:
        data = await f.read(left + 1)
        if len(data) > left:
            raise HTTPException(413, f"upload larger than STOW_MAX_MB ({limit} bytes)")
        left -= len(data)
        out.append(Upload(f.filename or "", data))
    return out


def router(archive: Archive, trail: AuditTrail, intake: Intake | None) -> APIRouter:
    r = APIRouter(prefix="/api/v1", tags=["dicomize"])
    limit = archive.settings.stow_max_mb << 20

    @r.post("/dicomize", response_model=Result, status_code=201)
    async def dicomize(
        request: Request,
        who: Uploader,
        files: Annotated[list[UploadFile], File(description="Photos, PDFs, MP4 video, CSV")],
        patient_id: Annotated[str, Form(description="The patient's identifier (PAS)")],
        system: Annotated[str, Form(description="Identifier system URI, if ambiguous")] = "",
        accession: Annotated[str, Form(description="Accession number / worklist item")] = "",
        title: Annotated[str, Form(description="Document title for PDFs")] = "",
        manufacturer: Annotated[str, Form()] = "",
        model: Annotated[str, Form()] = "",
        station: Annotated[str, Form()] = "",
    ) -> Any:
        """Build DICOM objects from the files for a PAS patient and spool them for the
        archive; nothing is filed unless every file converts."""
        if intake is None:
            raise HTTPException(503, "this server does not accept uploads (no spool)")
        if int(request.headers.get("content-length", 0) or 0) > limit + (1 << 20):
            raise HTTPException(413, f"upload larger than STOW_MAX_MB ({limit} bytes)")
        uploads = await _read(files, limit)
        req = Dicomize(patient_id, system, accession, title, Device(manufacturer, model, station))
        try:
            objects = await run_in_threadpool(
                submit,
                archive,
                intake,
                uploads,
                req,
                source=f"UPLOAD:{who.user}",
                address=who.address,
            )
        except DicomizeError as e:
            trail.record(
                actor=who.user,
                role=who.role,
                source=who.address,
                action="dicomize",
                outcome="refused",
                detail=str(e),
            )
            raise HTTPException(422, str(e)) from None
        except OSError as e:
            raise HTTPException(503, f"the spool cannot be written now: {e}") from None
        first = objects[0]
        trail.record(
            actor=who.user,
            role=who.role,
            source=who.address,
            action="dicomize",
            patients=[(str(first.PatientID), str(first.StudyInstanceUID))],
            detail=f"{len(objects)} objects from {', '.join(u.name for u in uploads)}"[:500],
        )
        return Result(
            patient_id=str(first.PatientID),
            patient_name=str(first.PatientName),
            study_uid=str(first.StudyInstanceUID),
            series_uid=str(first.SeriesInstanceUID),
            instances=[
                Created(
                    file=u.name,
                    sop_class_uid=ds.SOPClassUID,
                    series_uid=ds.SeriesInstanceUID,
                    sop_instance_uid=ds.SOPInstanceUID,
                )
                for u, ds in zip(uploads, objects, strict=True)
            ],
        )

    return r
