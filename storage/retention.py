"""Retention: rules that let instances go once their study is old enough, IOCM-rejected instances
after a grace period, the dry-run that shows what a sweep would delete, and the sweep job.

Each rule is a permission to delete: instances matching its filters (modality, SOP class, source
AE; empty = any) may go once the study is older than the rule's period and, if the rule says so,
the patient was at least `min_patient_age` at the study (children are then kept by the other
rules). Studies under legal hold are never touched. The study date counts, or the day the archive
received the study if the header has no valid date.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
from collections import defaultdict
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, Field, field_validator, model_validator
from sqlalchemy import ColumnElement, Select, and_, func, or_, select, true
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from storage import audit, jobs, removal
from storage.holds import NOT_HELD, is_held
from storage.models import Instance, Job, Patient, Rejection, RetentionRule, Series, Study
from storage.removal import Doomed, chunks
from storage.settings import Settings

log = logging.getLogger("pacsbroker.retention")
SWEEP = "retention-sweep"


class RetentionError(ValueError):
    """The rule cannot be saved; the message says why."""


class NoSuchRule(RetentionError):
    """No rule with that id."""


class RuleSpec(BaseModel):
    """What a retention rule says; filters left empty match anything."""

    name: str = Field(min_length=1, max_length=64)
    modalities: list[str] = Field(default_factory=list, description="e.g. ['CR', 'US']")
    sop_classes: list[str] = Field(default_factory=list, description="SOP Class UIDs")
    source_aes: list[str] = Field(default_factory=list, description="Calling AE titles")
    keep_years: int = Field(default=0, ge=0, le=200)
    keep_days: int = Field(default=0, ge=0, le=100_000)
    min_patient_age: int | None = Field(
        default=None, ge=0, le=150, description="Applies only if the patient was this old"
    )
    enabled: bool = True

    @field_validator("modalities", "sop_classes", "source_aes")
    @classmethod
    def _clean(cls, v: list[str]) -> list[str]:
        return sorted({s.strip() for s in v if s.strip()})

    @field_validator("modalities")
    @classmethod
    def _upper(cls, v: list[str]) -> list[str]:
        return [m.upper() for m in v]

    @model_validator(mode="after")
    def _period(self) -> RuleSpec:
        if not self.keep_years and not self.keep_days:
            raise ValueError("a rule keeps studies for at least a day (keep_years or keep_days)")
        return self


class Rule(RuleSpec):
    id: int
    created_by: str
    created_at: str | None


def _rule(row: RetentionRule) -> Rule:
    return Rule(
        id=row.id,
        name=row.name,
        modalities=json.loads(row.modalities),
        sop_classes=json.loads(row.sop_classes),
        source_aes=json.loads(row.source_aes),
        keep_years=row.keep_years,
        keep_days=row.keep_days,
        min_patient_age=row.min_patient_age,
        enabled=row.enabled,
        created_by=row.created_by,
        created_at=jobs.iso(row.created_at),
    )


def rules(session: Session) -> list[Rule]:
    return [_rule(r) for r in session.scalars(select(RetentionRule).order_by(RetentionRule.id))]


def _apply(row: RetentionRule, spec: RuleSpec) -> None:
    row.name = spec.name
    row.modalities = json.dumps(spec.modalities)
    row.sop_classes = json.dumps(spec.sop_classes)
    row.source_aes = json.dumps(spec.source_aes)
    row.keep_years = spec.keep_years
    row.keep_days = spec.keep_days
    row.min_patient_age = spec.min_patient_age
    row.enabled = spec.enabled


def _audit_rule(session: Session, action: str, detail: str, *, actor: str, source: str) -> None:
    audit.record(
        session, actor=actor, role="radiology-admin", source=source, action=action, detail=detail
    )


def save_rule(
    session: Session, spec: RuleSpec, *, actor: str, source: str, rule_id: int | None = None
) -> Rule:
    """Add a rule, or replace rule `rule_id`; audited (the caller commits, or rolls back on
    an error)."""
    if rule_id is None:
        row = RetentionRule(created_by=actor[:128])
        session.add(row)
    else:
        found = session.get(RetentionRule, rule_id)
        if found is None:
            raise NoSuchRule(f"no retention rule {rule_id}")
        row = found
    _apply(row, spec)
    try:
        session.flush()
    except IntegrityError:  # the caller's transaction rolls back with the error
        raise RetentionError(f"a rule named {spec.name!r} exists already") from None
    action = "retention-rule-add" if rule_id is None else "retention-rule-update"
    _audit_rule(session, action, spec.model_dump_json(), actor=actor, source=source)
    return _rule(row)


def delete_rule(session: Session, rule_id: int, *, actor: str, source: str) -> None:
    row = session.get(RetentionRule, rule_id)
    if row is None:
        raise NoSuchRule(f"no retention rule {rule_id}")
    detail = _rule(row).model_dump_json()
    session.delete(row)
    _audit_rule(session, "retention-rule-delete", detail, actor=actor, source=source)


# --- what is due ---------------------------------------------------------------------------


def _date(value: str) -> dt.date | None:
    if len(value) != 8 or not value.isdigit():
        return None
    try:
        return dt.date(int(value[:4]), int(value[4:6]), int(value[6:]))
    except ValueError:
        return None


def _years_before(day: dt.date, years: int) -> dt.date:
    try:
        return day.replace(year=day.year - years)
    except ValueError:  # 29 February
        return day.replace(year=day.year - years, day=28)


def _age(birth: dt.date, on: dt.date) -> int:
    return on.year - birth.year - ((on.month, on.day) < (birth.month, birth.day))


@dataclass(frozen=True)
class _Active:
    """A rule as a sweep applies it today."""

    name: str
    cutoff: dt.date  # studies of this day or earlier are old enough
    min_age: int | None
    matches: ColumnElement[bool]

    @classmethod
    def of(cls, row: RetentionRule, today: dt.date) -> _Active:
        conds = [
            col.in_(values)
            for col, values in (
                (Series.modality, json.loads(row.modalities)),
                (Instance.sop_class_uid, json.loads(row.sop_classes)),
                (Instance.source_ae, json.loads(row.source_aes)),
            )
            if values
        ]
        cutoff = _years_before(today, row.keep_years) - dt.timedelta(days=row.keep_days)
        return cls(row.name, cutoff, row.min_patient_age, and_(true(), *conds))

    def applies(self, when: dt.date, birth: dt.date | None) -> bool:
        if when > self.cutoff:
            return False
        if self.min_age is None:
            return True
        return birth is not None and _age(birth, when) >= self.min_age


def _aware(t: dt.datetime) -> dt.datetime:
    return t if t.tzinfo else t.replace(tzinfo=dt.UTC)


class Phase:
    """One reason instances become due; scans studies in id order, so a sweep can resume."""

    action = ""

    def scan(
        self, session: Session, after: int, size: int, only: int | None = None
    ) -> tuple[list[Doomed], int | None]:
        """Due instances of the next `size` studies after id `after` (or of study `only`),
        and the id to scan on from (None at the end)."""
        raise NotImplementedError

    def next(self, session: Session, after: int) -> Doomed | None:
        while True:
            found, cursor = self.scan(session, after, 200)
            if found:
                return found[0]
            if cursor is None:
                return None
            after = cursor

    def recheck(self, session: Session, study_id: int) -> Doomed | None:
        found, _ = self.scan(session, 0, 1, only=study_id)
        return found[0] if found else None


def _page(
    stmt: Select[*tuple[Any, ...]], id_col: Any, after: int, size: int, only: int | None
) -> Select[*tuple[Any, ...]]:
    if only is not None:
        return stmt.where(id_col == only)
    return stmt.where(id_col > after).order_by(id_col).limit(size)


def _doomed(
    session: Session, hits: dict[int, dict[int, int]], reasons: dict[int, list[str]]
) -> list[Doomed]:
    """Doomed studies from instance id → size per study id, in study id order."""
    if not hits:
        return []
    ids = sorted(hits)
    info = {
        r.id: r
        for r in session.execute(
            select(Study.id, Study.study_uid, Study.study_date, Patient.patient_id)
            .join(Study.patient)
            .where(Study.id.in_(ids))
        )
    }
    totals = {
        sid: n
        for sid, n in session.execute(
            select(Series.study_fk, func.count(Instance.id))
            .join(Instance.series)
            .where(Series.study_fk.in_(ids))
            .group_by(Series.study_fk)
        )
    }
    return [
        Doomed(
            study_id=sid,
            study_uid=info[sid].study_uid,
            patient_id=info[sid].patient_id,
            study_date=info[sid].study_date,
            instances=hits[sid],
            study_instances=totals.get(sid, 0),
            reasons=reasons[sid],
        )
        for sid in ids
        if sid in info
    ]


class RulesPhase(Phase):
    """Instances the enabled retention rules let go."""

    action = "retention-delete"

    def __init__(self, session: Session, today: dt.date) -> None:
        self.active = [
            _Active.of(r, today)
            for r in session.scalars(
                select(RetentionRule).where(RetentionRule.enabled).order_by(RetentionRule.id)
            )
        ]

    def scan(
        self, session: Session, after: int, size: int, only: int | None = None
    ) -> tuple[list[Doomed], int | None]:
        if not self.active:
            return [], None
        loosest = max(a.cutoff for a in self.active)
        # a cheap superset in SQL; `_Active.applies` decides with real dates
        old_enough = or_(
            and_(Study.study_date != "", Study.study_date <= loosest.strftime("%Y%m%d")),
            Study.created_at
            < dt.datetime.combine(loosest + dt.timedelta(days=1), dt.time(), dt.UTC),
        )
        stmt = (
            select(Study.id, Study.study_date, Study.created_at, Patient.birth_date)
            .join(Study.patient)
            .where(NOT_HELD, old_enough)
        )
        rows = session.execute(_page(stmt, Study.id, after, size, only)).all()
        hits: dict[int, dict[int, int]] = defaultdict(dict)
        reasons: dict[int, list[str]] = defaultdict(list)
        for rule in self.active:
            ids = [
                r.id
                for r in rows
                if rule.applies(
                    _date(r.study_date) or _aware(r.created_at).date(), _date(r.birth_date)
                )
            ]
            for part in chunks(ids):
                matched = session.execute(
                    select(Series.study_fk, Instance.id, Instance.size)
                    .join(Instance.series)
                    .where(Series.study_fk.in_(part), rule.matches)
                ).all()
                for sid, iid, sz in matched:
                    hits[sid][iid] = sz
                for sid in dict.fromkeys(m.study_fk for m in matched):
                    reasons[sid].append(f"retention rule {rule.name!r}")
        cursor = rows[-1].id if len(rows) == size and only is None else None
        return _doomed(session, hits, reasons), cursor


class RejectedPhase(Phase):
    """Instances an IOCM rejection note withdrew before the grace period; the notes stay."""

    action = "rejection-delete"

    def __init__(self, cutoff: dt.datetime | None) -> None:
        self.cutoff = cutoff

    def scan(
        self, session: Session, after: int, size: int, only: int | None = None
    ) -> tuple[list[Doomed], int | None]:
        if self.cutoff is None:
            return [], None
        due = and_(
            Rejection.created_at <= self.cutoff,
            Rejection.by_sop_uid != Instance.sop_uid,
        )
        studies = session.scalars(
            _page(
                select(Series.study_fk)
                .distinct()
                .join(Instance.series)
                .join(Rejection, Rejection.sop_uid == Instance.sop_uid)
                .join(Study, Study.id == Series.study_fk)
                .where(due, NOT_HELD),
                Series.study_fk,
                after,
                size,
                only,
            )
        ).all()
        hits: dict[int, dict[int, int]] = defaultdict(dict)
        reasons: dict[int, list[str]] = defaultdict(list)
        for part in chunks(studies):
            for sid, iid, sz, code, meaning in session.execute(
                select(
                    Series.study_fk, Instance.id, Instance.size, Rejection.code, Rejection.meaning
                )
                .join(Instance.series)
                .join(Rejection, Rejection.sop_uid == Instance.sop_uid)
                .where(Series.study_fk.in_(part), due)
            ):
                hits[sid][iid] = sz
                why = f"IOCM rejection {code} {meaning}".strip()
                if why not in reasons[sid]:
                    reasons[sid].append(why)
        cursor = studies[-1] if len(studies) == size and only is None else None
        return _doomed(session, hits, reasons), cursor


def phases(session: Session, settings: Settings, now: dt.datetime) -> list[Phase]:
    grace = settings.rejection_grace_days
    cutoff = now - dt.timedelta(days=grace) if grace >= 0 else None
    return [RejectedPhase(cutoff), RulesPhase(session, now.date())]


@dataclass
class DryRun:
    studies: list[Doomed]

    @property
    def instances(self) -> int:
        return sum(len(d.instances) for d in self.studies)

    @property
    def size(self) -> int:
        return sum(d.size for d in self.studies)

    def as_dict(self) -> dict[str, Any]:
        return {
            "studies": [d.as_dict() for d in self.studies],
            "total_studies": len(self.studies),
            "total_instances": self.instances,
            "total_bytes": self.size,
        }


def dry_run(session: Session, settings: Settings, now: dt.datetime | None = None) -> DryRun:
    """Exactly what a sweep would delete now, one entry per study."""
    merged: dict[int, Doomed] = {}
    for phase in phases(session, settings, now or jobs.utcnow()):
        cursor: int | None = 0
        while cursor is not None:
            found, cursor = phase.scan(session, cursor, 500)
            for d in found:
                if d.study_id in merged:
                    merged[d.study_id] = merged[d.study_id].merge(d)
                else:
                    merged[d.study_id] = d
    return DryRun([merged[k] for k in sorted(merged)])


# --- the sweep -----------------------------------------------------------------------------


def start_sweep(session: Session, *, created_by: str, dedupe_key: str | None = None) -> Job | None:
    return jobs.enqueue(session, SWEEP, {}, created_by=created_by, dedupe_key=dedupe_key)


@jobs.handler(SWEEP)
def sweep(ctx: jobs.JobContext) -> dict[str, Any]:
    """Delete what is due, one study per step: rows and outbox in one transaction with the
    checkpoint, then the objects. A resumed sweep first finishes the objects of its last step."""
    archive, settings = ctx.archive, ctx.archive.settings
    removal.purge(archive.sessions, archive.store)
    cp = {"phase": 0, "after": 0, "studies": 0, "instances": 0, "bytes": 0, **ctx.checkpoint}
    with archive.sessions() as session:
        due = len(dry_run(session, settings).studies)
    ctx.progress(total=ctx.done + due, message=f"{due} studies due")
    source = f"job {ctx.job_id}"
    count = 0
    for index in range(cp["phase"], 2):
        after = cp["after"] if index == cp["phase"] else 0
        while True:
            ctx.check()
            with archive.sessions() as session:
                phase = phases(session, settings, jobs.utcnow())[index]
                found = phase.next(session, after)
            if found is None:
                break
            with archive.sessions() as session, session.begin():
                ctx.progress(session=session)  # fence first: the step is ours or nothing
                session.execute(
                    select(Study.id).where(Study.id == found.study_id).with_for_update()
                )
                fresh = (
                    None
                    if is_held(session, found.study_id)
                    else phase.recheck(session, found.study_id)
                )
                if fresh is not None:
                    count = removal.remove(
                        session,
                        fresh,
                        action=phase.action,
                        actor=ctx.created_by or "scheduler",
                        role="system",
                        source=source,
                    )
                    cp["studies"] += 1
                    cp["instances"] += count
                    cp["bytes"] += fresh.size
                cp.update(phase=index, after=found.study_id)
                ctx.progress(
                    session=session,
                    done=ctx.done + 1,
                    checkpoint=cp,
                    message=f"deleted from {cp['studies']} studies: {cp['instances']} instances, "
                    f"{cp['bytes']} bytes",
                )
            removal.purge(archive.sessions, archive.store)
            if fresh is not None:
                log.info("retention: %s %s (%d instances)", phase.action, found.study_uid, count)
            after = found.study_id
            if settings.retention_pause:
                ctx.sleep(settings.retention_pause)
    return {k: cp[k] for k in ("studies", "instances", "bytes")}
