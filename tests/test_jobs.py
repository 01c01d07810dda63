"""Durable jobs on SQLite and PostgreSQL: one claimer wins, dead leases are taken over, a fenced
step of a job that is no longer ours rolls back, cancel and retry, and the runner thread."""

from __future__ import annotations

import datetime as dt
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select, update

from broker.jobs import JobRunner, Schedule
from storage import jobs
from storage.archive import Archive
from storage.models import AuditEvent, Job, JobState
from storage.settings import Settings

LEASE = 30.0


@pytest.fixture
def archive(tmp_path: Path, db_url: str) -> Any:
    a = Archive(Settings(data_dir=tmp_path, database_url=db_url), run_migrations=True)
    yield a
    a.close()


def queue(a: Archive, kind: str = "test-steps", **params: Any) -> int:
    with a.sessions() as s, s.begin():
        job = jobs.enqueue(s, kind, params, created_by="pytest")
        assert job is not None
        return job.id


def row(a: Archive, job_id: int) -> Job:
    with a.sessions() as s:
        return jobs.get(s, job_id)


# A handler that counts its steps in the audit table, so double work would show.
@jobs.handler("test-steps")
def steps(ctx: jobs.JobContext) -> dict[str, Any]:
    n = int(ctx.params.get("steps", 5))
    ctx.progress(total=n)
    for i in range(int(ctx.checkpoint.get("next", 0)), n):
        ctx.check()
        with ctx.archive.sessions() as s, s.begin():
            ctx.progress(session=s)
            s.add(AuditEvent(actor="test", action=f"step-{ctx.job_id}-{i}"))
            ctx.progress(session=s, done=i + 1, checkpoint={"next": i + 1})
        ctx.sleep(float(ctx.params.get("pause", 0)))
    return {"steps": n}


@jobs.handler("test-fails")
def fails(ctx: jobs.JobContext) -> None:
    raise RuntimeError("the archive said no")


def step_rows(a: Archive, job_id: int) -> list[str]:
    with a.sessions() as s:
        return sorted(
            s.scalars(select(AuditEvent.action).where(AuditEvent.action.like(f"step-{job_id}-%")))
        )


def test_two_claimers_race_for_one_job_and_exactly_one_wins(archive: Archive) -> None:
    job_id = queue(archive)
    now = jobs.utcnow()
    with archive.sessions() as s1, archive.sessions() as s2:
        # both saw the job queued; the conditional UPDATE lets only the first take it
        assert jobs.try_claim(s1, job_id, "A", LEASE, now)
        s1.commit()
        assert not jobs.try_claim(s2, job_id, "B", LEASE, now)
        s2.commit()
    j = row(archive, job_id)
    assert (j.state, j.lease_owner, j.attempts) == (JobState.RUNNING, "A", 1)


def test_concurrent_claimers_never_share_a_job(archive: Archive) -> None:
    ids = {queue(archive) for _ in range(24)}
    taken: list[tuple[str, int]] = []
    lock = threading.Lock()

    def claimer(name: str) -> None:
        while (job := jobs.claim(archive.sessions, name, ["test-steps"], LEASE)) is not None:
            with lock:
                taken.append((name, job.id))

    threads = [threading.Thread(target=claimer, args=(f"w{i}",)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert sorted(job_id for _, job_id in taken) == sorted(ids)
    with archive.sessions() as s:
        owners = {r.id: r.lease_owner for r in s.execute(select(Job.id, Job.lease_owner))}
    assert all(owners[job_id] == name for name, job_id in taken)


def test_an_expired_lease_is_taken_over_and_the_old_owner_is_fenced_off(
    archive: Archive,
) -> None:
    job_id = queue(archive)
    t0 = jobs.utcnow()
    assert jobs.claim(archive.sessions, "A", ["test-steps"], LEASE, t0) is not None
    assert jobs.claim(archive.sessions, "B", ["test-steps"], LEASE, t0) is None
    later = t0 + dt.timedelta(seconds=LEASE + 1)  # A died: nobody renewed its lease
    taken = jobs.claim(archive.sessions, "B", ["test-steps"], LEASE, later)
    assert taken is not None and taken.id == job_id and taken.attempts == 2
    with archive.sessions() as s, pytest.raises(jobs.JobStopped, match="lease lost"):
        jobs.fenced(s, job_id, "A", LEASE, done=99)
    assert row(archive, job_id).done == 0
    assert not jobs.finish(archive.sessions, job_id, "A", JobState.SUCCEEDED)
    assert jobs.finish(archive.sessions, job_id, "B", JobState.SUCCEEDED)


def test_a_resumed_job_continues_after_its_last_checkpoint(archive: Archive) -> None:
    job_id = queue(archive, steps=6)
    first = jobs.claim(archive.sessions, "A", ["test-steps"], LEASE)
    assert first is not None
    ctx = jobs.JobContext.of(first, archive, "A", LEASE, threading.Event())
    with archive.sessions() as s, s.begin():  # three steps, then the process "dies"
        for i in range(3):
            ctx.progress(session=s, done=i + 1, checkpoint={"next": i + 1})
            s.add(AuditEvent(actor="test", action=f"step-{job_id}-{i}"))
    later = jobs.utcnow() + dt.timedelta(seconds=LEASE + 1)
    again = jobs.claim(archive.sessions, "B", ["test-steps"], LEASE, later)
    assert again is not None
    result = steps(jobs.JobContext.of(again, archive, "B", LEASE, threading.Event()))
    assert result == {"steps": 6}
    assert step_rows(archive, job_id) == [f"step-{job_id}-{i}" for i in range(6)]


def test_cancel_and_retry(archive: Archive) -> None:
    job_id = queue(archive)
    with archive.sessions() as s, s.begin():
        assert jobs.cancel(s, job_id, by="ole").state == JobState.CANCELLED
    with archive.sessions() as s, s.begin(), pytest.raises(jobs.JobError, match="cancelled"):
        jobs.cancel(s, job_id, by="ole")
    with archive.sessions() as s, s.begin():
        assert jobs.retry(s, job_id, by="ole").state == JobState.QUEUED
    with archive.sessions() as s, s.begin(), pytest.raises(jobs.JobError, match="queued"):
        jobs.retry(s, job_id, by="ole")

    job = jobs.claim(archive.sessions, "A", ["test-steps"], LEASE)
    assert job is not None
    ctx = jobs.JobContext.of(job, archive, "A", LEASE, threading.Event())
    ctx.progress(done=2, checkpoint={"next": 2})
    with archive.sessions() as s, s.begin():
        jobs.cancel(s, job_id, by="kari")
    # the running step notices at its fence, and its transaction rolls back
    with archive.sessions() as s, pytest.raises(jobs.JobStopped, match="cancelled"), s.begin():
        s.add(AuditEvent(actor="test", action=f"step-{job_id}-2"))
        ctx.progress(session=s, done=3, checkpoint={"next": 3})
    assert step_rows(archive, job_id) == []
    j = row(archive, job_id)
    assert (j.state, j.done, j.message) == (JobState.CANCELLED, 2, "cancelled by kari")
    with archive.sessions() as s, s.begin():
        jobs.retry(s, job_id, by="kari")
    j = row(archive, job_id)
    assert (j.state, j.attempts, j.checkpoint) == (JobState.QUEUED, 0, '{"next": 2}')


def test_a_job_whose_process_keeps_dying_is_abandoned(archive: Archive) -> None:
    job_id = queue(archive)
    t = jobs.utcnow()
    for attempt in range(jobs.MAX_ATTEMPTS):
        t += dt.timedelta(seconds=LEASE + 1)
        claimed = jobs.claim(archive.sessions, f"p{attempt}", ["test-steps"], LEASE, t)
        assert claimed is not None and claimed.attempts == attempt + 1
    t += dt.timedelta(seconds=LEASE + 1)
    assert jobs.claim(archive.sessions, "last", ["test-steps"], LEASE, t) is None
    with archive.sessions() as s, s.begin():
        assert jobs.abandon_dead(s, t) == 1
    assert row(archive, job_id).state == JobState.FAILED


def test_a_dedupe_key_queues_one_job(archive: Archive) -> None:
    with archive.sessions() as s, s.begin():
        assert jobs.enqueue(s, "test-steps", created_by="a", dedupe_key="slot-1") is not None
    with archive.sessions() as s, s.begin():
        assert jobs.enqueue(s, "test-steps", created_by="b", dedupe_key="slot-1") is None
    with archive.sessions() as s:
        assert s.scalar(select(func.count(Job.id))) == 1


def wait_state(a: Archive, job_id: int, *states: str, timeout: float = 30) -> Job:
    deadline = time.time() + timeout
    while time.time() < deadline:
        j = row(a, job_id)
        if j.state in states:
            return j
        time.sleep(0.05)
    raise TimeoutError(f"job {job_id} is {row(a, job_id).state}")


def test_runner_runs_cancels_fails_and_hands_back_on_stop(archive: Archive) -> None:
    runner = JobRunner(archive, workers=2, lease=LEASE, poll=0.05)
    runner.start()
    try:
        done = queue(archive, steps=3)
        assert wait_state(archive, done, "succeeded").result == '{"steps": 3}'
        failed = queue(archive, "test-fails")
        assert wait_state(archive, failed, "failed").message == "RuntimeError: the archive said no"

        slow = queue(archive, steps=1000, pause=0.05)
        wait_state(archive, slow, "running")
        with archive.sessions() as s, s.begin():
            jobs.cancel(s, slow, by="admin")
        time.sleep(0.5)
        stopped_at = len(step_rows(archive, slow))
        time.sleep(0.3)
        assert len(step_rows(archive, slow)) == stopped_at < 1000  # no step after the cancel
        assert row(archive, slow).state == JobState.CANCELLED

        handed = queue(archive, steps=1000, pause=0.05)
        wait_state(archive, handed, "running")
        deadline = time.time() + 30  # "running" is set before its first step is recorded
        while row(archive, handed).done == 0 and time.time() < deadline:
            time.sleep(0.05)
    finally:
        runner.stop()
    j = row(archive, handed)
    assert (j.state, j.lease_owner, j.attempts) == (JobState.QUEUED, "", 0)
    assert 0 < j.done < 1000


def _scheduled(archive: Archive) -> int:
    with archive.sessions() as s:
        return int(
            s.scalar(
                select(func.count(Job.id)).where(
                    Job.kind == "test-steps", Job.created_by == "scheduler"
                )
            )
            or 0
        )


def test_scheduled_jobs_are_queued_once_per_interval(archive: Archive) -> None:
    plan = [
        Schedule(
            "test-steps",
            3600,
            lambda s, key: jobs.enqueue(s, "test-steps", created_by="scheduler", dedupe_key=key),
        )
    ]
    first = JobRunner(archive, workers=1, lease=LEASE, plan=plan)
    second = JobRunner(archive, workers=1, lease=LEASE, plan=plan)  # another process
    # a fresh archive: nothing in the period the runners started in
    first._schedule(first.born)
    assert _scheduled(archive) == 0
    later = first.born + 3600
    first._schedule(later)
    second._schedule(later)
    first._schedule(later)
    assert _scheduled(archive) == 1
    # a restart on an archive with history catches up on the period it starts in
    restarted = JobRunner(archive, workers=1, lease=LEASE, plan=plan)
    with archive.sessions() as s, s.begin():
        s.execute(update(Job).where(Job.kind == "test-steps").values(state=JobState.SUCCEEDED))
    restarted.born = first.born  # the same period, so the test cannot straddle an hour
    restarted._schedule(first.born)
    assert _scheduled(archive) == 2


@jobs.handler("test-waits")
def waits(ctx: jobs.JobContext) -> dict[str, Any]:
    """Waits (deferred) until it has been run `rounds` times."""
    seen = int(ctx.checkpoint.get("seen", 0)) + 1
    ctx.progress(checkpoint={"seen": seen})
    if seen < int(ctx.params["rounds"]):
        raise jobs.Deferred(float(ctx.params["pause"]), f"waiting, round {seen}")
    return {"rounds": seen}


def test_a_deferred_job_waits_its_time_without_using_an_attempt(archive: Archive) -> None:
    job_id = queue(archive, "test-waits", rounds=2, pause=60)
    runner = JobRunner(archive, workers=1, lease=LEASE, poll=0.05)
    owner = f"{runner.name}/w"
    job = jobs.claim(archive.sessions, owner, ["test-waits"], LEASE)
    assert job is not None
    runner._run(job, owner)
    j = row(archive, job_id)
    assert (j.state, j.message, j.attempts, j.lease_owner) == ("queued", "waiting, round 1", 0, "")
    assert jobs.claim(archive.sessions, owner, ["test-waits"], LEASE) is None  # not before its time
    later = jobs.utcnow() + dt.timedelta(seconds=61)
    job = jobs.claim(archive.sessions, owner, ["test-waits"], LEASE, now=later)
    assert job is not None and job.id == job_id
    runner._run(job, owner)
    assert row(archive, job_id).result == '{"rounds": 2}'


def test_a_reserved_worker_runs_its_kind_while_the_others_are_busy(archive: Archive) -> None:
    runner = JobRunner(archive, workers=1, lease=LEASE, poll=0.05, reserved=["test-waits"])
    runner.start()
    try:
        busy = queue(archive, steps=1000, pause=0.05)
        wait_state(archive, busy, "running")
        urgent = queue(archive, "test-waits", rounds=1, pause=0)
        assert wait_state(archive, urgent, "succeeded").result == '{"rounds": 1}'
        assert row(archive, busy).state == JobState.RUNNING
    finally:
        runner.stop()
