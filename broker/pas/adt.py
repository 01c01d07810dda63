"""Apply HL7 ADT messages to the registry: persisted, applied and acknowledged in one step."""

from __future__ import annotations

import logging
import uuid
from typing import Any, cast

from sqlalchemy import Table, UniqueConstraint, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from broker.pas.hl7v2 import AdtMessage, Hl7Error, Parsed, ack, parse_adt
from storage import audit, prefetch, registry, worklist
from storage.models import Hl7Message, Patient

log = logging.getLogger("pacsbroker.hl7")

UPDATES = {"A01", "A04", "A05", "A08", "A28", "A31"}
# admit, register an outpatient, pre-admit: each brings the priors near for the visit
ADMISSIONS = {"A01", "A04", "A05"}
MERGES = {"A40", "A34"}
_CONTROL_UNIQUE = next(
    c
    for c in cast(Table, Hl7Message.__table__).constraints
    if isinstance(c, UniqueConstraint) and c.name == "uq_hl7_control"
)


def _is_replay(e: IntegrityError) -> bool:
    """Whether the violated constraint is the one on (sender, control ID), that is a
    concurrent copy of the message; any other violation means nothing was applied."""
    diag = getattr(e.orig, "diag", None)
    name = getattr(diag, "constraint_name", None)
    if name:  # PostgreSQL names the constraint
        return bool(name == _CONTROL_UNIQUE.name)
    # SQLite names the columns: "UNIQUE constraint failed: hl7_messages.sender, ..."
    columns = ", ".join(f"{Hl7Message.__tablename__}.{c.name}" for c in _CONTROL_UNIQUE.columns)
    return str(e.orig).strip().endswith(f"constraint failed: {columns}")


class Hl7Applier:
    """One message at a time: the message row and its changes commit together, before the
    ACK goes out; a replayed control ID is acknowledged without re-applying."""

    # errors of the apply step that refuse the message (AE) rather than fail the listener
    refusals: tuple[type[Exception], ...] = (registry.RegistryError,)

    def __init__(self, sessions: sessionmaker[Session], *, allow_synthetic: bool, app: str):
        self.sessions = sessions
        self.allow_synthetic = allow_synthetic
        self.app = app

    def parse(self, raw: bytes) -> Any:
        """The parsed message (a `Parsed`); every problem is an Hl7Error."""
        raise NotImplementedError

    def apply(self, session: Session, msg: Any, peer: str) -> str:
        """Apply inside the message's transaction; returns what was done, for the log."""
        raise NotImplementedError

    def handle(self, raw: bytes, peer: str = "") -> bytes:
        try:
            msg = self.parse(raw)
        except Hl7Error as e:
            log.warning("HL7 from %s refused (%s): %s", peer, e.code, e.reason)
            self._log_refusal(raw, e, peer)
            return ack(e, e.code, e.reason, app=self.app)
        try:
            with self.sessions() as session, session.begin():
                if self._seen(session, msg):
                    return ack(msg, "AA", "duplicate: already applied", app=self.app)
                detail = self.apply(session, msg, peer)
                session.add(
                    Hl7Message(
                        sender=msg.sender[:200],
                        control_id=msg.control_id[:64],
                        trigger=msg.trigger,
                        raw=raw,
                        outcome="AA",
                        detail=detail,
                    )
                )
        except self.refusals as e:
            self._log_refusal(raw, Hl7Error("AE", str(e)), peer, msg)
            return ack(msg, "AE", str(e), app=self.app)
        except IntegrityError as e:
            if not _is_replay(e):
                reason = "not applied: " + str(e.orig).strip().splitlines()[0]
                self._log_refusal(raw, Hl7Error("AE", reason), peer, msg)
                return ack(msg, "AE", reason, app=self.app)
            # a concurrent connection applied the same control ID first
            return ack(msg, "AA", "duplicate: already applied", app=self.app)
        log.info(
            "%s^%s %s from %s: %s",
            msg.header.message_type,
            msg.trigger,
            msg.control_id,
            msg.sender,
            detail,
        )
        return ack(msg, "AA", app=self.app)

    @staticmethod
    def _seen(session: Session, msg: Parsed) -> bool:
        return (
            session.scalar(
                select(Hl7Message.id).where(
                    Hl7Message.sender == msg.sender[:200],
                    Hl7Message.control_id == msg.control_id[:64],
                    Hl7Message.outcome == "AA",
                )
            )
            is not None
        )

    def _log_refusal(self, raw: bytes, err: Hl7Error, peer: str, msg: Parsed | None = None) -> None:
        """Refused messages are kept too, so an integration engineer can see what came in."""
        try:
            with self.sessions() as session, session.begin():
                session.add(
                    Hl7Message(
                        sender=(msg.sender if msg else peer)[:200],
                        control_id=f"refused:{uuid.uuid4().hex}",
                        trigger=msg.trigger if msg else "",
                        raw=raw,
                        outcome=err.code,
                        detail=f"{msg.control_id if msg else '?'}: {err.reason}",
                    )
                )
        except Exception:
            log.exception("could not record a refused HL7 message")


class AdtApplier(Hl7Applier):
    """ADT into the patient registry."""

    def parse(self, raw: bytes) -> AdtMessage:
        return parse_adt(raw, allow_synthetic=self.allow_synthetic)

    def apply(self, session: Session, msg: AdtMessage, peer: str) -> str:
        if msg.trigger in UPDATES:
            patient = registry.apply_pas(session, msg.patient)
            detail = f"patient {patient.patient_id} updated"
            if msg.trigger in ADMISSIONS:
                queued = prefetch.queue_for(
                    session,
                    patient.id,
                    prefetch.Trigger("admission"),
                    created_by=f"hl7:{msg.sender}",
                    ref=msg.control_id,
                )
                detail += f"; {len(queued)} prefetches queued" if queued else ""
            self._audit(session, msg, peer, "pas-update", [patient], detail)
            return detail
        if msg.trigger in MERGES:
            target, merged = registry.merge(session, msg.patient, msg.prior)
            worklist.move_orders(session, merged, target)
            old = ", ".join(p.patient_id for p in merged) or "nothing to move"
            detail = f"merged {old} into {target.patient_id}"
            self._audit(session, msg, peer, "pas-merge", [*merged, target], detail)
            return detail
        patient = registry.change_identifier(session, msg.patient, msg.prior)
        detail = f"identifier {', '.join(i.value for i in msg.prior)} → {patient.patient_id}"
        self._audit(session, msg, peer, "pas-change-id", [patient], detail)
        return detail

    @staticmethod
    def _audit(
        session: Session,
        msg: AdtMessage,
        peer: str,
        action: str,
        patients: list[Patient],
        detail: str,
    ) -> None:
        audit.record(
            session,
            actor=msg.sender,
            role="pas",
            source=peer,
            action=action,
            patients=[(p.patient_id, "") for p in patients],
            detail=f"ADT^{msg.trigger} {msg.control_id}: {detail}",
        )
