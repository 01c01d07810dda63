"""Modality Worklist C-FIND SCP: active orders matched in the index, answered in UTF-8."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence as DicomSequence
from pynetdicom.events import Event

from broker.dimse.access import AccessPolicy, Action
from broker.dimse.find import UNABLE_TO_PROCESS
from broker.dimse.store import NOT_AUTHORISED, status
from storage import audit, worklist
from storage.archive import Archive
from storage.models import Order, OrderStatus, Patient

log = logging.getLogger("pacsbroker.worklist")

# Requested keys that are not part of the answer: Q/R level, character set (always UTF-8 here).
_SKIPPED = {0x00080052, 0x00080005}
LOCAL_SCHEME = "99LOCAL"  # for procedure codes an order sent without a coding scheme


def _codes(order: Order) -> list[Dataset]:
    out = []
    for c in worklist.codes_of(order):
        item = Dataset()
        item.CodeValue = c.code
        item.CodingSchemeDesignator = c.scheme or LOCAL_SCHEME
        item.CodeMeaning = c.meaning or c.code
        out.append(item)
    return out


def _time(normalised: str) -> str:
    """HHMMSS.ffffff as stored, written without a zero fraction."""
    main, _, frac = normalised.partition(".")
    return main if not frac.strip("0") else normalised


def item(order: Order, patient: Patient) -> Dataset:
    """Every worklist attribute of one order; demographics are the registry's (PAS) ones."""
    sps = Dataset()
    sps.ScheduledStationAETitle = order.station_ae
    sps.ScheduledProcedureStepStartDate = order.scheduled_date
    sps.ScheduledProcedureStepStartTime = _time(order.scheduled_time)
    sps.Modality = order.modality
    sps.ScheduledPerformingPhysicianName = order.performing_physician
    sps.ScheduledProcedureStepDescription = order.sps_description
    sps.ScheduledProtocolCodeSequence = _codes(order)
    sps.ScheduledStationName = order.station_name
    sps.ScheduledProcedureStepID = order.sps_id
    sps.ScheduledProcedureStepStatus = worklist.SPS_STATUS_OF.get(
        OrderStatus(order.status), "SCHEDULED"
    )

    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 192"  # æøå in PAS names survive any modality locale
    ds.AccessionNumber = order.accession_number
    if order.accession_issuer:
        issuer = Dataset()
        issuer.LocalNamespaceEntityID = order.accession_issuer
        ds.IssuerOfAccessionNumberSequence = [issuer]
    ds.ReferringPhysicianName = order.referring_physician
    ds.PatientName = patient.name
    ds.PatientID = patient.patient_id
    ds.IssuerOfPatientID = patient.issuer
    ds.PatientBirthDate = patient.birth_date
    ds.PatientSex = patient.sex
    ds.StudyInstanceUID = order.study_uid
    ds.RequestedProcedureID = order.requested_procedure_id
    ds.RequestedProcedureDescription = order.requested_procedure_description
    ds.RequestedProcedureCodeSequence = _codes(order)
    ds.RequestedProcedurePriority = order.priority
    ds.PlacerOrderNumberImagingServiceRequest = order.placer_order_number
    ds.FillerOrderNumberImagingServiceRequest = order.filler_order_number
    ds.ScheduledProcedureStepSequence = [sps]
    return ds


def project(full: Dataset, request: Dataset) -> Dataset:
    """Exactly the requested keys, with our values (empty where we have none); a sequence
    key with an empty item, or none, returns the whole items."""
    out = Dataset()
    for elem in request:
        tag = int(elem.tag)
        if tag in _SKIPPED or elem.tag.group == 0x0002 or elem.tag.is_private:
            continue
        have = full.get(tag)
        if have is None:
            out.add(DataElement(tag, elem.VR, DicomSequence() if elem.VR == "SQ" else None))
        elif have.VR == "SQ":
            wanted = elem.value[0] if elem.VR == "SQ" and elem.value else None
            items = [project(i, wanted) if wanted else i for i in have.value]
            out.add(DataElement(tag, "SQ", DicomSequence(items)))
        else:
            out.add(have)
    return out


def answer(order: Order, patient: Patient, request: Dataset) -> Dataset:
    """One C-FIND response: the requested keys, always in UTF-8."""
    full = item(order, patient)
    out = project(full, request)
    out.SpecificCharacterSet = full.SpecificCharacterSet
    return out


class WorklistHandler:
    """C-FIND on the Modality Worklist Information Model; the peer's `query` flag governs it."""

    def __init__(self, policy: AccessPolicy, archive: Archive) -> None:
        self.policy = policy
        self.archive = archive

    def __call__(self, event: Event) -> Iterator[tuple[Any, Dataset | None]]:
        requestor = event.assoc.requestor
        calling, address = requestor.ae_title, requestor.address
        decision = self.policy.decide(calling, address, Action.QUERY)
        if not decision.allowed:
            yield status(NOT_AUTHORISED, decision.reason), None
            return
        identifier = event.identifier
        with self.archive.sessions() as session:
            try:
                hits = worklist.matching(
                    session,
                    identifier,
                    pn_case_insensitive=self.archive.settings.pn_case_insensitive,
                )
                answers = [answer(o, p, identifier) for o, p in hits]
            except Exception as e:
                log.exception("worklist C-FIND from %s failed", calling)
                yield status(UNABLE_TO_PROCESS, f"query failed: {e}"), None
                return
            audit.record(
                session,
                actor=calling,
                role="dicom-peer",
                source=address,
                action="dicom.worklist",
                detail=f"{len(hits)} scheduled steps",
                patients=[(p.patient_id, o.study_uid) for o, p in hits],
            )
            session.commit()
        log.info("worklist C-FIND from %s: %d items", calling, len(answers))
        for ds in answers:
            if event.is_cancelled:
                yield 0xFE00, None
                return
            yield 0xFF00, ds
