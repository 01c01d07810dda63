"""The research database's own tables: projects and teaching notes (their own metadata).

The de-identified studies themselves are indexed in the clinical index schema (patients,
studies, series, instances) inside the research database, so the same query engine serves
them; these tables say which project a pseudonymous patient belongs to and what it is for.
"""

from __future__ import annotations

import datetime as dt
import json
from enum import StrEnum

from sqlalchemy import Date, DateTime, ForeignKey, Integer, String, Text
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from storage.deid.profile import Option
from storage.models import utcnow


class ResearchBase(DeclarativeBase):
    """Metadata of the research-only tables, kept apart from the clinical migration chain."""


class ProjectKind(StrEnum):
    RESEARCH = "research"
    TEACHING = "teaching"


class Project(ResearchBase):
    """A research project or teaching collection: what it is for, who owns it, until when."""

    __tablename__ = "research_projects"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    slug: Mapped[str] = mapped_column(String(40), unique=True)
    kind: Mapped[str] = mapped_column(String(16), default=ProjectKind.RESEARCH)
    title: Mapped[str] = mapped_column(String(200))
    owner: Mapped[str] = mapped_column(String(128))
    purpose: Mapped[str] = mapped_column(Text, default="")
    approval: Mapped[str] = mapped_column(String(128), default="")  # e.g. the REK number
    expires: Mapped[dt.date | None] = mapped_column(Date, default=None)
    options: Mapped[str] = mapped_column(Text)  # JSON list of deid Option values
    created_by: Mapped[str] = mapped_column(String(128), default="")
    created_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=utcnow)

    @property
    def scope(self) -> str:
        """The token role that may read the project, and its pseudonyms' Issuer of Patient ID."""
        return f"{self.kind}:{self.slug}"

    @property
    def deid_options(self) -> frozenset[Option]:
        return frozenset(Option(o) for o in json.loads(self.options))

    def expired(self, today: dt.date | None = None) -> bool:
        return self.expires is not None and self.expires < (today or dt.date.today())


class TeachingNote(ResearchBase):
    """A teacher's note on a study of a collection, with codes (e.g. findings, RadLex terms)."""

    __tablename__ = "teaching_notes"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    project_fk: Mapped[int] = mapped_column(ForeignKey("research_projects.id"), index=True)
    study_uid: Mapped[str] = mapped_column(String(64), index=True)  # the de-identified UID
    text: Mapped[str] = mapped_column(Text, default="")
    codes: Mapped[str] = mapped_column(Text, default="[]")  # JSON [[value, scheme, meaning]]
    author: Mapped[str] = mapped_column(String(128), default="")
    created_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
