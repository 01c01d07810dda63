"""Apply HL7 ADT messages to the registry: persisted, applied and acknowledged in one step."""

from __future__ import annotations

import logging
import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, Unpack, cast

from sqlalchemy import Connection, Engine, Table, UniqueConstraint, bindparam, insert, select
from sqlalchemy.exc import DBAPIError, IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from broker.pas.hl7v2 import AdtMessage, Hl7Error, Parsed, ack, parse_adt
from storage import atna, audit, prefetch, registry, worklist
from storage.models import AuditEvent, Hl7Message

log = logging.getLogger("pacsbroker.hl7")

UPDATES = {"A01", "A04", "A05", "A08", "A28", "A31"}
# admit, register an outpatient, pre-admit: each brings the priors near for the visit
ADMISSIONS = {"A01", "A04", "A05"}
MERGES = {"A40", "A34"}
_MESSAGES = cast(Table, Hl7Message.__table__)
_AUDIT = cast(Table, AuditEvent.__table__)
# built once: building and coercing a statement costs more than SQLite running it
_SEEN = select(_MESSAGES.c.id).where(
    _MESSAGES.c.sender == bindparam("sender"),
    _MESSAGES.c.control_id == bindparam("control_id"),
    _MESSAGES.c.outcome == "AA",
)
_INSERT_MESSAGE = insert(_MESSAGES)
_INSERT_AUDIT = insert(_AUDIT)
_CONTROL_UNIQUE = next(
    c
    for c in _MESSAGES.constraints
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


def _not_applied(e: IntegrityError) -> str:
    return "not applied: " + str(e.orig).strip().splitlines()[0]


class Tx:
    """One message's transaction: its connection for Core statements, and an ORM session on
    that connection made only when a step needs one (a session's own bookkeeping costs more
    than the usual A08's SQL)."""

    def __init__(self, conn: Connection, sessions: sessionmaker[Session]) -> None:
        self.conn = conn
        self._sessions = sessions
        self._session: Session | None = None
        self.audited: list[dict[str, Any]] = []  # sent to syslog once the message commits

    @property
    def session(self) -> Session:
        if self._session is None:
            # joins the message's transaction, whose commit stays with Hl7Applier.handle
            self._session = self._sessions(bind=self.conn, join_transaction_mode="rollback_only")
        return self._session

    def record(self, **event: Unpack[audit.Event]) -> None:
        """Audit in the message's transaction, in one Core INSERT (the ORM unit of work for
        these rows cost ~0.3 ms a message)."""
        rows = audit.rows(**event)
        self.conn.execute(_INSERT_AUDIT, rows)
        self.audited += rows

    def flush(self) -> None:
        """Write what the session holds, before the message row and the commit."""
        if self._session is not None:
            self._session.flush()

    def close(self) -> None:
        """End the session; the transaction stays with its connection."""
        if self._session is not None:
            self._session.close()


class HeldConnections:
    """An index connection kept by each MLLP connection's thread for all its messages, for at
    most `limit` threads at once (0: none): a pool checkout and check-in for every message
    cost a tenth of an A08. Other threads take one from the pool per message, so HL7 never
    holds more of the pool than `limit` connections; `release` ends the calling thread's."""

    def __init__(self, engine: Engine, limit: int) -> None:
        self.engine = engine
        self._slots = threading.BoundedSemaphore(limit) if limit else None
        self._local = threading.local()

    @contextmanager
    def transaction(self) -> Iterator[Connection]:
        conn = self._held()
        if conn is None:
            with self.engine.begin() as fresh:
                yield fresh
            return
        with conn.begin():
            yield conn

    def _held(self) -> Connection | None:
        conn: Connection | None = getattr(self._local, "conn", None)
        if conn is not None and conn.invalidated:  # the database went away since
            self.release()
            conn = None
        if conn is None and self._slots is not None and self._slots.acquire(blocking=False):
            conn = self._local.conn = self.engine.connect()
        return conn

    def release(self) -> None:
        conn: Connection | None = getattr(self._local, "conn", None)
        if conn is not None:
            self._local.conn = None
            conn.close()
            assert self._slots is not None
            self._slots.release()


class Hl7Applier:
    """One message at a time: the message row and its changes commit together, before the
    ACK goes out; a replayed control ID is acknowledged as a duplicate and changes nothing."""

    # errors of the apply step that refuse the message (AE) rather than fail the listener
    refusals: tuple[type[Exception], ...] = (registry.RegistryError,)

    def __init__(
        self,
        sessions: sessionmaker[Session],
        *,
        allow_synthetic: bool,
        app: str,
        held: HeldConnections | None = None,
    ) -> None:
        self.sessions = sessions
        self.held = held or HeldConnections(sessions.kw["bind"], limit=0)
        self.allow_synthetic = allow_synthetic
        self.app = app

    def parse(self, raw: bytes) -> Any:
        """The parsed message (a `Parsed`); every problem is an Hl7Error."""
        raise NotImplementedError

    def apply(self, tx: Tx, msg: Any, peer: str) -> str:
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
            tx, detail = self._commit(raw, msg, peer)
        except self.refusals as e:
            return self._refuse(raw, msg, peer, str(e))
        except IntegrityError as e:
            if not _is_replay(e):
                return self._refuse(raw, msg, peer, _not_applied(e))
            return ack(msg, "AA", "duplicate: already applied", app=self.app)
        atna.forward(tx.audited)
        # hl7_messages keeps every message: one log line each would cost more than the
        # message's SQL, so only at DEBUG
        log.debug(
            "%s^%s %s from %s: %s",
            msg.header.message_type,
            msg.trigger,
            msg.control_id,
            msg.sender,
            detail,
        )
        return ack(msg, "AA", app=self.app)

    def _commit(self, raw: bytes, msg: Any, peer: str) -> tuple[Tx, str]:
        """Apply and log the message in one transaction; once more if the held connection
        turned out dead (the database restarted), as nothing of that try was committed."""
        for attempt in (1, 2):
            try:
                with self.held.transaction() as conn:
                    tx = Tx(conn, self.sessions)
                    try:
                        detail = self.apply(tx, msg, peer)
                        tx.flush()
                    finally:
                        tx.close()
                    # a replay breaks the unique (sender, control ID) here, which undoes its
                    # apply step: replays are rare, so this is cheaper than a SELECT first
                    conn.execute(
                        _INSERT_MESSAGE,
                        {
                            "sender": msg.sender[:200],
                            "control_id": msg.control_id[:64],
                            "trigger": msg.trigger,
                            "raw": raw,
                            "outcome": "AA",
                            "detail": detail,
                        },
                    )
                return tx, detail
            except DBAPIError as e:
                if attempt == 2 or not e.connection_invalidated:
                    raise
                log.warning("HL7: index connection lost (%s); applying the message again", e)
        raise AssertionError("unreachable")

    def _refuse(self, raw: bytes, msg: Parsed, peer: str, reason: str) -> bytes:
        """AE, unless the message is a replay of one applied before: applying it again can
        fail where the first time did not (an A47's old identifier is gone)."""
        with self.sessions() as session:
            if self._seen(session, msg):
                return ack(msg, "AA", "duplicate: already applied", app=self.app)
        self._log_refusal(raw, Hl7Error("AE", reason), peer, msg)
        return ack(msg, "AE", reason, app=self.app)

    @staticmethod
    def _seen(session: Session, msg: Parsed) -> bool:
        found = session.connection().execute(
            _SEEN, {"sender": msg.sender[:200], "control_id": msg.control_id[:64]}
        )
        return found.first() is not None

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

    def apply(self, tx: Tx, msg: AdtMessage, peer: str) -> str:
        if msg.trigger in UPDATES:
            return self._update(tx, msg, peer)
        if msg.trigger in MERGES:
            target, merged = registry.merge(tx.session, msg.patient, msg.prior)
            worklist.move_orders(tx.session, merged, target)
            old = ", ".join(p.patient_id for p in merged) or "nothing to move"
            detail = f"merged {old} into {target.patient_id}"
            self._audit(
                tx, msg, peer, "pas-merge", [p.patient_id for p in (*merged, target)], detail
            )
            return detail
        patient = registry.change_identifier(tx.session, msg.patient, msg.prior)
        detail = f"identifier {', '.join(i.value for i in msg.prior)} → {patient.patient_id}"
        self._audit(tx, msg, peer, "pas-change-id", [patient.patient_id], detail)
        return detail

    def _update(self, tx: Tx, msg: AdtMessage, peer: str) -> str:
        # most updates are of a patient already registered as sent: no ORM session needed
        held = registry.update_held(tx.conn, msg.patient)
        if held is None:
            patient = registry.apply_pas(tx.session, msg.patient)
            held = registry.Updated(patient.id, patient.patient_id)
        detail = f"patient {held.patient_id} updated"
        if msg.trigger in ADMISSIONS:
            queued = prefetch.queue_for(
                tx.session,
                held.id,
                prefetch.Trigger("admission"),
                created_by=f"hl7:{msg.sender}",
                ref=msg.control_id,
            )
            detail += f"; {len(queued)} prefetches queued" if queued else ""
        self._audit(tx, msg, peer, "pas-update", [held.patient_id], detail)
        return detail

    @staticmethod
    def _audit(
        tx: Tx, msg: AdtMessage, peer: str, action: str, patient_ids: list[str], detail: str
    ) -> None:
        tx.record(
            actor=msg.sender,
            role="pas",
            source=peer,
            action=action,
            patients=[(patient_id, "") for patient_id in patient_ids],
            detail=f"ADT^{msg.trigger} {msg.control_id}: {detail}",
        )
