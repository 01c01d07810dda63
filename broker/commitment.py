"""Storage commitment reports: each pending request is answered with an N-EVENT-REPORT once every
instance it names is archived with a verified SHA-256, or is known to be missing or wrong.

Each report is a durable job (kind `commitment`), queued by the receiver with the request: it
survives restarts, is listed with its progress, can be cancelled and retried, and its lease keeps
broker processes sharing the index from both sending it. While instances are on their way or the
requester cannot be reached, the job defers itself instead of holding a worker, and every runner
keeps one worker for these jobs alone, so a long migration never delays a modality waiting to
delete its copies. A requester that keeps its association open gets the report on it;
otherwise it goes on a new association to the requester's address in the peer table.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from pydicom.dataset import Dataset
from pynetdicom import AE, build_role
from pynetdicom.association import Association
from sqlalchemy import select

from broker.dimse.commitment import (
    CLASS_INSTANCE_CONFLICT,
    NO_SUCH_OBJECT,
    PROCESSING_FAILURE,
    REPORT,
    association_owner,
    queue_report,
)
from broker.dimse.contexts import STORAGE_COMMITMENT, STORAGE_COMMITMENT_INSTANCE
from storage import jobs
from storage.archive import Archive, sha256_of
from storage.models import Commitment, Instance, JobState
from storage.objects import ObjectNotFound, ObjectStoreError

log = logging.getLogger("pacsbroker.commitment")


@dataclass
class Verdict:
    committed: list[tuple[str, str]] = field(default_factory=list)
    failed: list[tuple[str, str, int]] = field(default_factory=list)
    waiting: int = 0

    def report(self, transaction_uid: str, retrieve_ae: str) -> Dataset:
        ds = Dataset()
        ds.TransactionUID = transaction_uid
        ds.ReferencedSOPSequence = [
            _ref(cls, sop, RetrieveAETitle=retrieve_ae) for cls, sop in self.committed
        ]
        if self.failed:
            ds.FailedSOPSequence = [
                _ref(cls, sop, FailureReason=reason) for cls, sop, reason in self.failed
            ]
        return ds


def _ref(sop_class: str, sop_uid: str, **extra: object) -> Dataset:
    item = Dataset()
    item.ReferencedSOPClassUID = sop_class
    item.ReferencedSOPInstanceUID = sop_uid
    for keyword, value in extra.items():
        setattr(item, keyword, value)
    return item


def queue_unreported(archive: Archive) -> int:
    """Queue a report job for pending requests that have none (recorded before reports were
    jobs); returns how many."""
    with archive.sessions() as session, session.begin():
        rows = list(
            session.scalars(
                select(Commitment).where(
                    Commitment.status == "pending", Commitment.job_fk.is_(None)
                )
            )
        )
        for row in rows:
            queue_report(session, row)
    return len(rows)


Send = Callable[[Commitment, Verdict], str]  # deliver a report: '' when delivered, else why not


@jobs.handler(REPORT)
def report(ctx: jobs.JobContext) -> dict[str, Any]:
    """Report on a new association to the requester's address in the peer table."""
    return _report(ctx, lambda c, verdict: deliver(ctx.archive, c, verdict))


def _report(ctx: jobs.JobContext, send: Send) -> dict[str, Any]:
    """Judge the request, wait (deferred) while instances are on their way, then deliver the
    N-EVENT-REPORT, retried with back-off while the requester cannot be reached."""
    archive = ctx.archive
    with archive.sessions() as session:
        c = session.get(Commitment, int(ctx.params["commitment"]))
    if c is None:
        raise ValueError(f"storage commitment {ctx.params['commitment']} is no longer recorded")
    if c.status != "pending":
        return {"transaction_uid": c.transaction_uid, "requester": c.calling_ae, "detail": c.detail}
    verdict = judge(archive, c, wait=archive.settings.commitment_wait)
    done = len(verdict.committed) + len(verdict.failed)
    total = done + verdict.waiting
    if verdict.waiting:
        ctx.progress(done=done, total=total, message=f"waiting for {verdict.waiting} instances")
        raise jobs.Deferred(1.0, f"waiting for {verdict.waiting} of {total} instances")
    deliveries = int(ctx.checkpoint.get("deliveries", 0)) + 1
    error = send(c, verdict)
    summary = f"{len(verdict.committed)} committed, {len(verdict.failed)} failed"
    with archive.sessions() as session, session.begin():
        ctx.progress(session, done=done, total=total, checkpoint={"deliveries": deliveries})
        row = session.get(Commitment, c.id)
        assert row is not None
        row.attempts = deliveries
        row.detail = error or summary
        if not error:
            row.status = "reported"
            row.reported_at = dt.datetime.now(dt.UTC)
    if error:
        log.warning("storage commitment %s: report not delivered: %s", c.transaction_uid, error)
        raise jobs.Deferred(min(2.0**deliveries, 300.0), f"not delivered: {error}")
    log.info("storage commitment %s reported to %s: %s", c.transaction_uid, c.calling_ae, summary)
    return {
        "transaction_uid": c.transaction_uid,
        "requester": c.calling_ae,
        "committed": len(verdict.committed),
        "failed": len(verdict.failed),
    }


def judge(archive: Archive, c: Commitment, *, wait: float) -> Verdict:
    """Every named instance committed, failed with a reason, or (younger than `wait`) waited for."""
    items = [tuple(i) for i in json.loads(c.items)]
    age = (dt.datetime.now(dt.UTC) - _aware(c.received_at)).total_seconds()
    verdict = Verdict()
    with archive.sessions() as session:
        found = {
            i.sop_uid: i
            for i in session.scalars(
                select(Instance).where(Instance.sop_uid.in_([sop for _, sop in items]))
            )
        }
    for sop_class, sop in items:
        inst = found.get(sop)
        if inst is None:
            if age < wait:
                verdict.waiting += 1
            else:
                verdict.failed.append((sop_class, sop, NO_SUCH_OBJECT))
            continue
        if inst.sop_class_uid != sop_class:
            verdict.failed.append((sop_class, sop, CLASS_INSTANCE_CONFLICT))
            continue
        try:
            intact = sha256_of(archive.far.get(inst.object_key)) == inst.sha256
        except ObjectNotFound:
            intact = False
        except ObjectStoreError:
            verdict.waiting += 1  # the archive is down: ask again later, do not fail
            continue
        if intact:
            verdict.committed.append((sop_class, sop))
        else:
            log.error("storage commitment: %s does not match its SHA-256", sop)
            verdict.failed.append((sop_class, sop, PROCESSING_FAILURE))
    return verdict


def deliver(archive: Archive, c: Commitment, verdict: Verdict) -> str:
    """Send the report to the requester's address in the peer table; '' when delivered."""
    settings = archive.settings
    peer = settings.peer(c.calling_ae)
    if peer is None:
        return f"{c.calling_ae!r} is not in the peer table: no address to report to"
    return _send(
        settings.ae_title,
        peer.ae,
        peer.host,
        peer.port,
        verdict.report(c.transaction_uid, settings.ae_title),
    )


def report_on_association(
    archive: Archive, assoc: Association, job_id: int, *, settle: float = 0.2
) -> None:
    """Report on the requester's own association while it keeps it open (PS3.4 J.3.3 allows
    both); otherwise hand the job to the runners, which open a new association.

    The receiver claimed the job for this association when it queued it. Waits `settle` first:
    a requester that releases right after the N-ACTION reply has done so by then, and is not
    sent a request it would never answer.
    """
    owner = association_owner(job_id)
    time.sleep(settle)
    if not _open(assoc):
        jobs.defer(archive.sessions, job_id, owner, 0, "to be reported on a new association")
        return
    lease = archive.settings.job_lease
    with archive.sessions() as session:
        job = jobs.get(session, job_id)
        ctx = jobs.JobContext.of(job, archive, owner, lease, threading.Event())
    # instances still being ingested are waited for while the requester waits, within reason
    deadline = time.monotonic() + min(archive.settings.commitment_wait + 1, lease / 3)
    tried = False

    def send(c: Commitment, verdict: Verdict) -> str:
        nonlocal tried
        tried = True
        if not _open(assoc):
            return "the requester released its association"
        return _event_report(assoc, verdict.report(c.transaction_uid, archive.settings.ae_title))

    while True:
        try:
            result = _report(ctx, send)
        except jobs.Deferred as d:
            if not tried and _open(assoc) and time.monotonic() < deadline:
                time.sleep(0.25)
                continue
            why = f"{d.message}; to be reported on a new association"
            jobs.defer(archive.sessions, job_id, owner, 0, why)
        except jobs.JobStopped:
            pass  # cancelled meanwhile
        except Exception as e:
            log.exception("storage commitment job %d on the requester's association", job_id)
            jobs.defer(archive.sessions, job_id, owner, 0, f"{type(e).__name__}: {e}")
        else:
            result["association"] = "the requester's"
            jobs.finish(archive.sessions, job_id, owner, JobState.SUCCEEDED, result=result)
        return


def _open(assoc: Association) -> bool:
    return bool(assoc.is_established) and not assoc.acse.is_release_requested()


def _aware(t: dt.datetime) -> dt.datetime:
    return t if t.tzinfo else t.replace(tzinfo=dt.UTC)


def _send(our_ae: str, their_ae: str, host: str, port: int, report: Dataset) -> str:
    """One N-EVENT-REPORT on a new association in which we take the SCP role; '' if delivered."""
    ae = AE(our_ae)
    ae.add_requested_context(STORAGE_COMMITMENT)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 30
    role = build_role(STORAGE_COMMITMENT, scp_role=True)
    assoc = ae.associate(host, port, ae_title=their_ae, ext_neg=[role])
    if not assoc.is_established:
        return f"association to {their_ae}@{host}:{port} not established"
    try:
        return _event_report(assoc, report)
    finally:
        assoc.release()


def _event_report(assoc: Association, report: Dataset) -> str:
    """Send the report: event type 2 when anything failed; '' if the requester took it."""
    event_type = 2 if "FailedSOPSequence" in report else 1
    status, _ = assoc.send_n_event_report(
        report, event_type, STORAGE_COMMITMENT, STORAGE_COMMITMENT_INSTANCE
    )
    code = int(getattr(status, "Status", -1))
    their_ae = assoc.acceptor.ae_title if assoc.is_requestor else assoc.requestor.ae_title
    return "" if code == 0x0000 else f"{their_ae} answered status 0x{code & 0xFFFF:04X}"
