"""Audit records: every read of patient data says who, what, when and from where."""

from __future__ import annotations

from collections.abc import Iterable

from sqlalchemy.orm import Session

from storage.models import AuditEvent


def record(
    session: Session,
    *,
    actor: str,
    action: str,
    source: str,
    role: str = "",
    patients: Iterable[tuple[str, str]] = (),
    outcome: str = "success",
    detail: str = "",
) -> None:
    """One row per (patient_id, study_uid) touched; one row with no patient when none was."""
    pairs = list(dict.fromkeys(patients)) or [("", "")]
    for patient_id, study_uid in pairs:
        session.add(
            AuditEvent(
                actor=actor[:128],
                role=role[:64],
                source=source[:128],
                action=action[:64],
                patient_id=patient_id[:64],
                study_uid=study_uid[:64],
                outcome=outcome[:16],
                detail=detail,
            )
        )
