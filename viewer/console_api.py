"""Read-only admin API (role radiology-admin) behind the admin console: the DICOM peers as
configured, and the audit log, whose reading is itself audited."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, HTTPException, Query
from pydantic import BaseModel, Field

from storage import audit_log
from storage.archive import Archive
from viewer.admin import admin
from viewer.auth import Caller

Admin = Annotated[Caller, Depends(admin)]


class PeerOut(BaseModel):
    """A peer as the console shows it; listed field by field so a secret added to the peer
    settings later is never published by accident."""

    ae: str
    host: str
    port: int
    store: bool
    query: bool
    retrieve: bool


class PeersOut(BaseModel):
    ae_title: str = Field(description="The broker's own AE title")
    dicom_port: int
    hl7_port: int = Field(description="0 = HL7 listener off")
    unknown_aes_refused: bool = Field(
        description="True: only listed peers may associate; false: unknown AE titles are "
        "accepted from loopback addresses (LOOPBACK_OPEN, or no PEERS at all)"
    )
    peers: list[PeerOut]


class AuditOut(BaseModel):
    id: int
    at: str | None
    actor: str
    role: str
    source: str
    action: str
    patient_id: str
    study_uid: str
    outcome: str
    detail: str


class AuditPage(BaseModel):
    events: list[AuditOut] = Field(description="Newest first")
    limit: int
    offset: int
    more: bool = Field(description="Older events follow this page")


def router(archive: Archive) -> APIRouter:
    r = APIRouter(prefix="/api/v1/admin", tags=["admin"])
    settings = archive.settings

    @r.get("/peers")
    def peers(who: Admin) -> PeersOut:
        """The configured DICOM peers with what each may do, and the broker's own AE."""
        return PeersOut(
            ae_title=settings.ae_title,
            dicom_port=settings.dicom_port,
            hl7_port=settings.hl7_port,
            unknown_aes_refused=not settings.open_to_loopback,
            peers=[PeerOut.model_validate(p, from_attributes=True) for p in settings.peers],
        )

    @r.get("/audit")
    def audit_events(
        who: Admin,
        patient_id: str = "",
        actor: str = "",
        action: str = "",
        since: Annotated[str, Query(description="ISO date or date-time (UTC if no zone)")] = "",
        limit: Annotated[int, Query(ge=1, le=1000)] = 100,
        offset: Annotated[int, Query(ge=0)] = 0,
        before_id: Annotated[
            int | None, Query(description="Only events older than this one: pages that stay put")
        ] = None,
    ) -> AuditPage:
        """Audit events, newest first; `*` at the end of a filter matches a prefix. Paging by
        `before_id` is stable while the log grows (each read of it adds an event)."""
        filters = audit_log.Filters(patient_id, actor, action, since)
        try:
            with archive.sessions() as session, session.begin():
                rows, more = audit_log.read(
                    session,
                    filters,
                    reader=who.user,
                    role=who.role,
                    source=who.address,
                    limit=limit,
                    offset=offset,
                    before_id=before_id,
                )
                events = [AuditOut(**audit_log.as_dict(e)) for e in rows]
        except ValueError as e:
            raise HTTPException(422, str(e)) from None
        return AuditPage(events=events, limit=limit, offset=offset, more=more)

    return r
