"""The research archive: its own database and bucket, never the clinical ones.

Its database holds the clinical index schema (brought up by the same Alembic chain, so the
query engine and the DICOMweb code serve it unchanged) plus the research tables, which are
created from their own metadata and are not part of the clinical migration chain.
"""

from __future__ import annotations

from storage.archive import Archive
from storage.db import make_engine, migrate, session_factory
from storage.objects import LocalObjectStore, ObjectStore, S3ObjectStore
from storage.research.models import ResearchBase
from storage.settings import Settings


class NotSeparate(ValueError):
    """The research settings point at the clinical database or bucket."""


def research_db_url(settings: Settings) -> str:
    path = (settings.data_dir / "research" / "research.db").resolve()
    return settings.research_database_url or f"sqlite:///{path}"


def open_research_store(settings: Settings) -> ObjectStore:
    endpoint = settings.research_s3_endpoint or settings.s3_endpoint
    if endpoint:
        return S3ObjectStore(
            endpoint,
            settings.research_s3_access_key or settings.s3_access_key,
            settings.research_s3_secret_key or settings.s3_secret_key,
            settings.research_s3_bucket,
            settings.s3_secure,
        )
    return LocalObjectStore(settings.data_dir / "research" / "archive")


def check_separate(settings: Settings) -> None:
    """Refuse settings that would put research data into the clinical database or bucket."""
    if research_db_url(settings) == settings.db_url:
        raise NotSeparate("RESEARCH_DATABASE_URL is the clinical DATABASE_URL")
    endpoint = settings.research_s3_endpoint or settings.s3_endpoint
    same_endpoint = endpoint == settings.s3_endpoint and bool(endpoint)
    clinical_buckets = {settings.s3_bucket, getattr(settings, "near_s3_bucket", "")}
    if same_endpoint and settings.research_s3_bucket in clinical_buckets:
        raise NotSeparate("RESEARCH_S3_BUCKET is a clinical bucket on the same endpoint")


class ResearchArchive(Archive):
    """The research index and bucket behind the same interface as the clinical archive, so
    the DICOMweb and rendering code take either. `settings` stays the deployment's."""

    def __init__(self, settings: Settings) -> None:
        # Archive's own __init__ would open the clinical database and tiers: not called
        check_separate(settings)
        self.settings = settings
        self.engine = make_engine(research_db_url(settings))
        migrate(self.engine)
        ResearchBase.metadata.create_all(self.engine)
        self.sessions = session_factory(self.engine)
        self.store = open_research_store(settings)
        self.tiers = None
        self.far = self.store

    def close(self) -> None:
        self.engine.dispose()
