"""Research export: de-identified copies of selected clinical studies into a project.

Resumable by construction: an instance's new UID is a keyed hash of its clinical UID, so a run
that is repeated (after a crash, or as a job resumed elsewhere) finds what it wrote before in
the research index and skips it. Every study exported and every object held back is audited
in the clinical audit log; no clinical UID or identity is written to the research side.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from io import BytesIO
from typing import Any

from pydicom.datadict import dictionary_VR, tag_for_keyword
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.uid import UID, ExplicitVRLittleEndian
from sqlalchemy import select
from sqlalchemy.orm import Session

from storage import audit, catalog, outbound, registry, transcode
from storage.archive import Archive, object_key, sha256_of
from storage.deid import burnedin
from storage.deid.deidentify import Deidentifier
from storage.deid.profile import Option
from storage.demographics import Demographics, Identifier
from storage.dicomheader import parse
from storage.models import AuditEvent, Instance, Patient, PatientStatus, utcnow
from storage.objects import ObjectNotFound, ObjectStoreError
from storage.patientmodule import PatientModule
from storage.query import Level, Matcher, QueryError, keys_of
from storage.research import projects
from storage.research.keys import KeyStore
from storage.settings import PixelMask

log = logging.getLogger("pacsbroker.research")
Progress = Callable[[int, int], None]  # (instances done, instances in the selection)
EXPORTED, HELD_BACK = "research.export", "research.held-back"


@dataclass
class Selection:
    """Studies by Study Instance UID, or by QIDO/C-FIND style keys (keyword → value)."""

    study_uids: list[str] = field(default_factory=list)
    filters: dict[str, str] = field(default_factory=dict)


@dataclass
class HeldBack:
    """A clinical object that was not exported, and why (for the admin, on the clinical side)."""

    study_uid: str
    series_uid: str
    sop_uid: str
    reason: str


@dataclass
class ExportReport:
    project: str
    studies: int = 0
    instances: int = 0
    exported: int = 0
    already: int = 0  # written by an earlier run of the same selection
    held_back: list[HeldBack] = field(default_factory=list)
    failed: list[HeldBack] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def select_studies(session: Session, selection: Selection, *, pn_ci: bool) -> list[Any]:
    """The visible clinical studies the selection names (query hits at STUDY level)."""
    ds = Dataset()
    for keyword, value in selection.filters.items():
        tag = tag_for_keyword(keyword)
        if tag is None:
            raise ValueError(f"unknown attribute {keyword!r} in the export filters")
        ds.add(DataElement(tag, dictionary_VR(tag), value))
    if selection.study_uids:
        ds.StudyInstanceUID = "\\".join(selection.study_uids)
    if not any(k.value for k in keys_of(ds)):
        raise ValueError("an export selects studies: give study UIDs or filters with values")
    try:
        return list(Matcher(Level.STUDY, keys_of(ds), pn_case_insensitive=pn_ci).hits(session))
    except QueryError as e:
        raise ValueError(str(e)) from None


def encode(ds: Dataset) -> bytes:
    """Part 10 bytes: compressed pixel data as it was, anything native as explicit VR LE."""
    if not UID(ds.file_meta.TransferSyntaxUID).is_compressed:
        ds = transcode.fit(ds, [ExplicitVRLittleEndian])  # big endian becomes little endian
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    out = BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()


def _pseudonymous_patient(scope: str) -> catalog.PatientOf:
    """Research patients are filed by pseudonym under the project's issuer, never reconciled."""

    def patient_of(session: Session, h: Any) -> Patient:
        found = session.scalar(
            select(Patient).where(Patient.patient_id == h.patient_id, Patient.issuer == scope)
        )
        if found is not None:
            return found
        demo = Demographics(
            (Identifier(f"urn:pacsbroker:{scope}", h.patient_id),), h.patient_name, "", h.sex
        )
        return registry.create(session, demo, PatientStatus.LOCAL, issuer=scope)

    return patient_of


class Exporter:
    """One export run for one project."""

    def __init__(
        self,
        clinical: Archive,
        research: Archive,
        keys: KeyStore,
        slug: str,
        masks: list[PixelMask],
    ) -> None:
        self.clinical, self.research, self.masks = clinical, research, masks
        with research.sessions() as session:
            project = projects.get(session, slug)
        if project.expired():
            raise projects.ProjectError(f"project {slug!r} expired on {project.expires}")
        self.slug, self.scope = project.slug, project.scope
        self.key = keys.load(slug)
        self.deid = Deidentifier(self.key, project.deid_options, project.scope)
        self.allow_documents = Option.ALLOW_ENCAPSULATED_DOCUMENTS in project.deid_options

    def run(
        self, selection: Selection, *, actor: str, source: str, progress: Progress | None = None
    ) -> ExportReport:
        report = ExportReport(self.slug)
        settings = self.clinical.settings
        with self.clinical.sessions() as session:
            hits = select_studies(session, selection, pn_ci=settings.pn_case_insensitive)
            plan = []
            for hit in hits:
                instances = outbound.instances_of(session, Level.STUDY, [hit])
                modules = outbound.patient_modules(session, instances)
                plan.append((hit.study.study_uid, hit.patient.patient_id, instances, modules))
        report.studies = len(plan)
        report.instances = sum(len(p[2]) for p in plan)
        done = 0
        if progress:
            progress(done, report.instances)
        for study_uid, patient_id, instances, modules in plan:
            before = (report.exported, report.already, len(report.held_back), len(report.failed))
            archived: list[catalog.Archived] = []
            with self.research.sessions() as session:
                present = catalog.existing(session, [self.key.uid(i.sop_uid) for i in instances])
            for inst in instances:
                if self.key.uid(inst.sop_uid) in present:
                    report.already += 1
                else:
                    self._one(inst, modules[inst.id], study_uid, archived, report)
                done += 1
                if progress:
                    progress(done, report.instances)
            if archived:
                with self.research.sessions() as session, session.begin():
                    catalog.file_instances(session, archived, _pseudonymous_patient(self.scope))
            self._audit(study_uid, patient_id, report, before, actor, source)
        return report

    def _one(
        self,
        inst: Instance,
        pm: PatientModule,
        study_uid: str,
        archived: list[catalog.Archived],
        report: ExportReport,
    ) -> None:
        series_uid = ""
        try:
            ds = outbound.stored(self.clinical.store, inst)  # deid applies PAS's patient module
            series_uid = str(ds.get("SeriesInstanceUID", series_uid))
            verdict = burnedin.screen(ds, self.masks, allow_documents=self.allow_documents)
            if verdict.reason:
                report.held_back.append(
                    HeldBack(study_uid, series_uid, inst.sop_uid, verdict.reason)
                )
                return
            if verdict.mask is not None:
                burnedin.apply_mask(ds, verdict.mask)
            data = encode(self.deid(ds, pixels_cleaned=verdict.mask is not None, patient=pm))
            header = parse(data)
            sha = sha256_of(data)
            key = object_key(header, sha)
            self.research.store.put(key, data)
        except (ObjectNotFound, ObjectStoreError) as e:
            report.failed.append(HeldBack(study_uid, series_uid, inst.sop_uid, f"unreadable: {e}"))
            return
        except Exception as e:  # one bad object must not stop the export; it is reported
            log.exception("de-identifying %s failed", inst.sop_uid)
            report.failed.append(HeldBack(study_uid, series_uid, inst.sop_uid, f"{e}"))
            return
        archived.append(catalog.Archived(header, key, len(data), sha, "DEID", utcnow()))
        report.exported += 1

    def _audit(
        self,
        study_uid: str,
        patient_id: str,
        report: ExportReport,
        before: tuple[int, int, int, int],
        actor: str,
        source: str,
    ) -> None:
        exported, already, held, failed = (
            report.exported - before[0],
            report.already - before[1],
            len(report.held_back) - before[2],
            len(report.failed) - before[3],
        )
        patients = [(patient_id, study_uid)]
        with self.clinical.sessions() as session, session.begin():
            audit.record(
                session,
                actor=actor,
                source=source,
                patients=patients,
                action=EXPORTED,
                outcome="success" if not failed else "partial",
                detail=(
                    f"project={self.slug} exported={exported} present={already} "
                    f"held_back={held} failed={failed}"
                ),
            )
            for item in report.held_back[before[2] :]:
                audit.record(
                    session,
                    actor=actor,
                    source=source,
                    patients=patients,
                    action=HELD_BACK,
                    outcome="held-back",
                    detail=f"project={self.slug} series={item.series_uid} sop={item.sop_uid}: "
                    f"{item.reason}",
                )


def export(
    clinical: Archive,
    research: Archive,
    keys: KeyStore,
    slug: str,
    selection: Selection,
    *,
    actor: str,
    source: str,
    progress: Progress | None = None,
) -> ExportReport:
    """Export the selection into project `slug`; repeat it to resume."""
    masks = list(clinical.settings.research_pixel_masks)
    exporter = Exporter(clinical, research, keys, slug, masks)
    return exporter.run(selection, actor=actor, source=source, progress=progress)


def held_back(session: Session, slug: str, limit: int = 1000) -> list[dict[str, Any]]:
    """What exports into `slug` held back, newest first, from the clinical audit log."""
    rows = session.scalars(
        select(AuditEvent)
        .where(AuditEvent.action == HELD_BACK, AuditEvent.detail.startswith(f"project={slug} "))
        .order_by(AuditEvent.id.desc())
        .limit(limit)
    )
    return [
        {
            "at": (r.at if r.at.tzinfo else r.at.replace(tzinfo=dt.UTC)).isoformat(),
            "patient_id": r.patient_id,
            "study_uid": r.study_uid,
            "detail": r.detail.removeprefix(f"project={slug} "),
        }
        for r in rows
    ]
