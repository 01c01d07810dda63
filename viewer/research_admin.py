"""Admin API (role radiology-admin) for research projects and teaching collections: create
and list them, queue exports (durable jobs), list what was held back, re-identify."""

from __future__ import annotations

import datetime as dt
from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException
from pydantic import BaseModel, Field, StringConstraints

from storage import jobs
from storage.archive import Archive
from storage.deid.profile import DEFAULT_OPTIONS, Option, project_options
from storage.research import export_job, projects
from storage.research.export import Selection, held_back
from storage.research.keys import KeyMissing, KeyStore
from storage.research.models import ProjectKind
from storage.research.reidentify import reidentify
from viewer.admin import admin
from viewer.auth import Caller
from viewer.research import ResearchViews

Admin = Annotated[Caller, Depends(admin)]


class ProjectIn(BaseModel):
    project: str = Field(description="Short name: a-z, 0-9, '-'; the role is '<kind>:<name>'")
    kind: ProjectKind = ProjectKind.RESEARCH
    title: str
    owner: str
    purpose: Annotated[str, StringConstraints(strip_whitespace=True, min_length=1)] = Field(
        description="What the data may be used for"
    )
    approval: str = Field(default="", description="Ethics approval reference (research: required)")
    expires: dt.date = Field(description="Last day of access")
    options: list[Option] = Field(default_factory=lambda: sorted(DEFAULT_OPTIONS))
    allow_encapsulated_documents: bool = Field(
        default=False, description="Export PDF, CDA and 3D model documents with their content"
    )


class ExportIn(BaseModel):
    study_uids: list[str] = Field(default_factory=list)
    filters: dict[str, str] = Field(
        default_factory=dict, description="QIDO keys, e.g. {'ModalitiesInStudy': 'CT'}"
    )


class ReidentifyIn(BaseModel):
    pseudonym: str


def router(archive: Archive, views: ResearchViews) -> APIRouter:
    r = APIRouter(prefix="/api/v1/admin/research", tags=["research"])
    keys = KeyStore(archive.settings.data_dir)

    @r.get("/projects")
    def list_projects(who: Admin) -> list[dict[str, Any]]:
        with views.archive.sessions() as session:
            return projects.listing(session)

    @r.post("/projects", status_code=201)
    def create_project(body: ProjectIn, who: Admin) -> dict[str, Any]:
        with views.archive.sessions() as session, session.begin():
            try:
                found = projects.create(
                    session,
                    keys,
                    slug=body.project,
                    kind=body.kind,
                    title=body.title,
                    owner=body.owner,
                    purpose=body.purpose,
                    approval=body.approval,
                    expires=body.expires,
                    options=project_options(
                        body.options, allow_documents=body.allow_encapsulated_documents
                    ),
                    created_by=who.user,
                )
            except projects.ProjectError as e:
                raise HTTPException(409, str(e)) from None
            return projects.describe(session, found)

    @r.post("/projects/{project}/exports", status_code=202)
    def start_export(project: str, body: ExportIn, who: Admin) -> dict[str, Any]:
        """Queue the export as a job; follow it under /api/v1/admin/jobs/{id}."""
        views.project(project)  # 404 before queueing anything
        if not body.study_uids and not body.filters:
            raise HTTPException(400, "select studies: study_uids or filters")
        with archive.sessions() as session, session.begin():
            job = export_job.start(
                session, project, Selection(body.study_uids, body.filters), created_by=who.user
            )
            return jobs.as_dict(job)

    @r.get("/projects/{project}/held-back")
    def list_held_back(project: str, who: Admin) -> list[dict[str, Any]]:
        with archive.sessions() as session:
            return held_back(session, project)

    @r.post("/projects/{project}/reidentify")
    def reidentify_pseudonym(project: str, body: ReidentifyIn, who: Admin) -> dict[str, Any]:
        try:
            found = reidentify(
                archive, keys, project, body.pseudonym, actor=who.user, source=who.address
            )
        except KeyMissing as e:
            raise HTTPException(404, str(e)) from None
        if not found.found:
            raise HTTPException(404, f"{body.pseudonym!r} is no patient exported to {project!r}")
        return {
            "pseudonym": found.pseudonym,
            "patient_id": found.patient_id,
            "issuer": found.issuer,
            "name": found.name,
            "studies": [{"research": a, "clinical": b} for a, b in found.studies],
        }

    return r
