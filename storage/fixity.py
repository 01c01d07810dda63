"""Fixity checks: re-hash a sample of archived objects against the SHA-256 in the index.

The sample is a deterministic function of the job's seed and the instance id, so a resumed job
checks the same objects and picks up after the last one it saved. Mismatches (changed or missing
objects) are logged, audited and listed in the job's result.
"""

from __future__ import annotations

import hashlib
import logging
import secrets
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from storage import audit, jobs
from storage.archive import sha256_of
from storage.models import Instance, Job, Patient, Series, Study
from storage.objects import ObjectNotFound

log = logging.getLogger("pacsbroker.fixity")
FIXITY = "fixity"
_STEP = 25  # objects re-hashed per checkpoint
_LISTED = 1000  # mismatches kept in the job's result; all are audited and logged


def start(
    session: Session, sample: float, *, created_by: str, dedupe_key: str | None = None
) -> Job | None:
    """Queue a check of `sample` objects (a count), or of that fraction of them if ≤ 1."""
    if sample <= 0:
        raise ValueError("the sample is a count or a fraction above 0")
    params = {"sample": sample, "seed": secrets.token_hex(8)}
    return jobs.enqueue(session, FIXITY, params, created_by=created_by, dedupe_key=dedupe_key)


def _picked(seed: str, instance_id: int, fraction: float) -> bool:
    digest = hashlib.blake2b(f"{seed}:{instance_id}".encode(), digest_size=8).digest()
    return int.from_bytes(digest) < fraction * 2**64


def _problem(store: Any, key: str, sha256: str) -> str:
    try:
        actual = sha256_of(store.get(key))
    except ObjectNotFound:
        return "missing"
    return "" if actual == sha256 else f"SHA-256 is {actual}"


@jobs.handler(FIXITY)
def check(ctx: jobs.JobContext) -> dict[str, Any]:
    """Re-hash the sampled objects from the far tier (the system of record)."""
    archive = ctx.archive
    store = archive.far
    seed, sample = str(ctx.params["seed"]), float(ctx.params["sample"])
    cp: dict[str, Any] = {"after": 0, "checked": 0, "failed": 0, "listed": [], **ctx.checkpoint}
    with archive.sessions() as session:
        population = int(session.scalar(select(func.count(Instance.id))) or 0)
    fraction = sample if sample <= 1 else min(1.0, sample / max(population, 1))
    ctx.progress(total=round(population * fraction))
    while True:
        ctx.check()
        with archive.sessions() as session:
            batch: list[Any] = []
            after = cp["after"]
            while len(batch) < _STEP:
                page = session.execute(
                    select(Instance.id, Instance.object_key, Instance.sha256, Instance.sop_uid)
                    .where(Instance.id > after)
                    .order_by(Instance.id)
                    .limit(500)
                ).all()
                if not page:
                    break
                picked = [r for r in page if _picked(seed, r.id, fraction)]
                batch += picked[: _STEP - len(batch)]
                after = batch[-1].id if len(batch) == _STEP else page[-1].id
        if not batch:
            break
        failures = [(r, why) for r in batch if (why := _problem(store, r.object_key, r.sha256))]
        with archive.sessions() as session, session.begin():
            _report(session, ctx, failures)
            cp["after"] = after
            cp["checked"] += len(batch)
            cp["failed"] += len(failures)
            cp["listed"] += [_entry(r, why) for r, why in failures][: _LISTED - len(cp["listed"])]
            ctx.progress(
                session=session,
                done=cp["checked"],
                checkpoint=cp,
                message=f"{cp['failed']} of {cp['checked']} objects failed the check",
            )
    if cp["failed"]:
        log.error("fixity job %d: %d of %d objects failed", ctx.job_id, cp["failed"], cp["checked"])
    return {"checked": cp["checked"], "failed": cp["failed"], "mismatches": cp["listed"]}


def _entry(row: Any, why: str) -> dict[str, str]:
    return {"sop_uid": row.sop_uid, "object_key": row.object_key, "problem": why}


def _report(session: Session, ctx: jobs.JobContext, failures: list[tuple[Any, str]]) -> None:
    """Log and audit each failure, in the transaction that saves the checkpoint (so once)."""
    if not failures:
        return
    owners = {
        uid: (pid, study)
        for uid, pid, study in session.execute(
            select(Instance.sop_uid, Patient.patient_id, Study.study_uid)
            .join(Instance.series)
            .join(Series.study)
            .join(Study.patient)
            .where(Instance.sop_uid.in_([r.sop_uid for r, _ in failures]))
        )
    }
    for row, why in failures:
        log.error("fixity: %s (%s): %s", row.object_key, row.sop_uid, why)
        audit.record(
            session,
            actor=ctx.created_by or "scheduler",
            role="system",
            source=f"job {ctx.job_id}",
            action="fixity-mismatch",
            patients=[owners.get(row.sop_uid, ("", ""))],
            outcome="failure",
            detail=f"{row.sop_uid} {row.object_key}: {why}",
        )
