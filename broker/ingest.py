"""Ingest worker: spooled records → archive (SHA-256) → index (one transaction per batch)."""

from __future__ import annotations

import datetime as dt
import logging
import os
import queue
import threading
import time
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from broker.pas.reconcile import Reconciler
from storage import findings, spool
from storage.archive import Archive, object_key, sha256_of
from storage.catalog import Archived, Outcome, file_instances, quarantine
from storage.dicomheader import InvalidObject, parse
from storage.objects import ObjectStoreError

log = logging.getLogger("pacsbroker.ingest")

# A batch holds its payloads in memory until archived and indexed; large images would
# otherwise make 64-object batches cost hundreds of MB.
BATCH_BYTES = 16 << 20


@dataclass
class _Item:
    rec: spool.Record
    sha: str = ""
    key: str = ""
    archived: Archived | None = None
    error: str = ""


class SpoolTracker:
    """Counts finished records per spool file and deletes a file once it is sealed and done."""

    def __init__(self) -> None:
        self._done: dict[str, int] = defaultdict(int)
        self._sealed: dict[str, int] = {}
        self._lock = threading.Lock()

    def sealed(self, path: str, count: int) -> None:
        with self._lock:
            self._sealed[path] = count
            self._maybe_delete(path)

    def done(self, path: str) -> None:
        with self._lock:
            self._done[path] += 1
            self._maybe_delete(path)

    def _maybe_delete(self, path: str) -> None:
        total = self._sealed.get(path)
        if total is not None and self._done[path] >= total:
            Path(path).unlink(missing_ok=True)
            self._sealed.pop(path, None)
            self._done.pop(path, None)


class IngestWorker:
    """Takes record references from a queue and files them; retries while the archive is down."""

    def __init__(
        self,
        archive: Archive,
        reconciler: Reconciler,
        *,
        batch: int = 64,
        threads: int = 4,
    ) -> None:
        self.archive = archive
        self.reconciler = reconciler
        self.batch = batch
        self.queue: queue.Queue[tuple[str, ...] | spool.RecordRef] = queue.Queue()
        self.tracker = SpoolTracker()
        self.pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="archive-put")
        self._stop = threading.Event()
        self._fds: dict[str, int] = {}
        self.stats = {"stored": 0, "duplicate": 0, "conflict": 0, "quarantined": 0}
        self.backlog = 0
        self.last_error = ""

    def replay(self, root: Path) -> int:
        """Queue every record left in the spool by an earlier run; returns how many."""
        n = 0
        for path in spool.pending_files(root):
            count = 0
            for rec in spool.scan(path):
                self.queue.put(rec.ref)
                count += 1
            self.tracker.sealed(str(path), count)
            n += count
        if n:
            log.info("spool replay: %d records queued from an earlier run", n)
        return n

    def stop(self) -> None:
        self._stop.set()

    def run(self) -> None:
        while not self._stop.is_set():
            refs = self._take()
            if not refs:
                continue
            items = [it for it in (self._load(r) for r in refs) if it is not None]
            delay = 0.5
            while not self._stop.is_set():
                try:
                    self._process(items)
                    break
                except (ObjectStoreError, OSError) as e:
                    self.last_error = str(e)
                    log.warning(
                        "archive unavailable, %d records wait in the spool: %s", len(items), e
                    )
                    self._stop.wait(delay)
                    delay = min(delay * 2, 10.0)
                except Exception:
                    log.exception("index write failed; retrying")
                    self._stop.wait(delay)
                    delay = min(delay * 2, 10.0)
            else:
                return
            self.last_error = ""
            for it in items:
                self.tracker.done(it.rec.ref.path)

    def _take(self) -> list[spool.RecordRef]:
        refs: list[spool.RecordRef] = []
        try:
            first = self.queue.get(timeout=0.2)
        except queue.Empty:
            self.backlog = 0
            return refs
        pending = [first]
        size = first.length if isinstance(first, spool.RecordRef) else 0
        while len(pending) < self.batch and size < BATCH_BYTES:
            try:
                msg = self.queue.get_nowait()
            except queue.Empty:
                break
            pending.append(msg)
            size += msg.length if isinstance(msg, spool.RecordRef) else 0
        for msg in pending:
            if isinstance(msg, spool.RecordRef):
                refs.append(msg)
            elif msg[0] == "sealed":
                self.tracker.sealed(msg[1], int(msg[2]))
        self.backlog = self.queue.qsize()
        return refs

    def _load(self, ref: spool.RecordRef) -> _Item | None:
        fd = self._fds.get(ref.path)
        if fd is None:
            try:
                fd = os.open(ref.path, os.O_RDONLY)
            except FileNotFoundError:
                log.error("spool file vanished: %s", ref.path)
                return None
            if len(self._fds) > 64:
                for old in list(self._fds.values()):
                    os.close(old)
                self._fds.clear()
            self._fds[ref.path] = fd
        rec = spool.read_record(fd, ref)
        if rec is None:
            log.error("spool record at %s:%d failed its checksum", ref.path, ref.offset)
            self.tracker.done(ref.path)
            return None
        return _Item(rec)

    def _prepare(self, it: _Item) -> None:
        payload = it.rec.payload
        it.sha = sha256_of(payload)
        meta = it.rec.meta
        received = dt.datetime.fromtimestamp(meta.get("received", time.time()), dt.UTC)
        try:
            header = parse(payload)
        except InvalidObject as e:
            it.error = str(e)
            it.key = f"quarantine/{it.sha}.dcm"
            return
        it.key = object_key(header, it.sha)
        it.archived = Archived(
            header, it.key, len(payload), it.sha, meta.get("calling_ae", ""), received
        )

    def _process(self, items: list[_Item]) -> None:
        for it in items:
            if not it.sha:
                self._prepare(it)
        seen: set[str] = set()
        now_items: list[_Item] = []
        later: list[_Item] = []
        for it in items:
            uid = it.archived.header.sop_uid if it.archived else it.key
            (later if uid in seen else now_items).append(it)
            seen.add(uid)
        store = self.archive.store
        list(self.pool.map(lambda it: store.put(it.key, it.rec.payload), now_items))
        archived = [it.archived for it in now_items if it.archived]
        decisions = self.reconciler.decide(self.archive.sessions, (a.header for a in archived))
        with self.archive.sessions() as session, session.begin():
            good = [it for it in now_items if it.archived]
            outcomes = file_instances(
                session,
                archived,
                lambda s, h: self.reconciler.patient_for(s, h, decisions),
            )
            for a, outcome in zip(archived, outcomes, strict=True):
                if outcome is Outcome.STORED and findings.wanted(a.header.sop_class_uid):
                    findings.index(session, a.header.dataset)
            for it in now_items:
                if not it.archived:
                    quarantine(
                        session,
                        object_key=it.key,
                        size=len(it.rec.payload),
                        sha256=it.sha,
                        reason=it.error,
                        sop_uid="",
                        source_ae=it.rec.meta.get("calling_ae", ""),
                        received_at=dt.datetime.now(dt.UTC),
                    )
        for outcome in outcomes:
            self.stats[outcome.value] += 1
        self.stats["quarantined"] += len(now_items) - len(good)
        if later:
            self._process(later)
