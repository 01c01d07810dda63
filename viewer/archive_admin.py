"""Admin API (role radiology-admin) for keeping the archive: jobs, retention rules and their
dry-run, legal holds, sweeps and fixity checks. Jobs run in the broker's job runner."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Query
from pydantic import BaseModel, Field

from storage import fixity, holds, jobs, retention
from storage.archive import Archive
from storage.models import Job
from viewer.admin import admin, record_change
from viewer.auth import Caller

Admin = Annotated[Caller, Depends(admin)]


class JobOut(BaseModel):
    id: int
    kind: str
    params: dict[str, Any]
    state: str = Field(description="queued, running, succeeded, failed or cancelled")
    done: int
    total: int = Field(description="0 while unknown")
    message: str
    result: dict[str, Any]
    attempts: int
    lease_owner: str = Field(description="The process running the job, while it runs")
    lease_until: str | None
    created_by: str
    created_at: str | None
    started_at: str | None
    finished_at: str | None


class DoomedOut(BaseModel):
    study_uid: str
    patient_id: str
    study_date: str
    instances: int
    bytes: int
    whole_study: bool = Field(description="False if only some instances of the study go")
    reasons: list[str]


class DryRunOut(BaseModel):
    studies: list[DoomedOut]
    total_studies: int
    total_instances: int
    total_bytes: int = Field(description="Space the sweep would free")


class HoldIn(BaseModel):
    reason: str = Field(pattern=r"\S", description="Why the study must be kept")


class HoldOut(BaseModel):
    study_uid: str
    patient_id: str
    study_date: str
    reason: str
    held_by: str
    held_at: str | None


class FixityIn(BaseModel):
    sample: float | None = Field(
        default=None, gt=0, description="Objects to re-hash: a count, or a fraction ≤ 1"
    )


def _job(job: Job | None) -> JobOut:
    if job is None:  # only a scheduled job with a taken dedupe key; never from the API
        raise HTTPException(409, "job already queued")
    return JobOut(**jobs.as_dict(job))


def router(archive: Archive) -> APIRouter:
    r = APIRouter(prefix="/api/v1/admin", tags=["admin"])

    @r.get("/jobs")
    def list_jobs(
        who: Admin,
        state: str = "",
        kind: str = "",
        limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    ) -> list[JobOut]:
        with archive.sessions() as session:
            return [_job(j) for j in jobs.listing(session, state=state, kind=kind, limit=limit)]

    @r.get("/jobs/{job_id}")
    def get_job(job_id: int, who: Admin) -> JobOut:
        with archive.sessions() as session:
            try:
                return _job(jobs.get(session, job_id))
            except jobs.JobError as e:
                raise HTTPException(404, str(e)) from None

    def change(job_id: int, how: Any, who: Caller) -> JobOut:
        with archive.sessions() as session, session.begin():
            try:
                jobs.get(session, job_id)
            except jobs.JobError as e:
                raise HTTPException(404, str(e)) from None
            try:
                job = how(session, job_id, by=who.user)
            except jobs.JobError as e:
                raise HTTPException(409, str(e)) from None
            record_change(session, who, f"job-{how.__name__}", f"job {job.id} ({job.kind})")
            return _job(job)

    @r.post("/jobs/{job_id}/cancel")
    def cancel_job(job_id: int, who: Admin) -> JobOut:
        return change(job_id, jobs.cancel, who)

    @r.post("/jobs/{job_id}/retry")
    def retry_job(job_id: int, who: Admin) -> JobOut:
        return change(job_id, jobs.retry, who)

    @r.get("/retention/rules")
    def list_rules(who: Admin) -> list[retention.Rule]:
        with archive.sessions() as session:
            return retention.rules(session)

    def save(spec: retention.RuleSpec, who: Caller, rule_id: int | None) -> retention.Rule:
        with archive.sessions() as session, session.begin():
            try:
                return retention.save_rule(
                    session, spec, actor=who.user, source=who.address, rule_id=rule_id
                )
            except retention.NoSuchRule as e:
                raise HTTPException(404, str(e)) from None
            except retention.RetentionError as e:
                raise HTTPException(409, str(e)) from None

    @r.post("/retention/rules", status_code=201)
    def add_rule(spec: retention.RuleSpec, who: Admin) -> retention.Rule:
        return save(spec, who, None)

    @r.put("/retention/rules/{rule_id}")
    def replace_rule(rule_id: int, spec: retention.RuleSpec, who: Admin) -> retention.Rule:
        return save(spec, who, rule_id)

    @r.delete("/retention/rules/{rule_id}", status_code=204)
    def delete_rule(rule_id: int, who: Admin) -> None:
        with archive.sessions() as session, session.begin():
            try:
                retention.delete_rule(session, rule_id, actor=who.user, source=who.address)
            except retention.NoSuchRule as e:
                raise HTTPException(404, str(e)) from None

    @r.get("/retention/dry-run")
    def dry_run(who: Admin) -> DryRunOut:
        with archive.sessions() as session:
            return DryRunOut(**retention.dry_run(session, archive.settings).as_dict())

    @r.post("/retention/sweep", status_code=202)
    def sweep(who: Admin) -> JobOut:
        with archive.sessions() as session, session.begin():
            return _job(retention.start_sweep(session, created_by=who.user))

    @r.get("/holds")
    def list_holds(who: Admin) -> list[HoldOut]:
        with archive.sessions() as session:
            return [HoldOut(**h) for h in holds.listing(session)]

    @r.put("/studies/{study_uid}/hold")
    def set_hold(study_uid: str, body: HoldIn, who: Admin) -> dict[str, str]:
        with archive.sessions() as session, session.begin():
            try:
                holds.hold(session, study_uid, body.reason, actor=who.user, source=who.address)
            except holds.HoldError as e:
                raise HTTPException(404, str(e)) from None
        return {"study_uid": study_uid, "reason": body.reason}

    @r.delete("/studies/{study_uid}/hold", status_code=204)
    def clear_hold(study_uid: str, who: Admin) -> None:
        with archive.sessions() as session, session.begin():
            try:
                holds.release(session, study_uid, actor=who.user, source=who.address)
            except holds.HoldError as e:
                raise HTTPException(404, str(e)) from None

    @r.post("/fixity", status_code=202)
    def start_fixity(body: FixityIn, who: Admin) -> JobOut:
        sample = body.sample or archive.settings.fixity_sample
        with archive.sessions() as session, session.begin():
            return _job(fixity.start(session, sample, created_by=who.user))

    return r
