"""`pacsbroker jobs|retention|hold|unhold|holds|fixity`: durable jobs, retention rules and sweeps,
legal holds and fixity checks (the running broker executes the jobs)."""

from __future__ import annotations

import json
from typing import Annotated, Any

import typer

from broker.cli_common import (
    JSON_OPT,
    WAIT_OPT,
    Commands,
    actor,
    audited,
    console,
    follow,
    job_line,
    open_archive,
    queued,
    refused,
)

commands = Commands()

jobs_app = typer.Typer(help="Durable background jobs: retention sweeps, fixity checks, …")
retention_app = typer.Typer(help="Retention rules, what they would delete, and sweeps.")


@jobs_app.command("list")
def jobs_list(
    state: Annotated[str, typer.Option(help="queued, running, succeeded, failed, cancelled")] = "",
    kind: Annotated[str, typer.Option(help="e.g. retention-sweep, fixity")] = "",
    limit: int = 50,
    as_json: JSON_OPT = False,
) -> None:
    """Jobs, newest first, with their progress."""
    from storage import jobs

    archive = open_archive()
    with archive.sessions() as session:
        found = [
            jobs.as_dict(j) for j in jobs.listing(session, state=state, kind=kind, limit=limit)
        ]
    if as_json:
        print(json.dumps(found))
        return
    for j in found:
        print(job_line(j))
    if not found:
        print("no jobs")


@jobs_app.command("show")
def jobs_show(job_id: int, wait: WAIT_OPT = False) -> None:
    """One job, with its result; --wait follows it to the end."""
    from storage import jobs

    if wait:
        j = follow(job_id)
    else:
        archive = open_archive()
        with archive.sessions() as session, refused(jobs.JobError):
            j = jobs.as_dict(jobs.get(session, job_id))
    print(json.dumps(j, indent=2, ensure_ascii=False))


def _change_job(job_id: int, change: Any) -> None:
    """Cancel or retry a job, audited as the API audits it (`job-cancel`, `job-retry`)."""
    from storage import jobs

    archive = open_archive()
    with archive.sessions() as session, session.begin(), refused(jobs.JobError):
        job = change(session, job_id, by=actor())
        audited(session, f"job-{change.__name__}", f"job {job.id} ({job.kind})")
        j = jobs.as_dict(job)
    print(job_line(j))


@jobs_app.command("cancel")
def jobs_cancel(job_id: int) -> None:
    """Cancel a queued or running job (a running one stops after its current step)."""
    from storage import jobs

    _change_job(job_id, jobs.cancel)


@jobs_app.command("retry")
def jobs_retry(job_id: int) -> None:
    """Queue a failed or cancelled job again; it resumes from its last checkpoint."""
    from storage import jobs

    _change_job(job_id, jobs.retry)


@retention_app.command("rules")
def retention_rules(as_json: JSON_OPT = False) -> None:
    """The retention rules."""
    from storage import retention

    archive = open_archive()
    with archive.sessions() as session:
        found = retention.rules(session)
    if as_json:
        print(json.dumps([r.model_dump() for r in found]))
        return
    for r in found:
        filters = " ".join(
            f"{k}={','.join(v)}"
            for k, v in (("modality", r.modalities), ("sop", r.sop_classes), ("ae", r.source_aes))
            if v
        )
        age = f" age≥{r.min_patient_age}" if r.min_patient_age is not None else ""
        state = "" if r.enabled else " (disabled)"
        print(f"{r.id:>4}  {r.name:<20} keep {r.keep_years}y {r.keep_days}d{age} {filters}{state}")
    if not found:
        print("no retention rules: nothing is ever deleted by retention")


@retention_app.command("add")
def retention_add(
    name: Annotated[str, typer.Option(help="Unique name of the rule")],
    keep_years: Annotated[int, typer.Option(help="Keep studies this many years")] = 0,
    keep_days: Annotated[int, typer.Option(help="… and this many days")] = 0,
    modality: Annotated[list[str] | None, typer.Option(help="Only these modalities")] = None,
    sop_class: Annotated[list[str] | None, typer.Option(help="Only these SOP Class UIDs")] = None,
    source_ae: Annotated[list[str] | None, typer.Option(help="Only from these calling AEs")] = None,
    min_patient_age: Annotated[
        int | None, typer.Option(help="Only if the patient was at least this old at the study")
    ] = None,
    disabled: Annotated[bool, typer.Option(help="Save the rule switched off")] = False,
) -> None:
    """Add a retention rule: matching instances go once their study is older than the period."""
    from pydantic import ValidationError

    from storage import retention

    try:
        spec = retention.RuleSpec(
            name=name,
            keep_years=keep_years,
            keep_days=keep_days,
            modalities=modality or [],
            sop_classes=sop_class or [],
            source_aes=source_ae or [],
            min_patient_age=min_patient_age,
            enabled=not disabled,
        )
    except ValidationError as e:
        console.print(f"[red]{e.errors()[0]['msg']}[/red]")
        raise typer.Exit(2) from None
    archive = open_archive()
    with archive.sessions() as session, session.begin(), refused(retention.RetentionError):
        rule = retention.save_rule(session, spec, actor=actor(), source="cli")
    print(rule.id)


@retention_app.command("remove")
def retention_remove(rule_id: int) -> None:
    """Delete a retention rule."""
    from storage import retention

    archive = open_archive()
    with archive.sessions() as session, session.begin(), refused(retention.RetentionError):
        retention.delete_rule(session, rule_id, actor=actor(), source="cli")
    console.print(f"rule {rule_id} deleted")


@retention_app.command("dry-run")
def retention_dry_run(as_json: JSON_OPT = False) -> None:
    """What a sweep would delete now, per study, and the space it would free."""
    from storage import retention

    archive = open_archive()
    with archive.sessions() as session:
        plan = retention.dry_run(session, archive.settings).as_dict()
    if as_json:
        print(json.dumps(plan, ensure_ascii=False))
        return
    for st in plan["studies"]:
        scope = "whole study" if st["whole_study"] else "part"
        print(
            f"{st['study_uid']}  {st['study_date']}  {st['patient_id']}  {st['instances']} "
            f"instances  {st['bytes']} bytes  {scope}  {'; '.join(st['reasons'])}"
        )
    console.print(
        f"{plan['total_studies']} studies, {plan['total_instances']} instances, "
        f"{plan['total_bytes'] / 1e6:.1f} MB would be freed"
    )


@retention_app.command("sweep")
def retention_sweep(wait: WAIT_OPT = False, as_json: JSON_OPT = False) -> None:
    """Queue a retention sweep now (the running broker executes it)."""
    from storage import retention

    archive = open_archive()
    with archive.sessions() as session, session.begin():
        job = retention.start_sweep(session, created_by=actor())
    queued(job, wait, as_json)


@commands.command()
def hold(
    study_uid: str,
    reason: Annotated[str, typer.Option(help="Why the study must be kept (case, request)")],
) -> None:
    """Put a study under legal hold: no retention rule or rejection deletes it."""
    from storage import holds

    archive = open_archive()
    with archive.sessions() as session, session.begin(), refused(holds.HoldError):
        holds.hold(session, study_uid, reason, actor=actor(), source="cli")
    console.print(f"study {study_uid} is under legal hold")


@commands.command()
def unhold(study_uid: str) -> None:
    """Clear a study's legal hold."""
    from storage import holds

    archive = open_archive()
    with archive.sessions() as session, session.begin(), refused(holds.HoldError):
        holds.release(session, study_uid, actor=actor(), source="cli")
    console.print(f"study {study_uid}: legal hold cleared")


@commands.command()
def holds(as_json: JSON_OPT = False) -> None:
    """Studies under legal hold, with who put them there and why."""
    from storage import holds as legal_holds

    archive = open_archive()
    with archive.sessions() as session:
        found = legal_holds.listing(session)
    if as_json:
        print(json.dumps(found, default=str))
        return
    for h in found:
        print("\t".join(str(v) for v in h.values()))
    if not found:
        print("no legal holds")


@commands.command("fixity")
def fixity_cmd(
    sample: Annotated[
        float | None, typer.Option(help="Objects to re-hash: a count, or a fraction ≤ 1")
    ] = None,
    wait: WAIT_OPT = False,
    as_json: JSON_OPT = False,
) -> None:
    """Queue a fixity check; with --wait, exit 1 if any object fails it."""
    from storage import fixity

    archive = open_archive()
    with archive.sessions() as session, session.begin():
        job = fixity.start(session, sample or archive.settings.fixity_sample, created_by=actor())
    j = queued(job, wait, as_json)
    if wait and not as_json:
        for m in j["result"].get("mismatches", []):
            print(f"{m['sop_uid']}  {m['object_key']}  {m['problem']}")
    if j["result"].get("failed"):
        raise typer.Exit(1)


def register(app: typer.Typer) -> None:
    app.add_typer(jobs_app, name="jobs")
    app.add_typer(retention_app, name="retention")
    commands.register(app)
