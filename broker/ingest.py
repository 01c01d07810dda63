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

from sqlalchemy import exc as sa_exc

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

# Only these mean the object store or the index is unreachable, so the batch waits in the spool
# and is retried. Any other error belongs to one object, which goes to quarantine instead of
# holding back every object behind it.
OUTAGES = (
    ObjectStoreError,
    OSError,
    sa_exc.OperationalError,
    sa_exc.InterfaceError,
    sa_exc.DisconnectionError,
    sa_exc.TimeoutError,
)


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
        """At start, before any writer runs: drop unfinished writes, then queue every record
        left in the spool by an earlier run; returns how many."""
        spool.discard_unfinished(root)
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
                except OUTAGES as e:
                    self.last_error = str(e)
                    log.warning(
                        "archive unavailable, %d records wait in the spool: %s", len(items), e
                    )
                    self._stop.wait(delay)
                    delay = min(delay * 2, 10.0)
                except Exception:
                    # only a failure to file the quarantine record itself gets here
                    log.exception("quarantine write failed; retrying")
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
        except Exception as e:  # no I/O here: whatever fails is this object's fault
            self._to_quarantine(it, e)
            return
        it.key = object_key(header, it.sha)
        it.archived = Archived(
            header, it.key, len(payload), it.sha, meta.get("calling_ae", ""), received
        )

    def _to_quarantine(self, it: _Item, e: Exception) -> None:
        it.error = str(e) if isinstance(e, InvalidObject) else f"{type(e).__name__}: {e}"
        it.key = f"quarantine/{it.sha}.dcm"
        it.archived = None
        log.warning("quarantining %s: %s", it.rec.meta.get("sop_uid", "?"), it.error)

    def _put(self, it: _Item) -> None:
        try:
            self.archive.store.put(it.key, it.rec.payload)
        except OUTAGES:
            raise
        except Exception as e:
            if it.archived is None:
                raise
            self._to_quarantine(it, e)
            self.archive.store.put(it.key, it.rec.payload)

    def _process(self, items: list[_Item]) -> None:
        seen: set[str] = set()
        now_items: list[_Item] = []
        later: list[_Item] = []
        puts = []
        for it in items:
            if not it.sha:
                self._prepare(it)
            uid = it.archived.header.sop_uid if it.archived else it.key
            if uid in seen:
                later.append(it)
                continue
            seen.add(uid)
            now_items.append(it)
            # each put starts as soon as its object is parsed, so the object store works
            # while the rest of the batch is hashed and parsed
            puts.append(self.pool.submit(self._put, it))
        for put in puts:
            put.result()
        try:
            self._index(now_items)
        except OUTAGES:
            raise
        except Exception as e:
            self._isolate(now_items, e)
        if later:
            self._process(later)

    def _isolate(self, items: list[_Item], e: Exception) -> None:
        """A batch failed for a reason that is not an outage: file its objects one at a time,
        so only the object at fault is quarantined."""
        if len(items) > 1:
            log.warning("index write failed (%s); filing %d objects one by one", e, len(items))
            for it in items:
                self._process([it])
            return
        (it,) = items
        if it.archived is None:
            raise e
        self._to_quarantine(it, e)
        self._process(items)

    def _index(self, items: list[_Item]) -> None:
        archived = [it.archived for it in items if it.archived]
        decisions = self.reconciler.decide(self.archive.sessions, (a.header for a in archived))
        with self.archive.sessions() as session, session.begin():
            outcomes = file_instances(
                session,
                archived,
                lambda s, h: self.reconciler.patient_for(s, h, decisions),
            )
            for a, outcome in zip(archived, outcomes, strict=True):
                if outcome is Outcome.STORED and findings.wanted(a.header.sop_class_uid):
                    findings.index(session, a.header.dataset)
            for it in items:
                if not it.archived:
                    quarantine(
                        session,
                        object_key=it.key,
                        size=len(it.rec.payload),
                        sha256=it.sha,
                        reason=it.error,
                        sop_uid=str(it.rec.meta.get("sop_uid", ""))[:64],
                        source_ae=it.rec.meta.get("calling_ae", ""),
                        received_at=dt.datetime.now(dt.UTC),
                    )
        for outcome in outcomes:
            self.stats[outcome.value] += 1
        self.stats["quarantined"] += len(items) - len(archived)
