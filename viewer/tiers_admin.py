"""Admin API (role radiology-admin) for the near/far tiers: storage usage, prefetch rules and
manual prefetch. Prefetch runs as a durable job."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException
from pydantic import BaseModel, Field
from sqlalchemy import select

from storage import jobs, prefetch, registry, tiers
from storage.archive import Archive
from storage.demographics import Identifier
from storage.models import Patient, PrefetchRule, Study
from storage.stats import archive_counts
from viewer.admin import admin, record_change
from viewer.auth import Caller

Admin = Annotated[Caller, Depends(admin)]


class PrefetchIn(BaseModel):
    patient_id: str = Field(default="", description="Every study of this patient (PAS ID)")
    system: str = Field(default="", description="Its identifier system, if ambiguous")
    study_uids: list[str] = Field(default_factory=list, description="Or just these studies")


class EvictIn(BaseModel):
    fraction: float = Field(default=0.9, ge=0, le=1, description="Of the budget, to keep")


def router(archive: Archive) -> APIRouter:
    r = APIRouter(prefix="/api/v1/admin", tags=["admin"])

    @r.get("/storage")
    def storage(who: Admin) -> dict[str, Any]:
        """What the archive holds per modality, and per tier with the near hit ratio."""
        with archive.sessions() as session:
            return {
                "archive": archive_counts(session),
                "by_modality": prefetch.usage_by_modality(session),
                "far": archive.far.name,
                "tiers": (
                    tiers.report(session, archive.tiers.budget)
                    if archive.tiers is not None
                    else None
                ),
            }

    @r.get("/prefetch/rules")
    def list_rules(who: Admin) -> list[prefetch.Rule]:
        with archive.sessions() as session:
            return prefetch.list_rules(session)

    @r.post("/prefetch/rules", status_code=201)
    def add_rule(spec: prefetch.RuleSpec, who: Admin) -> prefetch.Rule:
        with archive.sessions() as session, session.begin():
            rule = prefetch.save_rule(session, spec)
            record_change(session, who, "prefetch-rule-add", rule.model_dump_json())
            return rule

    @r.put("/prefetch/rules/{rule_id}")
    def replace_rule(rule_id: int, spec: prefetch.RuleSpec, who: Admin) -> prefetch.Rule:
        with archive.sessions() as session, session.begin():
            try:
                rule = prefetch.save_rule(session, spec, rule_id)
            except KeyError:
                raise HTTPException(404, f"no prefetch rule {rule_id}") from None
            record_change(session, who, "prefetch-rule-update", rule.model_dump_json())
            return rule

    @r.delete("/prefetch/rules/{rule_id}", status_code=204)
    def delete_rule(rule_id: int, who: Admin) -> None:
        with archive.sessions() as session, session.begin():
            row = session.get(PrefetchRule, rule_id)
            if row is None:
                raise HTTPException(404, f"no prefetch rule {rule_id}")
            detail = f"rule {rule_id} ({row.name})"
            prefetch.delete_rule(session, rule_id)
            record_change(session, who, "prefetch-rule-delete", detail)

    @r.post("/prefetch", status_code=202)
    def start_prefetch(body: PrefetchIn, who: Admin) -> dict[str, Any]:
        """Bring a patient's studies, or the named studies, near now."""
        if archive.tiers is None:
            raise HTTPException(409, "no near tier is configured (NEAR_DIR or NEAR_S3_ENDPOINT)")
        with archive.sessions() as session, session.begin():
            uids = list(body.study_uids)
            if body.patient_id:
                p = registry.find(session, Identifier(body.system, body.patient_id))
                if p is None:
                    raise HTTPException(404, f"no patient {body.patient_id!r} in the registry")
                uids += session.scalars(select(Study.study_uid).where(Study.patient_fk == p.id))
            if not uids:
                raise HTTPException(422, "name a patient_id or study_uids")
            job = prefetch.start_manual(session, uids, created_by=who.user)
            assert job is not None
            owners = session.execute(
                select(Patient.patient_id, Study.study_uid)
                .join(Study.patient)
                .where(Study.study_uid.in_(uids))
            )
            detail = f"job {job.id}: {len(uids)} studies"
            record_change(session, who, "prefetch-start", detail, [(p, s) for p, s in owners])
            return jobs.as_dict(job)

    @r.post("/near/evict", status_code=202)
    def start_eviction(body: EvictIn, who: Admin) -> dict[str, Any]:
        """Bring near down to a fraction of its budget (pinned, prefetched objects stay)."""
        if archive.tiers is None:
            raise HTTPException(409, "no near tier is configured (NEAR_DIR or NEAR_S3_ENDPOINT)")
        with archive.sessions() as session, session.begin():
            job = jobs.enqueue(
                session, prefetch.EVICT, {"fraction": body.fraction}, created_by=who.user
            )
            assert job is not None
            return jobs.as_dict(job)

    return r
