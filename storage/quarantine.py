"""What waits for an admin: unreadable objects and studies of patients PAS does not confirm."""

from __future__ import annotations

import json
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from storage import audit, holds, registry, removal
from storage.models import Instance, Patient, PatientStatus, Quarantined, Series, Study

ADMIN = "radiology-admin"


class QuarantineError(ValueError):
    """The resolution cannot be done; the message says why."""


def listing(session: Session) -> dict[str, list[dict[str, Any]]]:
    studies = []
    rows = session.execute(
        select(Patient, Study, func.count(Instance.id))
        .join(Study.patient)
        .join(Study.series)
        .join(Series.instances)
        .where(Patient.status == PatientStatus.QUARANTINED)
        .group_by(Patient.id, Study.id)
        .order_by(Study.id)
    )
    for patient, study, count in rows:
        studies.append(
            {
                "study_uid": study.study_uid,
                "study_date": study.study_date,
                "accession_number": study.accession_number,
                "description": study.description,
                "instances": count,
                "header_patient_id": patient.patient_id,
                "header_patient_name": patient.name,
                "reason": patient.status_reason,
            }
        )
    objects = [
        {
            "object_key": q.object_key,
            "size": q.size,
            "sha256": q.sha256,
            "reason": q.reason,
            "source_ae": q.source_ae,
            "received_at": q.received_at.isoformat(),
        }
        for q in session.scalars(
            select(Quarantined).where(Quarantined.resolved == "").order_by(Quarantined.id)
        )
    ]
    return {"studies": studies, "objects": objects}


def quarantined_study(session: Session, study_uid: str) -> Study:
    study = session.scalars(select(Study).where(Study.study_uid == study_uid)).first()
    if study is None:
        raise QuarantineError(f"no study {study_uid} in the archive")
    if study.patient.status != PatientStatus.QUARANTINED:
        raise QuarantineError(f"study {study_uid} is not in quarantine")
    return study


def assign(session: Session, study_uid: str, target: Patient, *, actor: str, source: str) -> None:
    """File a quarantined study under a registry patient; the header's values stay on record."""
    if target.status not in (PatientStatus.VERIFIED, PatientStatus.LOCAL):
        raise QuarantineError(f"patient {target.patient_id} is {target.status}, not verified")
    study = quarantined_study(session, study_uid)
    old = study.patient
    for inst in registry.study_instances(session, study):
        inst.header_differences = json.dumps(
            {"PatientID": old.patient_id, "PatientName": old.name, "reason": old.status_reason},
            ensure_ascii=False,
        )
    study.patient = target
    session.flush()
    _settle(
        session,
        old,
        "quarantine-assign",
        (target.patient_id, study_uid),
        f"from quarantined ID {old.patient_id!r} ({old.status_reason})",
        actor=actor,
        source=source,
    )


def reject(session: Session, study_uid: str, *, actor: str, source: str) -> int:
    """Delete a quarantined study's rows and queue its objects (the caller commits, then
    purges); returns how many instances went. A study under legal hold stays."""
    study = quarantined_study(session, study_uid)
    if holds.is_held(session, study.id):
        raise QuarantineError(f"study {study_uid} is under legal hold: release the hold first")
    old = study.patient
    instances = registry.study_instances(session, study)
    doomed = removal.Doomed(
        study.id,
        study_uid,
        old.patient_id,
        study.study_date,
        {inst.id: inst.size for inst in instances},
        len(instances),
        [f"quarantine rejected ({old.status_reason})"],
    )
    n = removal.remove(
        session, doomed, action="quarantine-reject", actor=actor, role=ADMIN, source=source
    )
    session.expire_all()
    _drop_if_empty(session, old)
    return n


def _settle(
    session: Session,
    old: Patient,
    action: str,
    subject: tuple[str, str],
    detail: str,
    *,
    actor: str,
    source: str,
) -> None:
    """Audit a resolution and drop the quarantined patient once no study is left under it."""
    _drop_if_empty(session, old)
    audit.record(
        session,
        actor=actor,
        role=ADMIN,
        source=source,
        action=action,
        patients=[subject],
        detail=detail,
    )


def _drop_if_empty(session: Session, old: Patient) -> None:
    left = session.scalar(select(func.count(Study.id)).where(Study.patient_fk == old.id))
    if not left:
        session.delete(old)
        session.flush()
