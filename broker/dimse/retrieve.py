"""C-MOVE and C-GET: objects go out as received, decompressed only for peers that need it."""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Iterator
from typing import Any

from pydicom.dataset import Dataset
from pynetdicom import evt
from pynetdicom.association import Association
from pynetdicom.events import Event

from broker.dimse.access import AccessPolicy, Action
from broker.dimse.contexts import sub_operation_contexts
from broker.dimse.find import IDENTIFIER_MISMATCH, query_level
from broker.dimse.store import NOT_AUTHORISED, status
from storage import audit, outbound, transcode
from storage.archive import Archive
from storage.models import Instance
from storage.objects import ObjectNotFound, ObjectStoreError
from storage.patientmodule import PatientModule
from storage.query import Matcher, keys_of

log = logging.getLogger("pacsbroker.retrieve")

MOVE_MODELS = {"1.2.840.10008.5.1.4.1.2.1.2": "PATIENT", "1.2.840.10008.5.1.4.1.2.2.2": "STUDY"}
GET_MODELS = {"1.2.840.10008.5.1.4.1.2.1.3": "PATIENT", "1.2.840.10008.5.1.4.1.2.2.3": "STUDY"}


class RetrieveHandler:
    """One class for both services; `move` decides whether a destination is looked up."""

    def __init__(self, policy: AccessPolicy, archive: Archive, *, move: bool) -> None:
        self.policy = policy
        self.archive = archive
        self.move = move

    def _instances(
        self,
        event: Event,
        calling: str,
        address: str,
    ) -> tuple[list[Instance], dict[int, PatientModule], str | None]:
        identifier = event.identifier
        models = MOVE_MODELS if self.move else GET_MODELS
        level = query_level(identifier, models[str(event.context.abstract_syntax)])
        keys = [k for k in keys_of(identifier) if k.value]
        if not keys:
            return [], {}, "a retrieve needs at least one unique key"
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
        return instances, patients, None

    def __call__(self, event: Event) -> Iterator[Any]:
        assoc = event.assoc
        calling, address = assoc.requestor.ae_title, assoc.requestor.address
        service = "C-MOVE" if self.move else "C-GET"
        dest = None
        if self.move:
            dest_ae = str(event.move_destination or "").strip()
            dest = self.archive.settings.peer(dest_ae)
            if dest is None:
                log.warning(
                    "C-MOVE from %s: destination %r is not in the peer table", calling, dest_ae
                )
                yield None, None
                return
        failure: Dataset | None = None
        instances: list[Instance] = []
        patients: dict[int, PatientModule] = {}
        decision = self.policy.decide(calling, address, Action.RETRIEVE)
        if not decision.allowed:
            failure = status(NOT_AUTHORISED, decision.reason)
        else:
            try:
                instances, patients, problem = self._instances(event, calling, address)
                if problem:
                    failure = status(IDENTIFIER_MISMATCH, problem)
            except Exception as e:
                failure = status(IDENTIFIER_MISMATCH, str(e))
        if failure is not None:
            log.warning("%s from %s refused: %s", service, calling, failure.ErrorComment)
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
        if failure is not None:
            # pynetdicom takes a status only after a sub-operation count
            yield 1
            yield failure, None
            return
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
            return outbound.load(self.archive.store, inst, pm)
        except (ObjectNotFound, ObjectStoreError) as e:
            log.error("cannot read %s for retrieve: %s", inst.object_key, e)
            return None


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
