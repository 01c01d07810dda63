"""The `pacsbroker` command."""

from __future__ import annotations

import json
import signal
import sys
from pathlib import Path
from typing import Annotated, Any

import httpx
import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn

from broker.logs import setup_logging
from broker.research_cli import research_app
from storage.settings import Settings

# The calling AE title of `pacsbroker dicomize`; with PEERS set, it must be a peer that may store.
DICOMIZE_AE = "PB-DICOMIZE"
app = typer.Typer(help="PACS broker and vendor-neutral image archive.", no_args_is_help=True)
console = Console(stderr=True)


def _settings() -> Settings:
    try:
        return Settings()
    except Exception as e:
        console.print(f"[red]configuration error:[/red] {e}")
        raise typer.Exit(2) from None


def _display_host(s: Settings) -> str:
    return "127.0.0.1" if s.bind_host in ("0.0.0.0", "::") else s.bind_host


@app.command()
def serve(
    load_dir: Annotated[
        Path | None, typer.Option("--load", help="Send this folder of DICOM files once started")
    ] = None,
) -> None:
    """Run the DICOM SCP, ingest workers and HTTP app until stopped."""
    from broker.runtime import Runtime

    s = _settings()
    setup_logging(s.log_level, "main")
    rt = Runtime(s)
    rt.start_dicom()
    rt.start_pas()
    rt.start_hotfolders()
    rt.start_jobs()
    host = _display_host(s)
    console.print(
        f"[bold]pacsbroker[/bold] DICOM: AE title [cyan]{s.ae_title}[/cyan] "
        f"on {host}:{s.dicom_port}  |  web: http://{host}:{s.http_port}/  "
        f"(health: http://{host}:{s.http_port}/healthz)"
    )
    if s.hl7_port:
        pas = s.pas_fhir_url or "none configured: header demographics are kept"
        console.print(f"HL7 ADT/orders (MLLP): {host}:{s.hl7_port}  |  PAS FHIR: {pas}")
    console.print(f"archive: {rt.archive.store.name}  index: {s.db_url.split('@')[-1]}")
    if load_dir is not None:
        _send(load_dir, host, s.dicom_port, s.ae_title, "PACSBROKER-LOAD")

    def _term(_sig: int, _frame: Any) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, _term)
    try:
        rt.serve_http()
    except KeyboardInterrupt:
        pass
    finally:
        rt.stop()


def _send(directory: Path, host: str, port: int, called: str, calling: str) -> bool:
    """Send a folder with a progress bar; True when every file was accepted."""
    from broker.loader import dicom_files, load

    files = list(dicom_files(directory))
    if not files:
        console.print(f"[yellow]no DICOM files under {directory}[/yellow]")
        return True
    with Progress(
        "[progress.description]{task.description}",
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        console=console,
    ) as bar:
        task = bar.add_task(f"sending {directory}", total=len(files))
        result = load(
            files,
            host=host,
            port=port,
            called_ae=called,
            calling_ae=calling,
            progress=lambda _p: bar.advance(task),
        )
    console.print(f"sent {result.sent} of {len(files)} files to {called}@{host}:{port}")
    for path, why in result.failed:
        console.print(f"[red]failed[/red] {path}: {why}")
    return not result.failed
    if result.failed:
        raise typer.Exit(1)


@app.command("load")
def load_cmd(
    directory: Path,
    host: Annotated[str | None, typer.Option(help="SCP host (default: this broker)")] = None,
    port: Annotated[int | None, typer.Option(help="SCP port (default: DICOM_PORT)")] = None,
    called: Annotated[str | None, typer.Option(help="Called AE title")] = None,
    calling: Annotated[str, typer.Option(help="Our calling AE title")] = "PACSBROKER-LOAD",
) -> None:
    """Send a folder of DICOM files into the broker over C-STORE, with a progress bar."""
    s = _settings()
    if not directory.exists():
        console.print(f"[red]{directory} does not exist[/red]")
        raise typer.Exit(2)
    try:
        sent = _send(
            directory, host or _display_host(s), port or s.dicom_port, called or s.ae_title, calling
        )
    except ConnectionError as e:
        console.print(f"[red]{e}[/red]")
        raise typer.Exit(1) from None
    if not sent:
        raise typer.Exit(1)


@app.command()
def dicomize(
    files: Annotated[list[Path], typer.Argument(help="Photos, PDFs, MP4 (H.264), waveform CSV")],
    patient: Annotated[str, typer.Option(help="Patient identifier (fødselsnummer, local ID)")],
    system: Annotated[str, typer.Option(help="Identifier system URI, if ambiguous")] = "",
    accession: Annotated[str, typer.Option(help="Accession number: files join that study")] = "",
    title: Annotated[str, typer.Option(help="Document title for PDFs")] = "",
    manufacturer: Annotated[str, typer.Option(help="Source device manufacturer")] = "",
    model: Annotated[str, typer.Option(help="Source device model")] = "",
    station: Annotated[str, typer.Option(help="Source device station name")] = "",
) -> None:
    """Turn files into DICOM objects for a registry/PAS patient and send them into the archive."""
    import tempfile

    from broker.dicomize.batch import Upload, build, resolve_patient
    from broker.dicomize.common import Device, DicomizeError
    from storage.archive import Archive

    s = _settings()
    archive = Archive(s, run_migrations=True)
    try:
        uploads = [Upload(f.name, f.read_bytes()) for f in files]
        pm = resolve_patient(archive, patient, system)
        objects = build(
            uploads,
            pm,
            uid_root=s.uid_root,
            accession=accession,
            title=title,
            device=Device(manufacturer, model, station),
        )
    except (DicomizeError, OSError) as e:
        console.print(f"[red]{e}[/red]")
        raise typer.Exit(2) from None
    finally:
        archive.close()
    with tempfile.TemporaryDirectory() as tmp:
        for i, ds in enumerate(objects):
            ds.save_as(Path(tmp) / f"{i:04d}.dcm", enforce_file_format=True)
        if not _send(Path(tmp), _display_host(s), s.dicom_port, s.ae_title, DICOMIZE_AE):
            raise typer.Exit(1)
    for f, ds in zip(files, objects, strict=True):
        print(f"{f}\t{ds.StudyInstanceUID}\t{ds.SeriesInstanceUID}\t{ds.SOPInstanceUID}")


@app.command()
def status(as_json: Annotated[bool, typer.Option("--json")] = False) -> None:
    """What the archive holds, what waits in the spool, and whether the server answers."""
    from storage.archive import Archive
    from storage.spool import pending_files
    from storage.stats import archive_counts

    s = _settings()
    archive = Archive(s, run_migrations=True)
    with archive.sessions() as session:
        counts = archive_counts(session)
    spool_files = len(pending_files(s.spool_dir)) if s.spool_dir.exists() else 0
    try:
        r = httpx.get(f"http://{_display_host(s)}:{s.http_port}/healthz", timeout=2)
        http = "up" if r.status_code == 200 else f"HTTP {r.status_code}"
    except httpx.HTTPError:
        http = "not running"
    out = {
        "archive": counts,
        "spool_files": spool_files,
        "server": http,
        "store": archive.store.name,
        "ae_title": s.ae_title,
        "dicom_port": s.dicom_port,
    }
    if as_json:
        print(json.dumps(out))
        return
    for k, v in out.items():
        print(f"{k:12} {v}")


@app.command()
def token(
    user: Annotated[str, typer.Option(help="Subject (user or system name)")],
    role: Annotated[str, typer.Option(help="Role claim")],
    ttl: Annotated[int, typer.Option(help="Seconds until expiry")] = 3600,
) -> None:
    """Print a bearer token signed with the local key."""
    from viewer.auth import issue_token, signing_key

    s = _settings()
    print(issue_token(signing_key(s.data_dir), user, role, ttl))


@app.command("admin-url")
def admin_url(
    user: Annotated[str, typer.Option(help="Who signs in (audited); default: cli:<login>")] = "",
    ttl: Annotated[int, typer.Option(help="Seconds the link and its session last")] = 3600,
    host: Annotated[str, typer.Option(help="Host name browsers reach the broker at")] = "",
    lang: Annotated[str, typer.Option(help="nb or en")] = "nb",
) -> None:
    """Print a sign-in link to the web admin console (a short-lived radiology-admin token)."""
    from viewer.admin import ADMIN_ROLE
    from viewer.auth import issue_token, signing_key

    s = _settings()
    tok = issue_token(signing_key(s.data_dir), user or _actor(), ADMIN_ROLE, ttl)
    print(f"http://{host or _display_host(s)}:{s.http_port}/admin/login?lang={lang}&token={tok}")


quarantine_app = typer.Typer(help="Objects and studies waiting for an admin to resolve.")
app.add_typer(quarantine_app, name="quarantine")


def _actor() -> str:
    import getpass

    return f"cli:{getpass.getuser()}"


@quarantine_app.command("list")
def quarantine_list(as_json: Annotated[bool, typer.Option("--json")] = False) -> None:
    """Studies of unconfirmed patients and unreadable objects, with the reason."""
    from storage import quarantine
    from storage.archive import Archive

    archive = Archive(_settings(), run_migrations=True)
    with archive.sessions() as session:
        found = quarantine.listing(session)
    if as_json:
        print(json.dumps(found, ensure_ascii=False))
        return
    for st in found["studies"]:
        print(
            f"study {st['study_uid']}  {st['study_date']}  {st['instances']} objects  "
            f"header ID {st['header_patient_id']!r}: {st['reason']}"
        )
    for ob in found["objects"]:
        print(f"object {ob['object_key']}  from {ob['source_ae']}: {ob['reason']}")
    if not found["studies"] and not found["objects"]:
        print("quarantine is empty")


@quarantine_app.command("assign")
def quarantine_assign(
    study_uid: str,
    patient: Annotated[str, typer.Option(help="An identifier of the registry patient")],
    system: Annotated[str, typer.Option(help="Its system URI, if ambiguous")] = "",
) -> None:
    """File a quarantined study under the right patient."""
    from storage import quarantine, registry
    from storage.archive import Archive
    from storage.demographics import Identifier

    archive = Archive(_settings(), run_migrations=True)
    with archive.sessions() as session, session.begin():
        target = registry.find(session, Identifier(system, patient))
        if target is None:
            console.print(f"[red]no patient {patient!r} in the registry[/red]")
            raise typer.Exit(1)
        try:
            quarantine.assign(session, study_uid, target, actor=_actor(), source="cli")
        except quarantine.QuarantineError as e:
            console.print(f"[red]{e}[/red]")
            raise typer.Exit(1) from None
    console.print(f"study {study_uid} filed under {target.patient_id}")


@quarantine_app.command("reject")
def quarantine_reject(study_uid: str) -> None:
    """Delete a quarantined study (objects and index rows); audited."""
    from storage import quarantine
    from storage.archive import Archive

    archive = Archive(_settings(), run_migrations=True)
    with archive.sessions() as session, session.begin():
        try:
            n = quarantine.reject(session, archive.store, study_uid, actor=_actor(), source="cli")
        except quarantine.QuarantineError as e:
            console.print(f"[red]{e}[/red]")
            raise typer.Exit(1) from None
    console.print(f"study {study_uid}: {n} objects deleted")


app.add_typer(research_app, name="research")  # broker/research_cli.py

# --- durable jobs, retention, legal holds, fixity (the running broker executes the jobs) -----

jobs_app = typer.Typer(help="Durable background jobs: retention sweeps, fixity checks, …")
app.add_typer(jobs_app, name="jobs")
retention_app = typer.Typer(help="Retention rules, what they would delete, and sweeps.")
app.add_typer(retention_app, name="retention")
JSON_OPT = Annotated[bool, typer.Option("--json", help="Machine-readable output")]
WAIT_OPT = Annotated[bool, typer.Option("--wait", help="Follow the job with a progress bar")]


def _archive() -> Any:
    from storage.archive import Archive

    return Archive(_settings(), run_migrations=True)


def _job_line(j: dict[str, Any]) -> str:
    progress = f"{j['done']}/{j['total']}" if j["total"] else str(j["done"])
    return (
        f"{j['id']:>5}  {j['kind']:<16} {j['state']:<10} {progress:>11}  "
        f"{(j['created_at'] or '')[:19]}  {j['created_by']}  {j['message']}"
    )


def _follow(job_id: int) -> dict[str, Any]:
    """Poll the job row with a progress bar until the job ends; returns its final state."""
    import time

    from storage import jobs

    archive = _archive()
    ended = ("succeeded", "failed", "cancelled")
    waited_queued = time.monotonic()
    with Progress(
        "[progress.description]{task.description}",
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        console=console,
    ) as bar:
        task = bar.add_task(f"job {job_id}", total=None)
        while True:
            with archive.sessions() as session:
                j = jobs.as_dict(jobs.get(session, job_id))
            bar.update(
                task,
                completed=j["done"],
                total=j["total"] or None,
                description=f"{j['kind']} #{job_id} {j['state']}: {j['message'][:60]}",
            )
            if j["state"] in ended:
                break
            if j["state"] != "queued":
                waited_queued = time.monotonic()
            elif time.monotonic() - waited_queued > 15:
                console.print("[yellow]still queued: is `pacsbroker serve` running?[/yellow]")
                waited_queued = float("inf")
            time.sleep(0.5)
    archive.close()
    colour = "green" if j["state"] == "succeeded" else "red"
    console.print(f"job {job_id} [{colour}]{j['state']}[/{colour}]: {j['message']}")
    return j


def _queued(job: Any, wait: bool, as_json: bool) -> dict[str, Any]:
    from storage import jobs

    j = jobs.as_dict(job)
    if wait:
        j = _follow(job.id)
    elif not as_json:
        console.print(f"queued job {job.id} ({job.kind}): `pacsbroker jobs show {job.id} --wait`")
    if as_json:
        print(json.dumps(j))
    if j["state"] in ("failed", "cancelled"):
        raise typer.Exit(1)
    return j


@jobs_app.command("list")
def jobs_list(
    state: Annotated[str, typer.Option(help="queued, running, succeeded, failed, cancelled")] = "",
    kind: Annotated[str, typer.Option(help="e.g. retention-sweep, fixity")] = "",
    limit: int = 50,
    as_json: JSON_OPT = False,
) -> None:
    """Jobs, newest first, with their progress."""
    from storage import jobs

    archive = _archive()
    with archive.sessions() as session:
        found = [
            jobs.as_dict(j) for j in jobs.listing(session, state=state, kind=kind, limit=limit)
        ]
    if as_json:
        print(json.dumps(found))
        return
    for j in found:
        print(_job_line(j))
    if not found:
        print("no jobs")


@jobs_app.command("show")
def jobs_show(job_id: int, wait: WAIT_OPT = False) -> None:
    """One job, with its result; --wait follows it to the end."""
    from storage import jobs

    if wait:
        j = _follow(job_id)
    else:
        archive = _archive()
        with archive.sessions() as session:
            try:
                j = jobs.as_dict(jobs.get(session, job_id))
            except jobs.JobError as e:
                console.print(f"[red]{e}[/red]")
                raise typer.Exit(1) from None
    print(json.dumps(j, indent=2, ensure_ascii=False))


def _change_job(job_id: int, change: Any) -> None:
    from storage import jobs

    archive = _archive()
    with archive.sessions() as session, session.begin():
        try:
            j = jobs.as_dict(change(session, job_id, by=_actor()))
        except jobs.JobError as e:
            console.print(f"[red]{e}[/red]")
            raise typer.Exit(1) from None
    print(_job_line(j))


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

    archive = _archive()
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
    archive = _archive()
    with archive.sessions() as session, session.begin():
        try:
            rule = retention.save_rule(session, spec, actor=_actor(), source="cli")
        except retention.RetentionError as e:
            console.print(f"[red]{e}[/red]")
            raise typer.Exit(1) from None
    print(rule.id)


@retention_app.command("remove")
def retention_remove(rule_id: int) -> None:
    """Delete a retention rule."""
    from storage import retention

    archive = _archive()
    with archive.sessions() as session, session.begin():
        try:
            retention.delete_rule(session, rule_id, actor=_actor(), source="cli")
        except retention.RetentionError as e:
            console.print(f"[red]{e}[/red]")
            raise typer.Exit(1) from None
    console.print(f"rule {rule_id} deleted")


@retention_app.command("dry-run")
def retention_dry_run(as_json: JSON_OPT = False) -> None:
    """What a sweep would delete now, per study, and the space it would free."""
    from storage import retention

    archive = _archive()
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

    archive = _archive()
    with archive.sessions() as session, session.begin():
        job = retention.start_sweep(session, created_by=_actor())
    _queued(job, wait, as_json)


@app.command()
def hold(
    study_uid: str,
    reason: Annotated[str, typer.Option(help="Why the study must be kept (case, request)")],
) -> None:
    """Put a study under legal hold: no retention rule or rejection deletes it."""
    from storage import holds

    archive = _archive()
    with archive.sessions() as session, session.begin():
        try:
            holds.hold(session, study_uid, reason, actor=_actor(), source="cli")
        except holds.HoldError as e:
            console.print(f"[red]{e}[/red]")
            raise typer.Exit(1) from None
    console.print(f"study {study_uid} is under legal hold")


@app.command()
def unhold(study_uid: str) -> None:
    """Clear a study's legal hold."""
    from storage import holds

    archive = _archive()
    with archive.sessions() as session, session.begin():
        try:
            holds.release(session, study_uid, actor=_actor(), source="cli")
        except holds.HoldError as e:
            console.print(f"[red]{e}[/red]")
            raise typer.Exit(1) from None
    console.print(f"study {study_uid}: legal hold cleared")


@app.command("fixity")
def fixity_cmd(
    sample: Annotated[
        float | None, typer.Option(help="Objects to re-hash: a count, or a fraction ≤ 1")
    ] = None,
    wait: WAIT_OPT = False,
    as_json: JSON_OPT = False,
) -> None:
    """Queue a fixity check; with --wait, exit 1 if any object fails it."""
    from storage import fixity

    archive = _archive()
    with archive.sessions() as session, session.begin():
        job = fixity.start(session, sample or archive.settings.fixity_sample, created_by=_actor())
    j = _queued(job, wait, as_json)
    if wait and not as_json:
        for m in j["result"].get("mismatches", []):
            print(f"{m['sop_uid']}  {m['object_key']}  {m['problem']}")
    if j["result"].get("failed"):
        raise typer.Exit(1)


# --- near/far tiers and prefetch (docs/tiers.md) -------------------------------------------

prefetch_app = typer.Typer(help="Prefetch rules: which priors to bring near, and when.")
app.add_typer(prefetch_app, name="prefetch-rules")


@app.command()
def prefetch(
    patient: Annotated[str, typer.Option(help="Every study of this patient")] = "",
    study: Annotated[list[str] | None, typer.Option(help="Or these studies (repeatable)")] = None,
    wait: WAIT_OPT = False,
    as_json: JSON_OPT = False,
) -> None:
    """Bring a patient's studies, or the named studies, into the near tier now."""
    from sqlalchemy import select

    from storage import prefetch as pf
    from storage import registry
    from storage.demographics import Identifier
    from storage.models import Study

    archive = _archive()
    if archive.tiers is None:
        console.print("[red]no near tier is configured (NEAR_DIR or NEAR_S3_ENDPOINT)[/red]")
        raise typer.Exit(2)
    with archive.sessions() as session, session.begin():
        uids = list(study or [])
        if patient:
            p = registry.find(session, Identifier("", patient))
            if p is None:
                console.print(f"[red]no patient {patient!r} in the registry[/red]")
                raise typer.Exit(2)
            uids += session.scalars(select(Study.study_uid).where(Study.patient_fk == p.id))
        if not uids:
            console.print("[red]name --patient or --study[/red]")
            raise typer.Exit(2)
        job = pf.start_manual(session, uids, created_by=_actor())
    _queued(job, wait, as_json)


@prefetch_app.command("list")
def prefetch_rules_list(as_json: JSON_OPT = False) -> None:
    from storage import prefetch as pf

    with _archive().sessions() as session:
        rules = pf.list_rules(session)
    if as_json:
        print(json.dumps([r.model_dump() for r in rules]))
        return
    for r in rules:
        print(
            f"{r.id:>4}  {r.name:<24} priors {','.join(r.modalities) or 'any'} "
            f"{r.body_part or ''} ≤{r.years}y max {r.max_studies}  on "
            f"{'order' if r.on_order else ''}{' admission' if r.on_admission else ''}"
            f"{'' if r.enabled else '  (disabled)'}"
        )


@prefetch_app.command("add")
def prefetch_rules_add(
    name: str,
    modality: Annotated[
        list[str] | None, typer.Option(help="Priors' modality (repeatable)")
    ] = None,
    body_part: Annotated[str, typer.Option()] = "",
    years: Annotated[int, typer.Option()] = 5,
    max_studies: Annotated[int, typer.Option()] = 3,
    on_admission: Annotated[bool, typer.Option(help="Also on HL7 A01 admissions")] = False,
    order_modality: Annotated[
        list[str] | None, typer.Option(help="Only orders of this modality (repeatable)")
    ] = None,
) -> None:
    """Add a rule: an order (or admission) for a patient brings these priors near."""
    from pydantic import ValidationError

    from storage import prefetch as pf

    try:
        spec = pf.RuleSpec(
            name=name,
            modalities=modality or [],
            body_part=body_part,
            years=years,
            max_studies=max_studies,
            on_admission=on_admission,
            order_modalities=order_modality or [],
        )
    except ValidationError as e:
        console.print(f"[red]{e.errors()[0]['msg']}[/red]")
        raise typer.Exit(2) from None
    with _archive().sessions() as session, session.begin():
        rule = pf.save_rule(session, spec)
    console.print(f"prefetch rule {rule.id} added")


@prefetch_app.command("delete")
def prefetch_rules_delete(rule_id: int) -> None:
    from storage import prefetch as pf

    with _archive().sessions() as session, session.begin():
        if not pf.delete_rule(session, rule_id):
            console.print(f"[red]no prefetch rule {rule_id}[/red]")
            raise typer.Exit(1)
    console.print(f"prefetch rule {rule_id} deleted")


@app.command("storage")
def storage_cmd(as_json: JSON_OPT = False) -> None:
    """What the archive holds per modality, and per tier with the near hit ratio."""
    from storage import tiers
    from storage.prefetch import usage_by_modality

    archive = _archive()
    with archive.sessions() as session:
        usage = usage_by_modality(session)
        t = tiers.report(session, archive.tiers.budget) if archive.tiers else None
    if as_json:
        print(json.dumps({"by_modality": usage, "tiers": t}))
        return
    for m in usage:
        print(
            f"{m['modality'] or '-':<6} {m['studies']:>7} studies {m['instances']:>9} "
            f"instances {m['bytes'] / 2**20:>12.1f} MiB"
        )
    if t is None:
        print("one tier (no near tier configured)")
    else:
        near = t["near"]
        print(
            f"near: {near['objects']} objects, {near['bytes'] / 2**20:.1f} of "
            f"{near['budget_bytes'] / 2**20:.1f} MiB; hit ratio {t['hit_ratio']}"
        )


@app.command()
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
    wait: WAIT_OPT = False,
    as_json: JSON_OPT = False,
) -> None:
    """Migrate a legacy PACS into the archive (the running broker does it), or show a report;
    with --wait, exit 1 if any study has a discrepancy."""
    from broker.migrate import parse_source
    from storage import jobs, migration, migration_report

    archive = _archive()
    if report_job is not None:
        with archive.sessions() as session:
            try:
                rep = migration_report.report(session, report_job, instances=as_json)
            except jobs.JobError as e:
                console.print(f"[red]{e}[/red]")
                raise typer.Exit(1) from None
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
            job = migration.start(session, params, archive.settings, created_by=_actor())
    except ValueError as e:  # also pydantic's ValidationError and MigrationError
        console.print(f"[red]{e}[/red]")
        raise typer.Exit(2) from None
    j = _queued(job, wait, as_json)
    if wait and not as_json:
        console.print(f"report: `pacsbroker migrate --report {job.id}`")
    if wait and (j["result"].get("discrepancy") or j["result"].get("failed")):
        raise typer.Exit(1)


def main() -> None:
    app(sys.argv[1:])
