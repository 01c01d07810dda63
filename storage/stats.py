"""Counts of what the archive holds, for status pages and the CLI."""

from __future__ import annotations

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from storage.models import Conflict, Instance, Patient, Quarantined, Series, Study


def archive_counts(session: Session) -> dict[str, int]:
    def count(model: type) -> int:
        return int(session.scalar(select(func.count()).select_from(model)) or 0)

    return {
        "patients": count(Patient),
        "studies": count(Study),
        "series": count(Series),
        "instances": count(Instance),
        "bytes": int(session.scalar(select(func.coalesce(func.sum(Instance.size), 0))) or 0),
        "conflicts": count(Conflict),
        "quarantined": count(Quarantined),
    }
