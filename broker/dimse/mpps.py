"""Modality Performed Procedure Step SCP (PS3.4 F.7): N-CREATE and N-SET move the orders.

IN PROGRESS starts the ordered step; COMPLETED or DISCONTINUED ends it, and the order drops
off the worklist. A step that has ended can no longer be changed (0x0110); an N-SET of what
N-CREATE fixed (the scheduled step, patient, start, station: PS3.4 Table F.7.2-1) gets 0x0106.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import cast

from pydicom.dataset import Dataset
from pydicom.uid import generate_uid
from pynetdicom.dimse_primitives import N_CREATE, N_SET
from pynetdicom.events import Event
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from broker.dimse.access import AccessPolicy, Action
from broker.dimse.commitment import (
    MISSING_ATTRIBUTE,
    NO_SUCH_OBJECT,
    NO_SUCH_SOP_CLASS,
    NOT_AUTHORISED,
    PROCESSING_FAILURE,
)
from broker.dimse.contexts import MPPS
from broker.dimse.store import status
from storage import audit, worklist
from storage.archive import Archive
from storage.worklist import MppsError, MppsProblem, MppsResult

log = logging.getLogger("pacsbroker.mpps")

INVALID_ATTRIBUTE_VALUE = 0x0106
DUPLICATE_INSTANCE = 0x0111
STATUS_OF = {
    MppsProblem.DUPLICATE: DUPLICATE_INSTANCE,
    MppsProblem.UNKNOWN: NO_SUCH_OBJECT,
    MppsProblem.FINAL: PROCESSING_FAILURE,  # F.7.2.2.4: may no longer be updated
    MppsProblem.INVALID: INVALID_ATTRIBUTE_VALUE,
    MppsProblem.MISSING: MISSING_ATTRIBUTE,
}


class MppsHandler:
    """Bound to EVT_N_CREATE and EVT_N_SET; peers with the `store` flag may report steps."""

    def __init__(self, policy: AccessPolicy, archive: Archive) -> None:
        self.policy = policy
        self.archive = archive

    def _refusal(self, event: Event, sop_class: object) -> Dataset | None:
        requestor = event.assoc.requestor
        decision = self.policy.decide(requestor.ae_title, requestor.address, Action.STORE)
        if not decision.allowed:
            log.warning("MPPS from %s refused: %s", requestor.ae_title, decision.reason)
            return status(NOT_AUTHORISED, decision.reason)
        if str(sop_class) != MPPS:
            return status(NO_SUCH_SOP_CLASS, f"{sop_class} is not MPPS")
        return None

    def create(self, event: Event) -> tuple[Dataset | int, Dataset | None]:
        req = cast(N_CREATE, event.request)
        refused = self._refusal(event, req.AffectedSOPClassUID)
        if refused is not None:
            return refused, None
        given = str(req.AffectedSOPInstanceUID or "")
        sop_uid = given or generate_uid(prefix=self.archive.settings.uid_root or None)
        calling = event.assoc.requestor.ae_title
        attrs = event.attribute_list
        code, comment = self._apply(
            event,
            "mpps.create",
            sop_uid,
            lambda s: worklist.mpps_create(s, sop_uid, attrs, calling),
        )
        if code:
            return status(code, comment), None
        if given:
            return 0x0000, None
        reply = Dataset()  # PS3.7 10.1.5.1.4: the UID we chose goes back to the SCU
        reply.AffectedSOPInstanceUID = sop_uid
        return 0x0000, reply

    def set(self, event: Event) -> tuple[Dataset | int, Dataset | None]:
        req = cast(N_SET, event.request)
        refused = self._refusal(event, req.RequestedSOPClassUID)
        if refused is not None:
            return refused, None
        sop_uid = str(req.RequestedSOPInstanceUID or "")
        changes = event.modification_list
        code, comment = self._apply(
            event, "mpps.set", sop_uid, lambda s: worklist.mpps_set(s, sop_uid, changes)
        )
        return (status(code, comment), None) if code else (0x0000, None)

    def _apply(
        self, event: Event, action: str, sop_uid: str, change: Callable[[Session], MppsResult]
    ) -> tuple[int, str]:
        """(0, '') when the change is in the index, else a DIMSE failure status and why."""
        requestor = event.assoc.requestor
        calling = requestor.ae_title
        try:
            with self.archive.sessions() as session, session.begin():
                result = change(session)
                audit.record(
                    session,
                    actor=calling,
                    role="dicom-peer",
                    source=requestor.address,
                    action=action,
                    patients=[(o.patient.patient_id, o.study_uid) for o in result.orders],
                    detail=f"{sop_uid} {result.mpps.status}: "
                    + (", ".join(o.accession_number for o in result.orders) or "unscheduled"),
                )
        except MppsError as e:
            log.warning("%s %s from %s refused: %s", action, sop_uid, calling, e)
            return STATUS_OF[e.problem], str(e)
        except IntegrityError:
            return DUPLICATE_INSTANCE, f"MPPS {sop_uid} exists already"
        except Exception:
            log.exception("%s %s from %s failed", action, sop_uid, calling)
            return PROCESSING_FAILURE, "the step could not be recorded"
        log.info("%s %s from %s: %s", action, sop_uid, calling, result.mpps.status)
        return 0, ""
