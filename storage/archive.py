"""The archive as the rest of the product sees it: object store plus index, from settings."""

from __future__ import annotations

import hashlib

from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from storage import atna
from storage.db import make_engine, migrate, session_factory
from storage.dicomheader import Header
from storage.objects import LocalObjectStore, ObjectStore, S3ObjectStore
from storage.settings import Settings
from storage.tiers import TieredStore


def object_key(header: Header, sha256: str) -> str:
    """UID-addressed and content-qualified, so concurrent writers never overwrite each other."""
    return f"{header.study_uid}/{header.series_uid}/{header.sop_uid}.{sha256[:16]}.dcm"


def sha256_of(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def open_store(settings: Settings) -> ObjectStore:
    """The far tier: the central MinIO, or a local directory in the embedded default."""
    if settings.s3_endpoint:
        return S3ObjectStore(
            settings.s3_endpoint,
            settings.s3_access_key,
            settings.s3_secret_key,
            settings.s3_bucket,
            settings.s3_secure,
        )
    return LocalObjectStore(settings.data_dir / "archive")


def open_near(settings: Settings) -> ObjectStore | None:
    if settings.near_s3_endpoint:
        return S3ObjectStore(
            settings.near_s3_endpoint,
            settings.near_s3_access_key or settings.s3_access_key,
            settings.near_s3_secret_key or settings.s3_secret_key,
            settings.near_s3_bucket,
            settings.s3_secure,
        )
    if settings.near_dir is not None:
        return LocalObjectStore(settings.near_dir)
    return None


class Archive:
    """Object store and index of one deployment."""

    def __init__(self, settings: Settings, *, run_migrations: bool = False) -> None:
        self.settings = settings
        atna.configure(settings.audit_syslog, settings.ae_title)
        self.engine: Engine = make_engine(settings.db_url)
        if run_migrations:
            migrate(self.engine)
        self.sessions: sessionmaker[Session] = session_factory(self.engine)
        far = open_store(settings)
        near = open_near(settings)
        self.tiers = (
            TieredStore(
                far,
                near,
                self.sessions,
                budget=int(settings.near_budget_mb * (1 << 20)),
                write_near=settings.near_on_ingest,
            )
            if near is not None
            else None
        )
        self.store: ObjectStore = self.tiers or far
        # the system of record: fixity checks and commitments verify what far holds
        self.far: ObjectStore = far

    def close(self) -> None:
        atna.close()
        if self.tiers is not None:
            self.tiers.close()
        self.engine.dispose()
