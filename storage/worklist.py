"""Orders as a modality worklist: placing, changing, matching, and MPPS state changes.

One order is one requested procedure with one scheduled procedure step. Demographics come
from the patient registry (PAS is the master), never from the order once the patient is known.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from pydicom.dataset import Dataset
from pydicom.tag import Tag
from sqlalchemy import ColumnElement, select
from sqlalchemy.orm import Session

from storage import prefetch, registry
from storage.demographics import Demographics
from storage.dicomheader import normalise_time
from storage.models import VISIBLE, Mpps, Order, OrderStatus, Patient, PatientStatus, utcnow
from storage.query import Key, keys_of, sql_condition
from storage.uids import derived_uid

# On the worklist; everything else has dropped off it.
ACTIVE = (OrderStatus.SCHEDULED, OrderStatus.IN_PROGRESS)
FINAL = (OrderStatus.COMPLETED, OrderStatus.DISCONTINUED, OrderStatus.CANCELLED)
PRIORITIES = ("STAT", "HIGH", "ROUTINE", "MEDIUM", "LOW")


class WorklistError(ValueError):
    """An order change that cannot be applied; the message says why."""


@dataclass(frozen=True)
class Code:
    """A coded procedure (DICOM Code Sequence item)."""

    code: str
    scheme: str
    meaning: str


@dataclass(frozen=True)
class OrderRequest:
    """What a placer (HL7 or REST) asks for; dates and times in DICOM DA/TM form."""

    patient: Demographics
    accession_number: str
    accession_issuer: str = ""
    placer_order_number: str = ""
    filler_order_number: str = ""
    requested_procedure_id: str = ""
    requested_procedure_description: str = ""
    procedure_codes: tuple[Code, ...] = ()
    sps_id: str = ""
    sps_description: str = ""
    station_ae: str = ""
    station_name: str = ""
    modality: str = ""
    scheduled_date: str = ""
    scheduled_time: str = ""
    performing_physician: str = ""
    referring_physician: str = ""
    priority: str = ""
    study_uid: str = ""  # empty: one is made under the UID root


def order_by_accession(session: Session, accession: str, issuer: str | None = None) -> Order | None:
    """The order with this accession number (any issuer when `issuer` is None; an active one
    first if several issuers used the same number)."""
    stmt = select(Order).where(Order.accession_number == accession)
    if issuer is not None:
        stmt = stmt.where(Order.accession_issuer == issuer)
    rows = list(session.scalars(stmt.order_by(Order.id)))
    rows.sort(key=lambda o: o.status not in ACTIVE)
    return rows[0] if rows else None


def find_order(
    session: Session, accession: str, issuer: str | None = None, placer: str = ""
) -> Order | None:
    """By accession number (and issuer, if given), else by placer order number."""
    if accession:
        found = order_by_accession(session, accession, issuer)
        if found is not None:
            return found
    if placer:
        return session.scalars(
            select(Order).where(Order.placer_order_number == placer).order_by(Order.id.desc())
        ).first()
    return None


def patient_for(session: Session, demo: Demographics) -> Patient:
    """The registry patient an order is for: PAS data wins for a known patient; an unknown one
    is created as verified, as an ADT message would (the order placer is fed by PAS)."""
    try:
        known = registry.holder(session, demo.identifiers)
    except registry.RegistryError as e:
        raise WorklistError(str(e)) from None
    if known is None:
        return registry.apply_pas(session, demo)
    if known.status == PatientStatus.QUARANTINED:
        raise WorklistError(
            f"patient {known.patient_id} is in quarantine ({known.status_reason}); "
            "an admin must resolve it before it can be ordered for"
        )
    registry.add_identifiers(session, known, demo.identifiers)
    return known


_COLUMNS = (
    "placer_order_number",
    "filler_order_number",
    "requested_procedure_id",
    "requested_procedure_description",
    "sps_id",
    "sps_description",
    "station_ae",
    "station_name",
    "modality",
    "scheduled_date",
    "scheduled_time",
    "performing_physician",
    "referring_physician",
    "priority",
)
_LIMITS = {c.key: getattr(c.type, "length", None) for c in Order.__table__.columns}


def _values(req: OrderRequest) -> dict[str, str]:
    """Column values for a request, cut to the column sizes, with IDs filled in as DICOM
    needs them (a requested procedure and a step always have an ID)."""
    out = {name: getattr(req, name) for name in _COLUMNS}
    out["scheduled_time"] = normalise_time(req.scheduled_time)
    out["requested_procedure_id"] = req.requested_procedure_id or req.accession_number
    out["sps_id"] = req.sps_id or out["requested_procedure_id"]
    out["priority"] = req.priority.upper()
    if out["priority"] and out["priority"] not in PRIORITIES:
        raise WorklistError(f"priority {req.priority!r} is not one of {', '.join(PRIORITIES)}")
    return {k: v[: _LIMITS[k]] if _LIMITS.get(k) else v for k, v in out.items()}


def _check(req: OrderRequest) -> None:
    if not req.accession_number:
        raise WorklistError("an order needs an accession number")
    if len(req.accession_number) > 16:
        raise WorklistError(f"accession number {req.accession_number!r} is longer than 16")
    if len(req.station_ae) > 16:
        raise WorklistError(f"station AE title {req.station_ae!r} is longer than 16")
    if req.scheduled_date and not (len(req.scheduled_date) == 8 and req.scheduled_date.isdigit()):
        raise WorklistError(f"scheduled date {req.scheduled_date!r} is not YYYYMMDD")


def _study_uid(uid_root: str, patient: Patient, req: OrderRequest) -> str:
    # an issuer is added only when there is one, so issuer-less orders match broker/dicomize
    issuer = (req.accession_issuer,) if req.accession_issuer else ()
    return derived_uid(uid_root, "study", patient.patient_id, req.accession_number, *issuer)


def place(
    session: Session, req: OrderRequest, *, source: str, uid_root: str, must_exist: bool = False
) -> tuple[Order, str]:
    """Create the order, or update it when the accession number is known; returns the order
    and 'created', 'updated' or 'unchanged' (a replay). Finished orders cannot change."""
    _check(req)
    order = order_by_accession(session, req.accession_number, req.accession_issuer)
    if order is None and must_exist:
        raise WorklistError(f"no order with accession number {req.accession_number}")
    if req.study_uid:
        holder = session.scalars(select(Order).where(Order.study_uid == req.study_uid)).first()
        if holder is not None and holder is not order:
            raise WorklistError(
                f"Study Instance UID {req.study_uid} belongs to order {holder.accession_number}"
            )
    patient = patient_for(session, req.patient)
    values = _values(req)
    codes = json.dumps([[c.code, c.scheme, c.meaning] for c in req.procedure_codes])
    if order is None:
        order = Order(
            accession_number=req.accession_number,
            accession_issuer=req.accession_issuer[:64],
            patient=patient,
            patient_id=patient.patient_id,
            procedure_codes=codes,
            study_uid=req.study_uid or _study_uid(uid_root, patient, req),
            status=OrderStatus.SCHEDULED,
            source=source,
            **values,
        )
        session.add(order)
        session.flush()
        prefetch.queue_for(
            session,
            patient.id,
            prefetch.Trigger("order", order.modality, order.study_uid),
            created_by=f"order:{source}",
            ref=order.accession_number,
        )
        return order, "created"
    if order.status in FINAL:
        raise WorklistError(
            f"order {order.accession_number} is {order.status} and can no longer be changed"
        )
    if order.patient_fk != patient.id:
        raise WorklistError(
            f"accession number {order.accession_number} belongs to patient {order.patient_id}"
        )
    changed = {k: v for k, v in values.items() if getattr(order, k) != v}
    if codes != order.procedure_codes:
        changed["procedure_codes"] = codes
    if req.study_uid and req.study_uid != order.study_uid:
        changed["study_uid"] = req.study_uid
    if not changed:
        return order, "unchanged"
    for k, v in changed.items():
        setattr(order, k, v)
    order.updated_at = utcnow()
    session.flush()
    return order, "updated"


# Which status an order may move to from where (MPPS and HL7 status changes both use it).
_ALLOWED = {
    OrderStatus.SCHEDULED: set(OrderStatus),
    OrderStatus.IN_PROGRESS: {
        OrderStatus.IN_PROGRESS,
        OrderStatus.COMPLETED,
        OrderStatus.DISCONTINUED,
        OrderStatus.SCHEDULED,  # a step discontinued by the modality may be rescheduled
    },
}


def set_status(order: Order, status: OrderStatus) -> bool:
    """Move an order to `status`; True if it changed. Replays are no-ops; leaving a final
    status, or cancelling a started step (it must be discontinued), is refused."""
    if order.status == status:
        return False
    if status not in _ALLOWED.get(OrderStatus(order.status), set()):
        hint = " (a started step is discontinued, not cancelled)" if status == "cancelled" else ""
        raise WorklistError(
            f"order {order.accession_number} is {order.status}; it cannot become {status}{hint}"
        )
    order.status = status
    order.updated_at = utcnow()
    return True


def change_status(
    session: Session,
    accession: str,
    status: OrderStatus,
    *,
    issuer: str | None = None,
    placer: str = "",
) -> Order:
    """Cancel, discontinue or otherwise move an order found by accession (or placer) number."""
    order = find_order(session, accession, issuer, placer)
    if order is None:
        raise WorklistError(f"no order with accession number {accession or placer!r}")
    set_status(order, status)
    session.flush()
    return order


def move_orders(session: Session, merged: Iterable[Patient], target: Patient) -> None:
    """After a PAS merge, the merged patients' orders belong to the survivor."""
    ids = [p.id for p in merged]
    if ids:
        for order in session.scalars(select(Order).where(Order.patient_fk.in_(ids))):
            order.patient = target
        session.flush()


# --- matching -------------------------------------------------------------------------

# DICOM attributes matched in SQL (PS3.4 K.6.1.2 matching keys), top level and inside the
# Scheduled Procedure Step Sequence item.
TOP_COLUMNS: dict[int, Any] = {
    0x00080050: Order.accession_number,
    0x00100010: Patient.name,
    0x00100020: Patient.patient_id,
    0x00100021: Patient.issuer,
    0x00100030: Patient.birth_date,
    0x00100040: Patient.sex,
    0x0020000D: Order.study_uid,
    0x00401001: Order.requested_procedure_id,
    0x00080090: Order.referring_physician,
    0x00402016: Order.placer_order_number,
    0x00402017: Order.filler_order_number,
}
SPS_COLUMNS: dict[int, Any] = {
    0x00400001: Order.station_ae,
    0x00400002: Order.scheduled_date,
    0x00400003: Order.scheduled_time,
    0x00080060: Order.modality,
    0x00400006: Order.performing_physician,
    0x00400009: Order.sps_id,
    0x00400010: Order.station_name,
}
SPS_SEQUENCE = 0x00400100
SPS_STATUS = 0x00400020
# DICOM Scheduled Procedure Step Status for the orders still on the worklist
SPS_STATUS_OF = {OrderStatus.SCHEDULED: "SCHEDULED", OrderStatus.IN_PROGRESS: "STARTED"}


def _conditions(
    keys: Sequence[Key], columns: dict[int, Any], pn_ci: bool
) -> list[ColumnElement[bool]]:
    out = []
    for key in keys:
        if key.tag in columns:
            cond = sql_condition(columns[key.tag], key, pn_ci)
            if cond is not None:
                out.append(cond)
    return out


def _status_condition(keys: Sequence[Key]) -> ColumnElement[bool]:
    wanted = next((k.value for k in keys if k.tag == SPS_STATUS and k.value), "")
    states = [s for s, dicom in SPS_STATUS_OF.items() if not wanted or dicom in wanted.split("\\")]
    return Order.status.in_(states)


def matching(
    session: Session, identifier: Dataset, *, pn_case_insensitive: bool
) -> list[tuple[Order, Patient]]:
    """Active orders matching a Modality Worklist C-FIND identifier, oldest step first."""
    top = keys_of(identifier)
    sps: list[Key] = []
    seq = identifier.get(SPS_SEQUENCE)
    if seq is not None and seq.VR == "SQ" and seq.value:
        sps = keys_of(seq.value[0])
    conds = _conditions(top, TOP_COLUMNS, pn_case_insensitive)
    conds += _conditions(sps, SPS_COLUMNS, pn_case_insensitive)
    return _select(session, [_status_condition(sps), *conds])


def listing(
    session: Session, *, status: str = "", station: str = "", date: str = ""
) -> list[tuple[Order, Patient]]:
    """Orders for the REST API; by default those still on the worklist."""
    conds: list[ColumnElement[bool]] = [
        Order.status == status if status else Order.status.in_(ACTIVE)
    ]
    if station:
        conds.append(Order.station_ae == station)
    if date:
        conds.append(Order.scheduled_date == date.replace("-", ""))
    return _select(session, conds, visible_only=False)


def _select(
    session: Session, conds: list[ColumnElement[bool]], *, visible_only: bool = True
) -> list[tuple[Order, Patient]]:
    # quarantined and merged-away patients are invisible to clinical queries
    stmt = select(Order, Patient).join(Order.patient).where(*conds)
    if visible_only:
        stmt = stmt.where(Patient.status.in_(VISIBLE))
    stmt = stmt.order_by(Order.scheduled_date, Order.scheduled_time, Order.id)
    return [(o, p) for o, p in session.execute(stmt)]


def codes_of(order: Order) -> list[Code]:
    return [Code(*c) for c in json.loads(order.procedure_codes or "[]")]


# --- MPPS -----------------------------------------------------------------------------

PPS_IN_PROGRESS, PPS_COMPLETED, PPS_DISCONTINUED = "IN PROGRESS", "COMPLETED", "DISCONTINUED"
_ORDER_STATUS = {
    PPS_IN_PROGRESS: OrderStatus.IN_PROGRESS,
    PPS_COMPLETED: OrderStatus.COMPLETED,
    PPS_DISCONTINUED: OrderStatus.DISCONTINUED,
}


# PS3.4 Table F.7.2-1: what N-CREATE fixed and an N-SET may not change ("Not allowed")
NOT_SETTABLE = frozenset(
    Tag(keyword)
    for keyword in (
        "ScheduledStepAttributesSequence",
        "PatientName",
        "PatientID",
        "IssuerOfPatientID",
        "IssuerOfPatientIDQualifiersSequence",
        "OtherPatientIDsSequence",
        "PatientBirthDate",
        "PatientSex",
        "ReferencedPatientSequence",
        "AdmissionID",
        "IssuerOfAdmissionIDSequence",
        "ServiceEpisodeID",
        "IssuerOfServiceEpisodeIDSequence",
        "ServiceEpisodeDescription",
        "PerformedProcedureStepID",
        "PerformedStationAETitle",
        "PerformedStationName",
        "PerformedLocation",
        "PerformedProcedureStepStartDate",
        "PerformedProcedureStepStartTime",
        "Modality",
        "StudyID",
    )
)


class MppsProblem(StrEnum):
    """Why an MPPS change was refused (the SCP maps these to DIMSE status codes)."""

    DUPLICATE = "duplicate"
    UNKNOWN = "unknown"
    FINAL = "final"
    INVALID = "invalid"
    MISSING = "missing"


class MppsError(ValueError):
    def __init__(self, problem: MppsProblem, message: str) -> None:
        super().__init__(message)
        self.problem = problem


@dataclass(frozen=True)
class MppsResult:
    mpps: Mpps
    orders: list[Order]


def _pps_status(ds: Dataset, *, required: bool) -> str | None:
    if "PerformedProcedureStepStatus" not in ds:
        if required:
            raise MppsError(MppsProblem.MISSING, "Performed Procedure Step Status is missing")
        return None
    value = str(ds.PerformedProcedureStepStatus or "").strip().upper()
    if value not in _ORDER_STATUS:
        raise MppsError(
            MppsProblem.INVALID, f"Performed Procedure Step Status {value!r} is not valid"
        )
    return value


def _scheduled_orders(session: Session, ds: Dataset) -> list[Order]:
    """The orders the step's Scheduled Step Attributes Sequence names (none: unscheduled)."""
    out: list[Order] = []
    for item in ds.get("ScheduledStepAttributesSequence") or []:
        order = None
        study = str(item.get("StudyInstanceUID") or "").strip()
        if study:
            order = session.scalars(select(Order).where(Order.study_uid == study)).first()
        accession = str(item.get("AccessionNumber") or "").strip()
        if order is None and accession:
            order = order_by_accession(session, accession)
        if order is not None and order not in out:
            out.append(order)
    return out


def _follow(orders: list[Order], pps: str) -> None:
    """Orders follow their performed step; finished or cancelled orders are left alone."""
    for order in orders:
        if order.status in ACTIVE:
            set_status(order, _ORDER_STATUS[pps])


def mpps_create(session: Session, sop_uid: str, ds: Dataset, calling_ae: str) -> MppsResult:
    """N-CREATE: a new step, IN PROGRESS; the orders it names become in progress."""
    if _pps_status(ds, required=True) != PPS_IN_PROGRESS:
        raise MppsError(MppsProblem.INVALID, "a new step must be IN PROGRESS")
    exists = session.scalar(select(Mpps.id).where(Mpps.sop_uid == sop_uid))
    if exists is not None:
        raise MppsError(MppsProblem.DUPLICATE, f"MPPS {sop_uid} exists already")
    orders = _scheduled_orders(session, ds)
    row = Mpps(
        sop_uid=sop_uid,
        order_fk=orders[0].id if orders else None,
        status=PPS_IN_PROGRESS,
        calling_ae=calling_ae[:16],
        attrs=ds.to_json(),
    )
    session.add(row)
    _follow(orders, PPS_IN_PROGRESS)
    session.flush()
    return MppsResult(row, orders)


def _check_settable(changes: Dataset) -> None:
    fixed = [elem.keyword or str(elem.tag) for elem in changes if elem.tag in NOT_SETTABLE]
    if fixed:
        raise MppsError(
            MppsProblem.INVALID,
            f"N-SET may not change {', '.join(fixed)} (PS3.4 Table F.7.2-1)",
        )


def _created_orders(session: Session, row: Mpps, created: Dataset) -> list[Order]:
    """The orders N-CREATE found for the step, from its Scheduled Step Attributes Sequence,
    which no N-SET can change; an unscheduled step stays unscheduled."""
    return _scheduled_orders(session, created) if row.order_fk is not None else []


def mpps_set(session: Session, sop_uid: str, changes: Dataset) -> MppsResult:
    """N-SET: update a step in progress; COMPLETED or DISCONTINUED ends it and the orders it
    was created for."""
    row = session.scalars(select(Mpps).where(Mpps.sop_uid == sop_uid)).first()
    if row is None:
        raise MppsError(MppsProblem.UNKNOWN, f"no MPPS {sop_uid}")
    if row.status != PPS_IN_PROGRESS:
        raise MppsError(
            MppsProblem.FINAL,
            f"Performed Procedure Step is {row.status} and may no longer be updated",
        )
    _check_settable(changes)
    new = _pps_status(changes, required=False) or row.status
    ds = Dataset.from_json(row.attrs)
    orders = _created_orders(session, row, ds)
    for elem in changes:
        ds[elem.tag] = elem
    row.attrs = ds.to_json()
    row.status = new
    row.updated_at = utcnow()
    _follow(orders, new)
    session.flush()
    return MppsResult(row, orders)


_SHOWN = ("accession_number", "accession_issuer", *_COLUMNS, "study_uid", "status", "source")


def as_dict(order: Order, patient: Patient) -> dict[str, Any]:
    """An order as the REST API shows it; demographics are the registry's current ones."""
    out: dict[str, Any] = {name: getattr(order, name) for name in _SHOWN}
    out["scheduled_time"] = order.scheduled_time[:6]
    out["procedure_codes"] = [c.__dict__ for c in codes_of(order)]
    out["patient"] = {
        "id": patient.patient_id,
        "issuer": patient.issuer,
        "name": patient.name,
        "birth_date": patient.birth_date,
        "sex": patient.sex,
    }
    out["created_at"], out["updated_at"] = order.created_at, order.updated_at
    return out
