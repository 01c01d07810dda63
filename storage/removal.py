"""Deleting instances for good, crash-safe: index rows first, objects after, through an outbox.

One transaction deletes the rows (instances, series and study left empty, their key images,
findings and conflict copies), records every object key in `pending_deletions` and writes the
audit event. A query therefore sees a study whole or not at all, and the event is written exactly
once. `purge` then deletes the objects and their outbox rows; after a crash it simply runs again
(deleting an object that is already gone is a no-op). Each removed SOP Instance UID is registered,
so replaying a spool segment after a crash does not bring back what was deleted since.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

from sqlalchemy import Row, delete, exists, func, select
from sqlalchemy.orm import Session, sessionmaker

from storage import audit
from storage.models import (
    Conflict,
    Finding,
    Instance,
    KeyImage,
    PendingDeletion,
    RemovedInstance,
    Series,
    Study,
)
from storage.objects import ObjectStore

T = TypeVar("T")
_CHUNK = 500  # bound parameters per IN (...), well below SQLite's and PostgreSQL's limits


def chunks(items: Sequence[T], size: int = _CHUNK) -> Iterator[Sequence[T]]:
    for i in range(0, len(items), size):
        yield items[i : i + size]


@dataclass
class Doomed:
    """Instances of one study that are due for deletion, and why."""

    study_id: int
    study_uid: str
    patient_id: str
    study_date: str
    instances: dict[int, int]  # instance id → size
    study_instances: int  # how many the study has in all
    reasons: list[str] = field(default_factory=list)

    @property
    def size(self) -> int:
        return sum(self.instances.values())

    @property
    def whole_study(self) -> bool:
        return len(self.instances) >= self.study_instances

    def merge(self, other: Doomed) -> Doomed:
        return Doomed(
            self.study_id,
            self.study_uid,
            self.patient_id,
            self.study_date,
            {**self.instances, **other.instances},
            self.study_instances,
            [*self.reasons, *other.reasons],
        )

    def as_dict(self) -> dict[str, Any]:
        return {
            "study_uid": self.study_uid,
            "patient_id": self.patient_id,
            "study_date": self.study_date,
            "instances": len(self.instances),
            "bytes": self.size,
            "whole_study": self.whole_study,
            "reasons": self.reasons,
        }


def remove(
    session: Session,
    doomed: Doomed,
    *,
    action: str,
    actor: str,
    role: str,
    source: str,
) -> int:
    """Delete the instances' rows, queue their objects, audit; the caller commits. Returns how
    many instances went (fewer than asked if some were already gone)."""
    rows: list[Row[int, str, str, int]] = []
    for part in chunks(list(doomed.instances)):
        rows += session.execute(
            select(Instance.id, Instance.sop_uid, Instance.object_key, Instance.size).where(
                Instance.id.in_(part)
            )
        ).all()
    if not rows:
        return 0
    sops = [r.sop_uid for r in rows]
    keys = [r.object_key for r in rows]
    for part in chunks(sops):
        keys += session.scalars(select(Conflict.object_key).where(Conflict.sop_uid.in_(part)))
        session.execute(delete(Conflict).where(Conflict.sop_uid.in_(part)))
        session.execute(
            delete(KeyImage).where(KeyImage.sop_uid.in_(part) | KeyImage.kos_sop_uid.in_(part))
        )
        session.execute(delete(Finding).where(Finding.sop_uid.in_(part)))
    for part in chunks([r.id for r in rows]):
        session.execute(delete(Instance).where(Instance.id.in_(part)))
    session.execute(
        delete(Series).where(
            Series.study_fk == doomed.study_id,
            ~exists().where(Instance.series_fk == Series.id),
        )
    )
    study_gone = not session.scalar(
        select(func.count(Series.id)).where(Series.study_fk == doomed.study_id)
    )
    if study_gone:
        session.execute(delete(KeyImage).where(KeyImage.study_uid == doomed.study_uid))
        session.execute(delete(Finding).where(Finding.study_uid == doomed.study_uid))
        session.execute(delete(Study).where(Study.id == doomed.study_id))
    session.add_all(PendingDeletion(object_key=k) for k in keys)
    session.add_all(RemovedInstance(sop_uid=sop) for sop in sops)
    size = sum(r.size for r in rows)
    audit.record(
        session,
        actor=actor,
        role=role,
        source=source,
        action=action,
        patients=[(doomed.patient_id, doomed.study_uid)],
        detail=f"{len(rows)} instances, {size} bytes{'; study deleted' if study_gone else ''}: "
        + "; ".join(doomed.reasons),
    )
    session.flush()
    return len(rows)


def _utc(t: dt.datetime) -> dt.datetime:
    return t if t.tzinfo else t.replace(tzinfo=dt.UTC)  # SQLite keeps no zone: it is UTC


def removed_since(session: Session, received: Mapping[str, dt.datetime]) -> set[str]:
    """The SOP Instance UIDs removed at or after they were received (sop_uid → reception):
    objects a spool replay offers again, which must stay deleted."""
    gone: set[str] = set()
    for part in chunks(list(received)):
        for sop, at in session.execute(
            select(RemovedInstance.sop_uid, func.max(RemovedInstance.removed_at))
            .where(RemovedInstance.sop_uid.in_(part))
            .group_by(RemovedInstance.sop_uid)
        ):
            if _utc(at) >= _utc(received[sop]):
                gone.add(sop)
    return gone


def discard(session: Session, object_key: str) -> None:
    """Queue an object nobody indexes for deletion (the caller commits)."""
    session.add(PendingDeletion(object_key=object_key))


def purge(sessions: sessionmaker[Session], store: ObjectStore, batch: int = 200) -> int:
    """Delete the objects waiting in the outbox; returns how many were deleted.

    An object a live row points at again (the same bytes re-sent after the rows went) stays.
    Store errors propagate and leave the outbox as it is, for the next purge.
    """
    deleted = 0
    while True:
        with sessions() as session:
            pending = session.execute(
                select(PendingDeletion.id, PendingDeletion.object_key)
                .order_by(PendingDeletion.id)
                .limit(batch)
            ).all()
            keys = [p.object_key for p in pending]
            live = set(
                session.scalars(select(Instance.object_key).where(Instance.object_key.in_(keys)))
            ) | set(
                session.scalars(select(Conflict.object_key).where(Conflict.object_key.in_(keys)))
            )
        if not pending:
            return deleted
        for key in dict.fromkeys(keys):
            if key not in live:
                store.delete(key)
                deleted += 1
        with sessions() as session, session.begin():
            session.execute(
                delete(PendingDeletion).where(PendingDeletion.id.in_([p.id for p in pending]))
            )
