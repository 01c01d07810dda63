"""The patient registry: PAS demographics, identifiers, merges and identifier changes."""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, cast

from sqlalchemy import (
    BindParameter,
    Connection,
    Table,
    Update,
    bindparam,
    or_,
    select,
    update,
)
from sqlalchemy.orm import Session
from sqlalchemy.orm.util import identity_key

from storage import dicomheader, nationalid
from storage.demographics import NATIONAL_SYSTEMS, OID_PREFIX, Demographics, Identifier
from storage.models import (
    Instance,
    Patient,
    PatientIdentifier,
    PatientStatus,
    Series,
    Study,
    utcnow,
)

_OID = re.compile(r"^[0-2](\.(0|[1-9][0-9]*))+$")
# characters that delimit components, groups and values in a DICOM PN, and control characters
_PN_UNSAFE = re.compile(r"[\^=\\\x00-\x1f]")
# the end of the status reason of patients quarantined because PAS did not know them
_UNKNOWN_TO_PAS = " is unknown to PAS"
_PATIENTS = cast(Table, Patient.__table__)
_IDENTIFIERS = cast(Table, PatientIdentifier.__table__)
# what apply_pas sets on the patient PAS describes, but pas_updated_at
_PAS_COLUMNS = ("name", "birth_date", "sex", "status", "status_reason")
# built once: building and coercing a statement costs more than SQLite running it
_HOLDERS = select(
    _IDENTIFIERS.c.system,
    _IDENTIFIERS.c.value,
    _PATIENTS.c.id,
    _PATIENTS.c.patient_id,
    _PATIENTS.c.merged_into_fk,
    *(_PATIENTS.c[c] for c in _PAS_COLUMNS),
).join(_PATIENTS, _PATIENTS.c.id == _IDENTIFIERS.c.patient_fk)
# most messages carry one identifier; an expanding IN is re-rendered at every execution
_HELD_ONE = _HOLDERS.where(_IDENTIFIERS.c.value == bindparam("value"))
_HELD_ANY = _HOLDERS.where(_IDENTIFIERS.c.value.in_(bindparam("values", expanding=True)))


@functools.cache
def _set_columns(columns: tuple[str, ...]) -> Update:
    """UPDATE of one patient's `columns` (values `new_<column>`), one statement per set of
    columns, built once. Only the changed columns are set, as the ORM does: SQLite rewrites
    the index of every column an UPDATE sets, a page of WAL (and fsync) each."""
    values: dict[str, BindParameter[Any]] = {
        c: bindparam(f"new_{c}") for c in (*columns, "pas_updated_at")
    }
    return update(_PATIENTS).where(_PATIENTS.c.id == bindparam("patient")).values(values)


class RegistryError(ValueError):
    """A PAS change that cannot be applied; the message says why."""


def issuer_system(namespace: str, universal_id: str = "") -> str:
    """The identifier system of an assigning authority: its OID, the national register's OID
    for the names senders use (FNR, NOR, DNR, HNR, ...), else `urn:ns:<namespace>`."""
    for oid in (universal_id.strip(), namespace.strip()):
        if _OID.match(oid):
            return OID_PREFIX + oid
    kind = nationalid.authority_kind(namespace)
    if kind is not None:
        return NATIONAL_SYSTEMS[kind]
    return "urn:ns:" + namespace.strip() if namespace.strip() else ""


def identifier(
    value: str, system: str, *, national_type: bool = False, allow_synthetic: bool
) -> Identifier:
    """`value` in `system`. A national ID (national system or type code, or 11 digits with no
    system) is validated and filed under the register its digits name; else InvalidNationalId."""
    national = national_type or system in NATIONAL_SYSTEMS.values()
    if national or (not system and nationalid.looks_national(value)):
        # the digits decide: senders often label a D-nummer as FNR
        kind = nationalid.parse(value, allow_synthetic=allow_synthetic).kind
        return Identifier(NATIONAL_SYSTEMS[kind], value)
    return Identifier(system, value)


def person_name(parts: Iterable[str]) -> str:
    """DICOM PN from components (family, given, middle, ...). A `^`, `=` or `\\` inside one
    would split it in DICOM, so it becomes a space, like control characters (HL7 `\\.br\\`)."""
    clean = [" ".join(_PN_UNSAFE.sub(" ", p).split()) for p in parts]
    while clean and not clean[-1]:
        clean.pop()
    return "^".join(clean)


def primary(identifiers: Sequence[Identifier]) -> Identifier:
    """The identifier the archive shows as Patient ID: a national ID if there is one."""
    return next((i for i in identifiers if i.national), identifiers[0])


def survivor(session: Session, patient: Patient) -> Patient:
    """Follow merge links to the patient that PAS kept."""
    seen = {patient.id}
    while patient.merged_into_fk is not None:
        nxt = session.get(Patient, patient.merged_into_fk)
        if nxt is None or nxt.id in seen:
            break
        seen.add(nxt.id)
        patient = nxt
    return patient


def find(session: Session, ident: Identifier) -> Patient | None:
    """The patient holding `ident`; without a system, any system's identifier of that value
    (a national ID first), since modalities rarely send an issuer."""
    stmt = select(PatientIdentifier).where(PatientIdentifier.value == ident.value)
    rows = list(session.scalars(stmt))
    exact = [r for r in rows if r.system == ident.system]
    if ident.system and not exact:
        exact = [r for r in rows if not r.system]
    pick = exact or ([] if ident.system else rows)
    if not pick:
        return None
    pick.sort(key=lambda r: not Identifier(r.system, r.value).national)
    return survivor(session, pick[0].patient)


def find_any(session: Session, identifiers: Iterable[Identifier]) -> Patient | None:
    for ident in identifiers:
        p = find(session, ident)
        if p is not None:
            return p
    return None


def _row(session: Session, ident: Identifier) -> PatientIdentifier | None:
    """The registry row of exactly this system and value."""
    return session.scalars(
        select(PatientIdentifier).where(
            PatientIdentifier.value == ident.value, PatientIdentifier.system == ident.system
        )
    ).first()


def add_identifiers(session: Session, patient: Patient, identifiers: Iterable[Identifier]) -> None:
    for ident in identifiers:
        row = _row(session, ident)
        if row is None:
            session.add(PatientIdentifier(patient=patient, system=ident.system, value=ident.value))
        elif row.patient_fk != patient.id:
            row.patient = patient


def _shown_id(session: Session, patient: Patient | None, ident: Identifier) -> tuple[str, str]:
    """(patient_id, issuer) for display; the issuer separates equal values from two systems."""
    taken = session.scalars(
        select(Patient).where(Patient.patient_id == ident.value, Patient.issuer == "")
    ).first()
    if taken is None or taken is patient:
        return ident.value, ""
    return ident.value, ident.system.removeprefix("urn:oid:")[:64]


def create(
    session: Session,
    demo: Demographics,
    status: PatientStatus,
    reason: str = "",
    issuer: str = "",
) -> Patient:
    ident = primary(demo.identifiers)
    pid, shown_issuer = (ident.value, issuer) if issuer else _shown_id(session, None, ident)
    patient = Patient(
        patient_id=pid,
        issuer=shown_issuer,
        name=demo.name,
        birth_date=demo.birth_date,
        sex=demo.sex,
        status=status,
        status_reason=reason,
        pas_updated_at=utcnow() if status is PatientStatus.VERIFIED else None,
    )
    session.add(patient)
    add_identifiers(session, patient, demo.identifiers)
    session.flush()
    return patient


def holder(session: Session, identifiers: Iterable[Identifier]) -> Patient | None:
    """The patient holding `identifiers` (as `find_any` when none is held as given);
    RegistryError if several patients hold them, as taking them over would rob the others."""
    idents = list(identifiers)
    rows = (_row(session, i) for i in idents)
    found = {p.id: p for p in (survivor(session, r.patient) for r in rows if r is not None)}
    if len(found) > 1:
        raise RegistryError(
            "PID-3: identifiers belong to different patients ("
            + ", ".join(p.patient_id for p in found.values())
            + "); use A40 to merge"
        )
    return next(iter(found.values()), None) or find_any(session, idents)


def apply_pas(session: Session, demo: Demographics, *, strict: bool = True) -> Patient:
    """Create or update the patient PAS describes; it becomes verified and visible. `strict`
    refuses identifiers held by different patients (HL7); lookups at ingest keep PAS's grouping."""
    patient = holder(session, demo.identifiers) if strict else find_any(session, demo.identifiers)
    if patient is None:
        return create(session, demo, PatientStatus.VERIFIED)
    for column, value in demo.changes().items():
        setattr(patient, column, value)
    patient.status, patient.status_reason = PatientStatus.VERIFIED, ""
    patient.pas_updated_at = utcnow()
    add_identifiers(session, patient, demo.identifiers)
    ident = primary(demo.identifiers)
    if ident.national and patient.patient_id != ident.value:
        patient.patient_id, patient.issuer = _shown_id(session, patient, ident)
    session.flush()
    return patient


@dataclass(frozen=True)
class Updated:
    """The patient `update_held` changed: its row ID and the Patient ID the archive shows."""

    id: int
    patient_id: str


def update_held(bind: Session | Connection, demo: Demographics) -> Updated | None:
    """`apply_pas` (strict) for the usual ADT update, in two Core statements and no ORM
    objects: when every identifier is in the registry as given, all held by one unmerged
    patient, and the shown Patient ID stays, `apply_pas` would only set the demographics
    (and the status: verified).
    None (nothing done) when it would do more; the caller then runs `apply_pas`."""
    conn = bind
    if isinstance(bind, Session):
        bind.flush()  # the SELECT below bypasses autoflush
        conn = bind.connection()
    values = list(dict.fromkeys(i.value for i in demo.identifiers))
    if len(values) == 1:
        rows = conn.execute(_HELD_ONE, {"value": values[0]}).all()
    else:
        rows = conn.execute(_HELD_ANY, {"values": values}).all()
    held = {(r.system, r.value): r for r in rows}
    if any((i.system, i.value) not in held for i in demo.identifiers):
        return None  # apply_pas adds it, or takes a value without a system
    holders = {held[(i.system, i.value)] for i in demo.identifiers}
    owner = next(iter(holders))
    if len({r.id for r in holders}) > 1 or owner.merged_into_fk is not None:
        return None  # apply_pas refuses, or follows the merge
    ident = primary(demo.identifiers)
    if ident.national and owner.patient_id != ident.value:
        return None  # apply_pas changes the shown ID
    new = {**demo.changes(), "status": PatientStatus.VERIFIED, "status_reason": ""}
    changed = tuple(c for c, v in new.items() if getattr(owner, c) != v)
    params = {f"new_{c}": new[c] for c in changed}
    conn.execute(
        _set_columns(changed), {"patient": owner.id, "new_pas_updated_at": utcnow(), **params}
    )
    if isinstance(bind, Session):
        loaded = bind.identity_map.get(identity_key(Patient, owner.id))
        if loaded is not None:
            bind.expire(loaded)  # the UPDATE went past the ORM
    return Updated(owner.id, owner.patient_id)


def merge(
    session: Session, demo: Demographics, prior: Sequence[Identifier]
) -> tuple[Patient, list[Patient]]:
    """A40/A34: move every study of the patients holding `prior` to the survivor in `demo`."""
    target = apply_pas(session, demo)
    merged: list[Patient] = []
    for ident in prior:
        old = find(session, ident)
        if old is None or old.id == target.id:
            continue
        absorb(session, old, target, f"merged into {target.patient_id} by PAS")
        merged.append(old)
    return target, merged


def absorb(session: Session, old: Patient, target: Patient, reason: str) -> None:
    """`old` becomes an alias of `target`: its studies and identifiers move over."""
    move_studies(session, old, target)
    for row in list(old.identifiers):
        row.patient = target
    old.status, old.merged_into_fk, old.status_reason = PatientStatus.MERGED, target.id, reason
    session.flush()


def change_identifier(session: Session, demo: Demographics, prior: Sequence[Identifier]) -> Patient:
    """A47: the identifiers in `prior` are replaced by those in `demo`."""
    patient = find_any(session, prior)
    if patient is None:
        raise RegistryError(
            "MRG-1: no patient holds " + ", ".join(i.value for i in prior) + " in the archive"
        )
    owner = holder(session, demo.identifiers)
    if owner is not None and owner.id != patient.id:
        raise RegistryError(f"PID-3: {owner.patient_id} already belongs to another patient")
    for ident in prior:
        for row in list(patient.identifiers):
            if row.value == ident.value and row.system in (ident.system, ""):
                session.delete(row)
    session.flush()
    add_identifiers(session, patient, demo.identifiers)
    session.flush()
    return apply_pas(session, demo)


def move_studies(session: Session, source: Patient, target: Patient) -> None:
    session.execute(update(Study).where(Study.patient_fk == source.id).values(patient_fk=target.id))
    session.expire(source, ["studies"])
    session.expire(target, ["studies"])


def header_differences(patient: Patient, name: str, birth_date: str, sex: str) -> str:
    """JSON of what the sender's header said where it differs from PAS; empty if nothing."""
    if patient.status != PatientStatus.VERIFIED:
        return ""
    got = {"PatientName": name, "PatientBirthDate": birth_date, "PatientSex": sex}
    want = {
        "PatientName": patient.name,
        "PatientBirthDate": patient.birth_date,
        "PatientSex": patient.sex,
    }
    diff = {k: v for k, v in got.items() if v and v != want[k]}
    return json.dumps(diff, ensure_ascii=False) if diff else ""


def study_instances(session: Session, study: Study) -> list[Instance]:
    return list(
        session.scalars(select(Instance).join(Instance.series).where(Series.study_fk == study.id))
    )


def unknown_reason(value: str) -> str:
    """The status reason of a patient quarantined because PAS does not know `value`."""
    return f"Patient ID {value}{_UNKNOWN_TO_PAS}"


def unknown_to_pas(patient: Patient) -> bool:
    return patient.status == PatientStatus.QUARANTINED and patient.status_reason.endswith(
        _UNKNOWN_TO_PAS
    )


def awaiting_pas(session: Session) -> list[Patient]:
    """Patients to ask PAS about again: filed while it was down, or quarantined because it
    did not know them (a PAS registration may come later; an invalid ID stays invalid)."""
    quarantined = (Patient.status == PatientStatus.QUARANTINED) & Patient.status_reason.endswith(
        _UNKNOWN_TO_PAS, autoescape=True
    )
    return list(
        session.scalars(
            select(Patient)
            .where(or_(Patient.status == PatientStatus.UNVERIFIED, quarantined))
            .order_by(Patient.id)
        )
    )


def record_header_differences(session: Session, study_ids: Iterable[int], patient: Patient) -> None:
    """Compare each instance's stored header in these studies with `patient`'s PAS values, as
    ingest does for a verified patient (instances filed before PAS answered have none)."""
    ids = list(study_ids)
    if not ids:
        return
    stmt = select(Instance).join(Instance.series).where(Series.study_fk.in_(ids))
    for inst in session.scalars(stmt):
        ds = dicomheader.decode_attrs(inst.attrs, inst.attrs_ts)
        name, birth, sex = (
            str(ds.get(k, "") or "").strip("\0 ")
            for k in ("PatientName", "PatientBirthDate", "PatientSex")
        )
        inst.header_differences = header_differences(patient, name, birth, sex)
    session.flush()
