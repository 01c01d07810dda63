"""Reconciliation at ingest: the header's Patient ID is checked against the registry and PAS."""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass

from pydicom import Dataset
from sqlalchemy.orm import Session, sessionmaker

from broker.pas.pdqm import PasClient, PasUnavailable
from storage import nationalid, registry
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

    def __init__(self, client: PasClient | None, *, allow_synthetic: bool) -> None:
        self.client = client
        self.allow_synthetic = allow_synthetic

    def decide(
        self, sessions: sessionmaker[Session], headers: Iterable[Header]
    ) -> dict[Identifier, Decision]:
        decisions: dict[Identifier, Decision] = {}
        with sessions() as session:
            for h in headers:
                ident, problem = header_identifier(h, allow_synthetic=self.allow_synthetic)
                if ident in decisions:
                    continue
                if problem:
                    decisions[ident] = Decision(PatientStatus.QUARANTINED, reason=problem)
                elif registry.find(session, ident) is None:
                    decisions[ident] = self.lookup(ident)
        return decisions

    def lookup(self, ident: Identifier) -> Decision:
        if self.client is None:
            return Decision(PatientStatus.LOCAL)
        try:
            demo = self.client.lookup(ident)
        except PasUnavailable as e:
            return Decision(PatientStatus.UNVERIFIED, reason=f"PAS unavailable: {e}")
        if demo is None:
            return Decision(
                PatientStatus.QUARANTINED, reason=f"Patient ID {ident.value} is unknown to PAS"
            )
        return Decision(PatientStatus.VERIFIED, demo)

    def patient_for(
        self, session: Session, h: Header, decisions: dict[Identifier, Decision]
    ) -> Patient:
        """Inside the index transaction: the registry patient this object belongs to."""
        ident, _problem = header_identifier(h, allow_synthetic=self.allow_synthetic)
        known = registry.find(session, ident)
        if known is not None:
            return known
        decision = decisions.get(ident) or self.lookup(ident)
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
        """Ask PAS again about patients filed while it was down; returns how many were settled.
        The lookups run outside any transaction, so ingest never waits on PAS for the index."""
        if self.client is None:
            return 0
        with sessions() as session:
            pending = [
                (p.id, [Identifier(r.system, r.value) for r in p.identifiers])
                for p in registry.stale_unverified(session, limit)
            ]
        answers: list[tuple[int, Demographics | None]] = []
        for pid, idents in pending:
            try:
                found = [d for d in map(self.client.lookup, idents) if d is not None]
            except PasUnavailable:
                break
            answers.append((pid, found[0] if found else None))
        with sessions() as session, session.begin():
            for pid, demo in answers:
                patient = session.get(Patient, pid)
                if patient is None or patient.status != PatientStatus.UNVERIFIED:
                    continue  # an ADT message settled it meanwhile
                if demo is None:
                    patient.status = PatientStatus.QUARANTINED
                    patient.status_reason = f"Patient ID {patient.patient_id} is unknown to PAS"
                    log.warning("%s", patient.status_reason)
                    continue
                target = registry.apply_pas(session, demo, strict=False)
                if target.id != patient.id:
                    registry.absorb(session, patient, target, "confirmed by PAS")
                log.info("patient %s verified by PAS", target.patient_id)
        return len(answers)
