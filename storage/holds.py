"""Legal holds: studies no retention rule or rejection may delete until an admin clears them."""

from __future__ import annotations

from typing import Any

from sqlalchemy import ColumnElement, exists, select
from sqlalchemy.orm import Session

from storage import audit
from storage.jobs import iso
from storage.models import LegalHold, Patient, Study


class HoldError(ValueError):
    """The hold cannot be set or cleared; the message says why."""


NOT_HELD: ColumnElement[bool] = ~exists().where(LegalHold.study_fk == Study.id)


def lock_study(session: Session, study_uid: str) -> Study:
    """The study, locked against a concurrent sweep until the caller commits (PostgreSQL; on
    SQLite the sweep holds the write lock for its whole step instead)."""
    study = session.scalar(select(Study).where(Study.study_uid == study_uid).with_for_update())
    if study is None:
        raise HoldError(f"no study {study_uid} in the archive")
    return study


def is_held(session: Session, study_id: int) -> bool:
    return bool(session.scalar(select(exists().where(LegalHold.study_fk == study_id))))


def hold(session: Session, study_uid: str, reason: str, *, actor: str, source: str) -> LegalHold:
    """Put a study under legal hold, or change the reason of its hold; audited."""
    if not reason.strip():
        raise HoldError("a legal hold needs a reason")
    study = lock_study(session, study_uid)
    row = session.scalar(select(LegalHold).where(LegalHold.study_fk == study.id))
    if row is None:
        row = LegalHold(study_fk=study.id, reason=reason, held_by=actor[:128])
        session.add(row)
    else:
        row.reason = reason
    session.flush()
    _audit(session, study, "legal-hold-set", reason, actor=actor, source=source)
    return row


def release(session: Session, study_uid: str, *, actor: str, source: str) -> None:
    """Clear a study's legal hold; audited."""
    study = lock_study(session, study_uid)
    row = session.scalar(select(LegalHold).where(LegalHold.study_fk == study.id))
    if row is None:
        raise HoldError(f"study {study_uid} is not under legal hold")
    session.delete(row)
    session.flush()
    _audit(session, study, "legal-hold-clear", row.reason, actor=actor, source=source)


def _audit(
    session: Session, study: Study, action: str, detail: str, *, actor: str, source: str
) -> None:
    audit.record(
        session,
        actor=actor,
        role="radiology-admin",
        source=source,
        action=action,
        patients=[(study.patient.patient_id, study.study_uid)],
        detail=detail,
    )


def listing(session: Session) -> list[dict[str, Any]]:
    rows = session.execute(
        select(LegalHold, Study.study_uid, Study.study_date, Patient.patient_id)
        .join(Study, LegalHold.study_fk == Study.id)
        .join(Study.patient)
        .order_by(LegalHold.id)
    )
    return [
        {
            "study_uid": uid,
            "patient_id": pid,
            "study_date": date,
            "reason": h.reason,
            "held_by": h.held_by,
            "held_at": iso(h.held_at),
        }
        for h, uid, date, pid in rows
    ]
