"""The write side of the index: file a batch of archived objects in one transaction."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from enum import StrEnum

from sqlalchemy import select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from storage import registry, removal
from storage.demographics import Demographics, Identifier
from storage.dicomheader import Header
from storage.models import Conflict, Instance, Patient, PatientStatus, Quarantined, Series, Study
from storage.query import normalise_pn


class Outcome(StrEnum):
    STORED = "stored"
    DUPLICATE = "duplicate"
    CONFLICT = "conflict"


@dataclass
class Archived:
    """An object already written to the archive, waiting to be indexed."""

    header: Header
    object_key: str
    size: int
    sha256: str
    source_ae: str
    received_at: dt.datetime


def existing(session: Session, sop_uids: Sequence[str]) -> dict[str, tuple[str, str]]:
    """sop_uid → (sha256, object_key) for the UIDs already in the index."""
    if not sop_uids:
        return {}
    rows = session.execute(
        select(Instance.sop_uid, Instance.sha256, Instance.object_key).where(
            Instance.sop_uid.in_(list(sop_uids))
        )
    )
    return {uid: (sha, key) for uid, sha, key in rows}


def _insert(session: Session, table: type, values: dict[str, object], keys: list[str]) -> None:
    """INSERT … ON CONFLICT DO NOTHING, for SQLite and PostgreSQL alike."""
    dialect = session.get_bind().dialect.name
    ins = (postgresql.insert if dialect == "postgresql" else sqlite.insert)(table)
    session.execute(ins.values(**values).on_conflict_do_nothing(index_elements=keys))


def _study_id(session: Session, h: Header, patient_fk: int, cache: dict[str, int]) -> int:
    if h.study_uid not in cache:
        _insert(
            session,
            Study,
            {
                "patient_fk": patient_fk,
                "study_uid": h.study_uid,
                "study_date": h.study_date,
                "study_time": h.study_time,
                "accession_number": h.accession_number,
                "study_id": h.study_id,
                "description": h.study_description,
                "referring_physician": h.referring_physician,
                "attrs": h.attrs,
                "attrs_ts": h.attrs_ts,
            },
            ["study_uid"],
        )
        cache[h.study_uid] = session.execute(
            select(Study.id).where(Study.study_uid == h.study_uid)
        ).scalar_one()
    return cache[h.study_uid]


def _series_id(session: Session, h: Header, study_fk: int, cache: dict[str, int]) -> int:
    if h.series_uid not in cache:
        _insert(
            session,
            Series,
            {
                "study_fk": study_fk,
                "series_uid": h.series_uid,
                "modality": h.modality,
                "series_number": h.series_number,
                "description": h.series_description,
                "body_part": h.body_part,
                "attrs": h.attrs,
                "attrs_ts": h.attrs_ts,
            },
            ["series_uid"],
        )
        cache[h.series_uid] = session.execute(
            select(Series.id).where(Series.series_uid == h.series_uid)
        ).scalar_one()
    return cache[h.series_uid]


PatientOf = Callable[[Session, Header], Patient]


def _indexed(h: Header) -> Header:
    """The header with its person names as the index keeps and matches them."""
    return replace(
        h,
        patient_name=normalise_pn(h.patient_name),
        referring_physician=normalise_pn(h.referring_physician),
    )


def header_patient(session: Session, h: Header) -> Patient:
    """Without reconciliation: the patient as the header has it (tools and tests)."""
    demo = Demographics((Identifier("", h.patient_id),), h.patient_name, h.birth_date, h.sex)
    return registry.find(session, demo.identifiers[0]) or registry.create(
        session, demo, PatientStatus.LOCAL, issuer=h.issuer
    )


def file_instances(
    session: Session, items: Sequence[Archived], patient_of: PatientOf = header_patient
) -> list[Outcome]:
    """Index archived objects; the caller commits. Same UID twice: duplicate or conflict."""
    known = existing(session, [a.header.sop_uid for a in items])
    removed = removal.removed_since(session, {a.header.sop_uid: a.received_at for a in items})
    patients: dict[tuple[str, str], Patient] = {}
    studies: dict[str, int] = {}
    series: dict[str, int] = {}
    out: list[Outcome] = []
    for a in items:
        h = _indexed(a.header)
        if h.sop_uid in removed:  # a spool replay of what retention deleted since: stays deleted
            removal.discard(session, a.object_key)
            out.append(Outcome.DUPLICATE)
            continue
        prior = known.get(h.sop_uid)
        if prior is not None:
            if prior[0] == a.sha256:
                out.append(Outcome.DUPLICATE)
                continue
            _insert(
                session,
                Conflict,
                {
                    "sop_uid": h.sop_uid,
                    "object_key": a.object_key,
                    "size": a.size,
                    "sha256": a.sha256,
                    "source_ae": a.source_ae,
                    "received_at": a.received_at,
                },
                ["sop_uid", "sha256"],
            )
            out.append(Outcome.CONFLICT)
            continue
        ident = (h.patient_id, h.issuer)
        if ident not in patients:
            patients[ident] = patient_of(session, h)
        patient = patients[ident]
        stfk = _study_id(session, h, patient.id, studies)
        sefk = _series_id(session, h, stfk, series)
        session.add(
            Instance(
                series_fk=sefk,
                sop_uid=h.sop_uid,
                sop_class_uid=h.sop_class_uid,
                instance_number=h.instance_number,
                transfer_syntax=h.transfer_syntax,
                object_key=a.object_key,
                size=a.size,
                sha256=a.sha256,
                source_ae=a.source_ae[:16],
                received_at=a.received_at,
                attrs=h.attrs,
                attrs_ts=h.attrs_ts,
                header_differences=registry.header_differences(
                    patient, h.patient_name, h.birth_date, h.sex
                ),
            )
        )
        known[h.sop_uid] = (a.sha256, a.object_key)
        out.append(Outcome.STORED)
    session.flush()
    return out


def quarantine(
    session: Session,
    *,
    object_key: str,
    size: int,
    sha256: str,
    reason: str,
    sop_uid: str,
    source_ae: str,
    received_at: dt.datetime,
) -> None:
    _insert(
        session,
        Quarantined,
        {
            "object_key": object_key,
            "size": size,
            "sha256": sha256,
            "reason": reason,
            "sop_uid": sop_uid,
            "source_ae": source_ae[:16],
            "received_at": received_at,
        },
        ["object_key"],
    )
