"""`pacsbroker peers` and `pacsbroker audit`: the DICOM peer table (with a C-ECHO to each on
request) and the audit log, as the admin console shows them."""

from __future__ import annotations

import json
import socket
import time
from typing import Annotated

import typer

from broker.cli_common import JSON_OPT, Commands, actor, console, open_archive, refused, settings
from storage.settings import Peer

commands = Commands()


def echo(our_ae: str, peer: Peer, timeout: float = 5.0) -> str:
    """C-ECHO the peer: 'ok (12 ms)' or what went wrong."""
    from pynetdicom import AE
    from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

    ae = AE(our_ae)
    ae.add_requested_context(Verification)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = timeout
    start = time.perf_counter()
    try:
        assoc = ae.associate(peer.host, peer.port, ae_title=peer.ae)
    except OSError as e:
        return f"unreachable: {e}"
    if not assoc.is_established:
        if assoc.is_rejected:
            return f"association rejected (does {peer.ae} know {our_ae}?)"
        return f"no answer at {peer.host}:{peer.port} (refused, or nothing listening)"
    try:
        status = assoc.send_c_echo()
    finally:
        assoc.release()
    if not status or int(status.Status) != 0:
        return f"C-ECHO answered {status.Status if status else 'nothing'}"
    return f"ok ({(time.perf_counter() - start) * 1000:.0f} ms)"


@commands.command("peers")
def peers(
    with_echo: Annotated[
        bool, typer.Option("--echo", help="C-ECHO every peer and show whether it answers")
    ] = False,
    as_json: JSON_OPT = False,
) -> None:
    """The DICOM peers (AE titles) we know and what each may do; exit 1 if an echo fails."""
    s = settings()
    rows = [
        {**p.model_dump(), **({"echo": echo(s.ae_title, p)} if with_echo else {})} for p in s.peers
    ]
    if as_json:
        print(
            json.dumps(
                {
                    "ae_title": s.ae_title,
                    "dicom_port": s.dicom_port,
                    "unknown_aes_refused": not s.open_to_loopback,
                    "peers": rows,
                }
            )
        )
    else:
        refusal = (
            "unknown AE titles refused"
            if not s.open_to_loopback
            else "unknown AE titles accepted from loopback"
        )
        print(f"{s.ae_title} on {socket.gethostname()}:{s.dicom_port}; {refusal}")
        for r in rows:
            may = ",".join(k for k in ("store", "query", "retrieve") if r[k]) or "nothing"
            line = f"{r['ae']:<16} {r['host']}:{r['port']:<6} may {may}"
            print(f"{line}  {r['echo']}" if with_echo else line)
        if not rows:
            print("no peers configured (PACSBROKER_PEERS)")
    if with_echo and any(not r["echo"].startswith("ok") for r in rows):
        raise typer.Exit(1)


@commands.command("audit")
def audit(
    patient: Annotated[str, typer.Option(help="Patient ID; '*' at the end for a prefix")] = "",
    user: Annotated[str, typer.Option(help="Who acted (e.g. 'cli:*', 'dr.hansen')")] = "",
    action: Annotated[str, typer.Option(help="What was done (e.g. 'dicom.*', 'epr-read')")] = "",
    since: Annotated[str, typer.Option(help="ISO date or date-time, UTC if no zone")] = "",
    limit: Annotated[int, typer.Option(min=1, max=10000)] = 50,
    as_json: JSON_OPT = False,
) -> None:
    """Audit events, newest first: who did what to whose data, when and from where. Reading the
    log is itself recorded."""
    from storage import audit_log

    archive = open_archive()
    filters = audit_log.Filters(patient, user, action, since)
    with refused(ValueError, code=2), archive.sessions() as session, session.begin():
        events, more = audit_log.read(
            session,
            filters,
            reader=actor(),
            role="radiology-admin",
            source=f"cli@{socket.gethostname()}",
            limit=limit,
        )
        rows = [audit_log.as_dict(e) for e in events]
    if as_json:
        print(json.dumps({"events": rows, "more": more}))
        return
    for r in rows:
        print(
            f"{(r['at'] or '')[:19]}  {r['actor']:<20} {r['source']:<18} {r['action']:<18} "
            f"{r['patient_id']:<12} {r['outcome']:<8} {r['detail']}"
        )
    if more:
        console.print(f"[dim]older events follow; --limit {limit * 2} or --since to see more[/dim]")
    elif not rows:
        console.print("no audit events match")


def register(app: typer.Typer) -> None:
    commands.register(app)
