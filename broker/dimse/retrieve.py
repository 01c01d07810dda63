"""C-MOVE and C-GET: objects go out as received, decompressed only for peers that need it."""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Iterator
from typing import Any

from pydicom.datadict import keyword_for_tag
from pydicom.dataset import Dataset
from pynetdicom import evt
from pynetdicom.association import Association
from pynetdicom.events import Event

from broker.dimse import verbatim
from broker.dimse.access import AccessPolicy, Action
from broker.dimse.contexts import sub_operation_contexts
from broker.dimse.find import IDENTIFIER_MISMATCH, UNABLE_TO_PROCESS, query_level
from broker.dimse.store import NOT_AUTHORISED, status
from storage import audit, outbound, transcode
from storage.archive import Archive
from storage.models import Instance
from storage.objects import ObjectNotFound, ObjectStoreError
from storage.patientmodule import PatientModule
from storage.query import Key, Level, Matcher, keys_of
from storage.settings import Peer

log = logging.getLogger("pacsbroker.retrieve")

MOVE_MODELS = {"1.2.840.10008.5.1.4.1.2.1.2": "PATIENT", "1.2.840.10008.5.1.4.1.2.2.2": "STUDY"}
GET_MODELS = {"1.2.840.10008.5.1.4.1.2.1.3": "PATIENT", "1.2.840.10008.5.1.4.1.2.2.3": "STUDY"}


# The unique key of each level (PS3.4 C.4.2.2.1): a retrieve names entities, it does not search.
UNIQUE_KEYS = {
    Level.PATIENT: 0x00100020,
    Level.STUDY: 0x0020000D,
    Level.SERIES: 0x0020000E,
    Level.IMAGE: 0x00080018,
}


class Refused(Exception):
    """A retrieve answered with one final status before any sub-operation."""

    def __init__(self, code: int, comment: str) -> None:
        super().__init__(comment)
        self.code = code


def unique_keys(identifier: Dataset, level: Level) -> list[Key]:
    """The unique keys at and above `level`; other keys cannot widen or narrow a retrieve."""
    levels = list(Level)
    wanted = {UNIQUE_KEYS[lvl] for lvl in levels[: levels.index(level) + 1]}
    keys = [k for k in keys_of(identifier) if k.tag in wanted and k.value]
    if UNIQUE_KEYS[level] not in {k.tag for k in keys}:
        raise Refused(
            IDENTIFIER_MISMATCH, f"a {level} retrieve needs {keyword_for_tag(UNIQUE_KEYS[level])}"
        )
    for key in keys:
        # UIDs may come as a list; Patient ID is one value
        if any(c in key.value for c in "*?") or (key.vr != "UI" and "\\" in key.value):
            raise Refused(IDENTIFIER_MISMATCH, f"{keyword_for_tag(key.tag)} must be unique")
    return keys


def _refuse_with(event: Event, refusal: Dataset) -> None:
    """Make pynetdicom's final response to this request carry `refusal` instead."""
    dimse = event.assoc.dimse
    send = dimse.send_msg
    message_id = event.request.MessageID

    def send_refusal(rsp: Any, context_id: int) -> None:
        dimse.send_msg = send  # type: ignore[method-assign]
        if rsp.MessageIDBeingRespondedTo == message_id:
            for elem in refusal:
                setattr(rsp, elem.keyword, elem.value)
        send(rsp, context_id)

    # pynetdicom gives a handler no way to fail a retrieve before its sub-operations
    dimse.send_msg = send_refusal  # type: ignore[method-assign, assignment]


class RetrieveHandler:
    """One class for both services; `move` decides whether a destination is looked up."""

    def __init__(self, policy: AccessPolicy, archive: Archive, *, move: bool) -> None:
        self.policy = policy
        self.archive = archive
        self.move = move

    def _request(self, event: Event, calling: str, address: str) -> tuple[Level, list[Key]]:
        """The level and unique keys of a request the caller may make; else `Refused`."""
        decision = self.policy.decide(calling, address, Action.RETRIEVE)
        if not decision.allowed:
            raise Refused(NOT_AUTHORISED, decision.reason)
        models = MOVE_MODELS if self.move else GET_MODELS
        try:
            identifier = event.identifier
            level = query_level(identifier, models[str(event.context.abstract_syntax)])
        except Exception as e:  # an undecodable identifier as much as a wrong level
            raise Refused(IDENTIFIER_MISMATCH, str(e)) from None
        return level, unique_keys(identifier, level)

    def _destination(self, event: Event, calling: str) -> Peer | None:
        dest_ae = str(event.move_destination or "").strip()
        dest = self.archive.settings.peer(dest_ae)
        if dest is None:
            log.warning("C-MOVE from %s: destination %r is not in the peer table", calling, dest_ae)
        return dest

    def _instances(
        self, event: Event, level: Level, keys: list[Key], calling: str, address: str
    ) -> tuple[list[Instance], dict[int, PatientModule]]:
        matcher = Matcher(level, keys, pn_case_insensitive=False)
        with self.archive.sessions() as session:
            hits = list(matcher.hits(session))
            instances = outbound.instances_of(session, level, hits)
            patients = outbound.patient_modules(session, instances)
            audit.record(
                session,
                actor=calling,
                role="dicom-peer",
                source=address,
                action="dicom.move" if self.move else "dicom.get",
                detail=f"{len(instances)} instances"
                + (f" to {event.move_destination}" if self.move else ""),
                patients=[
                    (h.patient.patient_id, h.study.study_uid if h.study else "") for h in hits
                ],
            )
            session.commit()
        return instances, patients

    def _refuse(self, event: Event, service: str, calling: str, refusal: Refused) -> Iterator[Any]:
        log.warning("%s from %s refused: %s", service, calling, refusal)
        _refuse_with(event, status(refusal.code, str(refusal)))
        if self.move:
            # never contacted: with no sub-operations pynetdicom answers at once
            yield "", 0
        yield 0

    def __call__(self, event: Event) -> Iterator[Any]:
        assoc = event.assoc
        calling, address = assoc.requestor.ae_title, assoc.requestor.address
        service = "C-MOVE" if self.move else "C-GET"
        try:
            level, keys = self._request(event, calling, address)
        except Refused as refusal:
            yield from self._refuse(event, service, calling, refusal)
            return
        dest = self._destination(event, calling) if self.move else None
        if self.move and dest is None:
            yield None, None
            return
        try:
            instances, patients = self._instances(event, level, keys, calling, address)
        except Exception as e:
            log.exception("%s from %s failed", service, calling)
            yield from self._refuse(
                event, service, calling, Refused(UNABLE_TO_PROCESS, f"retrieve failed: {e}")
            )
            return
        # C-GET sends on the caller's association; C-MOVE on one pynetdicom opens for us.
        sub_assoc: list[Association] = [assoc]
        if dest is not None:
            pairs = {(i.sop_class_uid, i.transfer_syntax) for i in instances}
            sub_assoc.clear()
            yield (
                dest.host,
                dest.port,
                {
                    "contexts": sub_operation_contexts(pairs),
                    "evt_handlers": [(evt.EVT_ACCEPTED, lambda e: sub_assoc.append(e.assoc))],
                },
            )
        yield len(instances)
        log.info("%s from %s: %d instances", service, calling, len(instances))
        tiers = self.archive.tiers
        served: Counter[str] = Counter()
        for inst in instances:
            if event.is_cancelled:
                yield 0xFE00, None
                return
            # PAS may have renamed or merged the patient since the object was stored
            ds = self._load(inst, patients[inst.id])
            if ds is None:
                yield 0xFF00, _placeholder(inst)
                continue
            if tiers is not None:
                served[tiers.last_tier()] += 1
            yield 0xFF00, transcode.fit(ds, _syntaxes_for(ds, sub_assoc[0] if sub_assoc else None))
        if served:
            log.info(
                "%s from %s served %d from near, %d from far",
                service,
                calling,
                served["near"],
                served["far"],
            )

    def _load(self, inst: Instance, pm: PatientModule) -> Dataset | None:
        try:
            ds, stored = outbound.load(self.archive.store, inst, pm)
        except (ObjectNotFound, ObjectStoreError) as e:
            log.error("cannot read %s for retrieve: %s", inst.object_key, e)
            return None
        return ds if stored is None else verbatim.keep(ds, stored)


def _syntaxes_for(ds: Dataset, assoc: Association | None) -> list[str]:
    """The transfer syntaxes the peer accepted for this object's SOP class."""
    if assoc is None:
        return []
    sop_class = str(ds.SOPClassUID)
    return [
        str(cx.transfer_syntax[0])
        for cx in assoc.accepted_contexts
        if str(cx.abstract_syntax) == sop_class
    ]


def _placeholder(inst: Instance) -> Dataset:
    """A dataset that makes the sub-operation fail and be counted, without aborting the rest."""
    ds = Dataset()
    ds.SOPInstanceUID = inst.sop_uid
    return ds
