"""The report of a migration job: what was found, verified, and what differs, as JSON or CSV."""

from __future__ import annotations

import csv
import io
import json
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from storage import jobs
from storage.migration import MIGRATION, tally
from storage.migration_verify import StudyState
from storage.models import MigrationStudy

CSV_COLUMNS = [
    "study_uid",
    "study_date",
    "patient_id",
    "accession_number",
    "state",
    "source_instances",
    "archived_instances",
    "retrievals",
    "checked_at",
    "problems",
]


def report(
    session: Session, job_id: int, *, problems_only: bool = False, instances: bool = True
) -> dict[str, Any]:
    """The job, its tally, windows the PACS kept capping, and one entry per study (with
    per-series counts and, if `instances`, every instance's SHA-256)."""
    job = jobs.get(session, job_id)
    if job.kind != MIGRATION:
        raise jobs.JobError(f"job {job_id} is a {job.kind} job, not a migration")
    stmt = (
        select(MigrationStudy)
        .where(MigrationStudy.job_fk == job_id)
        .order_by(MigrationStudy.study_date.desc(), MigrationStudy.id)
    )
    if problems_only:
        stmt = stmt.where(MigrationStudy.state.in_([StudyState.DISCREPANCY, StudyState.FAILED]))
    studies = []
    for row in session.scalars(stmt):
        detail = json.loads(row.detail)
        entry = {
            "study_uid": row.study_uid,
            "study_date": row.study_date,
            "patient_id": row.patient_id,
            "accession_number": row.accession_number,
            "state": row.state,
            "source_instances": row.source_instances,
            "archived_instances": row.archived_instances,
            "retrievals": row.retrievals,
            "checked_at": jobs.iso(row.checked_at),
            "series": detail.get("series", []),
            "problems": detail.get("problems", []),
        }
        if instances:
            entry["instances"] = [
                {"series_uid": se, "sop_uid": sop, "sha256": sha}
                for se, sop, sha in detail.get("instances", [])
            ]
        studies.append(entry)
    checkpoint = json.loads(job.checkpoint)
    return {
        "job": jobs.as_dict(job),
        "tally": tally(session, job_id),
        "incomplete_windows": checkpoint.get("incomplete", []),
        "studies": studies,
    }


def as_csv(rep: dict[str, Any]) -> str:
    """One line per study; problems joined as `kind: detail; …`."""
    out = io.StringIO()
    writer = csv.DictWriter(out, CSV_COLUMNS, extrasaction="ignore")
    writer.writeheader()
    for st in rep["studies"]:
        problems = "; ".join(f"{p['kind']}: {p['detail']}" for p in st["problems"])
        writer.writerow({**st, "problems": problems})
    return out.getvalue()


def as_text(rep: dict[str, Any]) -> str:
    """A summary line, then one line per problem of each study that has any."""
    t = rep["tally"]
    lines = [
        f"job {rep['job']['id']} {rep['job']['state']}: {t['studies']} studies, "
        f"{t['verified']} verified, {t['discrepancy']} with discrepancies, {t['failed']} failed, "
        f"{t['pending']} pending; instances {t['archived_instances']} archived of "
        f"{t['source_instances']} on the source; {t['retrievals']} retrievals"
    ]
    lines += [f"window still capped: {w}" for w in rep["incomplete_windows"]]
    for st in rep["studies"]:
        for p in st["problems"]:
            lines.append(
                f"{st['study_uid']}  {st['study_date']}  {st['patient_id']}  {st['state']}  "
                f"{p['kind']}: {p['detail']}"
            )
    return "\n".join(lines)
