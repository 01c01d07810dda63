"""Durable jobs: one row per job, run under a lease so only one process at a time runs it.

A job kind is a function registered with `@handler("kind")`. It gets a `JobContext` and works
in steps; each step's transaction calls `ctx.progress(session=...)`, which saves the step's
checkpoint together with its work, and only while this process still holds the lease and nobody
cancelled the job. A run that resumes (after a crash, a restart or a retry) starts from the last
checkpoint, so handlers must be idempotent per step. See docs/admin.md for an example.
"""

from __future__ import annotations

import datetime as dt
import json
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from sqlalchemy import ColumnElement, CursorResult, Update, and_, func, or_, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session, sessionmaker

from storage.models import Job, JobState

if TYPE_CHECKING:  # the archive imports tiers, whose jobs import this module
    from storage.archive import Archive

# A process that dies while running a job this often is not given the job again.
MAX_ATTEMPTS = 5
ACTIVE = (JobState.QUEUED, JobState.RUNNING)


class JobError(ValueError):
    """The job cannot be changed that way; the message says why."""


class JobStopped(Exception):
    """The job is no longer this process's to run: cancelled, lease lost, or shutting down."""


class Deferred(Exception):
    """Raised by a handler that must wait (for data, for a peer): the job goes back to the
    queue, keeping its checkpoint, and is not claimed again for `seconds`."""

    def __init__(self, seconds: float, message: str) -> None:
        super().__init__(message)
        self.seconds = seconds
        self.message = message


Handler = Callable[["JobContext"], dict[str, Any] | None]
_HANDLERS: dict[str, Handler] = {}


def handler(kind: str) -> Callable[[Handler], Handler]:
    """Register `fn(ctx) -> result` as the code that runs jobs of `kind`."""

    def register(fn: Handler) -> Handler:
        if _HANDLERS.get(kind, fn) is not fn:
            raise ValueError(f"job kind {kind!r} already has a handler")
        _HANDLERS[kind] = fn
        return fn

    return register


def handlers() -> dict[str, Handler]:
    return dict(_HANDLERS)


def _changed(session: Session, stmt: Update) -> int:
    """Rows an UPDATE changed: the conditional UPDATE is what makes claims and fences atomic."""
    result = session.execute(stmt.execution_options(synchronize_session=False))
    assert isinstance(result, CursorResult)
    return result.rowcount


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def iso(t: dt.datetime | None) -> str | None:
    """ISO 8601 in UTC; SQLite hands datetimes back without their zone."""
    if t is None:
        return None
    return (t if t.tzinfo else t.replace(tzinfo=dt.UTC)).isoformat()


# --- the row -------------------------------------------------------------------------------


def enqueue(
    session: Session,
    kind: str,
    params: dict[str, Any] | None = None,
    *,
    created_by: str,
    dedupe_key: str | None = None,
) -> Job | None:
    """Queue a job (the caller commits); None if a job with `dedupe_key` already exists."""
    values = {
        "kind": kind,
        "params": json.dumps(params or {}),
        "state": JobState.QUEUED,
        "done": 0,
        "total": 0,
        "message": "",
        "checkpoint": "{}",
        "result": "{}",
        "attempts": 0,
        "lease_owner": "",
        "created_by": created_by[:128],
        "created_at": utcnow(),
        "dedupe_key": dedupe_key,
    }
    if dedupe_key is None:
        job = Job(**values)
        session.add(job)
        session.flush()
        return job
    dialect = session.get_bind().dialect.name
    ins = (postgresql.insert if dialect == "postgresql" else sqlite.insert)(Job)
    new_id = session.scalar(
        ins.values(**values).on_conflict_do_nothing(index_elements=["dedupe_key"]).returning(Job.id)
    )
    return None if new_id is None else session.get(Job, new_id)


def get(session: Session, job_id: int) -> Job:
    job = session.get(Job, job_id)
    if job is None:
        raise JobError(f"no job {job_id}")
    return job


def listing(session: Session, *, state: str = "", kind: str = "", limit: int = 100) -> list[Job]:
    stmt = select(Job).order_by(Job.id.desc()).limit(limit)
    if state:
        stmt = stmt.where(Job.state == state)
    if kind:
        stmt = stmt.where(Job.kind == kind)
    return list(session.scalars(stmt))


def as_dict(job: Job) -> dict[str, Any]:
    return {
        "id": job.id,
        "kind": job.kind,
        "params": json.loads(job.params),
        "state": job.state,
        "done": job.done,
        "total": job.total,
        "message": job.message,
        "result": json.loads(job.result),
        "attempts": job.attempts,
        "lease_owner": job.lease_owner,
        "lease_until": iso(job.lease_until),
        "run_after": iso(job.run_after),
        "created_by": job.created_by,
        "created_at": iso(job.created_at),
        "started_at": iso(job.started_at),
        "finished_at": iso(job.finished_at),
    }


def cancel(session: Session, job_id: int, *, by: str) -> Job:
    """Stop a queued or running job; a running one stops at its next step (the caller commits)."""
    n = _changed(
        session,
        update(Job)
        .where(Job.id == job_id, Job.state.in_(ACTIVE))
        .values(
            state=JobState.CANCELLED,
            message=f"cancelled by {by}",
            lease_owner="",
            lease_until=None,
            finished_at=utcnow(),
        ),
    )
    job = get(session, job_id)
    if not n:
        raise JobError(f"job {job_id} is {job.state}: only queued or running jobs can be cancelled")
    session.refresh(job)
    return job


def retry(session: Session, job_id: int, *, by: str) -> Job:
    """Queue a failed or cancelled job again; it resumes from its last checkpoint."""
    n = _changed(
        session,
        update(Job)
        .where(Job.id == job_id, Job.state.in_((JobState.FAILED, JobState.CANCELLED)))
        .values(
            state=JobState.QUEUED,
            message=f"retried by {by}",
            attempts=0,
            lease_owner="",
            lease_until=None,
            run_after=None,
            finished_at=None,
        ),
    )
    job = get(session, job_id)
    if not n:
        raise JobError(f"job {job_id} is {job.state}: only failed or cancelled jobs can be retried")
    session.refresh(job)
    return job


# --- claiming and the lease ------------------------------------------------------------------


def _claimable(now: dt.datetime) -> ColumnElement[bool]:
    """Queued (and not deferred past now), or running under a lease nobody renewed (its
    process died)."""
    return and_(
        or_(
            and_(
                Job.state == JobState.QUEUED,
                or_(Job.run_after.is_(None), Job.run_after <= now),
            ),
            and_(Job.state == JobState.RUNNING, Job.lease_until < now),
        ),
        Job.attempts < MAX_ATTEMPTS,
    )


def try_claim(
    session: Session, job_id: int, owner: str, lease: float, now: dt.datetime | None = None
) -> bool:
    """Take one job if it is still claimable: the check and the take are one UPDATE, so of two
    processes racing for a job exactly one sees a changed row (the caller commits)."""
    now = now or utcnow()
    n = _changed(
        session,
        update(Job)
        .where(Job.id == job_id, _claimable(now))
        .values(
            state=JobState.RUNNING,
            lease_owner=owner,
            lease_until=now + dt.timedelta(seconds=lease),
            attempts=Job.attempts + 1,
            started_at=func.coalesce(Job.started_at, now),
        ),
    )
    return n == 1


def claim(
    sessions: sessionmaker[Session],
    owner: str,
    kinds: Iterable[str],
    lease: float,
    now: dt.datetime | None = None,
) -> Job | None:
    """The oldest claimable job of these kinds, now running under `owner`'s lease."""
    now = now or utcnow()
    with sessions() as session:
        ids = session.scalars(
            select(Job.id)
            .where(Job.kind.in_(list(kinds)), _claimable(now))
            .order_by(Job.id)
            .limit(8)
        ).all()
    for job_id in ids:
        with sessions() as session, session.begin():
            if try_claim(session, job_id, owner, lease, now):
                return get(session, job_id)
    return None


def abandon_dead(session: Session, now: dt.datetime | None = None) -> int:
    """Fail jobs whose process died `MAX_ATTEMPTS` times running them (the caller commits)."""
    now = now or utcnow()
    return _changed(
        session,
        update(Job)
        .where(
            Job.state == JobState.RUNNING,
            Job.lease_until < now,
            Job.attempts >= MAX_ATTEMPTS,
        )
        .values(
            state=JobState.FAILED,
            message=f"abandoned: its process stopped {MAX_ATTEMPTS} times while running it",
            lease_owner="",
            finished_at=now,
        ),
    )


def fenced(session: Session, job_id: int, owner: str, lease: float, **values: Any) -> None:
    """Update our running job and renew its lease; raises JobStopped if it is no longer ours."""
    now = utcnow()
    n = _changed(
        session,
        update(Job)
        .where(Job.id == job_id, Job.lease_owner == owner, Job.state == JobState.RUNNING)
        .values({"lease_until": now + dt.timedelta(seconds=lease), **values}),
    )
    if n != 1:
        state = session.scalar(select(Job.state).where(Job.id == job_id))
        why = "cancelled" if state == JobState.CANCELLED else f"lease lost (job is {state})"
        raise JobStopped(why)


def finish(
    sessions: sessionmaker[Session],
    job_id: int,
    owner: str,
    state: JobState,
    *,
    message: str | None = None,
    result: dict[str, Any] | None = None,
) -> bool:
    """Record how the run ended; False if the job was no longer ours."""
    values: dict[str, Any] = {
        "state": state,
        "lease_owner": "",
        "lease_until": None,
        "finished_at": utcnow(),
    }
    if message is not None:
        values["message"] = message
    if result is not None:
        values["result"] = json.dumps(result)
    try:
        with sessions() as session, session.begin():
            fenced(session, job_id, owner, 0, **values)
    except JobStopped:
        return False
    return True


def defer(
    sessions: sessionmaker[Session], job_id: int, owner: str, seconds: float, message: str
) -> bool:
    """Queue our running job again, not to be claimed for `seconds`; waiting is not a failed
    attempt. False if the job was no longer ours."""
    values: dict[str, Any] = {
        "state": JobState.QUEUED,
        "lease_owner": "",
        "lease_until": None,
        "run_after": utcnow() + dt.timedelta(seconds=seconds),
        "message": message,
        "attempts": Job.attempts - 1,
    }
    try:
        with sessions() as session, session.begin():
            fenced(session, job_id, owner, 0, **values)
    except JobStopped:
        return False
    return True


def release(sessions: sessionmaker[Session], job_id: int, owner: str) -> None:
    """Hand a job back on shutdown; another process (or the next start) resumes it."""
    with sessions() as session, session.begin():
        session.execute(
            update(Job)
            .where(Job.id == job_id, Job.lease_owner == owner, Job.state == JobState.RUNNING)
            .values(
                state=JobState.QUEUED,
                lease_owner="",
                lease_until=None,
                attempts=Job.attempts - 1,  # a clean stop is not a failed attempt
            )
        )


# --- what a handler sees --------------------------------------------------------------------


@dataclass
class JobContext:
    """One run of a job. `checkpoint`, `done` and `total` are as last saved."""

    job_id: int
    kind: str
    params: dict[str, Any]
    checkpoint: dict[str, Any]
    done: int
    total: int
    created_by: str
    archive: Archive
    owner: str
    lease: float
    stopping: threading.Event = field(default_factory=threading.Event)

    @classmethod
    def of(
        cls, job: Job, archive: Archive, owner: str, lease: float, stopping: threading.Event
    ) -> JobContext:
        return cls(
            job.id,
            job.kind,
            json.loads(job.params),
            json.loads(job.checkpoint),
            job.done,
            job.total,
            job.created_by,
            archive,
            owner,
            lease,
            stopping,
        )

    def check(self) -> None:
        """Between steps: raises JobStopped if the process is shutting down."""
        if self.stopping.is_set():
            raise JobStopped("process stopping")

    def sleep(self, seconds: float) -> None:
        if self.stopping.wait(seconds):
            raise JobStopped("process stopping")

    def progress(
        self,
        session: Session | None = None,
        *,
        done: int | None = None,
        total: int | None = None,
        message: str | None = None,
        checkpoint: dict[str, Any] | None = None,
    ) -> None:
        """Save progress, in `session`'s transaction if given (commit it with the step's work).

        Raises JobStopped if the job was cancelled or another process took it over, so the
        step's transaction rolls back. Called first in a step's transaction (with no values),
        it fences the step and, on SQLite, takes the write lock before the step reads.
        """
        values: dict[str, Any] = {}
        if done is not None:
            values["done"] = done
        if total is not None:
            values["total"] = total
        if message is not None:
            values["message"] = message
        if checkpoint is not None:
            values["checkpoint"] = json.dumps(checkpoint)
        if session is None:
            with self.archive.sessions() as own, own.begin():
                fenced(own, self.job_id, self.owner, self.lease, **values)
        else:
            fenced(session, self.job_id, self.owner, self.lease, **values)
        self.done = self.done if done is None else done
        self.total = self.total if total is None else total
        self.checkpoint = self.checkpoint if checkpoint is None else checkpoint
