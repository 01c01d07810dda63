"""`pacsbroker serve`: spool replay, ingest, receiver processes and the HTTP app, composed."""

from __future__ import annotations

import logging
import multiprocessing as mp
import threading
import time
from functools import cached_property
from typing import Any

import uvicorn

from broker.commitment import queue_unreported
from broker.dimse.commitment import REPORT
from broker.dimse.server import receiver_main
from broker.heap import settle
from broker.hotfolder import HotFolders
from broker.ingest import IngestWorker
from broker.jobs import JobRunner, schedules
from broker.pas import pdqm
from broker.pas.adt import AdtApplier, HeldConnections
from broker.pas.listener import MllpListener, route
from broker.pas.orders import OrderApplier
from broker.pas.reconcile import Reconciler
from storage.archive import Archive
from storage.intake import Intake
from storage.settings import Settings
from storage.spool import RecordRef, SpoolWriter
from viewer.app import create_app

log = logging.getLogger("pacsbroker.serve")
# a PAS sends over one or two connections; the index pool (at least 15) keeps room for the rest
HL7_HELD_CONNECTIONS = 4


class Runtime:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        self.archive = Archive(settings, run_migrations=True)
        self.pas = pdqm.client(settings)
        self.reconciler = Reconciler(
            self.pas,
            allow_synthetic=settings.allow_synthetic_ids,
            retry_interval=settings.pas_retry_interval,
        )
        self.ingest = IngestWorker(
            self.archive,
            self.reconciler,
            batch=settings.ingest_batch,
            threads=settings.ingest_threads,
        )
        # the first few PAS connections keep an index connection; the pool serves the rest
        self.held = HeldConnections(self.archive.engine, limit=HL7_HELD_CONNECTIONS)
        self.adt = AdtApplier(
            self.archive.sessions,
            allow_synthetic=settings.allow_synthetic_ids,
            app=settings.ae_title,
            held=self.held,
        )
        self.orders = OrderApplier(
            self.archive.sessions,
            allow_synthetic=settings.allow_synthetic_ids,
            app=settings.ae_title,
            uid_root=settings.uid_root,
            held=self.held,
        )
        self.jobs = JobRunner(
            self.archive,
            workers=settings.job_workers,
            lease=settings.job_lease,
            plan=schedules(settings),
            reserved=[REPORT],
        )
        self.hl7: MllpListener | None = None
        self.hotfolders: HotFolders | None = None
        self._stopping = threading.Event()
        self._forwarder: threading.Thread | None = None
        self.ctx = mp.get_context("spawn")
        self.notify: Any = self.ctx.Queue()
        self.receivers: list[Any] = []
        self.started = time.time()

    def _forward(self) -> None:
        while True:
            msg = self.notify.get()
            if msg is None:
                return
            if msg[0] == "rec":
                self.ingest.queue.put(RecordRef(msg[1], msg[2], msg[3]))
            else:
                self.ingest.queue.put(tuple(msg))

    def start_dicom(self) -> None:
        replayed = self.ingest.replay(self.settings.spool_dir)
        self._forwarder = threading.Thread(target=self._forward, name="spool-notify", daemon=True)
        self._forwarder.start()
        threading.Thread(target=self.ingest.run, name="ingest", daemon=True).start()
        payload = self.settings.model_dump_json()
        for i in range(self.settings.receiver_count()):
            ready = self.ctx.Event()
            p = self.ctx.Process(
                target=receiver_main,
                args=(payload, i, self.notify, ready),
                name=f"receiver-{i}",
                daemon=True,
            )
            p.start()
            if not ready.wait(60):
                raise RuntimeError(f"receiver {i} did not start (see its log)")
            self.receivers.append(p)
        log.info("spool replay queued %d records; %d receivers up", replayed, len(self.receivers))

    def start_pas(self) -> None:
        """The HL7 listener, and a loop that asks PAS about patients filed while it was down."""
        s = self.settings
        if s.hl7_port:
            # ADT also answers message types nobody handles, with an AR naming the type
            handle = route(
                {"ADT": self.adt.handle, "ORM": self.orders.handle, "OMG": self.orders.handle},
                fallback=self.adt.handle,
            )
            self.hl7 = MllpListener(s.bind_host, s.hl7_port, handle, on_close=self.held.release)
            self.hl7.start()
            log.info("HL7 MLLP listener on %s:%d", s.bind_host, s.hl7_port)
        if self.pas is not None:
            threading.Thread(target=self._reverify, name="pas-reverify", daemon=True).start()

    def start_hotfolders(self) -> None:
        """Device drop folders, filed through the same spool as STOW-RS and uploads."""
        s = self.settings
        if not s.hotfolders:
            return
        self.hotfolders = HotFolders(self.archive, self.intake, s.hotfolders)
        threading.Thread(
            target=self.hotfolders.run, args=(s.hotfolder_interval,), name="hotfolders", daemon=True
        ).start()
        log.info("watching %d hot folders", len(s.hotfolders))

    def _reverify(self) -> None:
        while not self._stopping.wait(self.settings.pas_retry_interval):
            try:
                n = self.reconciler.reverify(self.archive.sessions)
                if n:
                    log.info("PAS reconciliation settled %d unverified patients", n)
            except Exception:
                log.exception("PAS reconciliation round failed")

    def status(self) -> dict[str, Any]:
        return {
            "ae_title": self.settings.ae_title,
            "dicom_port": self.settings.dicom_port,
            "receivers_alive": sum(p.is_alive() for p in self.receivers),
            "ingest": {
                **self.ingest.stats,
                "backlog": self.ingest.queue.qsize(),
                "last_error": self.ingest.last_error,
            },
            "store": self.archive.store.name,
            "uptime_s": int(time.time() - self.started),
        }

    def start_jobs(self) -> None:
        """Durable jobs (retention sweeps, fixity checks, commitment reports, …) and schedules."""
        queued = queue_unreported(self.archive)
        if queued:
            log.info("storage commitment: queued reports for %d pending requests", queued)
        self.jobs.start()

    def stop(self) -> None:
        self._stopping.set()
        self.jobs.stop()
        if self.hotfolders is not None:
            self.hotfolders.stop()
        if self.hl7 is not None:
            self.hl7.stop()
        for p in self.receivers:
            p.terminate()
        for p in self.receivers:
            p.join(10)
        deadline = time.time() + 10
        while self.ingest.queue.qsize() and time.time() < deadline:
            time.sleep(0.1)
        self.ingest.stop()
        self.notify.put(None)
        if self._forwarder is not None:
            self._forwarder.join(5)

    @cached_property
    def intake(self) -> Intake:
        """Spool for objects that arrive other than by C-STORE (STOW-RS, uploads, hot
        folders), feeding the same ingest queue."""
        queue = self.ingest.queue
        writer = SpoolWriter(
            self.settings.spool_dir / "http",
            self.settings.spool_segment_mb << 20,
            on_sealed=lambda path, count: queue.put(("sealed", path, count)),
        )
        return Intake(writer, queue.put)

    def serve_http(self) -> None:
        app = create_app(self.archive, self.status, self.intake)
        config = uvicorn.Config(
            app,
            host=self.settings.bind_host,
            port=self.settings.http_port,
            log_level="warning",
            access_log=False,
        )
        settle()
        uvicorn.Server(config).run()
