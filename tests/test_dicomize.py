"""DICOM-ization of photos and PDFs: valid objects (dciodvfy), originals kept, clear refusals,
and the CLI end to end with demographics from PAS."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pydicom import dcmread
from pydicom.encaps import generate_frames

from broker.dicomize.batch import Upload, build
from broker.dicomize.common import Device, DicomizeError
from storage.patientmodule import PatientModule
from tests.conftest import Broker
from tests.dciodvfy import errors as dciodvfy_errors
from tests.dcmtk import findscu
from tests.test_dimse import wait_instances
from tests.test_pas import KARI, pas  # noqa: F401  (fixture)

PATIENT = PatientModule("12345678901", "", "Nordmann^Kari", "19800101", "F")
PIXELS = (np.random.default_rng(5).random((90, 120, 3)) * 255).astype("uint8")


def encoded(fmt: str, **kw: object) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(PIXELS).save(buf, fmt, **kw)
    return buf.getvalue()


def pdf() -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (50, 50), "white").save(buf, "PDF")
    return buf.getvalue()


def rotated_jpeg() -> bytes:
    exif = Image.Exif()
    exif[0x0112] = 6  # the camera was turned: display rotated 90° clockwise
    return encoded("JPEG", exif=exif.tobytes())


def valid(ds: object, tmp: Path, name: str) -> Path:
    path = tmp / f"{name}.dcm"
    ds.save_as(path, enforce_file_format=True)  # type: ignore[attr-defined]
    assert dciodvfy_errors(path) == []
    return path


def test_builders_keep_originals_and_make_valid_objects(tmp_path: Path) -> None:
    jpeg, png, doc = encoded("JPEG", quality=92), encoded("PNG"), pdf()
    objects = build(
        [Upload("eye.jpg", jpeg), Upload("scan.png", png), Upload("henvisning.pdf", doc)],
        PATIENT,
        uid_root="",
        accession="A123",
        device=Device("Topcon", "TRC-50", "EYE1"),
    )
    photo_jpeg, photo_png, epdf = (
        dcmread(valid(o, tmp_path, str(i))) for i, o in enumerate(objects)
    )
    assert photo_jpeg.file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.4.50"
    assert next(generate_frames(photo_jpeg.PixelData, number_of_frames=1)) == jpeg  # not re-encoded
    assert (photo_png.pixel_array == PIXELS).all()
    assert epdf.EncapsulatedDocument[: len(doc)] == doc and epdf.DocumentTitle == "henvisning"
    assert {o.StudyInstanceUID for o in objects} == {objects[0].StudyInstanceUID}  # accession
    assert len({o.SeriesInstanceUID for o in objects}) == 1  # one batch, one series
    assert all(o.PatientName == "Nordmann^Kari" and o.StationName == "EYE1" for o in objects)

    (turned,) = build([Upload("turned.jpg", rotated_jpeg())], PATIENT, uid_root="")
    ds = dcmread(valid(turned, tmp_path, "turned"))
    assert (ds.Rows, ds.Columns) == (120, 90)  # EXIF orientation applied


@pytest.mark.parametrize(
    ("name", "data", "message"),
    [
        ("cut.jpg", encoded("JPEG")[:600], "not a readable image"),
        ("fake.pdf", b"hello, not a pdf", "not a PDF"),
        ("empty.png", b"", "empty"),
        ("../../etc/passwd.jpg", encoded("JPEG"), "not a plain file name"),
        ("notes.docx", b"PK\x03\x04", "unsupported file type"),
    ],
)
def test_bad_files_are_refused_with_a_reason(name: str, data: bytes, message: str) -> None:
    with pytest.raises(DicomizeError, match=message):
        build([Upload("fine.png", encoded("PNG")), Upload(name, data)], PATIENT, uid_root="")


@pytest.fixture
def broker(broker_factory, pas: str) -> Broker:  # noqa: F811
    peers = [{"ae": "PB-DICOMIZE", "query": False, "retrieve": False}, {"ae": "FINDSCU"}]
    return broker_factory(
        {"PACSBROKER_PEERS": json.dumps(peers), "PACSBROKER_PAS_FHIR_URL": f"{pas}/fhir"}
    ).start()


def test_cli_dicomizes_for_a_pas_patient(broker: Broker, tmp_path: Path) -> None:
    photo, doc = tmp_path / "photo.jpg", tmp_path / "report.pdf"
    photo.write_bytes(encoded("JPEG"))
    doc.write_bytes(pdf())
    r = broker.cli("dicomize", str(photo), str(doc), "--patient", KARI, "--station", "EYE1")
    assert r.returncode == 0, r.stderr + r.stdout
    wait_instances(broker, 2)
    found = findscu(
        broker.dicom_port,
        {"QueryRetrieveLevel": "IMAGE", "PatientID": KARI, "PatientName": "", "SOPClassUID": ""},
    )
    assert len(found) == 2 and {str(f.PatientName) for f in found} == {"Nordmann^Kari"}
    bad = tmp_path / "fake.pdf"
    bad.write_bytes(b"nope")
    r = broker.cli("dicomize", str(bad), "--patient", KARI)
    assert r.returncode == 2 and "not a PDF" in r.stdout + r.stderr
    r = broker.cli("dicomize", str(photo), "--patient", "00000000000")
    assert r.returncode == 2 and "unknown patient" in r.stdout + r.stderr
