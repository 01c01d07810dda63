"""Near and far tiers: far (central MinIO) is the system of record; near is a cache by the
readers with a byte budget. Reads go near → far and fill near; eviction is least recently used
and never takes an object pinned by a prefetch for an upcoming visit.

What near holds is indexed in `near_objects` (shared by every broker process), so one process
can evict what another filled; access times and hit counters are batched in memory and flushed
every few seconds, because a database write per image read would cost more than the read.
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
from collections import Counter
from collections.abc import Iterator
from typing import Any

from sqlalchemy import Select, delete, func, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session, sessionmaker

from storage.models import Instance, NearObject, TierCounter, utcnow
from storage.objects import ObjectNotFound, ObjectStore, ObjectStoreError

log = logging.getLogger("pacsbroker.tiers")

NEAR, FAR = "near", "far"


def _study_of(key: str) -> str:
    return key.split("/", 1)[0]


def _insert(session: Session) -> type[postgresql.Insert] | type[sqlite.Insert]:
    """The dialect's INSERT with ON CONFLICT, so two processes filling one key both succeed."""
    return postgresql.insert if session.bind.dialect.name == "postgresql" else sqlite.insert  # type: ignore[union-attr,return-value]


class TieredStore:
    """An ObjectStore over two stores; writes go to far (and near when `write_near`)."""

    def __init__(
        self,
        far: ObjectStore,
        near: ObjectStore,
        sessions: sessionmaker[Session],
        *,
        budget: int,
        write_near: bool = False,
        flush_interval: float = 2.0,
    ) -> None:
        self.far, self.near, self.sessions = far, near, sessions
        self.budget = budget
        self.write_near = write_near
        self.name = f"near {near.name} → far {far.name}"
        self._lock = threading.Lock()
        self._reserve = threading.Lock()
        self._touched: dict[str, dt.datetime] = {}
        self._reads: Counter[str] = Counter()
        self._bytes: Counter[str] = Counter()
        self._stop = threading.Event()
        self._local = threading.local()
        self._flusher = threading.Thread(
            target=self._flush_loop, args=(flush_interval,), name="tier-flush", daemon=True
        )
        self._flusher.start()

    # ObjectStore

    def put(self, key: str, data: bytes) -> None:
        self.far.put(key, data)
        if self.write_near:
            self.fill(key, data)

    def get(self, key: str) -> bytes:
        try:
            data = self.near.get(key)
        except (ObjectNotFound, ObjectStoreError):
            data = self.far.get(key)
            self._count(FAR, len(data))
            self.fill(key, data)
            return data
        self._count(NEAR, len(data))
        with self._lock:
            self._touched[key] = utcnow()
        return data

    def exists(self, key: str) -> bool:
        return self.far.exists(key)

    def delete(self, key: str) -> None:
        """Deleting from the archive deletes from both tiers, far last: a crash in between
        leaves the object readable, never an index row that points at nothing."""
        self.drop_near([key])
        self.far.delete(key)

    def keys(self, prefix: str = "") -> Iterator[str]:
        return self.far.keys(prefix)

    def check(self) -> None:
        self.far.check()
        try:
            self.near.check()
        except ObjectStoreError as e:
            log.warning("near tier unavailable, reading from far: %s", e)

    # near tier

    def last_tier(self) -> str:
        """The tier this thread's last read came from (for per-operation logs)."""
        return str(getattr(self._local, "tier", FAR))

    def _count(self, tier: str, size: int) -> None:
        self._local.tier = tier
        with self._lock:
            self._reads[tier] += 1
            self._bytes[tier] += size

    def fill(self, key: str, data: bytes, *, pin_until: dt.datetime | None = None) -> bool:
        """Copy into near (making room first); False when near cannot take it now."""
        if len(data) > self.budget:
            return False
        # Room is made and reserved (the index row) in one database transaction under a lock
        # every broker process takes, so parallel fills, in this process or in a receiver,
        # cannot each see the same free space and together overrun the budget. A reader that
        # finds the row before the object falls back to far.
        # threads of one process queue on `_reserve` rather than on the database's lock
        with self._reserve, self.sessions() as session, session.begin():
            _lock_budget(session)
            victims = self._room_for(session, len(data))
            if victims is None:
                log.info("near tier full of pinned objects: %s stays in far only", key)
                return False
            now = utcnow()
            ins = _insert(session)(NearObject).values(
                key=key,
                study_uid=_study_of(key),
                size=len(data),
                last_access=now,
                added_at=now,
                pinned_until=pin_until,
            )
            changes = {"last_access": now}
            if pin_until is not None:
                changes["pinned_until"] = pin_until
            session.execute(ins.on_conflict_do_update(index_elements=["key"], set_=changes))
        self._delete_near_objects(victims)
        try:
            self.near.put(key, data)
        except ObjectStoreError as e:
            log.warning("near tier: cannot fill %s: %s", key, e)
            with self.sessions() as session, session.begin():
                session.execute(delete(NearObject).where(NearObject.key == key))
            return False
        return True

    def used(self) -> int:
        with self.sessions() as session:
            return _used(session)

    def _room_for(self, session: Session, need: int) -> list[str] | None:
        """Drop the rows of least recently used, unpinned objects so `need` more bytes fit, down
        to 90 % of the budget so not every fill evicts; None (nothing dropped) if they cannot."""
        used = _used(session)
        if used + need <= self.budget:
            return []
        target = min(self.budget - need, int(self.budget * 0.9))
        victims, freed = [], 0
        for key, size in session.execute(_evictable()):
            if used - freed <= target:
                break
            victims.append(key)
            freed += size
        if used - freed + need > self.budget:
            return None
        for chunk in _chunks(victims):
            session.execute(delete(NearObject).where(NearObject.key.in_(chunk)))
        if victims:
            log.info("near tier: evicted %d objects (%d bytes)", len(victims), freed)
        return victims

    def shrink_to(self, target: int) -> int:
        """Evict least recently used, unpinned objects until near holds at most `target`."""
        used = self.used()
        freed = 0
        victims = []
        with self.sessions() as session:
            for key, size in session.execute(_evictable()):
                if used - freed <= target:
                    break
                victims.append(key)
                freed += size
        self.drop_near(victims)
        if victims:
            log.info("near tier: evicted %d objects (%d bytes)", len(victims), freed)
        return freed

    def drop_near(self, keys: list[str]) -> None:
        """Remove from near: the index row first, so no reader is sent to a missing object."""
        for chunk in _chunks(keys):
            with self.sessions() as session, session.begin():
                session.execute(delete(NearObject).where(NearObject.key.in_(chunk)))
        self._delete_near_objects(keys)

    def _delete_near_objects(self, keys: list[str]) -> None:
        for key in keys:
            try:
                self.near.delete(key)
            except ObjectStoreError as e:
                log.warning("near tier: cannot delete %s: %s", key, e)

    def pin(self, keys: list[str], until: dt.datetime) -> None:
        with self.sessions() as session, session.begin():
            session.execute(
                update(NearObject).where(NearObject.key.in_(keys)).values(pinned_until=until)
            )

    def pinned_studies(self) -> set[str]:
        with self.sessions() as session:
            rows = session.scalars(
                select(NearObject.study_uid).where(NearObject.pinned_until > utcnow()).distinct()
            )
            return set(rows)

    # batched bookkeeping

    def flush(self) -> None:
        with self._lock:
            touched, self._touched = self._touched, {}
            reads, self._reads = self._reads, Counter()
            sizes, self._bytes = self._bytes, Counter()
        if not touched and not reads:
            return
        with self.sessions() as session, session.begin():
            for key, when in touched.items():
                session.execute(
                    update(NearObject).where(NearObject.key == key).values(last_access=when)
                )
            for tier, n in reads.items():
                ins = _insert(session)(TierCounter).values(tier=tier, reads=n, bytes=sizes[tier])
                session.execute(
                    ins.on_conflict_do_update(
                        index_elements=["tier"],
                        set_={
                            "reads": TierCounter.reads + n,
                            "bytes": TierCounter.bytes + sizes[tier],
                        },
                    )
                )

    def _flush_loop(self, interval: float) -> None:
        while not self._stop.wait(interval):
            try:
                self.flush()
            except Exception:
                log.exception("near tier bookkeeping flush failed")

    def close(self) -> None:
        self._stop.set()
        self.flush()


def _used(session: Session) -> int:
    return int(session.scalar(select(func.coalesce(func.sum(NearObject.size), 0))) or 0)


def _evictable() -> Select[str, int]:
    """Unpinned near objects, least recently used first."""
    return (
        select(NearObject.key, NearObject.size)
        .where((NearObject.pinned_until.is_(None)) | (NearObject.pinned_until < utcnow()))
        .order_by(NearObject.last_access)
    )


def _chunks(keys: list[str], size: int = 500) -> Iterator[list[str]]:
    for i in range(0, len(keys), size):
        yield keys[i : i + size]


BUDGET_LOCK = 0x6E656172  # "near": the PostgreSQL advisory lock every near fill takes


def _lock_budget(session: Session) -> None:
    """Serialise near fills across broker processes for this transaction. SQLite has one writer
    at a time: a first write (deleting nothing) takes its lock before anything is read."""
    if session.get_bind().dialect.name == "postgresql":
        session.execute(select(func.pg_advisory_xact_lock(BUDGET_LOCK)))
    else:
        session.execute(delete(NearObject).where(NearObject.key == ""))


def report(session: Session, budget: int) -> dict[str, Any]:
    """Per tier what it holds (near against its budget; far: every indexed instance), reads and
    bytes served, and the near hit ratio."""
    counters = {c.tier: c for c in session.scalars(select(TierCounter))}
    hits = counters[NEAR].reads if NEAR in counters else 0
    misses = counters[FAR].reads if FAR in counters else 0
    count, size = session.execute(
        select(func.count(NearObject.key), func.coalesce(func.sum(NearObject.size), 0))
    ).one()
    far_count, far_size = session.execute(
        select(func.count(Instance.id), func.coalesce(func.sum(Instance.size), 0))
    ).one()
    return {
        "near": {
            "objects": int(count),
            "bytes": int(size),
            "budget_bytes": budget,
            "reads": hits,
            "bytes_served": counters[NEAR].bytes if NEAR in counters else 0,
        },
        "far": {
            "objects": int(far_count),
            "bytes": int(far_size),
            "reads": misses,
            "bytes_served": counters[FAR].bytes if FAR in counters else 0,
        },
        "hit_ratio": round(hits / (hits + misses), 4) if hits + misses else None,
    }
