"""Storage Commitment Push Model, SCP side of the request: N-ACTION is recorded, then answered.

The report (N-EVENT-REPORT) comes later from a durable job (broker/commitment.py), once every
named instance is archived with a verified SHA-256 or known to be missing; the request and its
job are in the index first, so a restart in between loses nothing.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
from collections.abc import Callable
from typing import Any

from pydicom.dataset import Dataset
from pynetdicom.association import Association
from pynetdicom.events import Event
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from broker.dimse.access import AccessPolicy, Action
from broker.dimse.contexts import STORAGE_COMMITMENT
from storage import jobs
from storage.archive import Archive
from storage.models import Commitment

log = logging.getLogger("pacsbroker.commitment")

# PS3.7 C.4 (N-service) status codes, also the failure reasons of a commitment report
NO_SUCH_OBJECT = 0x0112
CLASS_INSTANCE_CONFLICT = 0x0119
NOT_AUTHORISED = 0x0124
NO_SUCH_ACTION = 0x0123
MISSING_ATTRIBUTE = 0x0120
NO_SUCH_SOP_CLASS = 0x0118
PROCESSING_FAILURE = 0x0110

REPORT = "commitment"  # the job kind that sends the N-EVENT-REPORT


def queue_report(session: Session, row: Commitment) -> None:
    """Queue the job that reports `row` (the caller commits both together)."""
    job = jobs.enqueue(
        session,
        REPORT,
        {"commitment": row.id, "transaction_uid": row.transaction_uid, "requester": row.calling_ae},
        created_by=f"dicom:{row.calling_ae}",
    )
    assert job is not None  # no dedupe key: always queued
    row.job_fk = job.id


def record(
    session: Session, transaction: str, calling: str, address: str, items: list[list[str]]
) -> int | None:
    """Record a request and queue its report: the job's id, or None if the same transaction is
    still pending.

    A requester that repeats a transaction already reported (it may have missed the report)
    gets a fresh verdict and report.
    """
    row = session.scalar(select(Commitment).where(Commitment.transaction_uid == transaction))
    if row is not None and row.status == "pending":
        return None
    if row is None:
        row = Commitment(transaction_uid=transaction, calling_ae=calling, address=address)
        session.add(row)
    row.items = json.dumps(items)
    row.status, row.attempts, row.detail, row.reported_at = "pending", 0, "", None
    row.received_at = jobs.utcnow()
    session.flush()
    queue_report(session, row)
    return row.job_fk


OnRecorded = Callable[[Association, int], None]


def association_owner(job_id: int) -> str:
    """The job lease owner while a report waits to go on the requester's own association."""
    return f"{socket.gethostname()}:{os.getpid()}:association-{job_id}"


class CommitmentRequestHandler:
    def __init__(
        self, policy: AccessPolicy, archive: Archive, on_recorded: OnRecorded | None = None
    ) -> None:
        self.policy = policy
        self.archive = archive
        self.on_recorded = on_recorded  # (the requester's association, the report job's id)

    def __call__(self, event: Event) -> tuple[int, Dataset | None]:
        calling = event.assoc.requestor.ae_title
        address = event.assoc.requestor.address
        decision = self.policy.decide(calling, address, Action.STORE)
        if not decision.allowed:
            log.warning("storage commitment from %s refused: %s", calling, decision.reason)
            return NOT_AUTHORISED, None
        req: Any = event.request
        if str(req.RequestedSOPClassUID) != STORAGE_COMMITMENT:
            return NO_SUCH_SOP_CLASS, None
        if int(req.ActionTypeID) != 1:
            return NO_SUCH_ACTION, None
        try:
            info = event.action_information
            transaction = str(info.TransactionUID)
            items = [
                [str(r.ReferencedSOPClassUID), str(r.ReferencedSOPInstanceUID)]
                for r in info.ReferencedSOPSequence
            ]
        except (AttributeError, ValueError) as e:
            log.warning("storage commitment from %s malformed: %s", calling, e)
            return MISSING_ATTRIBUTE, None
        claimed = False
        try:
            with self.archive.sessions() as session, session.begin():
                job_id = record(session, transaction[:64], calling[:16], address[:128], items)
                if job_id is not None and self.on_recorded is not None:
                    # taken in the transaction that queues it, so no job runner reports
                    # on a new association while the requester still waits on this one
                    owner = association_owner(job_id)
                    lease = self.archive.settings.job_lease
                    claimed = jobs.try_claim(session, job_id, owner, lease)
        except IntegrityError:  # the same transaction recorded at this moment by another receiver
            job_id = None
        except Exception:
            log.exception("storage commitment %s from %s not recorded", transaction, calling)
            return PROCESSING_FAILURE, None
        if job_id is None:
            log.info(
                "storage commitment %s from %s repeated; already pending", transaction, calling
            )
            return 0x0000, None
        log.info(
            "storage commitment %s from %s: %d instances pending", transaction, calling, len(items)
        )
        if claimed and self.on_recorded is not None:
            # runs while this answer goes out; it may use the association once the reply is sent
            threading.Thread(
                target=self.on_recorded,
                args=(event.assoc, job_id),
                name=f"commitment-{job_id}",
                daemon=True,
            ).start()
        return 0x0000, None
