"""The job runner of one broker process: workers claim and run jobs, a tender renews their
leases and queues the scheduled ones. Several processes may share one database; the lease
makes sure one job runs in one place at a time.
"""

from __future__ import annotations

import logging
import os
import secrets
import socket
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.orm import Session

import broker.commitment  # registers the storage commitment report job kind)
import broker.migrate  # noqa: F401  (registers the migration job kind)
import storage.prefetch  # registers the prefetch and evict job kinds
import storage.research.export_job  # noqa: F401  (registers the research.export job kind)
from storage import fixity, jobs, retention
from storage.archive import Archive
from storage.models import Job, JobState
from storage.settings import Settings

# Job kinds are registered by the modules that define them (`@jobs.handler`); a runner runs the
# kinds its process has imported: the imports above, plus any added there.
log = logging.getLogger("pacsbroker.jobs")


@dataclass(frozen=True)
class Schedule:
    """Queue a job of `kind` every `every` seconds (0 = never), once across all processes."""

    kind: str
    every: float
    start: Callable[[Session, str], Job | None]  # (session, dedupe key) → the queued job


def schedules(settings: Settings) -> list[Schedule]:
    return [
        Schedule(
            retention.SWEEP,
            settings.retention_sweep_hours * 3600,
            lambda s, key: retention.start_sweep(s, created_by="scheduler", dedupe_key=key),
        ),
        Schedule(
            fixity.FIXITY,
            settings.fixity_hours * 3600,
            lambda s, key: fixity.start(
                s, settings.fixity_sample, created_by="scheduler", dedupe_key=key
            ),
        ),
    ]


class JobRunner:
    def __init__(
        self,
        archive: Archive,
        *,
        workers: int,
        lease: float,
        poll: float = 1.0,
        plan: Sequence[Schedule] = (),
        reserved: Sequence[str] = (),
    ) -> None:
        self.archive = archive
        self.workers = max(1, workers)
        # one extra worker per kind here runs only that kind, so it never waits behind hours of
        # migration or export (storage commitment: a modality waits to delete its copies)
        self.reserved = list(reserved)
        self.lease = lease
        self.poll = poll
        self.plan = list(plan)
        self.name = f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(3)}"
        self._stop = threading.Event()
        self._active: dict[int, str] = {}  # job id → the worker's lease owner name
        self._lock = threading.Lock()
        self._threads: list[threading.Thread] = []
        self.born = time.time()

    def start(self) -> None:
        kinds = sorted(jobs.handlers())
        lanes = [(f"job-{n}", kinds) for n in range(self.workers)]
        lanes += [(f"job-{kind}", [kind]) for kind in self.reserved]
        for name, lane in lanes:
            owner = f"{self.name}/{name}"
            self._threads.append(
                threading.Thread(target=self._work, args=(owner, lane), name=name, daemon=True)
            )
        self._threads.append(threading.Thread(target=self._tend, name="job-tend", daemon=True))
        for t in self._threads:
            t.start()
        log.info(
            "job runner %s: %d workers for %s, one more each for %s",
            self.name,
            self.workers,
            kinds,
            self.reserved,
        )

    def stop(self, timeout: float = 15.0) -> None:
        """Running jobs stop at their next step and go back to the queue."""
        self._stop.set()
        deadline = time.monotonic() + timeout
        for t in self._threads:
            t.join(max(0.0, deadline - time.monotonic()))

    def _work(self, owner: str, kinds: list[str]) -> None:
        while not self._stop.is_set():
            try:
                job = jobs.claim(self.archive.sessions, owner, kinds, self.lease)
            except Exception:
                log.exception("claiming a job failed")
                job = None
            if job is None:
                self._stop.wait(self.poll)
                continue
            self._run(job, owner)

    def _run(self, job: Job, owner: str) -> None:
        ctx = jobs.JobContext.of(job, self.archive, owner, self.lease, self._stop)
        with self._lock:
            self._active[job.id] = owner
        log.info("job %d (%s) started, attempt %d", job.id, job.kind, job.attempts)
        sessions = self.archive.sessions
        try:
            result = jobs.handlers()[job.kind](ctx)
        except jobs.Deferred as d:
            if jobs.defer(sessions, job.id, owner, d.seconds, d.message):
                log.debug("job %d deferred %.0f s: %s", job.id, d.seconds, d.message)
        except jobs.JobStopped as e:
            if self._stop.is_set():
                jobs.release(sessions, job.id, owner)
                log.info("job %d handed back on shutdown", job.id)
            else:
                log.info("job %d stopped: %s", job.id, e)
        except Exception as e:
            log.exception("job %d (%s) failed", job.id, job.kind)
            why = f"{type(e).__name__}: {e}"
            jobs.finish(sessions, job.id, owner, JobState.FAILED, message=why)
        else:
            if jobs.finish(sessions, job.id, owner, JobState.SUCCEEDED, result=result or {}):
                log.info("job %d (%s) succeeded: %s", job.id, job.kind, result)
        finally:
            with self._lock:
                self._active.pop(job.id, None)

    def _tend(self) -> None:
        while not self._stop.wait(min(self.lease / 3, 10.0)):
            try:
                self._heartbeat()
                with self.archive.sessions() as session, session.begin():
                    jobs.abandon_dead(session)
                self._schedule()
            except Exception:
                log.exception("job heartbeat or schedule failed")

    def _heartbeat(self) -> None:
        """Renew the leases of the jobs running here, even in the middle of a long step."""
        with self._lock:
            active = dict(self._active)
        for job_id, owner in active.items():
            try:
                with self.archive.sessions() as session, session.begin():
                    jobs.fenced(session, job_id, owner, self.lease)
            except jobs.JobStopped:
                pass  # cancelled or taken over: the handler finds out at its next step

    def _schedule(self, now: float | None = None) -> None:
        now = time.time() if now is None else now
        for plan in self.plan:
            if plan.every <= 0:
                continue
            period = int(now // plan.every)
            key = f"{plan.kind}@{period}"
            with self.archive.sessions() as session, session.begin():
                if period == int(self.born // plan.every) and not _scheduled_before(
                    session, plan.kind
                ):
                    # a fresh archive's first sweep waits for the next period boundary rather
                    # than re-reading the first studies while they arrive, minutes after install
                    continue
                busy = session.scalar(
                    select(Job.id).where(
                        Job.kind == plan.kind,
                        Job.created_by == "scheduler",
                        Job.state.in_(jobs.ACTIVE),
                    )
                )
                if busy is None and plan.start(session, key) is not None:
                    log.info("scheduled %s queued", plan.kind)


def _scheduled_before(session: Session, kind: str) -> bool:
    found = session.scalar(
        select(Job.id).where(Job.kind == kind, Job.created_by == "scheduler").limit(1)
    )
    return found is not None
