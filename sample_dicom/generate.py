"""Synthetic DICOM studies for the demo, tests and benchmarks (no real persons).

python sample_dicom/generate.py OUT_DIR                 # the small committed set
python sample_dicom/generate.py OUT_DIR --ct 500 --size 512   # one large CT study
python sample_dicom/generate.py OUT_DIR --ct 2000 --size 64 --studies 1
"""

from __future__ import annotations

import argparse
import datetime as dt
import io
import sys
import zlib
from pathlib import Path

import numpy as np
from PIL import Image
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.uid import (
    UID,
    ComputedRadiographyImageStorage,
    CTImageStorage,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    MRImageStorage,
    RLELossless,
    UltrasoundImageStorage,
    generate_uid,
)

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from storage.nationalid import make as make_national_id

ROOT = "1.2.826.0.1.3680043.10.1432."  # sample data UID root


def synthetic_id(birth: dt.date, seed: int) -> str:
    for individual in range(seed % 500, 500):
        value = make_national_id(birth, individual, synthetic=True)
        if value:
            return value
    raise ValueError("no valid individual number")


PATIENTS = [
    ("Nordmann^Kari", dt.date(1961, 4, 12), "F", 11),
    ("Hansen^Ola", dt.date(1948, 11, 3), "M", 22),
    ("Ødegård^Åse", dt.date(1987, 7, 29), "F", 33),
]


def _uid(seed: str) -> UID:
    return generate_uid(prefix=ROOT, entropy_srcs=[seed])


def _phantom(rows: int, cols: int, index: int) -> np.ndarray:
    y, x = np.mgrid[0:rows, 0:cols]
    r = np.hypot(y - rows / 2, x - cols / 2)
    img = np.where(r < rows * 0.42, 1000 + 40 * np.sin(x / 7.0 + index), 0)
    img = img + np.where(
        np.hypot(y - rows * 0.4, x - cols * (0.35 + 0.02 * index)) < rows / 10, 800, 0
    )
    return img.astype(np.int32)


def base(
    patient: tuple[str, dt.date, str, int],
    study_uid: str,
    series_uid: str,
    sop_class: str,
    modality: str,
    study_date: dt.date,
    index: int,
) -> Dataset:
    name, birth, sex, seed = patient
    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 100" if not name.isascii() else None
    if ds.SpecificCharacterSet is None:
        del ds.SpecificCharacterSet
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = _uid(f"{series_uid}-{index}")
    ds.StudyDate = ds.SeriesDate = ds.ContentDate = study_date.strftime("%Y%m%d")
    ds.StudyTime = ds.SeriesTime = ds.ContentTime = "101500"
    # crc32, not hash(): str hashes differ per process and the set must be reproducible
    ds.AccessionNumber = f"A{zlib.crc32(study_uid.encode()) % 10**8:08d}"
    ds.Modality = modality
    ds.Manufacturer = "pacsbroker sample generator"
    ds.InstitutionName = "Synthetic Hospital"
    ds.ReferringPhysicianName = "Lege^Lise"
    ds.StudyDescription = f"{modality} synthetic study"
    ds.SeriesDescription = f"{modality} series"
    ds.PatientName = name
    ds.PatientID = synthetic_id(birth, seed)
    ds.IssuerOfPatientID = "2.16.578.1.12.4.1.4.1"
    ds.PatientBirthDate = birth.strftime("%Y%m%d")
    ds.PatientSex = sex
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = series_uid
    ds.StudyID = "1"
    ds.SeriesNumber = 1
    ds.InstanceNumber = index + 1
    ds.PatientPosition = "HFS" if modality in ("CT", "MR") else None
    if ds.PatientPosition is None:
        del ds.PatientPosition
    ds.PatientOrientation = ""
    ds.AcquisitionNumber = 1
    return ds


def grey(ds: Dataset, pixels: np.ndarray, bits: int = 16) -> None:
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows, ds.Columns = pixels.shape
    ds.BitsAllocated = bits
    ds.BitsStored = 12 if bits == 16 else 8
    ds.HighBit = ds.BitsStored - 1
    ds.PixelRepresentation = 0
    ds.PixelData = pixels.astype(np.uint16 if bits == 16 else np.uint8).tobytes()


def save(ds: Dataset, ts: str, path: Path) -> None:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = ds.SOPClassUID
    meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    meta.TransferSyntaxUID = UID(ts)
    meta.ImplementationClassUID = UID(ROOT + "1")
    ds.file_meta = meta
    if ts in (RLELossless, JPEG2000Lossless):
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.compress(
            ts,
            encoding_plugin="pylibjpeg" if ts == JPEG2000Lossless else "pydicom",
            generate_instance_uid=False,
        )
    elif ts == ExplicitVRBigEndian:
        arr = np.frombuffer(ds.PixelData, dtype="<u2").astype(">u2")
        ds.PixelData = arr.tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    little = ts != ExplicitVRBigEndian
    ds.save_as(
        path,
        implicit_vr=ts == ImplicitVRLittleEndian,
        little_endian=little,
        enforce_file_format=True,
    )


def ct_series(
    out: Path,
    patient: tuple,
    study_uid: str,
    n: int,
    size: int,
    ts: str,
    number: int,
    study_date: dt.date,
) -> None:
    series_uid = _uid(f"{study_uid}-series-{number}-{ts}")
    for i in range(n):
        ds = base(patient, study_uid, series_uid, CTImageStorage, "CT", study_date, i)
        ds.SeriesNumber = number
        ds.SeriesDescription = f"CT {UID(ts).name}"
        ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
        ds.RescaleIntercept = -1024
        ds.RescaleSlope = 1
        ds.WindowCenter, ds.WindowWidth = 40, 400
        ds.SliceThickness = 2.5
        ds.ImagePositionPatient = [0, 0, -2.5 * i]
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        ds.PixelSpacing = [0.7, 0.7]
        ds.KVP = 120
        ds.FrameOfReferenceUID = _uid(study_uid + "-for")
        ds.PositionReferenceIndicator = ""
        ds.BodyPartExamined = "CHEST"
        grey(ds, _phantom(size, size, i))
        save(ds, ts, out / f"ct-s{number}-{i:04d}.dcm")


def us_image(out: Path, patient: tuple, study_date: dt.date) -> None:
    study_uid = _uid(f"us-{patient[0]}")
    ds = base(
        patient, study_uid, _uid(study_uid + "-s"), UltrasoundImageStorage, "US", study_date, 0
    )
    rgb = np.zeros((96, 128, 3), dtype=np.uint8)
    rgb[..., 0] = np.linspace(0, 255, 128, dtype=np.uint8)
    rgb[20:70, 30:90, 1] = 200
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="JPEG", quality=90)
    ds.ImageType = ["ORIGINAL", "PRIMARY"]
    ds.Laterality = ""
    ds.SamplesPerPixel = 3
    ds.PhotometricInterpretation = "YBR_FULL_422"
    ds.PlanarConfiguration = 0
    ds.Rows, ds.Columns = 96, 128
    ds.BitsAllocated = ds.BitsStored = 8
    ds.HighBit = 7
    ds.PixelRepresentation = 0
    ds.LossyImageCompression = "01"
    ds.BurnedInAnnotation = "NO"
    ds.PixelData = encapsulate([buf.getvalue()])
    ds["PixelData"].VR = "OB"
    save(ds, JPEGBaseline8Bit, out / "us-0000.dcm")


def cr_image(out: Path, patient: tuple, study_date: dt.date) -> None:
    study_uid = _uid(f"cr-{patient[0]}")
    ds = base(
        patient,
        study_uid,
        _uid(study_uid + "-s"),
        ComputedRadiographyImageStorage,
        "CR",
        study_date,
        0,
    )
    ds.BodyPartExamined = "CHEST"
    ds.ViewPosition = "PA"
    grey(ds, _phantom(128, 128, 2))
    ds.PhotometricInterpretation = "MONOCHROME1"
    save(ds, ExplicitVRLittleEndian, out / "cr-0000.dcm")


def mr_series(out: Path, patient: tuple, study_date: dt.date, n: int = 3) -> None:
    study_uid = _uid(f"mr-{patient[0]}")
    series_uid = _uid(study_uid + "-s")
    for i in range(n):
        ds = base(patient, study_uid, series_uid, MRImageStorage, "MR", study_date, i)
        ds.ScanningSequence, ds.SequenceVariant, ds.ScanOptions = "SE", "NONE", ""
        ds.MRAcquisitionType = "2D"
        ds.EchoTime, ds.RepetitionTime = 20, 500
        ds.BodyPartExamined = "HEAD"
        ds.ImageType = ["ORIGINAL", "PRIMARY", "OTHER"]
        ds.EchoTrainLength = 1
        ds.FrameOfReferenceUID = _uid(study_uid + "-for")
        ds.PositionReferenceIndicator = ""
        ds.ImagePositionPatient = [0, 0, 5.0 * i]
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        ds.PixelSpacing = [1.0, 1.0]
        ds.SliceThickness = 5.0
        grey(ds, _phantom(96, 96, i) // 2)
        save(
            ds,
            DeflatedExplicitVRLittleEndian if i == 0 else ExplicitVRLittleEndian,
            out / f"mr-{i:04d}.dcm",
        )


SAMPLE_SYNTAXES = [
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    ExplicitVRBigEndian,
    DeflatedExplicitVRLittleEndian,
    RLELossless,
    JPEG2000Lossless,
]


def sample_set(out: Path) -> None:
    kari, ola, aase = PATIENTS
    ct_study = _uid("ct-study-kari")
    for number, ts in enumerate(SAMPLE_SYNTAXES, start=1):
        ct_series(out / "kari-ct", kari, ct_study, 2, 64, ts, number, dt.date(2024, 3, 1))
    cr_image(out / "ola-cr", ola, dt.date(2023, 11, 20))
    us_image(out / "ola-us", ola, dt.date(2025, 1, 15))
    mr_series(out / "aase-mr", aase, dt.date(2022, 6, 7))


def large_ct(out: Path, n: int, size: int, studies: int) -> None:
    for s in range(studies):
        patient = (f"Bench^Patient{s}", dt.date(1970, 1, 1 + s % 28), "O", 40 + s)
        uid = _uid(f"bench-{n}-{size}-{s}")
        ct_series(
            out / f"study-{s:04d}",
            patient,
            uid,
            n,
            size,
            ExplicitVRLittleEndian,
            1,
            dt.date(2020, 1, 1) + dt.timedelta(days=s),
        )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("out", type=Path)
    ap.add_argument("--ct", type=int, default=0, help="instances per CT study (large mode)")
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--studies", type=int, default=1)
    a = ap.parse_args()
    if a.ct:
        large_ct(a.out, a.ct, a.size, a.studies)
    else:
        sample_set(a.out)


if __name__ == "__main__":
    main()
