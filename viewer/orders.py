"""Orders over REST: place and cancel worklist orders, list what is scheduled."""

from __future__ import annotations

import datetime as dt
from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Query
from pydantic import BaseModel, Field

from storage import nationalid, registry, worklist
from storage.archive import Archive
from storage.demographics import NATIONAL_SYSTEMS, Demographics, Identifier, national_system
from storage.models import OrderStatus
from viewer.admin import record_change
from viewer.auth import Caller, requires

PLACERS = frozenset({"integration", "radiology-admin"})
# devices (photo apps, non-radiology modalities) read their worklist over HTTP too
READERS = PLACERS | {"modality", "radiologist"}
placer = requires(PLACERS, "placing orders")
reader = requires(READERS, "reading the worklist")


class PatientIn(BaseModel):
    id: str = Field(min_length=1, max_length=64, description="Patient identifier")
    system: str = Field(default="", description="Its system URI; empty: national ID or local")
    name: str = Field(default="", description="DICOM PN (Family^Given); PAS data wins if known")
    birth_date: str = Field(default="", pattern=r"^(\d{8})?$")
    sex: str = Field(default="", pattern=r"^[MFO]?$")


class CodeIn(BaseModel):
    code: str = Field(max_length=16)
    scheme: str = Field(default="", max_length=16)
    meaning: str = Field(default="", max_length=64)


class OrderIn(BaseModel):
    """A new order (or a change to one not yet performed, by the same accession number)."""

    accession_number: str = Field(min_length=1, max_length=16)
    accession_issuer: str = Field(default="", max_length=64)
    patient: PatientIn
    scheduled_start: dt.datetime = Field(
        description="Date and time of the step: local, or with a zone offset"
    )
    modality: str = Field(pattern=r"^[A-Za-z0-9_]+$", max_length=16)
    station_ae: str = Field(default="", max_length=16)
    station_name: str = Field(default="", max_length=16)
    placer_order_number: str = Field(default="", max_length=64)
    filler_order_number: str = Field(default="", max_length=64)
    requested_procedure_id: str = Field(default="", max_length=16)
    requested_procedure_description: str = Field(default="", max_length=64)
    procedure_codes: list[CodeIn] = Field(default_factory=list)
    sps_id: str = Field(default="", max_length=16)
    sps_description: str = Field(default="", max_length=64)
    performing_physician: str = Field(default="", max_length=324)
    referring_physician: str = Field(default="", max_length=324)
    priority: str = Field(default="", pattern=r"^(|STAT|HIGH|ROUTINE|MEDIUM|LOW)$")
    study_instance_uid: str = Field(default="", pattern=r"^([0-2](\.(0|[1-9][0-9]*))+)?$")


class PatientOut(BaseModel):
    id: str
    issuer: str
    name: str
    birth_date: str
    sex: str


class OrderOut(BaseModel):
    accession_number: str
    accession_issuer: str
    patient: PatientOut
    status: str
    source: str
    study_uid: str
    scheduled_date: str
    scheduled_time: str
    modality: str
    station_ae: str
    station_name: str
    placer_order_number: str
    filler_order_number: str
    requested_procedure_id: str
    requested_procedure_description: str
    procedure_codes: list[CodeIn]
    sps_id: str
    sps_description: str
    performing_physician: str
    referring_physician: str
    priority: str
    created_at: dt.datetime
    updated_at: dt.datetime


class Placed(OrderOut):
    outcome: str = Field(description="created, updated or unchanged (a replay)")


def _identifier(p: PatientIn, allow_synthetic: bool) -> Identifier:
    """As HL7 PID-3 is read: an 11-digit ID is a national ID and must be a valid one."""
    system = p.system or national_system(p.id, allow_synthetic=allow_synthetic) or ""
    national = system in NATIONAL_SYSTEMS.values() or (len(p.id) == 11 and p.id.isdigit())
    if national:
        try:
            nationalid.parse(p.id, allow_synthetic=allow_synthetic)
        except nationalid.InvalidNationalId as e:
            raise HTTPException(422, f"patient.id {p.id} is not a valid national ID: {e}") from None
    return Identifier(system, p.id)


def _request(body: OrderIn, allow_synthetic: bool) -> worklist.OrderRequest:
    p = body.patient
    start = body.scheduled_start
    if start.tzinfo is not None:  # the worklist's dates and times are the broker's local ones
        start = start.astimezone()
    return worklist.OrderRequest(
        patient=Demographics((_identifier(p, allow_synthetic),), p.name, p.birth_date, p.sex),
        accession_number=body.accession_number,
        accession_issuer=body.accession_issuer,
        placer_order_number=body.placer_order_number,
        filler_order_number=body.filler_order_number,
        requested_procedure_id=body.requested_procedure_id,
        requested_procedure_description=body.requested_procedure_description,
        procedure_codes=tuple(
            worklist.Code(c.code, c.scheme, c.meaning) for c in body.procedure_codes
        ),
        sps_id=body.sps_id,
        sps_description=body.sps_description or body.requested_procedure_description,
        station_ae=body.station_ae,
        station_name=body.station_name,
        modality=body.modality.upper(),
        scheduled_date=start.strftime("%Y%m%d"),
        scheduled_time=start.strftime("%H%M%S"),
        performing_physician=body.performing_physician,
        referring_physician=body.referring_physician,
        priority=body.priority,
        study_uid=body.study_instance_uid,
    )


def router(archive: Archive) -> APIRouter:
    r = APIRouter(prefix="/api/v1/orders", tags=["orders"])
    settings = archive.settings

    @r.post("", response_model=Placed, status_code=200)
    def place(body: OrderIn, who: Annotated[Caller, Depends(placer)]) -> dict[str, Any]:
        req = _request(body, settings.allow_synthetic_ids)
        with archive.sessions() as session, session.begin():
            try:
                order, outcome = worklist.place(
                    session, req, source="rest", uid_root=settings.uid_root
                )
            except (worklist.WorklistError, registry.RegistryError) as e:
                raise HTTPException(409, str(e)) from None
            patient = order.patient
            record_change(
                session,
                who,
                "order",
                f"REST {order.accession_number} {outcome}",
                [(patient.patient_id, order.study_uid)],
            )
            return {**worklist.as_dict(order, patient), "outcome": outcome}

    @r.get("", response_model=list[OrderOut])
    def list_orders(
        who: Annotated[Caller, Depends(reader)],
        status: Annotated[OrderStatus | None, Query(description="Default: on the worklist")] = None,
        station: Annotated[str, Query(description="Scheduled station AE title")] = "",
        date: Annotated[str, Query(pattern=r"^(\d{8}|\d{4}-\d{2}-\d{2})?$")] = "",
    ) -> list[dict[str, Any]]:
        with archive.sessions() as session, session.begin():
            rows = worklist.listing(
                session, status=status.value if status else "", station=station, date=date
            )
            record_change(
                session,
                who,
                "order.list",
                f"{len(rows)} orders",
                [(p.patient_id, o.study_uid) for o, p in rows],
            )
            return [worklist.as_dict(o, p) for o, p in rows]

    @r.post("/{accession}/cancel", response_model=OrderOut)
    def cancel(
        accession: str,
        who: Annotated[Caller, Depends(placer)],
        issuer: Annotated[str | None, Query(description="Issuer, if the number is shared")] = None,
    ) -> dict[str, Any]:
        with archive.sessions() as session, session.begin():
            if worklist.find_order(session, accession, issuer) is None:
                raise HTTPException(404, f"no order with accession number {accession!r}")
            try:
                order = worklist.change_status(
                    session, accession, OrderStatus.CANCELLED, issuer=issuer
                )
            except worklist.WorklistError as e:
                raise HTTPException(409, str(e)) from None
            record_change(
                session,
                who,
                "order.cancel",
                f"REST {accession} cancelled",
                [(order.patient.patient_id, order.study_uid)],
            )
            return worklist.as_dict(order, order.patient)

    return r
