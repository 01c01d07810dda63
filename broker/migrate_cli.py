"""`pacsbroker migrate`: move a legacy PACS into the archive (docs/migration.md)."""

from __future__ import annotations

import json
from typing import Annotated

import typer

from broker.cli_common import (
    JSON_OPT,
    Commands,
    actor,
    console,
    open_archive,
    queued,
    refused,
)

commands = Commands()
FOLLOW_OPT = Annotated[
    bool,
    typer.Option(
        "--wait/--background", help="Follow the job with a progress bar, or only queue it"
    ),
]


@commands.command()
def migrate(
    source: Annotated[
        str, typer.Option("--from", help="Legacy PACS: AE@host:port, or an AE in PEERS")
    ] = "",
    since: Annotated[str, typer.Option(help="First StudyDate, YYYYMMDD; default: the oldest")] = "",
    until: Annotated[str, typer.Option(help="Last StudyDate, YYYYMMDD; default: no end")] = "",
    window_days: Annotated[int, typer.Option(help="Width of the first C-FIND date windows")] = 365,
    max_associations: Annotated[int, typer.Option(help="Associations with the PACS at once")] = 1,
    hours: Annotated[str, typer.Option(help='Allowed local hours, e.g. "18-07"')] = "",
    get: Annotated[bool, typer.Option("--get", help="C-GET instead of C-MOVE to us")] = False,
    pause: Annotated[float, typer.Option(help="Seconds between studies, per association")] = 0.0,
    find_limit: Annotated[int, typer.Option(help="Answers at which the PACS truncates")] = 0,
    report_job: Annotated[int | None, typer.Option("--report", help="Print a job's report")] = None,
    csv_out: Annotated[bool, typer.Option("--csv", help="The report as CSV")] = False,
    wait: FOLLOW_OPT = True,
    as_json: JSON_OPT = False,
) -> None:
    """Migrate a legacy PACS into the archive (the running broker does it, this command follows
    it), or show a report; exit 1 if the job fails or any study has a discrepancy. Run again
    after a crash, it follows the job that is still active."""
    from broker.migrate import parse_source
    from storage import jobs, migration, migration_report

    archive = open_archive()
    if report_job is not None:
        with archive.sessions() as session, refused(jobs.JobError):
            rep = migration_report.report(session, report_job, instances=as_json)
        out = migration_report.as_csv(rep) if csv_out else migration_report.as_text(rep)
        print(json.dumps(rep, ensure_ascii=False) if as_json else out)
        return
    if not source:
        console.print("[red]give --from AE@host:port (or an AE in PEERS), or --report JOB[/red]")
        raise typer.Exit(2)
    try:
        ae, host, port = parse_source(source)
        params = migration.MigrationParams(
            source_ae=ae,
            host=host,
            port=port,
            since=since,
            until=until,
            window_days=window_days,
            max_associations=max_associations,
            hours=hours,
            method="get" if get else "move",
            pause=pause,
            find_limit=find_limit,
        )
        with archive.sessions() as session, session.begin():
            job, resumed = migration.start(session, params, archive.settings, created_by=actor())
    except ValueError as e:  # also pydantic's ValidationError and MigrationError
        console.print(f"[red]{e}[/red]")
        raise typer.Exit(2) from None
    if resumed:
        console.print(f"resuming job {job.id}")
    j = queued(job, wait, as_json)
    if wait and not as_json:
        console.print(f"report: `pacsbroker migrate --report {job.id}`")
    if wait and (j["result"].get("discrepancy") or j["result"].get("failed")):
        raise typer.Exit(1)


def register(app: typer.Typer) -> None:
    commands.register(app)
