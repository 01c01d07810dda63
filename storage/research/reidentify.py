"""Re-identification: which clinical patient and studies a project's pseudonym stands for.

Only possible with the project's key, and only for patients an audited export put into the
project: the candidates are read from the clinical audit log and their pseudonyms recomputed.
Every attempt, found or not, is audited.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from sqlalchemy import select

from storage import audit
from storage.archive import Archive
from storage.models import AuditEvent, Patient
from storage.research.export import EXPORTED
from storage.research.keys import KeyStore


@dataclass
class Reidentified:
    pseudonym: str
    patient_id: str = ""
    issuer: str = ""
    name: str = ""
    # (de-identified study UID in the project, clinical study UID)
    studies: list[tuple[str, str]] = field(default_factory=list)

    @property
    def found(self) -> bool:
        return bool(self.patient_id)


def reidentify(
    clinical: Archive, keys: KeyStore, slug: str, pseudonym: str, *, actor: str, source: str
) -> Reidentified:
    key = keys.load(slug)
    out = Reidentified(pseudonym)
    with clinical.sessions() as session, session.begin():
        exported = session.execute(
            select(AuditEvent.patient_id, AuditEvent.study_uid)
            .where(AuditEvent.action == EXPORTED, AuditEvent.detail.startswith(f"project={slug} "))
            .distinct()
        ).all()
        by_patient: dict[str, set[str]] = {}
        for patient_id, study_uid in exported:
            by_patient.setdefault(patient_id, set()).add(study_uid)
        candidates = session.scalars(
            select(Patient).where(Patient.patient_id.in_(list(by_patient)))
        ).all()
        for patient in candidates:
            if key.pseudonym(patient.patient_id, patient.issuer) == pseudonym:
                out.patient_id, out.issuer, out.name = (
                    patient.patient_id,
                    patient.issuer,
                    patient.name,
                )
                out.studies = sorted((key.uid(s), s) for s in by_patient[patient.patient_id])
                break
        audit.record(
            session,
            actor=actor,
            source=source,
            action="research.reidentify",
            outcome="success" if out.found else "not-found",
            detail=f"project={slug} pseudonym={pseudonym}",
            patients=[(out.patient_id, s) for _, s in out.studies],
        )
    return out
