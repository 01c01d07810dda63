"""Research projects and teaching collections: creation, lookup, listing, teaching notes."""

from __future__ import annotations

import datetime as dt
import json
import re
from collections.abc import Iterable
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from storage.deid.profile import DEFAULT_OPTIONS, Option
from storage.models import Instance, Patient, Series, Study
from storage.research.keys import KeyStore
from storage.research.models import Project, ProjectKind, TeachingNote

_SLUG = re.compile(r"^[a-z0-9][a-z0-9-]{1,38}[a-z0-9]$")


class ProjectError(ValueError):
    """The project cannot be created or used that way; the message says why."""


class NoSuchProject(LookupError):
    """No project by that name."""


def create(
    session: Session,
    keys: KeyStore,
    *,
    slug: str,
    title: str,
    owner: str,
    kind: ProjectKind = ProjectKind.RESEARCH,
    purpose: str = "",
    approval: str = "",
    expires: dt.date | None = None,
    options: Iterable[Option] = DEFAULT_OPTIONS,
    created_by: str = "",
) -> Project:
    """A new project and its key (the caller commits; the key file exists from now on)."""
    if not _SLUG.match(slug):
        raise ProjectError("a project name is 3-40 of a-z, 0-9 and '-', not starting with '-'")
    if session.scalar(select(Project.id).where(Project.slug == slug)) is not None:
        raise ProjectError(f"project {slug!r} exists already")
    if keys.exists(slug):
        # a key left from an earlier project of that name would link the two projects' data
        raise ProjectError(f"a key for {slug!r} exists already; remove it or choose another name")
    if kind is ProjectKind.RESEARCH and not approval:
        raise ProjectError("a research project needs its approval reference (e.g. REK number)")
    project = Project(
        slug=slug,
        kind=kind,
        title=title,
        owner=owner,
        purpose=purpose,
        approval=approval,
        expires=expires,
        options=json.dumps(sorted(Option(o).value for o in options)),
        created_by=created_by,
    )
    session.add(project)
    session.flush()
    keys.create(slug)
    return project


def get(session: Session, slug: str) -> Project:
    project = session.scalar(select(Project).where(Project.slug == slug))
    if project is None:
        raise NoSuchProject(f"no project {slug!r}")
    return project


def counts(session: Session, scope: str) -> dict[str, int]:
    """Patients, studies and instances a project holds."""
    row = session.execute(
        select(
            func.count(func.distinct(Patient.id)),
            func.count(func.distinct(Study.id)),
            func.count(Instance.id),
        )
        .select_from(Patient)
        .join(Study, Study.patient_fk == Patient.id)
        .join(Series, Series.study_fk == Study.id)
        .join(Instance, Instance.series_fk == Series.id)
        .where(Patient.issuer == scope)
    ).one()
    return {"patients": int(row[0]), "studies": int(row[1]), "instances": int(row[2])}


def describe(session: Session, project: Project) -> dict[str, Any]:
    return {
        "project": project.slug,
        "kind": project.kind,
        "title": project.title,
        "owner": project.owner,
        "purpose": project.purpose,
        "approval": project.approval,
        "expires": project.expires.isoformat() if project.expires else None,
        "expired": project.expired(),
        "options": sorted(project.deid_options),
        "role": project.scope,
        **counts(session, project.scope),
    }


def listing(session: Session) -> list[dict[str, Any]]:
    return [describe(session, p) for p in session.scalars(select(Project).order_by(Project.slug))]


def add_note(
    session: Session,
    project: Project,
    study_uid: str,
    text: str,
    codes: list[tuple[str, str, str]],
    author: str,
) -> TeachingNote:
    """A note on a study of the project (the caller commits)."""
    known = session.scalar(
        select(Study.id)
        .join(Study.patient)
        .where(Study.study_uid == study_uid, Patient.issuer == project.scope)
    )
    if known is None:
        raise ProjectError(f"study {study_uid} is not in {project.slug!r}")
    note = TeachingNote(
        project_fk=project.id,
        study_uid=study_uid,
        text=text,
        codes=json.dumps([list(c) for c in codes], ensure_ascii=False),
        author=author,
    )
    session.add(note)
    session.flush()
    return note


def collection(session: Session, project: Project) -> list[dict[str, Any]]:
    """The project's studies with their teaching notes, for browsing."""
    notes: dict[str, list[dict[str, Any]]] = {}
    for n in session.scalars(
        select(TeachingNote).where(TeachingNote.project_fk == project.id).order_by(TeachingNote.id)
    ):
        notes.setdefault(n.study_uid, []).append(
            {
                "text": n.text,
                "codes": [
                    {"value": v, "scheme": s, "meaning": m} for v, s, m in json.loads(n.codes)
                ],
                "author": n.author,
                "created_at": n.created_at.isoformat(),
            }
        )
    rows = session.execute(
        select(Study, Patient.patient_id)
        .join(Study.patient)
        .where(Patient.issuer == project.scope)
        .order_by(Patient.patient_id, Study.study_date, Study.id)
    )
    out = []
    for study, pseudonym in rows:
        modalities = sorted(
            {m for m in session.scalars(select(Series.modality).where(Series.study_fk == study.id))}
        )
        out.append(
            {
                "study_uid": study.study_uid,
                "patient": pseudonym,
                "date": study.study_date,
                "description": study.description,
                "modalities": modalities,
                "notes": notes.get(study.study_uid, []),
            }
        )
    return out
