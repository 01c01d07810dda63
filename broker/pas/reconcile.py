"""Reconciliation at ingest: the header's Patient ID is checked against the registry and PAS."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass

from pydicom import Dataset
from sqlalchemy.orm import Session, sessionmaker

from broker.pas.pdqm import PasAmbiguous, PasClient, PasUnavailable
from storage import audit, nationalid, quarantine, registry
from storage.demographics import Demographics, Identifier
from storage.dicomheader import Header
from storage.models import Patient, PatientStatus

log = logging.getLogger("pacsbroker.pas")


@dataclass(frozen=True)
class Decision:
    """What to do with an identifier the registry did not know, decided outside the
    index transaction (a PAS lookup is network I/O)."""

    status: PatientStatus
    demographics: Demographics | None = None
    reason: str = ""


def header_issuer(h: Header) -> str:
    """The identifier system of the header's issuer: Issuer of Patient ID, or the ISO
    Universal Entity ID of its qualifiers, normalised as HL7 assigning authorities are."""
    qualifiers = h.dataset.get("IssuerOfPatientIDQualifiersSequence") or [Dataset()]
    item = qualifiers[0]
    iso = str(item.get("UniversalEntityIDType", "")).strip().upper() in ("", "ISO")
    universal = str(item.get("UniversalEntityID", "")).strip() if iso else ""
    return registry.issuer_system(h.issuer, universal)


def header_identifier(h: Header, *, allow_synthetic: bool) -> tuple[Identifier, str]:
    """The header's identifier, and why it is invalid ('' if it is not)."""
    value = h.patient_id.strip()
    system = header_issuer(h)
    if not value:
        return Identifier(system, value), "the object has no Patient ID"
    try:
        if nationalid.looks_national(value):
            # checked whatever the issuer says: in Norway a wrong one is a typing error
            nationalid.parse(value, allow_synthetic=allow_synthetic)
        return registry.identifier(value, system, allow_synthetic=allow_synthetic), ""
    except nationalid.InvalidNationalId as e:
        return Identifier(system, value), f"invalid national ID: {e}"


class Reconciler:
    """Turns headers into registry patients: known, looked up in PAS, or quarantined."""

    def __init__(
        self, client: PasClient | None, *, allow_synthetic: bool, retry_interval: float = 10.0
    ) -> None:
        self.client = client
        self.allow_synthetic = allow_synthetic
        self.retry_interval = retry_interval
        # registry patient id -> when PAS was last asked about it; ingest threads and the
        # re-verification thread share it, so a busy modality does not flood PAS
        self._asked: dict[int, float] = {}
        self._lock = threading.Lock()

    def decide(
        self, sessions: sessionmaker[Session], headers: Iterable[Header]
    ) -> dict[Identifier, Decision]:
        decisions: dict[Identifier, Decision] = {}
        # a batch is mostly one patient's study: ask the registry once per identifier
        seen: set[Identifier] = set()
        with sessions() as session:
            for h in headers:
                ident, problem = header_identifier(h, allow_synthetic=self.allow_synthetic)
                if ident in seen:
                    continue
                seen.add(ident)
                known = None if problem else registry.find(session, ident)
                if problem:
                    decisions[ident] = Decision(PatientStatus.QUARANTINED, reason=problem)
                elif known is None:
                    decisions[ident] = self.lookup(ident)
                elif registry.unknown_to_pas(known) and self._due(known.id):
                    # PAS may have registered the patient since; a new object is a reason to ask
                    decisions[ident] = self.lookup(ident, fresh=True)
        return decisions

    def lookup(self, ident: Identifier, *, fresh: bool = False) -> Decision:
        if self.client is None:
            return Decision(PatientStatus.LOCAL)
        try:
            demo = self.client.lookup(ident, fresh=fresh)
        except PasUnavailable as e:
            return Decision(PatientStatus.UNVERIFIED, reason=f"PAS unavailable: {e}")
        except PasAmbiguous as e:
            return Decision(PatientStatus.QUARANTINED, reason=f"ambiguous: {e}")
        if demo is None:
            return Decision(PatientStatus.QUARANTINED, reason=registry.unknown_reason(ident.value))
        return Decision(PatientStatus.VERIFIED, demo)

    def patient_for(
        self, session: Session, h: Header, decisions: dict[Identifier, Decision]
    ) -> Patient:
        """Inside the index transaction: the registry patient this object belongs to."""
        ident, _problem = header_identifier(h, allow_synthetic=self.allow_synthetic)
        known = registry.find(session, ident)
        decision = decisions.get(ident)
        if known is not None:
            if decision and decision.demographics and registry.unknown_to_pas(known):
                return settle(session, known, decision.demographics)
            return known
        decision = decision or self.lookup(ident)
        if decision.status is PatientStatus.VERIFIED and decision.demographics is not None:
            patient = registry.apply_pas(session, decision.demographics, strict=False)
            if registry.find(session, ident) is None:
                registry.add_identifiers(session, patient, [ident])
            return patient
        if decision.reason:
            log.warning("Patient ID %r: %s", ident.value, decision.reason)
        demo = Demographics((ident,), h.patient_name, h.birth_date, h.sex)
        return registry.create(session, demo, decision.status, decision.reason, h.issuer)

    def reverify(self, sessions: sessionmaker[Session], limit: int = 200) -> int:
        """Ask PAS again about patients filed while it was down or quarantined as unknown to
        it; returns how many were asked. The lookups run outside any transaction, so ingest
        never waits on PAS for the index."""
        client = self.client
        if client is None:
            return 0
        with sessions() as session:
            pending = [
                (p.id, p.patient_id, [Identifier(r.system, r.value) for r in p.identifiers])
                for p in self._least_recently_asked(registry.awaiting_pas(session), limit)
            ]
        answers: list[tuple[int, Decision]] = []
        for pid, shown, idents in pending:
            try:
                answers.append((pid, self._ask(client, pid, shown, idents)))
            except PasUnavailable:
                break
        with sessions() as session, session.begin():
            for pid, decision in answers:
                patient = session.get(Patient, pid)
                if patient is None or not (
                    patient.status == PatientStatus.UNVERIFIED or registry.unknown_to_pas(patient)
                ):
                    continue  # an ADT message or an admin settled it meanwhile
                settle(session, patient, decision.demographics, decision.reason)
        return len(answers)

    def _ask(self, client: PasClient, pid: int, shown: str, idents: list[Identifier]) -> Decision:
        """What PAS says about the first of a patient's identifiers it knows."""
        with self._lock:
            self._asked[pid] = time.monotonic()
        for ident in idents:
            try:
                demo = client.lookup(ident, fresh=True)
            except PasAmbiguous as e:
                return Decision(PatientStatus.QUARANTINED, reason=f"ambiguous: {e}")
            if demo is not None:
                return Decision(PatientStatus.VERIFIED, demo)
        return Decision(PatientStatus.QUARANTINED, reason=registry.unknown_reason(shown))

    def _due(self, pid: int) -> bool:
        """Whether PAS may be asked about patient `pid` now; if so, the asking is noted."""
        now = time.monotonic()
        with self._lock:
            last = self._asked.get(pid)
            due = last is None or now - last >= self.retry_interval
            if due:
                self._asked[pid] = now
        return due

    def _least_recently_asked(self, patients: list[Patient], limit: int) -> list[Patient]:
        """So that patients PAS keeps not knowing do not crowd out the others; settled
        patients are forgotten."""
        with self._lock:
            self._asked = {p.id: self._asked[p.id] for p in patients if p.id in self._asked}
            return sorted(patients, key=lambda p: self._asked.get(p.id, 0.0))[:limit]


def settle(
    session: Session, patient: Patient, demo: Demographics | None, reason: str = ""
) -> Patient:
    """PAS's answer about an unverified or unknown patient: verified (its studies leave
    quarantine, header differences recorded), or without `demo`, quarantined for `reason`."""
    if demo is None:
        if patient.status == PatientStatus.UNVERIFIED:
            patient.status, patient.status_reason = PatientStatus.QUARANTINED, reason
            log.warning("patient %s quarantined: %s", patient.patient_id, reason)
        return patient
    released = [(s.id, s.study_uid) for s in patient.studies]
    was_quarantined = patient.status == PatientStatus.QUARANTINED
    old_id = patient.patient_id
    target = registry.apply_pas(session, demo, strict=False)
    if target.id != patient.id:
        registry.absorb(session, patient, target, "confirmed by PAS")
    registry.record_header_differences(session, (sid for sid, _ in released), target)
    log.info("patient %s verified by PAS", target.patient_id)
    if was_quarantined:
        audit.record(
            session,
            actor="pas",
            role="pas",
            source="pas",
            action="quarantine-auto-resolve",
            patients=[(target.patient_id, uid) for _, uid in released],
            detail=f"quarantined ID {old_id!r} is now known to PAS",
        )
    return target


def assignable(session: Session, client: PasClient | None, ident: Identifier) -> Patient | None:
    """The registry patient holding `ident`, else the patient PAS knows by it, registered as
    verified; None if neither knows it. A PAS that cannot answer is a QuarantineError."""
    known = registry.find(session, ident)
    if known is not None or client is None:
        return known
    try:
        demo = client.lookup(ident)
    except (PasUnavailable, PasAmbiguous) as e:
        raise quarantine.QuarantineError(f"PAS cannot confirm {ident.value} now: {e}") from None
    return None if demo is None else registry.apply_pas(session, demo, strict=False)
