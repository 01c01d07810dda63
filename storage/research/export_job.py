"""The research export as a durable job kind: queued by the admin API or the CLI, run by the
broker's job runner, resumed after a crash (the export skips what an earlier run wrote)."""

from __future__ import annotations

import time
from typing import Any

from sqlalchemy.orm import Session

from storage import jobs
from storage.models import Job
from storage.research.archive import ResearchArchive
from storage.research.export import Selection, export
from storage.research.keys import KeyStore

RESEARCH_EXPORT = "research.export"
_SAVE_EVERY = 1.0  # seconds between progress saves (each one is a write to the jobs table)


def start(session: Session, slug: str, selection: Selection, *, created_by: str) -> Job:
    """Queue an export of `selection` into project `slug` (the caller commits)."""
    params = {
        "project": slug,
        "selection": {"study_uids": selection.study_uids, "filters": selection.filters},
    }
    job = jobs.enqueue(session, RESEARCH_EXPORT, params, created_by=created_by)
    assert job is not None  # no dedupe key: always queued
    return job


@jobs.handler(RESEARCH_EXPORT)
def run(ctx: jobs.JobContext) -> dict[str, Any]:
    settings = ctx.archive.settings
    research = ResearchArchive(settings)
    saved = [0.0]

    def progress(done: int, total: int) -> None:
        ctx.check()
        now = time.monotonic()
        if done == total or now - saved[0] >= _SAVE_EVERY:
            ctx.progress(done=done, total=total)  # raises JobStopped if cancelled
            saved[0] = now

    try:
        report = export(
            ctx.archive,
            research,
            KeyStore(settings.data_dir),
            str(ctx.params["project"]),
            Selection(**ctx.params["selection"]),
            actor=ctx.created_by,
            source=f"job {ctx.job_id}",
            progress=progress,
        )
    finally:
        research.close()
    return report.as_dict()
