"""Admin API (role radiology-admin) for legacy PACS migrations: queue one (a durable job the
broker runs) and read its report as JSON or CSV."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, HTTPException, Response

from storage import jobs
from storage.archive import Archive
from storage.migration import MigrationError, MigrationParams, start
from storage.migration_report import as_csv, report
from viewer.admin import admin
from viewer.archive_admin import JobOut
from viewer.auth import Caller

Admin = Annotated[Caller, Depends(admin)]


def router(archive: Archive) -> APIRouter:
    r = APIRouter(prefix="/api/v1/admin/migrations", tags=["admin"])

    @r.post("", status_code=202)
    def start_migration(body: MigrationParams, who: Admin) -> JobOut:
        with archive.sessions() as session, session.begin():
            try:
                job, _resumed = start(session, body, archive.settings, created_by=who.user)
            except MigrationError as e:
                raise HTTPException(409, str(e)) from None
            return JobOut(**jobs.as_dict(job))

    @r.get("/{job_id}/report", response_model=None)
    def migration_report(
        job_id: int,
        who: Admin,
        format: Literal["json", "csv"] = "json",
        problems_only: bool = False,
        instances: bool = True,
    ) -> dict[str, Any] | Response:
        with archive.sessions() as session:
            try:
                rep = report(session, job_id, problems_only=problems_only, instances=instances)
            except jobs.JobError as e:
                raise HTTPException(404, str(e)) from None
        if format == "csv":
            return Response(
                as_csv(rep),
                media_type="text/csv",
                headers={"Content-Disposition": f'attachment; filename="migration-{job_id}.csv"'},
            )
        return rep

    return r
