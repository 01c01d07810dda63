"""A migrated study checked against the source: counts per series, what reconciliation with
PAS said of its patient, and every instance's SHA-256 for the report."""

from __future__ import annotations

import json
from collections.abc import Sequence
from enum import StrEnum
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from storage.migration_source import Retrieved, SourceCounts
from storage.models import Conflict, Instance, Patient, PatientStatus, Series, Study


class StudyState(StrEnum):
    PENDING = "pending"
    VERIFIED = "verified"
    DISCREPANCY = "discrepancy"  # migrated, but something differs: see its problems
    FAILED = "failed"  # the PACS refused to send it


def archived(session: Session, study_uid: str) -> dict[str, int]:
    """Instances per series the index holds for a study."""
    rows = session.execute(
        select(Series.series_uid, func.count(Instance.id))
        .join(Series.study)
        .join(Series.instances)
        .where(Study.study_uid == study_uid)
        .group_by(Series.series_uid)
    )
    return {uid: int(n) for uid, n in rows}


def problem(kind: str, detail: str) -> dict[str, str]:
    return {"kind": kind, "detail": detail}


def verify(
    session: Session, study_uid: str, counts: SourceCounts, got: Retrieved | None
) -> tuple[StudyState, dict[str, Any], int]:
    """Compare the index with the source; returns the state, the report detail and how many
    instances the index holds."""
    ours = archived(session, study_uid)
    problems: list[dict[str, str]] = []
    if got is not None and got.failed:
        problems.append(problem("retrieve-failed", f"{got.failed} sub-operations failed"))
    if not counts.series:
        problems.append(problem("missing-at-source", "the PACS lists no series for the study"))
    for s in counts.series.values():
        have = ours.get(s.series_uid, 0)
        if counts.per_series and have != s.instances:
            problems.append(
                problem(
                    "count-mismatch",
                    f"series {s.series_uid} ({s.modality}): {s.instances} on the source, "
                    f"{have} archived",
                )
            )
    for uid in sorted(set(ours) - set(counts.series)):
        problems.append(problem("count-mismatch", f"series {uid}: not on the source, archived"))
    if not counts.per_series:
        problems.append(problem("counts-unknown", "the PACS caps series and image queries"))
        if counts.total != sum(ours.values()):
            what = f"{counts.total} on the source, {sum(ours.values())} archived"
            problems.append(problem("count-mismatch", f"study: {what}"))
    rows = session.execute(
        select(
            Series.series_uid,
            Instance.sop_uid,
            Instance.sha256,
            Instance.header_differences,
            Patient.patient_id,
            Patient.status,
            Patient.status_reason,
        )
        .join(Instance.series)
        .join(Series.study)
        .join(Study.patient)
        .where(Study.study_uid == study_uid)
        .order_by(Series.series_uid, Instance.sop_uid)
    ).all()
    problems += _patient_problems(session, rows)
    detail = {
        "series": [
            {
                "series_uid": s.series_uid,
                "modality": s.modality,
                "source": s.instances,
                "archived": ours.get(s.series_uid, 0),
            }
            for s in counts.series.values()
        ],
        "problems": problems,
        "retrieved": None if got is None else got.__dict__,
        "instances": [[r.series_uid, r.sop_uid, r.sha256] for r in rows],
    }
    state = StudyState.DISCREPANCY if problems else StudyState.VERIFIED
    return state, detail, sum(ours.values())


def _patient_problems(session: Session, rows: Sequence[Any]) -> list[dict[str, str]]:
    """What reconciliation with PAS said of the study's objects (ingest did the work)."""
    out: list[dict[str, str]] = []
    for pid, status, reason in sorted({(r.patient_id, r.status, r.status_reason) for r in rows}):
        if status == PatientStatus.QUARANTINED:
            out.append(problem("quarantined", f"patient {pid}: {reason}"))
        elif status == PatientStatus.UNVERIFIED:
            out.append(problem("pas-unverified", f"patient {pid}: {reason}"))
    differing = [json.loads(r.header_differences) for r in rows if r.header_differences]
    if differing:
        fields = sorted({k for d in differing for k in d})
        out.append(
            problem(
                "pas-difference",
                f"{len(differing)} instances: the PACS's {', '.join(fields)} differ from PAS",
            )
        )
    uids = [r.sop_uid for r in rows]
    conflicts = session.scalar(select(func.count(Conflict.id)).where(Conflict.sop_uid.in_(uids)))
    if conflicts:
        out.append(
            problem("conflict", f"{conflicts} objects came under a SOP Instance UID we hold")
        )
    return out
