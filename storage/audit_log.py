"""Reading the audit log: filters, newest first, and every read of it audited in the same
transaction, so a reader of the log cannot escape it."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any

from sqlalchemy import ColumnElement, Select, select
from sqlalchemy.orm import InstrumentedAttribute, Session

from storage import audit
from storage.jobs import iso
from storage.models import AuditEvent


@dataclass(frozen=True)
class Filters:
    """Each filter is an exact match, or a prefix match when it ends with '*' (`dicom.*`);
    `since` is an ISO date or date-time, UTC when it has no zone."""

    patient_id: str = ""
    actor: str = ""
    action: str = ""
    since: str = ""

    def describe(self) -> str:
        given = {k: v for k, v in vars(self).items() if v}
        return " ".join(f"{k}={v}" for k, v in given.items()) or "all events"


def parse_since(text: str) -> dt.datetime:
    try:
        t = dt.datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(f"since={text!r} is not an ISO 8601 date or date-time") from None
    return t.astimezone(dt.UTC) if t.tzinfo else t.replace(tzinfo=dt.UTC)


def _match(column: InstrumentedAttribute[str], value: str) -> ColumnElement[bool]:
    if value.endswith("*"):
        prefix = value[:-1].replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
        return column.like(prefix + "%", escape="\\")
    return column == value


def _query(f: Filters, before_id: int | None) -> Select[AuditEvent]:
    # Newest first is the order of recording: ids grow with `at`, and unlike `at` they are unique.
    q = select(AuditEvent).order_by(AuditEvent.id.desc())
    if before_id is not None:
        q = q.where(AuditEvent.id < before_id)
    if f.patient_id:
        q = q.where(_match(AuditEvent.patient_id, f.patient_id))
    if f.actor:
        q = q.where(_match(AuditEvent.actor, f.actor))
    if f.action:
        q = q.where(_match(AuditEvent.action, f.action))
    if f.since:
        q = q.where(AuditEvent.at >= parse_since(f.since))
    return q


def as_dict(e: AuditEvent) -> dict[str, Any]:
    return {
        "id": e.id,
        "at": iso(e.at),
        "actor": e.actor,
        "role": e.role,
        "source": e.source,
        "action": e.action,
        "patient_id": e.patient_id,
        "study_uid": e.study_uid,
        "outcome": e.outcome,
        "detail": e.detail,
    }


def read(
    session: Session,
    f: Filters,
    *,
    reader: str,
    role: str,
    source: str,
    limit: int,
    offset: int = 0,
    before_id: int | None = None,
) -> tuple[list[AuditEvent], bool]:
    """A page of events and whether older ones follow; the caller commits (the read's own
    event goes with it). Raises ValueError for a filter that is not understood."""
    rows = session.scalars(_query(f, before_id).offset(offset).limit(limit + 1)).all()
    audit.record(
        session,
        actor=reader,
        role=role,
        source=source,
        action="audit-read",
        patients=[(f.patient_id, "")] if f.patient_id and "*" not in f.patient_id else [],
        detail=f.describe(),
    )
    return list(rows[:limit]), len(rows) > limit
