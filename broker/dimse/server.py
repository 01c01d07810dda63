"""A receiver process: one pynetdicom AE on the shared DICOM port (SO_REUSEPORT)."""

from __future__ import annotations

import logging
import os
import signal
import socket
import socketserver
import threading
import time
from multiprocessing.synchronize import Event as MpEvent
from typing import Any

from pynetdicom import AE, _config, evt
from pynetdicom.events import Event
from pynetdicom.transport import ThreadedAssociationServer
from sqlalchemy.orm import configure_mappers

from broker.commitment import report_on_association
from broker.dimse import brisk, verbatim
from broker.dimse.access import AccessPolicy, Action
from broker.dimse.brisk import BriskRequestHandler, SharedContexts
from broker.dimse.commitment import CommitmentRequestHandler
from broker.dimse.contexts import MODALITY_WORKLIST_FIND, scp_contexts
from broker.dimse.find import FindHandler
from broker.dimse.mpps import MppsHandler
from broker.dimse.retrieve import RetrieveHandler
from broker.dimse.store import NOT_AUTHORISED, StoreHandler
from broker.dimse.worklist import WorklistHandler
from broker.heap import settle
from broker.logs import setup_logging
from storage.archive import Archive
from storage.audit import AuditTrail
from storage.settings import Settings
from storage.spool import RecordRef, SpoolWriter

log = logging.getLogger("pacsbroker.dimse")

# Any storage SOP class, including private ones, is archived as received.
_config.UNRESTRICTED_STORAGE_SERVICE = True
# pynetdicom formats every C-FIND response identifier for its debug log before asking whether
# debug is on; its logger is at WARNING (broker/logs.py), so that was a fifth of each answer.
_config.LOG_RESPONSE_IDENTIFIERS = False


class ReusePortServer(ThreadedAssociationServer):
    """Several receiver processes accept on one port; the kernel spreads the connections."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs["request_handler"] = BriskRequestHandler
        super().__init__(*args, **kwargs)
        self.contexts = SharedContexts(self.contexts)

    def server_bind(self) -> None:
        assert self.socket is not None
        self.socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        self.socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        super().server_bind()

    def service_actions(self) -> None:
        """Skip pynetdicom's gc.collect() every 60th loop: a full collection of this heap holds
        the GIL for 25-40 ms, stalling every association of the process; the cycles that ended
        associations leave are freed by the ordinary generational collector."""


def _echo(policy: AccessPolicy) -> Any:
    def handle(event: Event) -> int:
        a = event.assoc.requestor
        return (
            0x0000 if policy.decide(a.ae_title, a.address, Action.ECHO).allowed else NOT_AUTHORISED
        )

    return handle


def _find(policy: AccessPolicy, archive: Archive, trail: AuditTrail) -> Any:
    """One C-FIND event for every model: the worklist has its own handler."""
    query, worklist = FindHandler(policy, archive, trail), WorklistHandler(policy, archive)

    def handle(event: Event) -> Any:
        if event.context.abstract_syntax == MODALITY_WORKLIST_FIND:
            return worklist(event)
        return query(event)

    return handle


def _log_assoc(event: Event) -> None:
    a = event.assoc.requestor
    log.info(
        "association %s from %s@%s:%s",
        event.event.name.split("_")[-1].lower(),
        a.ae_title,
        a.address,
        a.port,
    )


def build_ae(settings: Settings, policy: AccessPolicy) -> AE:
    ae = AE(settings.ae_title)
    ae.maximum_pdu_size = settings.max_pdu
    ae.network_timeout = settings.network_timeout
    ae.acse_timeout = 30
    ae.dimse_timeout = settings.network_timeout
    ae.maximum_associations = 64
    ae.require_calling_aet = policy.required_calling_aets()
    ae.supported_contexts = scp_contexts()
    return ae


def _exit_with_parent(parent: int) -> None:
    """A receiver must not outlive the broker: it would keep taking stores nobody ingests."""
    while os.getppid() == parent:
        time.sleep(0.5)
    os._exit(1)


def receiver_main(settings_json: str, index: int, notify: Any, ready: MpEvent) -> None:
    """Entry point of one receiver process (started with the spawn method)."""
    settings = Settings.model_validate_json(settings_json)
    setup_logging(settings.log_level, f"receiver-{index}")
    archive = Archive(settings)
    # SQLAlchemy configures its mappers on first use: ~40 ms that the first C-FIND would wait
    configure_mappers()
    trail = AuditTrail(archive.sessions)
    policy = AccessPolicy(settings)

    def on_sealed(path: str, count: int) -> None:
        notify.put(("sealed", path, count))

    def on_record(ref: RecordRef) -> None:
        notify.put(("rec", ref.path, ref.offset, ref.length))

    writer = SpoolWriter(
        settings.spool_dir / f"r{index}", settings.spool_segment_mb << 20, on_sealed=on_sealed
    )
    mpps = MppsHandler(policy, archive)
    # pynetdicom types event ids loosely; its own examples pass plain tuples.
    handlers: list[Any] = [
        (evt.EVT_C_ECHO, _echo(policy)),
        (evt.EVT_C_STORE, StoreHandler(policy, writer, on_record)),
        (evt.EVT_C_FIND, _find(policy, archive, trail)),
        (evt.EVT_C_MOVE, RetrieveHandler(policy, archive, move=True)),
        (evt.EVT_C_GET, RetrieveHandler(policy, archive, move=False)),
        (
            evt.EVT_N_ACTION,
            CommitmentRequestHandler(
                policy, archive, lambda assoc, job: report_on_association(archive, assoc, job)
            ),
        ),
        (evt.EVT_N_CREATE, mpps.create),
        (evt.EVT_N_SET, mpps.set),
        (evt.EVT_REQUESTED, policy.screen_association),
        (evt.EVT_ACCEPTED, _log_assoc),
        (evt.EVT_REJECTED, _log_assoc),
        (evt.EVT_ABORTED, _log_assoc),
    ]
    ae = build_ae(settings, policy)
    server = ae.make_server(
        (settings.bind_host, settings.dicom_port),
        evt_handlers=handlers,
        server_class=ReusePortServer,
    )

    def stop(_sig: int, _frame: Any) -> None:
        # shutdown() waits for serve_forever(), which this (main) thread is running; only the
        # loop is stopped here (pynetdicom's own shutdown() also closes, done in `finally`).
        threading.Thread(
            target=socketserver.BaseServer.shutdown, args=(server,), daemon=True
        ).start()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    threading.Thread(target=_exit_with_parent, args=(os.getppid(),), daemon=True).start()
    brisk.install()
    verbatim.install()
    settle()
    ready.set()
    try:
        server.serve_forever()
    finally:
        server.server_close()
        writer.close()
        trail.close()
        archive.close()
