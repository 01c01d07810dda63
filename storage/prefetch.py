"""Prefetch: bring a patient's relevant prior studies from far to near before they are read."""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, Field, field_validator
from sqlalchemy import delete, func, select
from sqlalchemy.orm import Session

from storage import jobs
from storage.models import Instance, Job, NearObject, PrefetchRule, Series, Study, utcnow
from storage.objects import ObjectNotFound, ObjectStoreError
from storage.tiers import TieredStore

log = logging.getLogger("pacsbroker.prefetch")


def _codes(csv: str) -> set[str]:
    return {c.strip().upper() for c in csv.split(",") if c.strip()}


class RuleSpec(BaseModel):
    """A prefetch rule: which priors, and whether an order or an admission starts it."""

    name: str = Field(min_length=1, max_length=64)
    modalities: list[str] = Field(default_factory=list, description="Priors' modalities; [] = any")
    body_part: str = Field(default="", max_length=16, description="Priors' body part; '' = any")
    years: int = Field(default=5, ge=0, le=150, description="Priors at most this old")
    max_studies: int = Field(default=3, ge=1, le=100)
    on_order: bool = True
    on_admission: bool = False
    order_modalities: list[str] = Field(
        default_factory=list, description="Only orders of these modalities; [] = any order"
    )
    enabled: bool = True

    @field_validator("modalities", "order_modalities")
    @classmethod
    def _codes(cls, v: list[str]) -> list[str]:
        return sorted({m.strip().upper() for m in v if m.strip()})


class Rule(RuleSpec):
    id: int


def _rule(r: PrefetchRule) -> Rule:
    return Rule(
        id=r.id,
        name=r.name,
        modalities=sorted(_codes(r.modalities)),
        body_part=r.body_part,
        years=r.years,
        max_studies=r.max_studies,
        on_order=r.on_order,
        on_admission=r.on_admission,
        order_modalities=sorted(_codes(r.order_modalities)),
        enabled=r.enabled,
    )


def list_rules(session: Session) -> list[Rule]:
    return [_rule(r) for r in session.scalars(select(PrefetchRule).order_by(PrefetchRule.id))]


def save_rule(session: Session, spec: RuleSpec, rule_id: int | None = None) -> Rule:
    """Add a rule, or replace rule `rule_id` (the caller commits); KeyError if it is not there."""
    row = PrefetchRule() if rule_id is None else session.get(PrefetchRule, rule_id)
    if row is None:
        raise KeyError(rule_id)
    values = spec.model_dump()
    values["modalities"] = ",".join(spec.modalities)
    values["order_modalities"] = ",".join(spec.order_modalities)
    for k, v in values.items():
        setattr(row, k, v)
    session.add(row)
    session.flush()
    return _rule(row)


def delete_rule(session: Session, rule_id: int) -> bool:
    return bool(session.execute(delete(PrefetchRule).where(PrefetchRule.id == rule_id)).rowcount)  # type: ignore[attr-defined]


def usage_by_modality(session: Session) -> list[dict[str, Any]]:
    """Studies, instances and bytes the archive holds per series modality."""
    rows = session.execute(
        select(
            Series.modality,
            func.count(func.distinct(Series.study_fk)),
            func.count(Instance.id),
            func.coalesce(func.sum(Instance.size), 0),
        )
        .join(Instance, Instance.series_fk == Series.id)
        .group_by(Series.modality)
        .order_by(Series.modality)
    )
    return [
        {"modality": m, "studies": int(st), "instances": int(n), "bytes": int(b)}
        for m, st, n, b in rows
    ]


@dataclass(frozen=True)
class Trigger:
    """What happened for the patient: an order (with its modality) or an admission."""

    kind: str  # "order", "admission" or "manual"
    modality: str = ""
    study_uid: str = ""  # the ordered study itself is not a prior


def rules_for(session: Session, trigger: Trigger) -> list[PrefetchRule]:
    rules = session.scalars(select(PrefetchRule).where(PrefetchRule.enabled.is_(True)))
    out = []
    for r in rules:
        if trigger.kind == "order" and r.on_order:
            wanted = _codes(r.order_modalities)
            if not wanted or trigger.modality.upper() in wanted:
                out.append(r)
        elif trigger.kind == "admission" and r.on_admission:
            out.append(r)
    return out


def priors(
    session: Session, patient_fk: int, rule: PrefetchRule, today: dt.date, exclude: str = ""
) -> list[str]:
    """The rule's studies for the patient, newest first: modality and body part match on any
    series, study date within `years`, at most `max_studies`."""
    since = (today - dt.timedelta(days=round(365.25 * rule.years))).strftime("%Y%m%d")
    q = (
        select(Study.study_uid, Study.study_date, Study.study_time)
        .join(Series, Series.study_fk == Study.id)
        .where(Study.patient_fk == patient_fk, Study.study_date >= since)
        .where(Study.study_uid != exclude)
    )
    modalities = _codes(rule.modalities)
    if modalities:
        q = q.where(Series.modality.in_(modalities))
    if rule.body_part:
        q = q.where(Series.body_part == rule.body_part.upper())
    rows = session.execute(q.distinct().order_by(Study.study_date.desc(), Study.study_time.desc()))
    return [uid for uid, _, _ in rows][: rule.max_studies]


def study_objects(session: Session, study_uid: str) -> list[tuple[str, int]]:
    return [
        (key, size)
        for key, size in session.execute(
            select(Instance.object_key, Instance.size)
            .join(Series, Instance.series_fk == Series.id)
            .join(Study, Series.study_fk == Study.id)
            .where(Study.study_uid == study_uid)
            .order_by(Instance.id)
        )
    ]


def bring_near(
    tiers: TieredStore,
    keys: Iterable[str],
    pin_until: dt.datetime,
    progress: Callable[[int], None] = lambda _n: None,
) -> tuple[int, int]:
    """Copy objects into near, pinned until `pin_until`; returns (copied, already near).
    Idempotent, so a prefetch resumed after a crash just finishes."""
    copied = present = 0
    keys = list(keys)
    with tiers.sessions() as session:
        rows = session.scalars(select(NearObject.key).where(NearObject.key.in_(keys)))
        # a fill reserves its row before it writes the object: a crash in between leaves a row
        # whose object never arrived, which a resumed prefetch must copy again
        near = {key for key in rows if _held(tiers, key)}
    # pinned before any copy, so the fills below cannot evict what the study already has near
    tiers.pin(sorted(near), pin_until)
    for i, key in enumerate(keys, start=1):
        if key in near:
            present += 1
        else:
            try:
                data = tiers.far.get(key)
            except (ObjectNotFound, ObjectStoreError) as e:
                log.warning("prefetch: cannot read %s from far: %s", key, e)
                continue
            if tiers.fill(key, data, pin_until=pin_until):
                copied += 1
        progress(i)
    return copied, present


def _held(tiers: TieredStore, key: str) -> bool:
    try:
        return tiers.near.exists(key)
    except ObjectStoreError:
        return False


PREFETCH = "prefetch"
EVICT = "evict"


def queue_for(
    session: Session, patient_fk: int, trigger: Trigger, *, created_by: str, ref: str
) -> list[Job]:
    """Queue one prefetch per matching rule (the caller commits); `ref` (an accession, a
    message ID) makes a replayed order or admission queue nothing new."""
    queued = []
    for rule in rules_for(session, trigger):
        job = jobs.enqueue(
            session,
            PREFETCH,
            {
                "patient_fk": patient_fk,
                "rule": rule.id,
                "exclude": trigger.study_uid,
                "reason": f"{trigger.kind} {ref}".strip(),
            },
            created_by=created_by,
            dedupe_key=f"prefetch:{patient_fk}:{rule.id}:{trigger.kind}:{ref}"[:255],
        )
        if job is not None:
            queued.append(job)
    return queued


def start_manual(session: Session, study_uids: list[str], *, created_by: str) -> Job | None:
    return jobs.enqueue(
        session, PREFETCH, {"study_uids": study_uids, "reason": "manual"}, created_by=created_by
    )


def _studies(ctx: jobs.JobContext) -> list[str]:
    p = ctx.params
    if "study_uids" in p:
        return [str(u) for u in p["study_uids"]]
    with ctx.archive.sessions() as session:
        rule = session.get(PrefetchRule, int(p["rule"]))
        if rule is None:
            return []
        return priors(session, int(p["patient_fk"]), rule, dt.date.today(), str(p["exclude"]))


@jobs.handler(PREFETCH)
def run(ctx: jobs.JobContext) -> dict[str, Any]:
    """Copy the chosen studies into near, study by study; the study list is fixed at the
    first run, so a resumed job finishes the same list."""
    tiers = ctx.archive.tiers
    if tiers is None:
        return {"skipped": "no near tier is configured"}
    cp: dict[str, Any] = dict(ctx.checkpoint)
    if "studies" not in cp:
        cp = {"studies": _studies(ctx), "next": 0, "copied": 0, "present": 0}
        with ctx.archive.sessions() as session:
            total = sum(len(study_objects(session, u)) for u in cp["studies"])
        ctx.progress(done=0, total=total, checkpoint=cp, message=f"{len(cp['studies'])} studies")
    until = pin_deadline(ctx.archive.settings.prefetch_pin_hours)
    pause = ctx.archive.settings.prefetch_pause
    done = ctx.done
    while cp["next"] < len(cp["studies"]):
        ctx.check()
        uid = cp["studies"][cp["next"]]
        with ctx.archive.sessions() as session:
            keys = [k for k, _ in study_objects(session, uid)]
        copied, present = bring_near(tiers, keys, until)
        done += len(keys)
        cp = {
            **cp,
            "next": cp["next"] + 1,
            "copied": cp["copied"] + copied,
            "present": cp["present"] + present,
        }
        ctx.progress(done=done, checkpoint=cp, message=f"study {uid} near")
        if pause and cp["next"] < len(cp["studies"]):
            ctx.sleep(pause)
    log.info("prefetch job %d: %s", ctx.job_id, cp)
    return {k: cp[k] for k in ("studies", "copied", "present")}


@jobs.handler(EVICT)
def evict(ctx: jobs.JobContext) -> dict[str, Any]:
    """Bring near down to `fraction` of its budget now (fills also evict as they need room)."""
    tiers = ctx.archive.tiers
    if tiers is None:
        return {"skipped": "no near tier is configured"}
    used = tiers.used()
    freed = tiers.shrink_to(int(tiers.budget * float(ctx.params.get("fraction", 0.9))))
    return {"used_before": used, "freed": freed, "used_after": tiers.used()}


def pin_deadline(hours: float) -> dt.datetime:
    return utcnow() + dt.timedelta(hours=hours)
