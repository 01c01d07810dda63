"""The `pacsbroker` command."""

from __future__ import annotations

import json
import signal
import sys
from pathlib import Path
from typing import Annotated, Any

import httpx
import typer

from broker import admin_cli, jobs_cli, migrate_cli, tiers_cli
from broker.cli_common import actor as _actor
from broker.cli_common import console, progress, refused
from broker.cli_common import display_host as _display_host
from broker.cli_common import settings as _settings
from broker.logs import setup_logging
from broker.research_cli import research_app

# The calling AE title of `pacsbroker dicomize`; with PEERS set, it must be a peer that may store.
DICOMIZE_AE = "PB-DICOMIZE"
app = typer.Typer(help="PACS broker and vendor-neutral image archive.", no_args_is_help=True)


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
    with progress() as bar:
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
    with refused(ConnectionError):
        sent = _send(
            directory, host or _display_host(s), port or s.dicom_port, called or s.ae_title, calling
        )
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

    from broker.dicomize.batch import Upload
    from broker.dicomize.common import Device, DicomizeError
    from broker.dicomize.submit import Request, prepare
    from storage.archive import Archive

    s = _settings()
    archive = Archive(s, run_migrations=True)
    req = Request(patient, system, accession, title, Device(manufacturer, model, station))
    try:
        with refused(DicomizeError, OSError, code=2):
            prepared = prepare(archive, [Upload(f.name, f.read_bytes()) for f in files], req)
    finally:
        archive.close()
    with tempfile.TemporaryDirectory() as tmp:
        for i, (_, payload) in enumerate(prepared):
            (Path(tmp) / f"{i:04d}.dcm").write_bytes(payload)
        if not _send(Path(tmp), _display_host(s), s.dicom_port, s.ae_title, DICOMIZE_AE):
            raise typer.Exit(1)
    for f, (ds, _) in zip(files, prepared, strict=True):
        print(f"{f}\t{ds.StudyInstanceUID}\t{ds.SeriesInstanceUID}\t{ds.SOPInstanceUID}")


def _not_ingested(session: Any, uids: list[str]) -> int:
    """How many spooled records are neither indexed nor quarantined yet. A live broker keeps
    ingested records until their segment is sealed, so counting records would overstate it."""
    from sqlalchemy import select

    from storage.catalog import existing
    from storage.models import Quarantined

    done: set[str] = set()
    for i in range(0, len(uids), 500):
        chunk = list(set(uids[i : i + 500]))
        done.update(existing(session, chunk))
        done.update(
            session.scalars(select(Quarantined.sop_uid).where(Quarantined.sop_uid.in_(chunk)))
        )
    return sum(uid not in done for uid in uids)


@app.command()
def status(as_json: Annotated[bool, typer.Option("--json")] = False) -> None:
    """What the archive holds, what waits in the spool, and whether the server answers."""
    from storage.archive import Archive
    from storage.spool import spooled_sop_uids
    from storage.stats import archive_counts

    s = _settings()
    archive = Archive(s, run_migrations=True)
    with archive.sessions() as session:
        counts = archive_counts(session)
        backlog = _not_ingested(session, spooled_sop_uids(s.spool_dir))
    try:
        r = httpx.get(f"http://{_display_host(s)}:{s.http_port}/healthz", timeout=2)
        http = "up" if r.status_code == 200 else f"HTTP {r.status_code}"
    except httpx.HTTPError:
        http = "not running"
    out = {
        "archive": counts,
        "spool_backlog": backlog,
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


@app.command()
def link(
    user: Annotated[str, typer.Option(help="The clinician who will open the link")],
    patient: Annotated[str, typer.Option(help="Patient ID: fødselsnummer, D-nummer or local ID")],
    study: Annotated[str, typer.Option(help="Limit the link to this Study Instance UID")] = "",
    system: Annotated[str, typer.Option(help="Identifier system URI, if the ID is ambiguous")] = "",
    ttl: Annotated[int, typer.Option(help="Seconds the link opens the page (10 to 3600)")] = 300,
    host: Annotated[str, typer.Option(help="Host name browsers reach the broker at")] = "",
) -> None:
    """Print a signed, short-lived EPR link for a clinician to one patient (or one study)."""
    from viewer.auth import issue_token, signing_key
    from viewer.epr import LINK_ISSUER_ROLE

    s = _settings()
    # issued by the running broker, as for the EPR: same checks, same audit event
    tok = issue_token(signing_key(s.data_dir), _actor(), LINK_ISSUER_ROLE, 60)
    base = f"http://{_display_host(s)}:{s.http_port}"
    body = {"clinician": user, "patient_id": patient, "system": system, "ttl_seconds": ttl}
    try:
        r = httpx.post(
            f"{base}/epj/v1/links",
            json={**body, "study_uid": study or None},
            # the broker builds the link from the host it was asked at
            headers={"Authorization": f"Bearer {tok}"}
            | ({"Host": f"{host}:{s.http_port}"} if host else {}),
            timeout=30,
        )
    except httpx.HTTPError as e:
        console.print(f"[red]the broker does not answer at {base} ({e}); is it running?[/red]")
        raise typer.Exit(1) from None
    if r.status_code != 200:
        is_json = r.headers.get("content-type") == "application/json"
        detail = r.json().get("detail") if is_json else r.text
        console.print(f"[red]no link ({r.status_code}): {detail}[/red]")
        raise typer.Exit(1)
    console.print(f"valid until {r.json()['expires_at']}")
    print(r.json()["url"])


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
    patient: Annotated[str, typer.Option(help="A registry or PAS identifier of the patient")],
    system: Annotated[str, typer.Option(help="Its system URI, if ambiguous")] = "",
) -> None:
    """File a quarantined study under the right patient (one only PAS knows is registered)."""
    from broker.pas import pdqm, reconcile
    from storage import quarantine
    from storage.archive import Archive
    from storage.demographics import Identifier

    s = _settings()
    archive = Archive(s, run_migrations=True)
    with archive.sessions() as session, session.begin(), refused(quarantine.QuarantineError):
        target = reconcile.assignable(session, pdqm.client(s), Identifier(system, patient))
        if target is None:
            console.print(f"[red]no patient {patient!r} in the registry or PAS[/red]")
            raise typer.Exit(1)
        quarantine.assign(session, study_uid, target, actor=_actor(), source="cli")
        shown = target.patient_id
    console.print(f"study {study_uid} filed under {shown}")


@quarantine_app.command("reject")
def quarantine_reject(study_uid: str) -> None:
    """Delete a quarantined study (objects and index rows); audited."""
    from storage import quarantine, removal
    from storage.archive import Archive

    archive = Archive(_settings(), run_migrations=True)
    with archive.sessions() as session, session.begin(), refused(quarantine.QuarantineError):
        n = quarantine.reject(session, study_uid, actor=_actor(), source="cli")
    removal.purge(archive.sessions, archive.store)
    console.print(f"study {study_uid}: {n} objects deleted")


app.add_typer(research_app, name="research")  # broker/research_cli.py

jobs_cli.register(app)
tiers_cli.register(app)
migrate_cli.register(app)
admin_cli.register(app)


def main() -> None:
    app(sys.argv[1:])
