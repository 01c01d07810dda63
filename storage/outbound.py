"""What leaves the archive: the instances a query selects, as stored, with today's patient module.

Shared by every way out (C-MOVE/C-GET, DICOMweb), so they all show the same demographics.
"""

from __future__ import annotations

from io import BytesIO
from typing import Any

from pydicom import dcmread
from pydicom.dataset import Dataset
from sqlalchemy import select
from sqlalchemy.orm import Session

from storage.models import Instance, Patient, Series, Study
from storage.objects import ObjectStore
from storage.patientmodule import PatientModule
from storage.patientmodule import apply as apply_patient
from storage.query import Level


def instances_of(session: Session, level: Level, hits: list[Any]) -> list[Instance]:
    """Every instance under the matched entities, in series order."""
    if level is Level.IMAGE:
        return [h.instance for h in hits]
    if level is Level.SERIES:
        ids = [h.series.id for h in hits]
        stmt = select(Instance).where(Instance.series_fk.in_(ids))
    elif level is Level.STUDY:
        ids = [h.study.id for h in hits]
        stmt = select(Instance).join(Instance.series).where(Series.study_fk.in_(ids))
    else:
        ids = [h.patient.id for h in hits]
        stmt = (
            select(Instance)
            .join(Instance.series)
            .join(Series.study)
            .where(Study.patient_fk.in_(ids))
        )
    if not ids:
        return []
    return list(session.scalars(stmt.order_by(Instance.series_fk, Instance.id)))


def patient_modules(session: Session, instances: list[Instance]) -> dict[int, PatientModule]:
    """The current patient module for each instance id (after PAS renames and merges)."""
    out: dict[int, PatientModule] = {}
    ids = [i.id for i in instances]
    for start in range(0, len(ids), 500):
        rows = session.execute(
            select(
                Instance.id,
                Patient.patient_id,
                Patient.issuer,
                Patient.name,
                Patient.birth_date,
                Patient.sex,
            )
            .join(Instance.series)
            .join(Series.study)
            .join(Study.patient)
            .where(Instance.id.in_(ids[start : start + 500]))
        )
        for iid, *values in rows:
            out[iid] = PatientModule(*values)
    return out


def load(store: ObjectStore, inst: Instance, pm: PatientModule) -> Dataset:
    """The stored object with the current patient module; raises ObjectStoreError if unreadable."""
    return apply_patient(dcmread(BytesIO(store.get(inst.object_key))), pm)
