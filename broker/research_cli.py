"""`pacsbroker research …`: projects, teaching collections, exports and re-identification."""

from __future__ import annotations

import datetime as dt
import json
from typing import Annotated

import typer

from broker.cli_common import actor as _actor
from broker.cli_common import console, progress, refused
from broker.cli_common import settings as _settings
from storage.deid.profile import DEFAULT_OPTIONS, Option, project_options
from storage.research.models import ProjectKind

research_app = typer.Typer(help="De-identified research projects and teaching collections.")


@research_app.command("create")
def create(
    project: Annotated[str, typer.Argument(help="Short name: a-z, 0-9 and '-'")],
    title: Annotated[str, typer.Option(help="What the project or collection is")],
    owner: Annotated[str, typer.Option(help="Who is responsible for it")],
    purpose: Annotated[str, typer.Option(help="What the data may be used for")],
    expires: Annotated[str, typer.Option(help="Last day of access, YYYY-MM-DD")],
    approval: Annotated[str, typer.Option(help="Ethics approval reference (e.g. REK)")] = "",
    kind: Annotated[ProjectKind, typer.Option(help="research or teaching")] = (
        ProjectKind.RESEARCH
    ),
    option: Annotated[
        list[Option] | None, typer.Option(help="Annex E options (repeat); default: all four")
    ] = None,
    allow_encapsulated_documents: Annotated[
        bool, typer.Option(help="Export PDF, CDA and 3D model documents with their content")
    ] = False,
) -> None:
    """Create a project (or teaching collection) and its pseudonym key."""
    from storage.research import projects
    from storage.research.archive import ResearchArchive
    from storage.research.keys import KeyStore

    if not purpose.strip():
        console.print("[red]say what the data may be used for: --purpose[/red]")
        raise typer.Exit(2)
    s = _settings()
    research = ResearchArchive(s)
    try:
        with (
            refused(projects.ProjectError, ValueError),
            research.sessions() as session,
            session.begin(),
        ):
            found = projects.create(
                session,
                KeyStore(s.data_dir),
                slug=project,
                kind=kind,
                title=title,
                owner=owner,
                purpose=purpose,
                approval=approval,
                expires=dt.date.fromisoformat(expires),
                options=project_options(
                    option or DEFAULT_OPTIONS, allow_documents=allow_encapsulated_documents
                ),
                created_by=_actor(),
            )
            print(json.dumps(projects.describe(session, found)))
    finally:
        research.close()


@research_app.command("list")
def list_projects(as_json: Annotated[bool, typer.Option("--json")] = False) -> None:
    """Projects and collections with what they hold."""
    from storage.research import projects
    from storage.research.archive import ResearchArchive

    research = ResearchArchive(_settings())
    try:
        with research.sessions() as session:
            found = projects.listing(session)
    finally:
        research.close()
    if as_json:
        print(json.dumps(found))
        return
    for p in found:
        state = "expired" if p["expired"] else f"until {p['expires'] or 'further notice'}"
        print(
            f"{p['role']:32} {p['studies']:5} studies {p['instances']:7} objects  "
            f"{state}  {p['title']} ({p['owner']}, {p['approval'] or 'no approval ref'})"
        )


@research_app.command("export")
def export_cmd(
    project: str,
    study: Annotated[list[str] | None, typer.Option(help="Study Instance UID (repeat)")] = None,
    filter_: Annotated[
        list[str] | None,
        typer.Option("--filter", help="KEYWORD=VALUE as in QIDO, e.g. StudyDate=20240101-"),
    ] = None,
    background: Annotated[
        bool, typer.Option(help="Queue it as a job for the running broker instead")
    ] = False,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """De-identify the selected studies into the project (run again to resume)."""
    from storage.archive import Archive
    from storage.research import export_job, projects
    from storage.research.archive import ResearchArchive
    from storage.research.export import Selection, export
    from storage.research.keys import KeyMissing, KeyStore

    filters = dict(f.split("=", 1) for f in filter_ or [] if "=" in f)
    selection = Selection(list(study or []), filters)
    if not selection.study_uids and not selection.filters:
        console.print("[red]select studies with --study or --filter[/red]")
        raise typer.Exit(2)
    s = _settings()
    clinical = Archive(s, run_migrations=True)
    if background:
        with clinical.sessions() as session, session.begin():
            job = export_job.start(session, project, selection, created_by=_actor())
            console.print(f"queued as job {job.id}: pacsbroker jobs show {job.id}")
        return
    research = ResearchArchive(s)
    try:
        with (
            refused(projects.ProjectError, projects.NoSuchProject, KeyMissing, ValueError),
            progress() as bar,
        ):
            task = bar.add_task(f"exporting to {project}", total=None)
            report = export(
                clinical,
                research,
                KeyStore(s.data_dir),
                project,
                selection,
                actor=_actor(),
                source="cli",
                progress=lambda done, total: bar.update(task, completed=done, total=total),
            )
    finally:
        research.close()
        clinical.close()
    if as_json:
        print(json.dumps(report.as_dict()))
    else:
        console.print(
            f"{report.studies} studies, {report.instances} objects: {report.exported} exported, "
            f"{report.already} already there, {len(report.held_back)} held back, "
            f"{len(report.failed)} failed"
        )
        for item in report.held_back:
            console.print(f"[yellow]held back[/yellow] {item.sop_uid}: {item.reason}")
        for item in report.failed:
            console.print(f"[red]failed[/red] {item.sop_uid}: {item.reason}")
    if report.failed:
        raise typer.Exit(1)


@research_app.command("held-back")
def held_back_cmd(project: str) -> None:
    """Objects exports into the project held back (burned-in annotation, faces, documents)."""
    from storage.archive import Archive
    from storage.research.export import held_back

    clinical = Archive(_settings(), run_migrations=True)
    with clinical.sessions() as session:
        print(json.dumps(held_back(session, project)))


@research_app.command("reidentify")
def reidentify_cmd(project: str, pseudonym: str) -> None:
    """Who a pseudonym stands for (needs the project's key; audited)."""
    from storage.archive import Archive
    from storage.research.keys import KeyMissing, KeyStore
    from storage.research.reidentify import reidentify

    s = _settings()
    with refused(KeyMissing):
        found = reidentify(
            Archive(s, run_migrations=True),
            KeyStore(s.data_dir),
            project,
            pseudonym,
            actor=_actor(),
            source="cli",
        )
    if not found.found:
        console.print(f"[red]{pseudonym} is no patient exported to {project}[/red]")
        raise typer.Exit(1)
    print(json.dumps({"patient_id": found.patient_id, "issuer": found.issuer, "name": found.name}))
