"""HL7 v2 orders (ORM^O01, OMG^O19) onto the worklist: parsed, persisted, applied, acknowledged.

Field mapping is documented in docs/worklist.md; PID is read exactly as for ADT.
"""

from __future__ import annotations

import datetime as dt
import logging
import re
from dataclasses import dataclass, field

import hl7
from sqlalchemy.orm import Session, sessionmaker

from broker.pas.adt import HeldConnections, Hl7Applier, Tx
from broker.pas.hl7v2 import (
    Header,
    Hl7Error,
    get_field,
    parse_date,
    patient_of,
    read,
    segment,
)
from storage import registry, worklist
from storage.demographics import Demographics
from storage.models import Order, OrderStatus

log = logging.getLogger("pacsbroker.hl7")

TRIGGERS = {"ORM": "O01", "OMG": "O19"}
CONTROLS = {"NW", "XO", "CA", "DC", "SC"}
# ORC-5 order status (HL7 table 0038) for ORC-1 = SC
ORDER_STATUS = {
    "SC": OrderStatus.SCHEDULED,
    "IP": OrderStatus.IN_PROGRESS,
    "CM": OrderStatus.COMPLETED,
    "DC": OrderStatus.DISCONTINUED,
    "CA": OrderStatus.CANCELLED,
}
# TQ1-9 / TQ-6 priority (HL7 table 0485) as DICOM Requested Procedure Priority
PRIORITY = {"S": "STAT", "A": "HIGH", "P": "HIGH", "C": "HIGH", "T": "HIGH", "R": "ROUTINE"}
_UID = re.compile(r"^[0-2](\.(0|[1-9][0-9]*))+$")
_CLOCK = re.compile(r"(([01]\d|2[0-3])([0-5]\d([0-5]\d)?)?)?")
_ZONE = re.compile(r"([+-])(\d\d)(\d\d)$")


@dataclass(frozen=True)
class OrderItem:
    """One ORC group: what to do (ORC-1) to which order; `request` for NW and XO only."""

    control: str
    accession: str
    placer: str
    order_status: str = ""
    request: worklist.OrderRequest | None = None


@dataclass(frozen=True)
class OrderMessage:
    trigger: str
    control_id: str
    sender: str
    patient: Demographics | None
    items: tuple[OrderItem, ...]
    header: Header = field(default_factory=Header)


@dataclass
class _Group:
    """Which occurrence of each segment belongs to one ORC group (1-based, 0 = absent)."""

    orc: int
    obr: int = 0
    tq1: int = 0
    zds: int = 0


def _groups(msg: hl7.Message) -> list[_Group]:
    seen: dict[str, int] = {}
    out: list[_Group] = []
    for seg in msg:
        name = str(seg[0]).strip()
        seen[name] = seen.get(name, 0) + 1
        if name == "ORC":
            out.append(_Group(seen[name]))
        elif out and name in ("OBR", "TQ1", "ZDS"):
            setattr(out[-1], name.lower(), getattr(out[-1], name.lower()) or seen[name])
    return out


class _Reader:
    """Field access within one ORC group; absent segments read as empty."""

    def __init__(self, msg: hl7.Message, group: _Group) -> None:
        self.msg, self.group = msg, group

    def get(self, seg: str, fld: int, comp: int = 1, sub: int = 1) -> str:
        num = getattr(self.group, seg.lower(), 1) if seg in ("ORC", "OBR", "TQ1", "ZDS") else 1
        if not num:
            return ""
        return get_field(segment(self.msg, seg, num), fld, 1, comp, sub)

    def first(self, *where: tuple[str, int, int]) -> str:
        """The first non-empty of several (segment, field, component) places."""
        for seg, fld, comp in where:
            value = self.get(seg, fld, comp)
            if value:
                return value
        return ""

    def person(self, seg: str, fld: int) -> str:
        """An XCN (id^family^given^middle), or the older CN-in-a-component form, as DICOM PN."""
        parts = [self.get(seg, fld, c) for c in (2, 3, 4)]
        if not parts[0]:
            parts = [self.get(seg, fld, 1, s) for s in (2, 3, 4)]
        if not parts[0]:
            only = self.get(seg, fld, 1)
            parts = [only if not only.isdigit() else ""]
        return registry.person_name(parts)


def _start(r: _Reader) -> tuple[str, str]:
    """(DA, TM) of the scheduled start: TQ1-7 (v2.5), OBR-27.4 / ORC-7.4 (v2.3), OBR-36."""
    value, where = "", ""
    for seg, fld, comp, name in (
        ("TQ1", 7, 1, "TQ1-7"),
        ("OBR", 27, 4, "OBR-27.4"),
        ("ORC", 7, 4, "ORC-7.4"),
        ("OBR", 36, 1, "OBR-36"),
    ):
        value = r.get(seg, fld, comp)
        if value:
            where = name
            break
    if not value:
        raise Hl7Error(
            "AE", "no scheduled start: TQ1-7, OBR-27.4, ORC-7.4 and OBR-36 are empty", err="101"
        )
    stamp = re.sub(r"\D.*", "", value)  # a TS may end in a fraction or a zone offset
    day = parse_date(stamp[:8] if len(stamp) >= 8 else value, where)
    clock = stamp[8:14]
    if not _CLOCK.fullmatch(clock):
        raise Hl7Error(
            "AE", f"{where}: {value!r} is not a time stamp (YYYYMMDD[HHMM[SS]])", err="102"
        )
    return _local(day, clock, value)


def _local(day: str, clock: str, value: str) -> tuple[str, str]:
    """The start in the broker's zone when the TS names its own (+HHMM): the worklist's dates
    and times are local, and a modality compares them with its own clock."""
    zone = _ZONE.search(value)
    if zone is None or not clock:
        return day, clock
    offset = dt.timedelta(hours=int(zone[2]), minutes=int(zone[3]))
    there = dt.timezone(offset if zone[1] == "+" else -offset)
    start = dt.datetime.strptime(day + clock.ljust(6, "0"), "%Y%m%d%H%M%S").replace(tzinfo=there)
    here = start.astimezone()
    return here.strftime("%Y%m%d"), here.strftime("%H%M%S")[: len(clock)]


def _item(r: _Reader, patient: Demographics | None) -> OrderItem:
    control = r.get("ORC", 1).upper()
    if control not in CONTROLS:
        raise Hl7Error(
            "AE", f"ORC-1: order control {control or '(none)'} is not supported", err="103"
        )
    placer = r.first(("ORC", 2, 1), ("OBR", 2, 1))
    filler = r.first(("ORC", 3, 1), ("OBR", 3, 1))
    accession = r.get("OBR", 18) or filler or placer
    if not accession:
        raise Hl7Error("AE", "no accession number: OBR-18, ORC-3 and ORC-2 are empty", err="101")
    item = OrderItem(control, accession, placer, r.get("ORC", 5).upper())
    if control not in ("NW", "XO"):
        return item
    if patient is None:
        raise Hl7Error("AE", f"ORC-1 {control}: PID segment is missing", err="100")
    if not r.group.obr:
        raise Hl7Error("AE", f"ORC-1 {control}: the order has no OBR segment", err="100")
    day, clock = _start(r)
    modality = r.get("OBR", 24).upper()
    if not modality:
        raise Hl7Error(
            "AE", "OBR-24: no modality; the worklist item needs one (DICOM type 1)", err="101"
        )
    code = worklist.Code(r.get("OBR", 4, 1), r.get("OBR", 4, 3), r.get("OBR", 4, 2))
    description = code.meaning or code.code
    study_uid = r.get("ZDS", 1)
    if study_uid and not _UID.match(study_uid):
        raise Hl7Error("AE", f"ZDS-1: {study_uid!r} is not a UID", err="102")
    priority = r.first(("TQ1", 9, 1), ("OBR", 27, 6), ("ORC", 7, 6), ("OBR", 5, 1)).upper()
    request = worklist.OrderRequest(
        patient=patient,
        accession_number=accession,
        placer_order_number=placer,
        filler_order_number=filler,
        requested_procedure_id=r.get("OBR", 19),
        requested_procedure_description=description,
        procedure_codes=(code,) if code.code else (),
        sps_id=r.get("OBR", 20),
        sps_description=description,
        station_ae=r.get("ORC", 18, 1),
        station_name=r.get("ORC", 18, 2),
        modality=modality,
        scheduled_date=day,
        scheduled_time=clock,
        performing_physician=r.person("OBR", 34),
        referring_physician=_referring(r),
        priority=PRIORITY.get(priority, ""),
        study_uid=study_uid,
    )
    return OrderItem(control, accession, placer, item.order_status, request)


def _referring(r: _Reader) -> str:
    """PV1-8 referring doctor, else the ordering provider (OBR-16, ORC-12)."""
    return r.person("PV1", 8) or r.person("OBR", 16) or r.person("ORC", 12)


def parse_order(raw: bytes, *, allow_synthetic: bool) -> OrderMessage:
    """Parse one ORM^O01 or OMG^O19 (no MLLP framing); every problem is an Hl7Error."""
    msg, h = read(raw, set(TRIGGERS), set(TRIGGERS.values()))
    try:
        if TRIGGERS[h.message_type] != h.trigger:
            raise Hl7Error(
                "AR", f"MSH-9: {h.message_type}^{h.trigger} is not an order message", err="201"
            )
        patient = patient_of(msg, allow_synthetic) if segment(msg, "PID") is not None else None
        groups = _groups(msg)
        if not groups:
            raise Hl7Error("AE", "ORC segment is missing", err="100")
        items = tuple(_item(_Reader(msg, g), patient) for g in groups)
    except Hl7Error as e:
        e.header = h
        raise
    return OrderMessage(
        trigger=h.trigger,
        control_id=h.control_id,
        sender=f"{h.sending_app}|{h.sending_facility}",
        patient=patient,
        items=items,
        header=h,
    )


class OrderApplier(Hl7Applier):
    """Orders into the worklist, with the same persist-before-ACK and replay rules as ADT."""

    refusals = (registry.RegistryError, worklist.WorklistError)

    def __init__(
        self,
        sessions: sessionmaker[Session],
        *,
        allow_synthetic: bool,
        app: str,
        uid_root: str,
        held: HeldConnections | None = None,
    ) -> None:
        super().__init__(sessions, allow_synthetic=allow_synthetic, app=app, held=held)
        self.uid_root = uid_root

    def parse(self, raw: bytes) -> OrderMessage:
        return parse_order(raw, allow_synthetic=self.allow_synthetic)

    def apply(self, tx: Tx, msg: OrderMessage, peer: str) -> str:
        done = [self._apply_item(tx.session, item) for item in msg.items]
        tx.record(
            actor=msg.sender,
            role="order-placer",
            source=peer,
            action="order",
            patients=[(o.patient.patient_id, o.study_uid) for o, _ in done if o is not None],
            detail=f"{msg.header.message_type}^{msg.trigger} {msg.control_id}: "
            + "; ".join(d for _, d in done),
        )
        return "; ".join(d for _, d in done)

    def _apply_item(self, session: Session, item: OrderItem) -> tuple[Order | None, str]:
        if item.request is not None:
            order, what = worklist.place(
                session,
                item.request,
                source="hl7",
                uid_root=self.uid_root,
                must_exist=item.control == "XO",
            )
            return order, f"{item.control} {order.accession_number} {what}"
        if item.control == "SC" and item.order_status not in ORDER_STATUS:
            return None, f"SC {item.accession}: order status {item.order_status!r} ignored"
        status = {
            "CA": OrderStatus.CANCELLED,
            "DC": OrderStatus.DISCONTINUED,
        }.get(item.control) or ORDER_STATUS[item.order_status]
        order = worklist.change_status(session, item.accession, status, placer=item.placer)
        return order, f"{item.control} {order.accession_number} {order.status}"
