"""Research and teaching views under /research/{project}: the project's read-only DICOMweb
(the clinical DICOMweb code on the research archive, limited to the project), a ZIP with a
DICOMDIR, and teaching notes. Only tokens with the project's role (`research:{project}` or
`teaching:{project}`) get in; clinical roles do not, and these roles read nothing clinical.
"""

from __future__ import annotations

import os
import tempfile
import threading
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Query
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import FileResponse, HTMLResponse
from pydantic import BaseModel, Field
from starlette.background import BackgroundTask

from storage.audit import AuditTrail
from storage.research import media, projects
from storage.research.archive import ResearchArchive
from storage.research.models import Project
from storage.settings import Settings
from viewer.auth import Caller, caller
from viewer.dicomweb import DicomWeb, read_routes
from viewer.images import ImageService

_PAGE = Path(__file__).with_name("static") / "teaching.html"


class ResearchViews:
    """The research archive, opened on first use (deployments without research never touch
    it), and one DicomWeb per project over it."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._lock = threading.Lock()
        self._archive: ResearchArchive | None = None
        self._trail: AuditTrail | None = None
        self._images: ImageService | None = None
        self._webs: dict[str, DicomWeb] = {}

    @property
    def archive(self) -> ResearchArchive:
        with self._lock:
            if self._archive is None:
                self._archive = ResearchArchive(self.settings)
                # reads of research data are audited in the research database
                self._trail = AuditTrail(self._archive.sessions)
                self._images = ImageService(self._archive)
            return self._archive

    @property
    def trail(self) -> AuditTrail:
        _ = self.archive
        assert self._trail is not None
        return self._trail

    def project(self, slug: str) -> Project:
        with self.archive.sessions() as session:
            try:
                return projects.get(session, slug)
            except projects.NoSuchProject as e:
                raise HTTPException(404, str(e)) from None

    def web(self, project: Project) -> DicomWeb:
        archive = self.archive
        with self._lock:
            if project.slug not in self._webs:
                assert self._trail is not None and self._images is not None
                self._webs[project.slug] = DicomWeb(
                    archive,
                    self._images,
                    self._trail,
                    None,  # read-only: no STOW-RS into a research project
                    0,
                    prefix=f"/research/{project.slug}/dicomweb",
                    issuer=project.scope,
                )
            return self._webs[project.slug]

    def close(self) -> None:
        with self._lock:
            if self._trail is not None:
                self._trail.close()
            if self._archive is not None:
                self._archive.close()


class NoteIn(BaseModel):
    study_uid: str = Field(description="The study's UID in the project (de-identified)")
    text: str = ""
    codes: list[tuple[str, str, str]] = Field(
        default_factory=list, description="[code value, coding scheme, meaning], e.g. RadLex"
    )


def router(views: ResearchViews) -> APIRouter:
    def member(project: str, who: Annotated[Caller, Depends(caller)]) -> Caller:
        """The caller holds this project's role, and the project is still open."""
        kind, _, slug = who.role.partition(":")
        if slug != project or kind not in ("research", "teaching"):
            raise HTTPException(
                403, f"project {project!r} is open to its own role only; the token has {who.role!r}"
            )
        found = views.project(project)
        if who.role != found.scope:
            raise HTTPException(403, f"project {project!r} needs the role {found.scope!r}")
        if found.expired():
            raise HTTPException(403, f"project {project!r} expired on {found.expires}")
        return who

    def web_of(project: str) -> DicomWeb:
        return views.web(views.project(project))

    member_dep = Depends(member)
    r = APIRouter(prefix="/research/{project}", tags=["research"])
    dicomweb = APIRouter(prefix="/research/{project}/dicomweb", tags=["research"])
    read_routes(dicomweb, web_of, member)

    @r.get("")
    def describe(project: str, who: Caller = member_dep) -> dict[str, Any]:
        with views.archive.sessions() as session:
            return projects.describe(session, projects.get(session, project))

    @r.get("/studies.zip")
    async def download(
        project: str,
        study: Annotated[list[str] | None, Query(description="Study UIDs; none = all")] = None,
        who: Caller = member_dep,
    ) -> FileResponse:
        """The project's studies (or those named) as a ZIP: a DICOM File-set with DICOMDIR."""
        scope = views.project(project).scope
        fd, name = tempfile.mkstemp(prefix="pacsbroker-", suffix=".zip")

        def build() -> int:
            with os.fdopen(fd, "wb") as out:
                return media.write_zip(views.archive, scope, study or [], out)

        try:
            count = await run_in_threadpool(build)
        except BaseException:
            os.unlink(name)
            raise
        if not count:
            os.unlink(name)
            raise HTTPException(404, "no such studies in the project")
        views.trail.record(
            actor=who.user,
            role=who.role,
            source=who.address,
            action="research.download",
            detail=f"{count} instances as a ZIP with DICOMDIR",
            patients=[("", s) for s in study or []],
        )
        return FileResponse(
            name,
            media_type="application/zip",
            filename=f"{project}.zip",
            background=BackgroundTask(os.unlink, name),
        )

    @r.get("/teaching")
    def collection(project: str, who: Caller = member_dep) -> dict[str, Any]:
        with views.archive.sessions() as session:
            found = projects.get(session, project)
            return {
                "project": projects.describe(session, found),
                "studies": projects.collection(session, found),
            }

    @r.post("/teaching/notes", status_code=201)
    def add_note(project: str, body: NoteIn, who: Caller = member_dep) -> dict[str, Any]:
        with views.archive.sessions() as session, session.begin():
            found = projects.get(session, project)
            try:
                note = projects.add_note(
                    session, found, body.study_uid, body.text, body.codes, who.user
                )
            except projects.ProjectError as e:
                raise HTTPException(404, str(e)) from None
            return {"id": note.id, "study_uid": note.study_uid}

    @r.get("/teaching.html", response_class=HTMLResponse, include_in_schema=False)
    def page(project: str) -> HTMLResponse:
        """The browsing page; it holds no data and reads the JSON API with the user's token."""
        return HTMLResponse(_PAGE.read_text())

    outer = APIRouter()
    outer.include_router(dicomweb)
    outer.include_router(r)
    return outer
