"""Legacy PACS migration as a durable job: find the PACS's studies window by window, have each
one retrieved into our spool (like any C-STORE), then verify it against the index.

The DICOM side is a `LegacySource` (broker/migrate.py); this module is the job's logic: its
checkpoint (the windows still to ask) and its study rows (`migration_studies`, the report) are
saved in the same transaction as the step, so a killed job resumes where it was and never
retrieves a verified study again.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import queue
import socket
import threading
import time
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, Field, field_validator, model_validator
from sqlalchemy import func, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from storage import audit, jobs
from storage.access import Action, PeerPolicy
from storage.migration_source import (
    LegacySource,
    Retrieved,
    SourceCounts,
    SourceError,
    SourceUnavailable,
    StudyRefused,
)
from storage.migration_verify import StudyState, archived, problem, verify
from storage.migration_windows import Answer, Found, Window, initial, step
from storage.models import Job, MigrationStudy
from storage.settings import Settings

log = logging.getLogger("pacsbroker.migration")
MIGRATION = "migration"
POLL = 0.1  # seconds between looks at the index while a study is being ingested
RETRIES = 3  # a source that stops answering is retried this often, waiting longer each time
REFUSALS = 3  # this many studies refused in a row stop the job: the PACS is set up wrong
BACKOFF = 5.0


class MigrationError(ValueError):
    """The migration cannot be started that way; the message says why."""


class Hours:
    """Allowed hours of the local day, e.g. "18-07" (evening to morning) or "08:30-16"."""

    def __init__(self, spec: str) -> None:
        self.spec = spec.strip()
        self.span: tuple[int, int] | None = None
        if self.spec:
            try:
                a, b = (self._minutes(x) for x in self.spec.split("-"))
            except ValueError:
                raise ValueError(f"hours {spec!r}: expected HH-HH or HH:MM-HH:MM") from None
            self.span = (a, b)

    @staticmethod
    def _minutes(part: str) -> int:
        hh, _, mm = part.strip().partition(":")
        h, m = int(hh), int(mm or 0)
        if not (0 <= h <= 24 and 0 <= m < 60 and h * 60 + m <= 1440):
            raise ValueError(part)
        return h * 60 + m

    def wait(self, now: dt.datetime) -> float:
        """Seconds from `now` until the allowed hours begin; 0 within them."""
        if self.span is None:
            return 0.0
        start, end = self.span
        minute = now.hour * 60 + now.minute + now.second / 60
        inside = start <= minute < end if start <= end else minute >= start or minute < end
        if inside or start == end:
            return 0.0
        return ((start - minute) % 1440) * 60


class MigrationParams(BaseModel):
    """What to migrate from where, and how gently."""

    source_ae: str = Field(min_length=1, max_length=16, description="AE title of the legacy PACS")
    host: str = Field(default="", description="Its host; empty = from the PEERS entry")
    port: int = Field(default=0, ge=0, le=65535, description="Its port; 0 = from PEERS")
    since: str = Field(default="", pattern=r"^(\d{8})?$", description="First StudyDate, YYYYMMDD")
    until: str = Field(default="", pattern=r"^(\d{8})?$", description="Last StudyDate, YYYYMMDD")
    window_days: int = Field(default=365, ge=1, description="Width of the first C-FIND windows")
    max_associations: int = Field(default=1, ge=1, le=8, description="Open with the PACS at once")
    hours: str = Field(default="", description='Allowed local hours, e.g. "18-07"; empty = any')
    method: Literal["move", "get"] = "move"
    pause: float = Field(default=0.0, ge=0, description="Seconds between studies, per association")
    find_limit: int = Field(
        default=0, ge=0, description="Answers at which the PACS truncates a C-FIND; 0 = by status"
    )
    settle: float = Field(
        default=30.0, gt=0, description="Seconds the index may stay unchanged before verifying"
    )

    @field_validator("source_ae")
    @classmethod
    def _ae(cls, v: str) -> str:
        return v.strip()

    @field_validator("since", "until")
    @classmethod
    def _date(cls, v: str) -> str:
        if v:
            dt.datetime.strptime(v, "%Y%m%d")
        return v

    @field_validator("hours")
    @classmethod
    def _hours(cls, v: str) -> str:
        Hours(v)
        return v.strip()

    @model_validator(mode="after")
    def _range(self) -> MigrationParams:
        if self.since and self.until and self.since > self.until:
            raise ValueError("since is after until")
        return self


# --- queueing ---------------------------------------------------------------------------------


def relay_host(settings: Settings) -> str:
    """Where C-GET relays the PACS's objects to: our own DICOM port."""
    return "127.0.0.1" if settings.bind_host in ("0.0.0.0", "::") else settings.bind_host


def _addresses(host: str) -> set[str]:
    """The addresses `host` stands for (itself when it does not resolve)."""
    try:
        return {str(info[4][0]) for info in socket.getaddrinfo(host, None)}
    except OSError:
        return {host}


def _check_store(params: MigrationParams, settings: Settings) -> None:
    """Refuse now what our C-STORE policy would refuse for every object later: the studies
    come in under the PACS's AE title, from its host (C-MOVE) or from our relay (C-GET)."""
    sender = relay_host(settings) if params.method == "get" else params.host
    policy = PeerPolicy(settings)
    for address in _addresses(sender):
        decision = policy.decide(params.source_ae, address, Action.STORE)
        if not decision.allowed:
            raise MigrationError(
                f"{params.source_ae} sends the studies to us, but {decision.reason}: add "
                f"{params.source_ae}@{params.host} to PEERS with store permission"
            )


def resolve(params: MigrationParams, settings: Settings) -> MigrationParams:
    """Fill host and port from PEERS and check that the PACS may store into us."""
    peer = settings.peer(params.source_ae)
    host = params.host or (peer.host if peer else "")
    port = params.port or (peer.port if peer else 0)
    if not host or not port:
        raise MigrationError(f"where is {params.source_ae}? give host and port, or add it to PEERS")
    params = params.model_copy(update={"host": host, "port": port})
    _check_store(params, settings)
    return params


def _active(session: Session, source_ae: str) -> Job | None:
    """The queued or running migration from `source_ae`, if any (a killed broker's included)."""
    for job in jobs.listing(session, kind=MIGRATION, limit=1000):
        if job.state in jobs.ACTIVE and json.loads(job.params)["source_ae"] == source_ae:
            return job
    return None


def start(
    session: Session, params: MigrationParams, settings: Settings, *, created_by: str
) -> tuple[Job, bool]:
    """Queue a migration (the caller commits), or find the active job that migrates the same
    PACS the same way (True): after a crash, running the same command again follows it."""
    params = resolve(params, settings)
    other = _active(session, params.source_ae)
    if other is not None:
        if MigrationParams(**json.loads(other.params)) == params:
            return other, True
        raise MigrationError(
            f"job {other.id} already migrates from {params.source_ae} with other parameters: "
            f"follow it (pacsbroker jobs show {other.id} --wait) or cancel it first"
        )
    job = jobs.enqueue(session, MIGRATION, params.model_dump(), created_by=created_by)
    assert job is not None  # no dedupe key: always queued
    audit.record(
        session,
        actor=created_by,
        role="radiology-admin",
        source=f"job {job.id}",
        action="migration-start",
        detail=f"from {params.source_ae}@{params.host}:{params.port} {params.since}-{params.until}",
    )
    return job, False


# --- the study rows ---------------------------------------------------------------------------


def _add_found(session: Session, job_id: int, found: list[Found]) -> None:
    """Study rows for a window's answers; a study seen in two windows is kept once."""
    if not found:
        return
    dialect = session.get_bind().dialect.name
    ins = (postgresql.insert if dialect == "postgresql" else sqlite.insert)(MigrationStudy)
    rows = [
        {
            "job_fk": job_id,
            "study_uid": f.study_uid,
            "study_date": f.study_date[:8],
            "patient_id": f.patient_id[:64],
            "accession_number": f.accession_number[:64],
            "state": StudyState.PENDING,
            "source_instances": f.instances or 0,
            "archived_instances": 0,
            "retrievals": 0,
            "detail": "{}",
        }
        for f in {f.study_uid: f for f in found}.values()
    ]
    session.execute(ins.values(rows).on_conflict_do_nothing(index_elements=["job_fk", "study_uid"]))


def tally(session: Session, job_id: int) -> dict[str, int]:
    """Studies per state, and instance totals."""
    by_state = dict(
        session.execute(
            select(MigrationStudy.state, func.count(MigrationStudy.id))
            .where(MigrationStudy.job_fk == job_id)
            .group_by(MigrationStudy.state)
        ).all()
    )
    sums = session.execute(
        select(
            func.coalesce(func.sum(MigrationStudy.source_instances), 0),
            func.coalesce(func.sum(MigrationStudy.archived_instances), 0),
            func.coalesce(func.sum(MigrationStudy.retrievals), 0),
        ).where(MigrationStudy.job_fk == job_id)
    ).one()
    out = {str(s): int(by_state.get(s, 0)) for s in StudyState}
    out["studies"] = sum(out.values())
    out["done"] = out["studies"] - out[StudyState.PENDING]
    out.update(source_instances=sums[0], archived_instances=sums[1], retrievals=sums[2])
    return out


def _day(value: str) -> dt.date | None:
    return dt.datetime.strptime(value, "%Y%m%d").date() if value else None


@dataclass
class _Fetched:
    """A study between its retrieve and its verification."""

    row_id: int
    uid: str
    counts: SourceCounts
    got: Retrieved | None
    ended: float  # time.monotonic() when the retrieve ended
    retrieve_s: float = 0.0


# --- the job --------------------------------------------------------------------------------


class Migration:
    """One run of a migration job; `max_associations` workers take the pending studies."""

    def __init__(self, ctx: jobs.JobContext, source: LegacySource) -> None:
        self.ctx = ctx
        self.source = source
        self.p = MigrationParams(**ctx.params)
        self.hours = Hours(self.p.hours)
        self.sessions = ctx.archive.sessions
        self.halt = threading.Event()  # a worker failed: the others stop after their study
        self.refused = 0  # studies refused in a row
        self.lock = threading.Lock()

    def run(self) -> dict[str, Any]:
        p = self.p
        today = dt.date.today()
        fresh = [w.dump() for w in initial(_day(p.since), _day(p.until), p.window_days, today)]
        cp: dict[str, Any] = {"phase": "discover", "windows": fresh, "incomplete": []}
        cp.update(self.ctx.checkpoint)
        self._patiently(self.source.echo)
        if cp["phase"] == "discover":
            self._discover(cp)
        self._migrate_all()
        with self.sessions() as session:
            counts = tally(session, self.ctx.job_id)
        return {**counts, "incomplete_windows": cp["incomplete"]}

    # -- pacing

    def _nap(self, seconds: float) -> None:
        """Sleep, but wake for a stopping process or a failed sibling worker."""
        end = time.monotonic() + seconds
        while (left := end - time.monotonic()) > 0:
            self.ctx.sleep(min(left, 0.5))
            if self.halt.is_set():
                raise jobs.JobStopped("another worker of this job stopped")

    def _in_hours(self) -> None:
        while (wait := self.hours.wait(dt.datetime.now())) > 0:
            self.ctx.progress(message=f"waiting {wait / 60:.0f} min for the hours {self.p.hours}")
            self._nap(min(wait, 30.0))  # short naps, so a cancel is seen at the next progress

    def _patiently(self, call: Any, *args: Any) -> Any:
        """`call(*args)`, retried with growing pauses while the source does not answer."""
        for attempt in range(RETRIES + 1):
            self.ctx.check()
            self._in_hours()
            try:
                return call(*args)
            except SourceUnavailable as e:
                if attempt == RETRIES:
                    raise
                log.warning("migration %d: %s; trying again", self.ctx.job_id, e)
                self._nap(BACKOFF * 3**attempt)
        raise AssertionError("unreachable")

    # -- finding the studies

    def _discover(self, cp: dict[str, Any]) -> None:
        job_id = self.ctx.job_id
        while cp["windows"]:
            w = Window.load(cp["windows"][-1])
            answer: Answer = self._patiently(self.source.find, w)
            got = step(w, answer)
            with self.sessions() as session, session.begin():
                self.ctx.progress(session=session)
                _add_found(session, job_id, got.keep)
                cp["windows"] = cp["windows"][:-1] + [x.dump() for x in got.more]
                if got.incomplete:
                    log.warning("migration %d: %s still capped", job_id, w.label())
                    cp["incomplete"].append(w.label())
                n = tally(session, job_id)["studies"]
                self.ctx.progress(
                    session=session,
                    total=n,
                    checkpoint=cp,
                    message=f"searching {w.label()}: {n} studies found",
                )
        cp["phase"] = "migrate"
        self.ctx.progress(checkpoint=cp)

    # -- moving and verifying them

    def _migrate_all(self) -> None:
        """Workers retrieve (one association each); one checker waits for ingest and verifies,
        so a study is being indexed while the next one is on the wire."""
        todo: queue.Queue[int] = queue.Queue()
        with self.sessions() as session:
            for row_id in session.scalars(
                select(MigrationStudy.id)
                .where(
                    MigrationStudy.job_fk == self.ctx.job_id,
                    # a run retries what the PACS refused in an earlier one
                    MigrationStudy.state.in_([StudyState.PENDING, StudyState.FAILED]),
                )
                .order_by(MigrationStudy.study_date.desc(), MigrationStudy.id)
            ):
                todo.put(row_id)
        # bounded: a retrieve may run ahead of ingest by one study per worker, no more
        fetched: queue.Queue[_Fetched | None] = queue.Queue(maxsize=self.p.max_associations)
        errors: list[BaseException] = []

        def guarded(body: Any) -> Any:
            def run() -> None:
                try:
                    body()
                except BaseException as e:
                    errors.append(e)
                    self.halt.set()

            return run

        def work() -> None:
            while not self.halt.is_set():
                try:
                    row_id = todo.get_nowait()
                except queue.Empty:
                    return
                f = self._patiently(self._fetch, row_id)
                while f is not None and not self.halt.is_set():
                    try:
                        fetched.put(f, timeout=0.5)
                        break
                    except queue.Full:
                        pass
                if self.p.pause:
                    self._nap(self.p.pause)

        def check() -> None:
            while (f := fetched.get()) is not None and not self.halt.is_set():
                self._check(f)

        name = f"migrate-{self.ctx.job_id}"
        workers = [
            threading.Thread(target=guarded(work), name=f"{name}-{i}", daemon=True)
            for i in range(self.p.max_associations)
        ]
        checker = threading.Thread(target=guarded(check), name=f"{name}-check", daemon=True)
        for t in [*workers, checker]:
            t.start()
        for t in workers:
            t.join()
        while checker.is_alive():  # it may have stopped early, leaving the queue full
            try:
                fetched.put(None, timeout=0.5)
                break
            except queue.Full:
                pass
        checker.join()
        first = next((e for e in errors if not isinstance(e, jobs.JobStopped)), None)
        if first or errors:
            raise first or errors[0]

    def _fetch(self, row_id: int) -> _Fetched | None:
        """Count the study's instances at the source and retrieve it unless we have them all;
        None if the PACS refused (the study is saved as failed)."""
        with self.sessions() as session:
            uid = session.get_one(MigrationStudy, row_id).study_uid
        f = _Fetched(row_id, uid, SourceCounts(), None, time.monotonic())
        try:
            f.counts = self.source.counts(uid)
            with self.sessions() as session:
                ours = archived(session, uid)
            if f.counts.series and not f.counts.complete_in(ours):
                self._counted_retrieval(row_id)
                t = time.monotonic()
                f.got = self.source.retrieve(uid)
                f.retrieve_s = time.monotonic() - t
        except StudyRefused as e:
            refusal = problem("retrieve-failed", str(e))
            self._save(row_id, StudyState.FAILED, {"problems": [refusal]})
            with self.lock:
                self.refused += 1
                if self.refused >= REFUSALS:
                    raise SourceError(
                        f"{self.refused} studies in a row refused, the last with {e}: does "
                        f"{self.p.source_ae} know {self.ctx.archive.settings.ae_title} as a "
                        "move destination, allowed to retrieve?"
                    ) from None
            return None
        with self.lock:
            self.refused = 0
        f.ended = time.monotonic()
        return f

    def _check(self, f: _Fetched) -> None:
        """Wait for ingest, verify and save one retrieved study."""
        if f.got is not None:
            self._wait_ingested(f.uid, f.counts)
        with self.sessions() as session:
            state, detail, held = verify(session, f.uid, f.counts, f.got)
        c = f.counts
        source_n = (
            sum(s.instances or 0 for s in c.series.values()) if c.per_series else c.total or 0
        )
        self._save(f.row_id, state, detail, source=source_n, held=held)
        log.info(
            "migration %d: study %s %s, %d of %d instances (retrieve %.2f s, then %.2f s to "
            "verified)",
            self.ctx.job_id,
            f.uid,
            state,
            held,
            source_n,
            f.retrieve_s,
            time.monotonic() - f.ended,
        )

    def _counted_retrieval(self, row_id: int) -> None:
        """Count the request before it is sent, so the report shows repeats after a crash."""
        with self.sessions() as session, session.begin():
            self.ctx.progress(session=session)
            session.execute(
                update(MigrationStudy)
                .where(MigrationStudy.id == row_id)
                .values(retrievals=MigrationStudy.retrievals + 1)
            )

    def _wait_ingested(self, uid: str, counts: SourceCounts) -> None:
        """Until the index holds what the source has, or stops growing for `settle` seconds:
        the retrieve ends when our receivers have spooled the objects, not indexed them."""
        last: dict[str, int] | None = None
        since = time.monotonic()
        while True:
            with self.sessions() as session:
                ours = archived(session, uid)
            if counts.complete_in(ours):
                return
            if ours != last:
                last, since = ours, time.monotonic()
            elif time.monotonic() - since > self.p.settle:
                return
            self._nap(POLL)

    def _save(
        self,
        row_id: int,
        state: StudyState,
        detail: dict[str, Any],
        *,
        source: int | None = None,
        held: int | None = None,
    ) -> None:
        values: dict[str, Any] = {
            "state": state,
            "detail": json.dumps(detail, ensure_ascii=False),
            "checked_at": jobs.utcnow(),
        }
        if source is not None:
            values["source_instances"] = source
        if held is not None:
            values["archived_instances"] = held
        with self.sessions() as session, session.begin():
            self.ctx.progress(session=session)
            session.execute(
                update(MigrationStudy).where(MigrationStudy.id == row_id).values(values)
            )
            n = tally(session, self.ctx.job_id)
            self.ctx.progress(
                session=session,
                done=n["done"],
                total=n["studies"],
                message=f"{n['verified']} verified, {n['discrepancy']} with discrepancies, "
                f"{n['failed']} failed",
            )
