"""What leaves the archive: the instances a query selects, as stored, with today's patient module.

Shared by every way out (C-MOVE/C-GET, DICOMweb), so they all show the same demographics.
"""

from __future__ import annotations

from collections.abc import Iterable
from io import BytesIO
from typing import Any

from pydicom import dcmread
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import UID, ExplicitVRLittleEndian
from sqlalchemy import select
from sqlalchemy.orm import Session

from storage import transcode
from storage.dicomheader import decode_attrs
from storage.models import VISIBLE, Instance, Patient, Series, Study
from storage.objects import ObjectStore
from storage.patientmodule import PatientModule, differences
from storage.patientmodule import apply as apply_patient
from storage.query import NOT_REJECTED, Level


def instances_of(session: Session, level: Level, hits: list[Any]) -> list[Instance]:
    """Every instance under the matched entities, in series order."""
    if level is Level.IMAGE:
        return [h.instance for h in hits]
    if level is Level.SERIES:
        ids = [h.series.id for h in hits]
        stmt = select(Instance).where(Instance.series_fk.in_(ids))
    elif level is Level.STUDY:
        ids = [h.study.id for h in hits]
        stmt = select(Instance).join(Instance.series).where(Series.study_fk.in_(ids))
    else:
        ids = [h.patient.id for h in hits]
        stmt = (
            select(Instance)
            .join(Instance.series)
            .join(Series.study)
            .where(Study.patient_fk.in_(ids))
        )
    if not ids:
        return []
    return list(session.scalars(stmt.where(NOT_REJECTED).order_by(Instance.series_fk, Instance.id)))


def visible_instances(
    session: Session, study_uid: str, sop_uids: Iterable[str], series_uid: str = ""
) -> list[tuple[Instance, Patient]]:
    """Named instances of a study that clinical reads may see, with their patients, in one
    query: the patient is neither quarantined nor merged away, the instance not rejected."""
    stmt = (
        select(Instance, Patient)
        .join(Instance.series)
        .join(Series.study)
        .join(Study.patient)
        .where(
            Study.study_uid == study_uid,
            Instance.sop_uid.in_(list(sop_uids)),
            Patient.status.in_(VISIBLE),
            NOT_REJECTED,
        )
    )
    if series_uid:
        stmt = stmt.where(Series.series_uid == series_uid)
    return [(inst, patient) for inst, patient in session.execute(stmt)]


def patient_modules(session: Session, instances: list[Instance]) -> dict[int, PatientModule]:
    """The current patient module for each instance id (after PAS renames and merges)."""
    out: dict[int, PatientModule] = {}
    ids = [i.id for i in instances]
    for start in range(0, len(ids), 500):
        rows = session.execute(
            select(
                Instance.id,
                Patient.patient_id,
                Patient.issuer,
                Patient.name,
                Patient.birth_date,
                Patient.sex,
            )
            .join(Instance.series)
            .join(Series.study)
            .join(Study.patient)
            .where(Instance.id.in_(ids[start : start + 500]))
        )
        for iid, *values in rows:
            out[iid] = PatientModule(*values)
    return out


def stored(store: ObjectStore, inst: Instance) -> Dataset:
    """The object exactly as archived; raises ObjectStoreError if unreadable."""
    return dcmread(BytesIO(store.get(inst.object_key)))


def load(store: ObjectStore, inst: Instance, pm: PatientModule) -> Dataset:
    """The stored object with the current patient module; raises ObjectStoreError if unreadable."""
    return apply_patient(stored(store, inst), pm)


def part10(
    store: ObjectStore, inst: Instance, pm: PatientModule, syntaxes: set[str]
) -> tuple[bytes, str]:
    """The object as a Part 10 file in one of `syntaxes` ("*": any) with the current patient
    module, and the transfer syntax it is in: the stored bytes themselves whenever neither
    needs to change."""
    raw = store.get(inst.object_key)
    header = dcmread(BytesIO(raw), stop_before_pixels=True)
    as_stored = "*" in syntaxes or inst.transfer_syntax in syntaxes
    if as_stored and not differences(header, pm):
        return raw, inst.transfer_syntax
    ds = apply_patient(dcmread(BytesIO(raw)), pm)
    if not as_stored:
        ds = transcode.fit(ds, syntaxes)
        ts = UID(ds.file_meta.TransferSyntaxUID)
        if ts not in syntaxes and not ts.is_compressed:
            # deflated or implicit VR: pydicom re-encodes the data set on writing
            ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    out = BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue(), str(ds.file_meta.TransferSyntaxUID)


def indexed_header(inst: Instance, pm: PatientModule) -> Dataset:
    """The attributes the index holds for an instance (all up to the pixel data), with the
    current patient module and the file's transfer syntax; no object-store read."""
    ds = apply_patient(decode_attrs(inst.attrs, inst.attrs_ts), pm)
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = UID(inst.transfer_syntax)
    return ds


def bulk_value(store: ObjectStore, inst: Instance, tag: int) -> bytes:
    """The raw value of one binary element (pixel data as stored: native or encapsulated)."""
    ds = stored(store, inst)
    if tag not in ds or not isinstance(ds[tag].value, bytes):
        raise ValueError(f"no binary element {tag:08X}")
    return bytes(ds[tag].value)


def frames(store: ObjectStore, inst: Instance, numbers: list[int]) -> list[bytes]:
    """Frames (1-based) as uncompressed little-endian pixel bytes."""
    ds = stored(store, inst)
    if "PixelData" not in ds:
        raise IndexError("the instance has no pixel data")
    count = int(ds.get("NumberOfFrames", 1) or 1)
    bad = [n for n in numbers if not 1 <= n <= count]
    if bad:
        raise IndexError(f"frame(s) {bad} out of range: the instance has {count}")
    ds = transcode.fit(ds, [ExplicitVRLittleEndian])
    if UID(ds.file_meta.TransferSyntaxUID).is_compressed:
        raise ValueError("the pixel data cannot be decoded here")
    bits = int(ds.BitsAllocated)
    size = int(ds.Rows) * int(ds.Columns) * int(ds.get("SamplesPerPixel", 1)) * bits // 8
    if bits == 1 or size * count > len(ds.PixelData):
        raise ValueError("frames of 1-bit or short pixel data are not served")
    data = bytes(ds.PixelData)
    return [data[(n - 1) * size : n * size] for n in numbers]
