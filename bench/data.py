"""Synthetic, deterministic benchmark data sets, written once and reused."""

from __future__ import annotations

import random
from collections.abc import Iterator
from datetime import date, timedelta
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

ROOT_UID = "1.2.826.0.1.3680043.10.1453.9."
SURNAMES = [
    "HANSEN",
    "JOHANSEN",
    "OLSEN",
    "LARSEN",
    "ANDERSEN",
    "PEDERSEN",
    "NILSEN",
    "KRISTIANSEN",
]
GIVEN = ["ANNE", "BJØRN", "KARI", "OLE", "INGRID", "LARS", "SIGRID", "ÆSE", "ØYVIND", "ÅSE"]
MODALITIES = ["CT", "MR", "CR", "US", "NM", "XA"]


def _uid(*parts: object) -> str:
    return generate_uid(prefix=ROOT_UID, entropy_srcs=[str(p) for p in parts])


def _ct(
    study: str, series: str, n: int, size: int, patient: tuple[str, str], when: date, mod: str
) -> Dataset:
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = CTImageStorage
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = _uid(series, n)
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.SpecificCharacterSet = "ISO_IR 192"
    ds.PatientName, ds.PatientID = patient
    ds.PatientBirthDate = "19700101"
    ds.PatientSex = "O"
    ds.StudyInstanceUID = study
    ds.SeriesInstanceUID = series
    ds.StudyDate = ds.SeriesDate = ds.ContentDate = when.strftime("%Y%m%d")
    ds.StudyTime = ds.ContentTime = "101500"
    ds.StudyID = "1"
    ds.AccessionNumber = f"BA{int(study.rsplit('.', 1)[1]) % 10**12:012d}"[:16]
    ds.StudyDescription = f"{mod} benchmark"
    ds.ReferringPhysicianName = ""
    ds.Modality = mod
    ds.Manufacturer = "pacsbroker-bench"
    ds.PatientPosition = "HFS"
    ds.Laterality = ""
    ds.SeriesNumber = 1
    ds.InstanceNumber = n + 1
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    ds.ImagePositionPatient = [0.0, 0.0, float(n)]
    ds.ImageOrientationPatient = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0]
    ds.PixelSpacing = [0.7, 0.7]
    ds.SliceThickness = 1.0
    ds.FrameOfReferenceUID = _uid(study, "for")
    ds.PositionReferenceIndicator = ""
    ds.KVP = 120
    ds.AcquisitionNumber = 1
    ds.RescaleIntercept, ds.RescaleSlope = -1024, 1
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows = ds.Columns = size
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    rng = np.random.default_rng(n)
    ds.PixelData = rng.integers(0, 4096, (size, size), dtype=np.uint16).tobytes()
    return ds


def _write(folder: Path, items: Iterator[Dataset]) -> Path:
    tmp = folder.with_name(folder.name + ".partial")
    tmp.mkdir(parents=True, exist_ok=True)
    for i, ds in enumerate(items):
        ds.save_as(tmp / f"{i:05d}.dcm", enforce_file_format=True)
    tmp.rename(folder)
    return folder


def one_study(root: Path, name: str, count: int, size: int) -> Path:
    """`count` CT images of size² pixels in one study and series."""
    folder = root / name
    if folder.exists():
        return folder
    study, series = _uid(name, "study"), _uid(name, "series")
    patient = ("BENCH^ONE", f"B{name.upper()}"[:16])
    return _write(
        folder, (_ct(study, series, n, size, patient, date(2026, 1, 5), "CT") for n in range(count))
    )


def many_studies(root: Path, count: int) -> Path:
    """`count` one-image studies over count/5 patients and six years, for query latency."""
    folder = root / f"studies{count}"
    if folder.exists():
        return folder
    rnd = random.Random(1453)
    patients = [
        (f"{rnd.choice(SURNAMES)}^{rnd.choice(GIVEN)}", f"BP{i:06d}") for i in range(count // 5)
    ]

    def items() -> Iterator[Dataset]:
        for n in range(count):
            study = _uid("many", n, "study")
            when = date(2020, 1, 1) + timedelta(days=rnd.randrange(6 * 365))
            yield _ct(
                study,
                _uid(study, "s"),
                0,
                8,
                patients[n % len(patients)],
                when,
                rnd.choice(MODALITIES),
            )

    return _write(folder, items())


def studies(root: Path, count: int, per_study: int, size: int) -> Path:
    """`count` CT studies of `per_study` images of size² pixels, one a day from 2024-01-01."""
    folder = root / f"studies{count}x{per_study}-{size}"
    if folder.exists():
        return folder

    def items() -> Iterator[Dataset]:
        for n in range(count):
            study = _uid("multi", n, size, "study")
            patient = (f"BENCH^MIGRATE{n % 10}", f"BM{n % 10:06d}")
            when = date(2024, 1, 1) + timedelta(days=n)
            for i in range(per_study):
                yield _ct(study, _uid(study, "s"), i, size, patient, when, "CT")

    return _write(folder, items())


def files(folder: Path) -> list[Path]:
    return sorted(folder.glob("*.dcm"))
