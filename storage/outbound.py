"""What leaves the archive: the instances a query selects, as stored, with today's patient module.

Shared by every way out (C-MOVE/C-GET, DICOMweb), so they all show the same demographics.
"""

from __future__ import annotations

from collections.abc import Iterable
from io import BytesIO
from typing import Any

import numpy as np
from pydicom import dcmread
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import generate_frames
from pydicom.uid import UID, ExplicitVRLittleEndian, ImplicitVRLittleEndian
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


def load(store: ObjectStore, inst: Instance, pm: PatientModule) -> tuple[Dataset, bytes | None]:
    """The stored object with the current patient module, and its stored bytes when that
    changed nothing; raises ObjectStoreError if unreadable."""
    raw = store.get(inst.object_key)
    ds = dcmread(BytesIO(raw))
    if differences(ds, pm):
        return apply_patient(ds, pm), None
    return ds, raw


# What retrieve can write besides the stored syntax: we decode, we never encode.
UNCOMPRESSED = (str(ExplicitVRLittleEndian), str(ImplicitVRLittleEndian))


class NotServable(ValueError):
    """The object cannot be written in the transfer syntax asked for."""


def serving_syntax(stored_ts: str, wanted: Iterable[str]) -> str | None:
    """The first of `wanted` ("*": as stored) an object stored in `stored_ts` can be sent in."""
    for ts in wanted:
        if ts in ("*", stored_ts):
            return stored_ts
        if ts in UNCOMPRESSED:
            return ts
    return None


def part10(store: ObjectStore, inst: Instance, pm: PatientModule, syntax: str) -> bytes:
    """The object as a Part 10 file in `syntax` (as stored, or one of UNCOMPRESSED) with the
    current patient module: the stored bytes themselves whenever neither needs to change."""
    raw = store.get(inst.object_key)
    header = dcmread(BytesIO(raw), stop_before_pixels=True)
    as_stored = syntax == inst.transfer_syntax
    if as_stored and not differences(header, pm):
        return raw
    ds = apply_patient(dcmread(BytesIO(raw)), pm)
    if not as_stored:
        ds = transcode.fit(ds, [syntax])
        if UID(ds.file_meta.TransferSyntaxUID).is_compressed:
            raise NotServable(f"{inst.sop_uid} cannot be decoded from {inst.transfer_syntax}")
        # deflated, implicit or explicit VR: pydicom re-encodes the data set on writing
        ds.file_meta.TransferSyntaxUID = UID(syntax)
    out = BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()


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


def _with_frames(
    store: ObjectStore, inst: Instance, numbers: list[int] | None
) -> tuple[Dataset, int, list[int]]:
    """The stored object, its frame count and the frames wanted (None: all), once they are
    known to be in it."""
    ds = stored(store, inst)
    if "PixelData" not in ds:
        raise IndexError("the instance has no pixel data")
    count = int(ds.get("NumberOfFrames", 1) or 1)
    wanted = list(range(1, count + 1)) if numbers is None else numbers
    bad = [n for n in wanted if not 1 <= n <= count]
    if bad:
        raise IndexError(f"frame(s) {bad} out of range: the instance has {count}")
    return ds, count, wanted


def frames(store: ObjectStore, inst: Instance, numbers: list[int] | None = None) -> list[bytes]:
    """Frames (1-based; None: all) as uncompressed little-endian pixel bytes."""
    ds, count, wanted = _with_frames(store, inst, numbers)
    ds = transcode.fit(ds, [ExplicitVRLittleEndian])
    if UID(ds.file_meta.TransferSyntaxUID).is_compressed:
        raise ValueError("the pixel data cannot be decoded here")
    bits = int(ds.BitsAllocated)
    pixels = int(ds.Rows) * int(ds.Columns) * int(ds.get("SamplesPerPixel", 1))
    if bits == 1:
        return _bit_frames(bytes(ds.PixelData), pixels, count, wanted)
    size = pixels * bits // 8
    if ds.get("PhotometricInterpretation") == "YBR_FULL_422":
        size = size // 3 * 2  # PS3.3 C.7.6.3.1.2: one Cb and one Cr for every two Y
    if size * count > len(ds.PixelData):
        raise ValueError(f"the pixel data is shorter than {count} frame(s) of {size} bytes")
    data = bytes(ds.PixelData)
    return [data[(n - 1) * size : n * size] for n in wanted]


def _bit_frames(data: bytes, pixels: int, count: int, wanted: list[int]) -> list[bytes]:
    """Frames of bit-packed (1-bit) pixel data, each packed from its own first bit: a frame
    need not start on a byte boundary in the stored data (PS3.5 8.1.1), as with 5x5 masks."""
    if pixels * count > len(data) * 8:
        raise ValueError(f"the pixel data is shorter than {count} frame(s) of {pixels} bits")
    out = []
    for n in wanted:
        start = (n - 1) * pixels
        span = np.frombuffer(data[start // 8 : -(-(start + pixels) // 8)], dtype=np.uint8)
        bits = np.unpackbits(span, bitorder="little")[start % 8 : start % 8 + pixels]
        out.append(np.packbits(bits, bitorder="little").tobytes())
    return out


def stored_frames(
    store: ObjectStore, inst: Instance, numbers: list[int] | None = None
) -> list[bytes]:
    """Frames (1-based; None: all) of encapsulated pixel data as stored: each its fragments
    joined, without item tags."""
    ds, count, wanted = _with_frames(store, inst, numbers)
    if not UID(ds.file_meta.TransferSyntaxUID).is_compressed:
        raise ValueError("the pixel data is not encapsulated")
    every = list(generate_frames(ds.PixelData, number_of_frames=count))
    return [every[n - 1] for n in wanted]
