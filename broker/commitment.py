"""Storage commitment reports: each pending request is answered with an N-EVENT-REPORT once every
instance it names is archived with a verified SHA-256, or is known to be missing or wrong.

Runs in the main process, apart from the job queue so that a long migration or export never
delays a modality waiting to delete its copies; requests come from the index (recorded by the
receivers), so pending commitments survive restarts, and each attempt is claimed in the index, so
broker processes sharing it never both send a report. Reports go on a new association to the
requester's address in the peer table, retried with back-off while it cannot be reached.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import threading
import time
from dataclasses import dataclass, field

from pydicom.dataset import Dataset
from pynetdicom import AE, build_role
from sqlalchemy import select, update

from broker.dimse.commitment import CLASS_INSTANCE_CONFLICT, NO_SUCH_OBJECT, PROCESSING_FAILURE
from broker.dimse.contexts import STORAGE_COMMITMENT, STORAGE_COMMITMENT_INSTANCE
from storage.archive import Archive, sha256_of
from storage.models import Commitment, Instance
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


class CommitmentReporter:
    def __init__(self, archive: Archive, *, wait: float, interval: float = 0.5) -> None:
        self.archive = archive
        self.wait = wait  # how long an instance may still be on its way before it counts missing
        self.interval = interval
        self._next_try: dict[int, float] = {}
        self._stop = threading.Event()

    def run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.round()
            except Exception:
                log.exception("storage commitment round failed")

    def stop(self) -> None:
        self._stop.set()

    def round(self) -> None:
        with self.archive.sessions() as session:
            pending = list(
                session.scalars(select(Commitment).where(Commitment.status == "pending"))
            )
        now = time.time()
        for c in pending:
            if self._next_try.get(c.id, 0.0) > now:
                continue
            verdict = self.judge(c)
            if verdict.waiting or not self._claim(c):
                continue
            self.deliver(c, verdict)

    def _claim(self, c: Commitment) -> bool:
        """Count this attempt, unless another broker process sharing the index already did:
        the conditional UPDATE lets exactly one process send each report."""
        with self.archive.sessions() as session, session.begin():
            result = session.execute(
                update(Commitment)
                .where(
                    Commitment.id == c.id,
                    Commitment.status == "pending",
                    Commitment.attempts == c.attempts,
                )
                .values(attempts=Commitment.attempts + 1)
            )
            return bool(getattr(result, "rowcount", 0))

    def judge(self, c: Commitment) -> Verdict:
        items = [tuple(i) for i in json.loads(c.items)]
        age = (dt.datetime.now(dt.UTC) - _aware(c.received_at)).total_seconds()
        verdict = Verdict()
        with self.archive.sessions() as session:
            found = {
                i.sop_uid: i
                for i in session.scalars(
                    select(Instance).where(Instance.sop_uid.in_([sop for _, sop in items]))
                )
            }
        for sop_class, sop in items:
            inst = found.get(sop)
            if inst is None:
                if age < self.wait:
                    verdict.waiting += 1
                else:
                    verdict.failed.append((sop_class, sop, NO_SUCH_OBJECT))
                continue
            if inst.sop_class_uid != sop_class:
                verdict.failed.append((sop_class, sop, CLASS_INSTANCE_CONFLICT))
                continue
            try:
                intact = sha256_of(self.archive.far.get(inst.object_key)) == inst.sha256
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

    def deliver(self, c: Commitment, verdict: Verdict) -> None:
        settings = self.archive.settings
        peer = settings.peer(c.calling_ae)
        error = ""
        if peer is None:
            error = f"{c.calling_ae!r} is not in the peer table: no address to report to"
        else:
            error = _send(
                settings.ae_title,
                peer.ae,
                peer.host,
                peer.port,
                verdict.report(c.transaction_uid, settings.ae_title),
                event_type=2 if verdict.failed else 1,
            )
        with self.archive.sessions() as session, session.begin():
            row = session.get(Commitment, c.id)
            if row is None:
                return
            if error:
                row.detail = error
                self._next_try[c.id] = time.time() + min(2.0**row.attempts, 300.0)
                log.warning(
                    "storage commitment %s: report not delivered: %s", c.transaction_uid, error
                )
                return
            summary = f"{len(verdict.committed)} committed, {len(verdict.failed)} failed"
            row.status = "reported"
            row.reported_at = dt.datetime.now(dt.UTC)
            row.detail = summary
        self._next_try.pop(c.id, None)
        log.info(
            "storage commitment %s reported to %s: %s", c.transaction_uid, c.calling_ae, summary
        )


def _aware(t: dt.datetime) -> dt.datetime:
    return t if t.tzinfo else t.replace(tzinfo=dt.UTC)


def _send(
    our_ae: str, their_ae: str, host: str, port: int, report: Dataset, *, event_type: int
) -> str:
    """One N-EVENT-REPORT on a new association in which we take the SCP role; '' if delivered."""
    ae = AE(our_ae)
    ae.add_requested_context(STORAGE_COMMITMENT)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 30
    role = build_role(STORAGE_COMMITMENT, scp_role=True)
    assoc = ae.associate(host, port, ae_title=their_ae, ext_neg=[role])
    if not assoc.is_established:
        return f"association to {their_ae}@{host}:{port} not established"
    try:
        status, _ = assoc.send_n_event_report(
            report, event_type, STORAGE_COMMITMENT, STORAGE_COMMITMENT_INSTANCE
        )
    finally:
        assoc.release()
    code = int(getattr(status, "Status", -1))
    return "" if code == 0x0000 else f"{their_ae} answered status 0x{code & 0xFFFF:04X}"
