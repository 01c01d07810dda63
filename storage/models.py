"""Index schema: patient registry → study → series → instance, conflicts, quarantine, audit."""

from __future__ import annotations

import datetime as dt
from enum import StrEnum

from sqlalchemy import (
    BigInteger,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


class Base(DeclarativeBase):
    pass


class PatientStatus(StrEnum):
    """Where a patient's demographics come from, and whether clinical queries see it."""

    LOCAL = "local"  # no PAS configured: the first header seen
    VERIFIED = "verified"  # from PAS (ADT or FHIR)
    UNVERIFIED = "unverified"  # PAS was unreachable; reconciled when it answers
    QUARANTINED = "quarantined"  # invalid ID or unknown to PAS: for an admin to resolve
    MERGED = "merged"  # merged into another patient by PAS


VISIBLE = (PatientStatus.LOCAL, PatientStatus.VERIFIED, PatientStatus.UNVERIFIED)


class Patient(Base):
    """`patient_id`/`issuer` is the identifier the archive shows; all are in `identifiers`."""

    __tablename__ = "patients"
    __table_args__ = (UniqueConstraint("patient_id", "issuer", name="uq_patient_ident"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    patient_id: Mapped[str] = mapped_column(String(64), index=True)
    issuer: Mapped[str] = mapped_column(String(64), default="")
    name: Mapped[str] = mapped_column(String(324), default="", index=True)
    birth_date: Mapped[str] = mapped_column(String(8), default="")
    sex: Mapped[str] = mapped_column(String(16), default="")
    created_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    status: Mapped[str] = mapped_column(String(16), default=PatientStatus.LOCAL, index=True)
    status_reason: Mapped[str] = mapped_column(Text, default="")
    merged_into_fk: Mapped[int | None] = mapped_column(ForeignKey("patients.id"), default=None)
    pas_updated_at: Mapped[dt.datetime | None] = mapped_column(
        DateTime(timezone=True), default=None
    )

    studies: Mapped[list[Study]] = relationship(back_populates="patient")
    identifiers: Mapped[list[PatientIdentifier]] = relationship(
        back_populates="patient", cascade="all, delete-orphan"
    )


class PatientIdentifier(Base):
    """One identifier of a patient; `system` is a FHIR system URI, empty if the sender gave none."""

    __tablename__ = "patient_identifiers"
    __table_args__ = (UniqueConstraint("system", "value", name="uq_identifier"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    patient_fk: Mapped[int] = mapped_column(ForeignKey("patients.id"), index=True)
    system: Mapped[str] = mapped_column(String(128), default="")
    value: Mapped[str] = mapped_column(String(64), index=True)

    patient: Mapped[Patient] = relationship(back_populates="identifiers")


class Study(Base):
    __tablename__ = "studies"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    patient_fk: Mapped[int] = mapped_column(ForeignKey("patients.id"), index=True)
    study_uid: Mapped[str] = mapped_column(String(64), unique=True)
    study_date: Mapped[str] = mapped_column(String(8), default="", index=True)
    study_time: Mapped[str] = mapped_column(String(16), default="")
    accession_number: Mapped[str] = mapped_column(String(64), default="", index=True)
    study_id: Mapped[str] = mapped_column(String(16), default="")
    description: Mapped[str] = mapped_column(String(64), default="")
    referring_physician: Mapped[str] = mapped_column(String(324), default="")
    attrs: Mapped[bytes] = mapped_column(LargeBinary)
    attrs_ts: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=utcnow)

    patient: Mapped[Patient] = relationship(back_populates="studies")
    series: Mapped[list[Series]] = relationship(back_populates="study")


class Series(Base):
    __tablename__ = "series"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    study_fk: Mapped[int] = mapped_column(ForeignKey("studies.id"), index=True)
    series_uid: Mapped[str] = mapped_column(String(64), unique=True)
    modality: Mapped[str] = mapped_column(String(16), default="", index=True)
    series_number: Mapped[str] = mapped_column(String(12), default="")
    description: Mapped[str] = mapped_column(String(64), default="")
    body_part: Mapped[str] = mapped_column(String(16), default="")
    attrs: Mapped[bytes] = mapped_column(LargeBinary)
    attrs_ts: Mapped[str] = mapped_column(String(64))

    study: Mapped[Study] = relationship(back_populates="series")
    instances: Mapped[list[Instance]] = relationship(back_populates="series")


class Instance(Base):
    __tablename__ = "instances"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    series_fk: Mapped[int] = mapped_column(ForeignKey("series.id"), index=True)
    sop_uid: Mapped[str] = mapped_column(String(64), unique=True)
    sop_class_uid: Mapped[str] = mapped_column(String(64))
    instance_number: Mapped[str] = mapped_column(String(12), default="")
    transfer_syntax: Mapped[str] = mapped_column(String(64))
    object_key: Mapped[str] = mapped_column(String(400))
    size: Mapped[int] = mapped_column(BigInteger)
    sha256: Mapped[str] = mapped_column(String(64))
    source_ae: Mapped[str] = mapped_column(String(16), default="")
    received_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    attrs: Mapped[bytes] = mapped_column(LargeBinary)
    attrs_ts: Mapped[str] = mapped_column(String(64))
    # JSON of the patient attributes the sender had that differ from PAS, for audit
    header_differences: Mapped[str] = mapped_column(Text, default="")

    series: Mapped[Series] = relationship(back_populates="instances")


class Conflict(Base):
    """A second, different object sent under an existing SOP Instance UID (original kept)."""

    __tablename__ = "conflicts"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    sop_uid: Mapped[str] = mapped_column(String(64), index=True)
    object_key: Mapped[str] = mapped_column(String(400))
    size: Mapped[int] = mapped_column(BigInteger)
    sha256: Mapped[str] = mapped_column(String(64))
    source_ae: Mapped[str] = mapped_column(String(16), default="")
    received_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    __table_args__ = (UniqueConstraint("sop_uid", "sha256", name="uq_conflict_copy"),)


class Quarantined(Base):
    """Clinical data the archive could not index; kept for an admin to resolve."""

    __tablename__ = "quarantine"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    object_key: Mapped[str] = mapped_column(String(400), unique=True)
    size: Mapped[int] = mapped_column(BigInteger)
    sha256: Mapped[str] = mapped_column(String(64))
    reason: Mapped[str] = mapped_column(Text)
    sop_uid: Mapped[str] = mapped_column(String(64), default="")
    source_ae: Mapped[str] = mapped_column(String(16), default="")
    received_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    resolved: Mapped[str] = mapped_column(String(32), default="")


class AuditEvent(Base):
    """Who read or changed patient data, when, from where."""

    __tablename__ = "audit_events"
    __table_args__ = (Index("ix_audit_patient_at", "patient_id", "at"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=utcnow, index=True)
    actor: Mapped[str] = mapped_column(String(128))
    role: Mapped[str] = mapped_column(String(64), default="")
    source: Mapped[str] = mapped_column(String(128), default="")
    action: Mapped[str] = mapped_column(String(64))
    patient_id: Mapped[str] = mapped_column(String(64), default="")
    study_uid: Mapped[str] = mapped_column(String(64), default="")
    outcome: Mapped[str] = mapped_column(String(16), default="success")
    detail: Mapped[str] = mapped_column(Text, default="")


class Hl7Message(Base):
    """Every HL7 message received, persisted before it is acknowledged."""

    __tablename__ = "hl7_messages"
    __table_args__ = (UniqueConstraint("sender", "control_id", name="uq_hl7_control"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    received_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    sender: Mapped[str] = mapped_column(String(200), default="")
    control_id: Mapped[str] = mapped_column(String(64), default="")
    trigger: Mapped[str] = mapped_column(String(16), default="")
    raw: Mapped[bytes] = mapped_column(LargeBinary)
    outcome: Mapped[str] = mapped_column(String(8))  # the MSA-1 code we answered
    detail: Mapped[str] = mapped_column(Text, default="")


class KeyImage(Base):
    """An instance (and frames) a Key Object Selection document points at."""

    __tablename__ = "key_images"
    __table_args__ = (UniqueConstraint("kos_sop_uid", "sop_uid", name="uq_key_image"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    kos_sop_uid: Mapped[str] = mapped_column(String(64), index=True)
    study_uid: Mapped[str] = mapped_column(String(64), index=True)
    series_uid: Mapped[str] = mapped_column(String(64), default="")
    sop_uid: Mapped[str] = mapped_column(String(64), index=True)
    frames: Mapped[str] = mapped_column(String(200), default="")  # backslash-separated, 1-based
    title_code: Mapped[str] = mapped_column(String(16), default="")
    title_meaning: Mapped[str] = mapped_column(String(64), default="")
    created_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class Finding(Base):
    """Finding text for the EPR: a KOS description or the text of an SR report."""

    __tablename__ = "findings"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    sop_uid: Mapped[str] = mapped_column(String(64), unique=True)
    study_uid: Mapped[str] = mapped_column(String(64), index=True)
    kind: Mapped[str] = mapped_column(String(16))  # "key-images" or "report"
    title: Mapped[str] = mapped_column(String(64), default="")
    text: Mapped[str] = mapped_column(Text, default="")
    created_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class Rejection(Base):
    """An instance an IHE IOCM rejection note withdrew: hidden from every clinical read."""

    __tablename__ = "rejections"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    sop_uid: Mapped[str] = mapped_column(String(64), unique=True)
    by_sop_uid: Mapped[str] = mapped_column(String(64), index=True)
    code: Mapped[str] = mapped_column(String(16))
    meaning: Mapped[str] = mapped_column(String(64), default="")
    created_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class Commitment(Base):
    """A storage commitment request (push model), kept until its report has been delivered."""

    __tablename__ = "commitments"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    transaction_uid: Mapped[str] = mapped_column(String(64), unique=True)
    calling_ae: Mapped[str] = mapped_column(String(16))
    address: Mapped[str] = mapped_column(String(128), default="")
    items: Mapped[str] = mapped_column(Text)  # JSON [[sop_class_uid, sop_instance_uid], ...]
    status: Mapped[str] = mapped_column(String(16), default="pending", index=True)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    detail: Mapped[str] = mapped_column(Text, default="")
    received_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    reported_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    job_fk: Mapped[int | None] = mapped_column(Integer, default=None)  # the job that reports it


class OrderStatus(StrEnum):
    """Where a scheduled procedure step stands; SCHEDULED and IN_PROGRESS are on the worklist."""

    SCHEDULED = "scheduled"
    IN_PROGRESS = "in-progress"
    COMPLETED = "completed"
    DISCONTINUED = "discontinued"
    CANCELLED = "cancelled"


class Order(Base):
    """One requested procedure with its one scheduled procedure step, as served to the worklist.

    The scheduled start is local date (YYYYMMDD) and time (HHMMSS.ffffff, as `studies` keeps it),
    so DICOM date and time range matching is plain string comparison.
    """

    __tablename__ = "orders"
    __table_args__ = (
        UniqueConstraint("accession_number", "accession_issuer", name="uq_order_accession"),
        Index("ix_orders_status_date", "status", "scheduled_date"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    placer_order_number: Mapped[str] = mapped_column(String(64), default="", index=True)
    filler_order_number: Mapped[str] = mapped_column(String(64), default="")
    accession_number: Mapped[str] = mapped_column(String(64))
    accession_issuer: Mapped[str] = mapped_column(String(64), default="")
    patient_fk: Mapped[int] = mapped_column(ForeignKey("patients.id"), index=True)
    patient_id: Mapped[str] = mapped_column(String(64), index=True)
    requested_procedure_id: Mapped[str] = mapped_column(String(16), default="")
    requested_procedure_description: Mapped[str] = mapped_column(String(64), default="")
    procedure_codes: Mapped[str] = mapped_column(
        Text, default="[]"
    )  # JSON [[code, scheme, meaning]]
    sps_id: Mapped[str] = mapped_column(String(16), default="")
    sps_description: Mapped[str] = mapped_column(String(64), default="")
    station_ae: Mapped[str] = mapped_column(String(16), default="", index=True)
    station_name: Mapped[str] = mapped_column(String(16), default="")
    modality: Mapped[str] = mapped_column(String(16), default="", index=True)
    scheduled_date: Mapped[str] = mapped_column(String(8), default="")
    scheduled_time: Mapped[str] = mapped_column(String(16), default="")
    performing_physician: Mapped[str] = mapped_column(String(324), default="")
    referring_physician: Mapped[str] = mapped_column(String(324), default="")
    priority: Mapped[str] = mapped_column(String(16), default="")
    study_uid: Mapped[str] = mapped_column(String(64), unique=True)
    status: Mapped[str] = mapped_column(String(16), default=OrderStatus.SCHEDULED)
    source: Mapped[str] = mapped_column(String(8))  # "hl7" or "rest"
    created_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    updated_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=utcnow)

    patient: Mapped[Patient] = relationship()


class Mpps(Base):
    """A Modality Performed Procedure Step instance a modality created with N-CREATE."""

    __tablename__ = "mpps"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    sop_uid: Mapped[str] = mapped_column(String(64), unique=True)
    order_fk: Mapped[int | None] = mapped_column(ForeignKey("orders.id"), index=True, default=None)
    status: Mapped[str] = mapped_column(String(16))  # the DICOM PPS status, e.g. "IN PROGRESS"
    calling_ae: Mapped[str] = mapped_column(String(16), default="")
    attrs: Mapped[str] = mapped_column(Text, default="{}")  # DICOM JSON of the last state
    created_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    updated_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class NearObject(Base):
    """An object the near tier holds: a copy of a far object, evicted least recently used."""

    __tablename__ = "near_objects"

    key: Mapped[str] = mapped_column(String(400), primary_key=True)
    study_uid: Mapped[str] = mapped_column(String(64), index=True)
    size: Mapped[int] = mapped_column(BigInteger)
    last_access: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), index=True)
    added_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    # set by a prefetch for an upcoming visit: eviction leaves the object alone until then
    pinned_until: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True), default=None)


class TierCounter(Base):
    """Reads served per tier since the archive was set up (near reads are hits)."""

    __tablename__ = "tier_counters"

    tier: Mapped[str] = mapped_column(String(8), primary_key=True)
    reads: Mapped[int] = mapped_column(BigInteger, default=0)
    bytes: Mapped[int] = mapped_column(BigInteger, default=0)


class PrefetchRule(Base):
    """Which prior studies to bring near when an order or an admission arrives for a patient."""

    __tablename__ = "prefetch_rules"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    modalities: Mapped[str] = mapped_column(String(128), default="")  # "CT,MR"; empty = any
    body_part: Mapped[str] = mapped_column(String(16), default="")  # empty = any
    years: Mapped[int] = mapped_column(Integer, default=5)
    max_studies: Mapped[int] = mapped_column(Integer, default=3)
    on_order: Mapped[bool] = mapped_column(default=True)
    on_admission: Mapped[bool] = mapped_column(default=False)
    # the order's modality must be one of these for the rule to fire; empty = any order
    order_modalities: Mapped[str] = mapped_column(String(128), default="")
    enabled: Mapped[bool] = mapped_column(default=True)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class JobState(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"


class Job(Base):
    """A durable background job; the lease says which process runs it and until when."""

    __tablename__ = "jobs"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    kind: Mapped[str] = mapped_column(String(32), index=True)
    params: Mapped[str] = mapped_column(Text, default="{}")  # JSON
    state: Mapped[str] = mapped_column(String(16), default=JobState.QUEUED, index=True)
    done: Mapped[int] = mapped_column(BigInteger, default=0)
    total: Mapped[int] = mapped_column(BigInteger, default=0)
    message: Mapped[str] = mapped_column(Text, default="")
    checkpoint: Mapped[str] = mapped_column(Text, default="{}")  # JSON: where a resumed run starts
    result: Mapped[str] = mapped_column(Text, default="{}")  # JSON
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    lease_owner: Mapped[str] = mapped_column(String(128), default="")
    lease_until: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True), default=None)
    # a queued job that deferred itself (waiting for something) is not claimed before this
    run_after: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True), default=None)
    # one job per key ever (e.g. one scheduled sweep per interval, whichever process enqueues it)
    dedupe_key: Mapped[str | None] = mapped_column(String(128), unique=True, default=None)
    created_by: Mapped[str] = mapped_column(String(128), default="")
    created_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    started_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True), default=None)
    finished_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True), default=None)


class RetentionRule(Base):
    """Instances matching the filters may be deleted once their study is older than the period."""

    __tablename__ = "retention_rules"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    modalities: Mapped[str] = mapped_column(Text, default="[]")  # JSON lists; empty = any
    sop_classes: Mapped[str] = mapped_column(Text, default="[]")
    source_aes: Mapped[str] = mapped_column(Text, default="[]")
    keep_years: Mapped[int] = mapped_column(Integer, default=0)
    keep_days: Mapped[int] = mapped_column(Integer, default=0)
    # the rule applies only if the patient was at least this old at the study (children kept)
    min_patient_age: Mapped[int | None] = mapped_column(Integer, default=None)
    enabled: Mapped[bool] = mapped_column(default=True)
    created_by: Mapped[str] = mapped_column(String(128), default="")
    created_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class LegalHold(Base):
    """A study no retention rule or rejection may delete; the foreign key makes it binding."""

    __tablename__ = "legal_holds"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    study_fk: Mapped[int] = mapped_column(ForeignKey("studies.id"), unique=True)
    reason: Mapped[str] = mapped_column(Text)
    held_by: Mapped[str] = mapped_column(String(128), default="")
    held_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class PendingDeletion(Base):
    """An object whose index rows are gone, to be deleted from the store (an outbox)."""

    __tablename__ = "pending_deletions"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    object_key: Mapped[str] = mapped_column(String(400))
    created_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class RemovedInstance(Base):
    """An instance deleted for good; a spool replay of the reception it came from is ignored."""

    __tablename__ = "removed_instances"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    sop_uid: Mapped[str] = mapped_column(String(64), index=True)
    removed_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class MigrationStudy(Base):
    """A study a migration job found on a legacy PACS, and what verifying it showed."""

    __tablename__ = "migration_studies"
    __table_args__ = (
        UniqueConstraint("job_fk", "study_uid", name="uq_migration_study"),
        Index("ix_migration_job_state", "job_fk", "state"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    job_fk: Mapped[int] = mapped_column(ForeignKey("jobs.id"))
    study_uid: Mapped[str] = mapped_column(String(64))
    study_date: Mapped[str] = mapped_column(String(8), default="")
    patient_id: Mapped[str] = mapped_column(String(64), default="")  # as the legacy PACS has it
    accession_number: Mapped[str] = mapped_column(String(64), default="")
    # pending, verified, discrepancy or failed
    state: Mapped[str] = mapped_column(String(16), default="pending")
    source_instances: Mapped[int] = mapped_column(Integer, default=0)
    archived_instances: Mapped[int] = mapped_column(Integer, default=0)
    retrievals: Mapped[int] = mapped_column(Integer, default=0)  # C-MOVE/C-GET requests sent
    detail: Mapped[str] = mapped_column(Text, default="{}")  # JSON: series, problems, SHA-256s
    checked_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True), default=None)
