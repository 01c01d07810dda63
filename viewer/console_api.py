"""Read-only admin API (role radiology-admin) behind the admin console: the DICOM peers as
configured, and the audit log, whose reading is itself audited."""

from __future__ import annotations

import datetime as dt
from typing import Annotated

from fastapi import APIRouter, Depends, HTTPException, Query
from pydantic import BaseModel, Field
from sqlalchemy import ColumnElement, Select, select
from sqlalchemy.orm import InstrumentedAttribute

from storage import audit
from storage.archive import Archive
from storage.jobs import iso
from storage.models import AuditEvent
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


def _match(column: InstrumentedAttribute[str], value: str) -> ColumnElement[bool]:
    """Exact match, or a prefix match when the value ends with '*' (e.g. `dicom.*`)."""
    if value.endswith("*"):
        prefix = value[:-1].replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
        return column.like(prefix + "%", escape="\\")
    return column == value


def _since(text: str) -> dt.datetime:
    """An ISO date or date-time; without a zone it is UTC, like the stored times."""
    try:
        t = dt.datetime.fromisoformat(text)
    except ValueError:
        raise HTTPException(422, f"since={text!r} is not an ISO 8601 date or date-time") from None
    return t.astimezone(dt.UTC) if t.tzinfo else t.replace(tzinfo=dt.UTC)


def _query(
    patient_id: str, actor: str, action: str, since: str, before_id: int | None
) -> Select[AuditEvent]:
    # Newest first is the order of recording: ids grow with `at`, and unlike `at` they are unique.
    q = select(AuditEvent).order_by(AuditEvent.id.desc())
    if before_id is not None:
        q = q.where(AuditEvent.id < before_id)
    if patient_id:
        q = q.where(_match(AuditEvent.patient_id, patient_id))
    if actor:
        q = q.where(_match(AuditEvent.actor, actor))
    if action:
        q = q.where(_match(AuditEvent.action, action))
    if since:
        q = q.where(AuditEvent.at >= _since(since))
    return q


def _event(e: AuditEvent) -> AuditOut:
    return AuditOut(
        id=e.id,
        at=iso(e.at),
        actor=e.actor,
        role=e.role,
        source=e.source,
        action=e.action,
        patient_id=e.patient_id,
        study_uid=e.study_uid,
        outcome=e.outcome,
        detail=e.detail,
    )


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
    def audit_log(
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
        query = _query(patient_id, actor, action, since, before_id)
        filters = {"patient_id": patient_id, "actor": actor, "action": action, "since": since}
        detail = " ".join(f"{k}={v}" for k, v in filters.items() if v)
        with archive.sessions() as session, session.begin():
            rows = session.scalars(query.offset(offset).limit(limit + 1)).all()
            # Who looked at whose audit trail is recorded in the same transaction, before the
            # answer leaves: a reader of the log cannot escape it.
            audit.record(
                session,
                actor=who.user,
                role=who.role,
                source=who.address,
                action="audit-read",
                patients=[(patient_id, "")] if patient_id and "*" not in patient_id else [],
                detail=detail or "all events",
            )
            events = [_event(e) for e in rows[:limit]]
        return AuditPage(events=events, limit=limit, offset=offset, more=len(rows) > limit)

    return r
